"""The platform's settings: one pydantic-settings model, read from the environment at call time.

Every default is here, and this is the only module that reads or writes `os.environ`: the rest
of the platform receives a `Settings` (assets and sensors through the `state` resource), and a
child process receives `Settings.child_env()`.

Variables are `CHURN_<FIELD>`, except where a tool already owns the name (SPARK_MASTER,
SPARK_REMOTE, SPARK_DRIVER_MEMORY, MLFLOW_TRACKING_URI) or the name is older than the field
(CHURN_CONFIG, CHURN_SHUFFLE_PARTITIONS). `.env.example` lists them all.

One rule for what is secret: a `SecretStr` field. Secrets are masked in repr, left out of
`public_values()` (what change records and backups keep) and handed on only to child processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from churn_platform.core.ops.privacy import redact_url

# Files the package reads are package data (setup.py), found beside the code: an installed
# package has no checkout around it.
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_SPEC = PACKAGE_DIR / "specs" / "telco.yaml"
# The Dagster instance configuration every state root gets; in a checkout a link to the
# top-level dagster.yaml, so that file stays the one to edit.
DAGSTER_YAML = PACKAGE_DIR / "dagster.yaml"


def driver_memory() -> str:
    """A third of the machine's memory for the Spark driver (local mode: executors too), 2-16g.

    The rest stays for Python, the page cache Spark's files go through, and the OS.
    """
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{min(16, max(2, physical // 3 // 2**30))}g"


class SettingsError(ValueError):
    """A variable holds a value the platform cannot use; the message names the variable."""


class Settings(BaseSettings):
    """Everything that differs between a laptop, CI and production.

    Asset code never reads the environment itself; it receives these values through resources,
    so the same graph runs against local Spark + sqlite MLflow or a cluster + tracking server.
    """

    model_config = SettingsConfigDict(
        env_prefix="CHURN_",
        # An empty variable (`CHURN_AUC_FLOOR=` as in .env.example) means the default.
        env_ignore_empty=True,
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    # Under the working directory (`make` runs from the checkout: ./.churn_home there).
    home: Path = Field(default_factory=lambda: Path.cwd() / ".churn_home")
    spec_path: Path = Field(DEFAULT_SPEC, validation_alias="CHURN_CONFIG")
    spark_master: str = Field("local[*]", validation_alias="SPARK_MASTER")
    # A Spark Connect URL (sc://host:15002); overrides spark_master.
    spark_remote: str | None = Field(None, validation_alias="SPARK_REMOTE")
    spark_shuffle_partitions: int = Field(4, validation_alias="CHURN_SHUFFLE_PARTITIONS")
    spark_driver_memory: str = Field(
        default_factory=driver_memory, validation_alias="SPARK_DRIVER_MEMORY"
    )
    mlflow_tracking_uri: str = Field(
        default_factory=lambda data: f"sqlite:///{data['home']}/mlflow/mlflow.db",
        validation_alias="MLFLOW_TRACKING_URI",
    )
    mlflow_artifact_root: str = Field(
        default_factory=lambda data: str(data["home"] / "mlflow" / "artifacts")
    )
    quarantine_max_ratio: float = 0.05
    promotion_margin: float = 0.0
    # A test ROC-AUC this close to 1 is almost always leakage; only an explicit opt-in promotes it.
    allow_perfect_metrics: bool = False
    train_max_rows: int = 500_000
    auc_floor: float = 0.75
    psi_threshold: float = 0.2
    # Rows monitoring reads at most per population (a stable hash sample of customer ids).
    monitoring_sample_rows: int = 200_000
    # Placeholders (an offer at a tenth of a churner's lost margin): set the business's own.
    cost_missed_churner: float = 500.0
    cost_retention_offer: float = 50.0
    # Risk tiers: "high" from this multiple of the champion's decision threshold (1.0: exactly
    # the predicted churners); "medium" from this probability, or, when unset, from the point
    # where a contact pays for itself (cost_retention_offer / cost_missed_churner).
    tier_high_ratio: float = 1.0
    tier_medium_probability: float | None = None
    # Shares of scored customers with a category value unseen in training: warn, then fail.
    unseen_warn_share: float = 0.01
    unseen_fail_share: float = 0.05
    # "quick": small models and no grid search, for tests and smoke runs.
    training_profile: Literal["default", "quick"] = "default"
    freshness_warn_hours: float = 24.0
    freshness_fail_hours: float = 72.0
    retrain_cron: str = "0 3 * * 0"
    # How often the daemon looks into the inbox and evaluates the automation conditions: each
    # look costs a gRPC call to the code server, and a file waits for the next one.
    inbox_interval_seconds: int = Field(10, ge=1)
    automation_interval_seconds: int = Field(15, ge=1)
    log_retention_days: int = 90
    syslog_address: str | None = None
    # Unset: a key generated once under $CHURN_HOME/secrets (see core.ops.privacy).
    pseudonym_key: SecretStr = SecretStr("")
    # JSON/YAML impact x urgency -> priority matrix; unset: ITIL's 3x3 default.
    priority_matrix: Path | None = None
    backup_target: str = ""
    backup_s3_endpoint: str | None = None
    # A Fernet key: archives are encrypted at rest when set.
    backup_key: SecretStr | None = None
    backup_keep_daily: int = 7
    backup_keep_weekly: int = 4
    backup_keep_monthly: int = 12
    # What verify and restore may unpack at most: a bigger archive is refused unread.
    backup_max_expanded_bytes: int = 64 * 2**30
    # Model kinds to train, comma-separated; empty = all of them.
    models: Annotated[tuple[str, ...], NoDecode] = ()

    # The variables these settings were read from, for the ones a dataset spec names itself.
    _environ: Mapping[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the given values: `load_settings` reads the environment, `Settings()` never does."""
        return (init_settings,)

    @field_validator("home", "spec_path")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().resolve()

    @field_validator("models", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(kind.strip() for kind in value.split(",") if kind.strip())
        return value

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def backups(self) -> Path:
        return self.home / "backups"

    @property
    def dagster_storage(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def incidents(self) -> Path:
        return self.home / "incidents"

    @property
    def audit_reports(self) -> Path:
        return self.home / "audit"

    @property
    def environ(self) -> Mapping[str, str]:
        """The environment these settings were read from: a dataset spec names variables of
        its own (a JDBC source's `password_env`, `$VAR` in paths)."""
        return MappingProxyType(dict(self._environ))

    @property
    def java_home(self) -> str | None:
        """The JDK Spark's launcher runs (JAVA_HOME; None: the `java` on PATH)."""
        return self._environ.get("JAVA_HOME")

    def public_values(self) -> dict[str, Any]:
        """Every value but the secrets, as JSON types with credentials masked in URLs: what
        change records and backups may keep."""
        values = self.model_dump(mode="json", exclude=set(_SECRETS))
        return {k: redact_url(v) if isinstance(v, str) else v for k, v in values.items()}

    def to_env(self) -> dict[str, str]:
        """Each value as its variable, secrets included: `load_settings` reads the same values
        back from it."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, tuple):
                value = ",".join(value)
            env[VARIABLES[name]] = str(value)
        return env

    def library_env(self) -> dict[str, str]:
        """What Dagster and MLflow read from the environment themselves: the instance under
        the state root (dagster.yaml names these variables) and MLflow's terminal output."""
        return {
            "DAGSTER_HOME": str(self.dagster_storage),
            "CHURN_DAGSTER_STORAGE": str(self.dagster_storage),
            "CHURN_DAGSTER_COMPUTE_LOGS": str(self.dagster_storage / "compute_logs"),
            # MLflow draws a progress bar per artifact download: most of a run's output otherwise.
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            # MLflow's INFO lines (schema creation, "already on DFS") say nothing a user acts on.
            "MLFLOW_LOGGING_LEVEL": "WARNING",
        }

    def child_env(self) -> dict[str, str]:
        """The environment of a child process (webserver, daemon, Spark daemons, pg_dump):
        this process's own variables (PATH, JAVA_HOME, ...) with every platform variable
        replaced by these settings, so the child loads exactly these settings."""
        owned = {*VARIABLES.values(), *self.library_env()}
        inherited = {k: v for k, v in os.environ.items() if k not in owned}
        return {**inherited, **self.to_env(), **self.library_env()}

    def export_library_env(self) -> None:
        """Point this process's Dagster and MLflow at the state root (see `library_env`).

        Call it before MLflow is imported: it reads its log level once, at import.
        """
        os.environ.update(self.library_env())


def _variable(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"CHURN_{name.upper()}"


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


# Field name -> environment variable, and the fields that are secret.
VARIABLES: Mapping[str, str] = MappingProxyType({n: _variable(n) for n in Settings.model_fields})
_SECRETS = frozenset(n for n, f in Settings.model_fields.items() if _is_secret(f.annotation))


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of `os.environ`."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Names match case-insensitively, as pydantic-settings matches os.environ by default.
        return {
            k.lower(): v
            for k, v in self._environ.items()
            if not (self.env_ignore_empty and v == "")
        }


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `env`, or from this process's environment when None.

    Raises SettingsError naming the variable (and the value, unless it is a secret).
    """
    environ = dict(os.environ if env is None else env)
    try:
        settings = Settings(**_EnvironSource(environ)())
    except ValidationError as exc:
        # Defaults derived from a bad value (the MLflow paths from CHURN_HOME) say nothing more.
        errors = [e for e in exc.errors() if e["type"] != "default_factory_not_called"]
        raise SettingsError("; ".join(map(_describe, errors))) from None
    settings._environ = environ
    return settings


def _describe(error: Any) -> str:
    field = str(error["loc"][0]) if error["loc"] else ""
    name = next((n for n, v in VARIABLES.items() if field in (n, v)), field)
    shown = "" if name in _SECRETS else f"={error['input']!r}"
    return f"environment variable {VARIABLES.get(name, name)}{shown}: {error['msg']}"


@contextlib.contextmanager
def environ_restored(*names: str) -> Iterator[None]:
    """Put these process variables back as they were after the block.

    Why: a library may export its own (MLflow's `set_tracking_uri` exports
    MLFLOW_TRACKING_URI), and settings loaded later in this process must not follow it.
    """
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
