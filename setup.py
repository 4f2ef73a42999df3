from setuptools import find_packages, setup

setup(
    name="churn_platform",
    version="0.1.0",
    description="Customer-churn prediction platform as a Dagster asset graph on PySpark and MLflow.",
    packages=find_packages(exclude=["churn_platform_tests"]),
    # Every file the package reads at run time; dagster.yaml links to the top-level one.
    package_data={"churn_platform": ["specs/*.yaml", "log4j2.properties", "dagster.yaml"]},
    python_requires=">=3.11,<3.12",
    install_requires=[
        # Dagster core and every integration are released in lockstep; pinning the matching set
        # avoids pip backtracking through dozens of old integration releases.
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-pyspark==0.29.27",  # lockstep with dagster 1.13.27
        "dagster-mlflow==0.29.27",  # lockstep with dagster 1.13.27
        "dagster-postgres==0.29.27",  # lockstep; production instance storage on PostgreSQL
        # Spark 4.3 is the Spark the MLlib code and the ANSI-mode casts were written against.
        "pyspark==4.3.0",
        # pandera.pyspark API (DataFrameModel for Spark) as of 0.35.
        "pandera[pyspark]==0.35.0",
        # MLflow 3.17: aliases, Spark flavor with artifact_path positional, sqlite backend.
        "mlflow==3.17.2",
        # dagster-mlflow and pandera require pandas<3; PySpark 4.3 does not support pandas 3 fully.
        "pandas>=2.2,<3",
        # Spark's pandas conversion (toPandas/Arrow) needs pyarrow.
        "pyarrow>=15,<22",
        "pyyaml>=6,<7",
        # Dataset spec schema (unknown keys and wrong types refused); already a dagster dependency.
        # 2.11: the settings' defaults derived from other fields and validate_by_name.
        "pydantic>=2.11,<3",
        # The settings object: environment variables into typed, validated fields, SecretStr for
        # secrets; NoDecode (comma-separated CHURN_MODELS) needs 2.7.
        "pydantic-settings>=2.7,<3",
        # URL parsing for credential redaction (make_url); already an mlflow dependency.
        "sqlalchemy>=2,<3",
        # JSON formatter for the operations log: a well-kept library instead of our own.
        "python-json-logger>=3.2,<5",
        # ROC/PR/calibration plots logged as images.
        "matplotlib>=3.8,<4",
        # PostgreSQL client for the MLflow/Dagster production backends.
        "psycopg2-binary>=2.9,<3",
        # Optional S3-compatible backup target and at-rest encryption of backups.
        "boto3>=1.34,<2",
        "cryptography>=42",
        "psutil>=5.9",
        # Driver-side metrics on collected predictions (ROC-AUC, average precision, curves).
        "scikit-learn>=1.5,<2",
    ],
    extras_require={
        "test": [
            "pytest>=8,<9",
            "pytest-timeout>=2.3",
            # Two test processes (`make test`): much of a run waits on JVM start-up, daemons,
            # servers and subprocesses, which two workers overlap on two cores.
            "pytest-xdist>=3.6,<4",
            # A real S3-compatible server (moto in server mode) for backup-target tests.
            "moto[server]>=5,<6",
            # Headless Chromium driven through Playwright, using Debian's /usr/bin/chromium.
            "playwright>=1.50,<2",
            # Property-based tests: generated CSV rows through raw -> cleaned (test_csv_properties).
            "hypothesis>=6.100,<7",
            "ruff>=0.8",
            # Layer contracts (core without Dagster) checked by `make lint` in CI.
            "import-linter>=2,<3",
        ],
        "bench": [
            # References inside benchmarks only: what a user would pick instead of Spark.
            "lightgbm>=4,<5",
        ],
    },
    entry_points={"console_scripts": ["churn-platform=churn_platform.cli:entry"]},
)
