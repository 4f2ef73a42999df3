"""The backup asset verifies and drills its archive; a corrupt one blocks and opens one incident."""

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_pyspark import PySparkResource
from pyspark.sql import SparkSession

from churn_platform.assets import backups
from churn_platform.assets.backups import (
    BACKUP_VERIFIED,
    GOLDEN_INPUT,
    GOLDEN_ROWS,
    RESTORE_DRILL,
    backup_assets,
    backup_partitions,
    backup_schedule,
    backup_selection,
)
from churn_platform.config import DatasetSpec, load_spec
from churn_platform.core import cleaning, registry, sources, tracking
from churn_platform.core.backup import archive, errors
from churn_platform.core.features import build_features
from churn_platform.core.models.fitting import full_model, training_frame
from churn_platform.core.models.training import fit_model
from churn_platform.core.ops.chain import anchor_path
from churn_platform.core.ops.incidents import IncidentStore
from churn_platform.core.ops.log import OpsLog
from churn_platform.core.ops.verify import verify_logs
from churn_platform.core.spark_setup import spark_conf
from churn_platform.core.synthetic.generate import generate_customers
from churn_platform.core.synthetic.write import write_customers
from churn_platform.core.versions import current_version
from churn_platform.definitions import build_definitions
from churn_platform.io_managers import VersionedParquetIOManager, new_version_dir, publish_version
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import OpsLogResource, StateResource
from churn_platform.settings import DEFAULT_SPEC, Settings, load_settings
from churn_platform_tests.test_ops_log import old_log_file

PARTITION = "2026-11-27"


@dataclass(frozen=True)
class Platform:
    settings: Settings
    spec: DatasetSpec
    resources: dict[str, Any]
    champion_version: str


def _publish(df: Any, folder: Path) -> None:
    """As the IO manager stores an asset: a new version folder, then the CURRENT pointer."""
    folder.mkdir(parents=True)
    version = new_version_dir(folder, "testrun0")
    df.write.parquet(str(version))
    publish_version(folder, version)


@pytest.fixture(scope="module")
def platform(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A state root with a cleaned table and a real Spark champion in a sqlite registry."""
    root = tmp_path_factory.mktemp("backup_assets")
    home = root / "home"
    env = {
        "CHURN_HOME": str(home),
        "CHURN_CONFIG": str(DEFAULT_SPEC),
        "CHURN_PSEUDONYM_KEY": "test-pseudonym-key",
        "CHURN_BACKUP_TARGET": str(root / "offsite"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db",
    }
    settings, spec = load_settings(env), load_spec(DEFAULT_SPEC, home)
    write_customers(generate_customers(spark, 400, seed=5), home / "data" / "telco_churn.csv")
    raw = sources.read_batch(spark, spec, spec.sources, "base", 0).frame
    cleaned = cleaning.clean_customers(raw, spec).cleaned
    _publish(cleaned, settings.warehouse / "cleaned_customers")
    features = build_features(cleaned, spec)
    with training_frame(features.features, spec.id_column, features.pipeline) as frame:
        fitted = fit_model("logistic_regression", frame, {"regParam": 0.01, "maxIter": 20})
    mlflow = MlflowResource.from_settings(settings)
    example = features.features.select(*features.categorical, *features.numeric)
    run = tracking.log_training_run(
        mlflow,
        spec,
        model_kind="logistic_regression",
        model=full_model(features.pipeline, fitted.model),
        params={"regParam": 0.01},
        metrics={"roc_auc": 0.8},
        threshold=0.5,
        input_schema=example.schema,
        dagster_run_id="test",
        asset_key="model_logistic_regression",
        code_version="1",
        data_version="test",
        git_commit="test",
    )
    candidate = registry.register_candidate(mlflow, spec, run, {"roc_auc": 0.8}, 0.5)
    with OpsLog(settings) as ops:
        registry.promote(mlflow, spec, candidate, settings=settings, ops_log=ops)
    pyspark = PySparkResource(spark_config=spark_conf(settings))
    resources = {
        "pyspark": pyspark,
        "io_manager": VersionedParquetIOManager(base_path=str(settings.warehouse), pyspark=pyspark),
        "state": StateResource(platform=settings),
        "ops_log": OpsLogResource(platform=settings),
        "mlflow": mlflow,
    }
    yield Platform(settings, spec, resources, str(candidate.version))


def _materialize(platform: Platform) -> dg.ExecuteInProcessResult:
    """A backup run as the schedule and the CLI start it: the golden input only while missing."""
    return dg.materialize(
        [*backup_assets, dg.AssetSpec("cleaned_customers")],  # read by golden_input
        selection=backup_selection(platform.settings),
        partition_key=PARTITION,
        resources=platform.resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


def _events(settings: Settings, code: str) -> list[dict[str, Any]]:
    lines = [line for p in settings.logs.glob("ops-*.jsonl") for line in p.read_text().splitlines()]
    return [record for record in map(json.loads, lines) if record["event_code"] == code]


def test_backup_is_verified_and_its_restore_reproduces_the_golden_hash(platform: Platform) -> None:
    completed_before = len(_events(platform.settings, "backup.completed"))
    golden_before = current_version(platform.settings.warehouse / GOLDEN_INPUT)

    result = _materialize(platform)

    assert result.success
    checks = _checks(result)
    assert checks[BACKUP_VERIFIED].passed and checks[RESTORE_DRILL].passed
    drill = checks[RESTORE_DRILL].metadata
    (materialization,) = result.asset_materializations_for_node("platform_backup")
    metadata = materialization.metadata
    assert metadata["champion_version"].value == platform.champion_version
    assert metadata["champion_name"].value == platform.spec.model_name
    assert metadata["golden_prediction_hash"].value == drill["restored_hash"].value
    assert drill["restored_champion"].value == drill["expected_champion"].value
    home = platform.settings.home
    artifacts = home / "mlflow" / "artifacts"
    assert any(f"relocated {artifacts} -> " in note for note in drill["notes"].value)

    golden = current_version(platform.settings.warehouse / GOLDEN_INPUT)
    assert golden is not None
    written = result.asset_materializations_for_node(GOLDEN_INPUT)
    if golden_before is None:  # written through the IO manager, as a declared asset
        assert [m.metadata["version"].value for m in written] == [golden.name]
    else:
        assert written == [] and golden == golden_before
    spark, id_column = SparkSession.active(), platform.spec.id_column
    ids = [row[0] for row in spark.read.parquet(str(golden)).select(id_column).collect()]
    cleaned = current_version(platform.settings.warehouse / "cleaned_customers")
    all_ids = spark.read.parquet(str(cleaned)).select(id_column).orderBy(id_column)
    assert sorted(ids) == [row[0] for row in all_ids.limit(GOLDEN_ROWS).collect()]
    manifest = json.loads(Path(f"{metadata['archive'].value}.manifest.json").read_text())
    assert manifest["golden"]["golden_input"] == golden.name
    assert any(f"warehouse/{GOLDEN_INPUT}/{golden.name}/" in e["path"] for e in manifest["files"])

    (retention,) = result.asset_materializations_for_node("backup_retention")
    assert retention.metadata["kept"].value == [PARTITION]
    assert retention.metadata["deleted"].value == []
    assert len(_events(platform.settings, "backup.completed")) == completed_before + 1
    assert _events(platform.settings, "restore.drill.completed")[-1]["outcome"] == "success"


def test_corrupt_archive_fails_the_blocking_check_and_opens_one_incident(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    def create_then_corrupt(*args: Any, **kwargs: Any) -> archive.BackupResult:
        """Bit rot between writing and verifying: exactly what verification is there for."""
        result = archive.create_backup(*args, **kwargs)
        sealed = Path(result.archive)
        data = bytearray(sealed.read_bytes())
        data[len(data) // 2] ^= 0x01
        sealed.write_bytes(bytes(data))
        return result

    monkeypatch.setattr(backups, "create_backup", create_then_corrupt)
    failures_before = len(_events(platform.settings, "backup.verify.failed"))

    runs: list[dg.ExecuteInProcessResult] = []
    golden_versions: set[Path | None] = set()
    for _ in range(2):
        runs.append(_materialize(platform))
        golden_versions.add(current_version(platform.settings.warehouse / GOLDEN_INPUT))

    # The golden input is written by at most the first of the two runs, then reused.
    assert runs[1].asset_materializations_for_node(GOLDEN_INPUT) == []
    for result in runs:
        assert not result.success
        checks = _checks(result)
        assert not checks[BACKUP_VERIFIED].passed and not checks[RESTORE_DRILL].passed
        assert checks[BACKUP_VERIFIED].severity == dg.AssetCheckSeverity.ERROR
        assert "sha256-mismatch" in json.dumps(checks[BACKUP_VERIFIED].metadata["problems"].value)
        # Where the flipped bit lands decides how the drill refuses the archive (a hash mismatch
        # or a garbled member header), but it always refuses with one of the backup errors.
        error = checks[RESTORE_DRILL].metadata["error"].value
        assert issubclass(getattr(errors, error.split(":", 1)[0]), errors.BackupError), error
        assert result.asset_materializations_for_node("backup_retention") == []
    opened = [
        incident
        for incident in IncidentStore(platform.settings).list("open")
        if incident.dedupe_key == f"backup-verify:{PARTITION}"
    ]
    assert len(opened) == 1
    assert opened[0].occurrences == 2
    assert opened[0].configuration_item == f"backup:{PARTITION}"
    failures = _events(platform.settings, "backup.verify.failed")
    assert len(failures) == failures_before + 2
    assert len(golden_versions) == 1 and None not in golden_versions


def test_backup_runs_select_the_golden_input_only_while_it_is_missing(tmp_path: Path) -> None:
    settings = load_settings({"CHURN_HOME": str(tmp_path)})
    warehouse, backup = settings.warehouse, [dg.AssetKey("platform_backup")]

    def selected() -> list[dg.AssetKey]:
        return backup_selection(settings, retention=False)

    def scheduled() -> dg.RunRequest:
        with dg.build_schedule_context(
            scheduled_execution_time=dt.datetime(2026, 11, 27, 2, tzinfo=dt.UTC),
            resources={"state": StateResource(platform=settings)},
        ) as context:
            request = backup_schedule(context)
        assert isinstance(request, dg.RunRequest) and request.partition_key == PARTITION
        return request

    # A fresh platform: nothing to take the rows from, and no champion needs them.
    assert selected() == backup
    for name in ("cleaned_customers", GOLDEN_INPUT):
        folder = warehouse / name
        folder.mkdir(parents=True)
        version = new_version_dir(folder, "testrun0")
        version.mkdir()
        publish_version(folder, version)
        if name == "cleaned_customers":
            assert selected() == [dg.AssetKey(GOLDEN_INPUT), *backup]
            assert dg.AssetKey(GOLDEN_INPUT) in (scheduled().asset_selection or [])
    assert selected() == backup
    assert scheduled().asset_selection == [*backup, dg.AssetKey("backup_retention")]
    # The job the schedule launches takes its days from platform_backup.
    job = build_definitions(settings).resolve_job_def("backup_job")
    assert job.partitions_def == backup_partitions
    assert PARTITION in job.partitions_def.get_partition_keys()


def test_retention_prunes_operations_logs_older_than_the_setting(tmp_path: Path) -> None:
    """CHURN_LOG_RETENTION_DAYS is applied by the nightly backup job's retention step, after the
    day's verified backup; newer log files stay."""
    settings = load_settings({"CHURN_HOME": str(tmp_path), "CHURN_LOG_RETENTION_DAYS": "30"})
    with OpsLog(settings) as ops:
        old = old_log_file(ops, "2000-01-01")
        recent = old_log_file(
            ops, (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=10)).isoformat()
        )
    result = dg.materialize(
        [backups.backup_retention],
        resources={
            "state": StateResource(platform=settings),
            "ops_log": OpsLogResource(platform=settings),
        },
    )
    metadata = result.asset_materializations_for_node("backup_retention")[0].metadata
    assert metadata["logs_pruned"].value == [old.name]
    assert metadata["log_retention_days"].value == 30
    assert not old.exists() and recent.exists()
    (pruned,) = _events(settings, "logs.pruned")
    assert old.name in pruned["message"]
    assert verify_logs(settings.logs, anchor_path(settings)).ok
