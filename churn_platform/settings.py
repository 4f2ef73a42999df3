"""Typed platform settings, resolved from the environment at call time (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = Path(__file__).resolve().parent / "specs" / "telco.yaml"


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from exc


def _optional_float(env: Mapping[str, str], name: str) -> float | None:
    return None if env.get(name) in (None, "") else _float(env, name, 0.0)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_float(env, name, default))


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"environment variable {name}={env.get(name)!r} is not true or false")
    return raw in ("true", "1", "yes")


def _profile(raw: str) -> str:
    if raw not in ("default", "quick"):
        raise ValueError(f"CHURN_TRAINING_PROFILE={raw!r}: expected 'default' or 'quick'")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything that differs between a laptop, CI and production.

    Asset code never reads the environment itself; it receives these values through resources,
    so the same graph runs against local Spark + sqlite MLflow or a cluster + tracking server.
    """

    home: Path
    spec_path: Path
    spark_master: str = "local[*]"
    spark_remote: str | None = None
    spark_shuffle_partitions: int = 4
    spark_driver_memory: str = "4g"
    mlflow_tracking_uri: str = ""
    mlflow_artifact_root: str = ""
    quarantine_max_ratio: float = 0.05
    promotion_margin: float = 0.0
    # A test ROC-AUC this close to 1 is almost always leakage; only an explicit opt-in promotes it.
    allow_perfect_metrics: bool = False
    train_max_rows: int = 500_000
    auc_floor: float = 0.75
    psi_threshold: float = 0.2
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
    # "quick": small models and no grid search, for tests and smoke runs; "default" otherwise.
    training_profile: str = "default"
    freshness_warn_hours: float = 24.0
    freshness_fail_hours: float = 72.0
    retrain_cron: str = "0 3 * * 0"
    log_retention_days: int = 90
    syslog_address: str | None = None
    pseudonym_key: str = field(default="", repr=False)
    backup_target: str = ""
    backup_keep_daily: int = 7
    backup_keep_weekly: int = 4
    backup_keep_monthly: int = 12
    # What verify and restore may unpack at most: a bigger archive is refused unread.
    backup_max_expanded_bytes: int = 64 * 2**30
    # Model kinds to train (CHURN_MODELS, comma-separated); empty = all of them.
    models: tuple[str, ...] = ()

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


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from environment variables (see `.env.example` for the full list)."""
    env = os.environ if env is None else env
    home = Path(env.get("CHURN_HOME") or PROJECT_ROOT / ".churn_home").expanduser().resolve()
    spec_path = Path(env.get("CHURN_CONFIG") or DEFAULT_SPEC).expanduser().resolve()
    mlflow_dir = home / "mlflow"
    return Settings(
        home=home,
        spec_path=spec_path,
        spark_master=env.get("SPARK_MASTER") or "local[*]",
        spark_remote=env.get("SPARK_REMOTE") or None,
        spark_shuffle_partitions=_int(env, "CHURN_SHUFFLE_PARTITIONS", 4),
        spark_driver_memory=env.get("SPARK_DRIVER_MEMORY") or "4g",
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir}/mlflow.db",
        mlflow_artifact_root=env.get("CHURN_MLFLOW_ARTIFACT_ROOT") or str(mlflow_dir / "artifacts"),
        quarantine_max_ratio=_float(env, "CHURN_QUARANTINE_MAX_RATIO", 0.05),
        promotion_margin=_float(env, "CHURN_PROMOTION_MARGIN", 0.0),
        allow_perfect_metrics=_bool(env, "CHURN_ALLOW_PERFECT_METRICS", False),
        train_max_rows=_int(env, "CHURN_TRAIN_MAX_ROWS", 500_000),
        auc_floor=_float(env, "CHURN_AUC_FLOOR", 0.75),
        psi_threshold=_float(env, "CHURN_PSI_THRESHOLD", 0.2),
        cost_missed_churner=_float(env, "CHURN_COST_MISSED_CHURNER", 500.0),
        cost_retention_offer=_float(env, "CHURN_COST_RETENTION_OFFER", 50.0),
        tier_high_ratio=_float(env, "CHURN_TIER_HIGH_RATIO", 1.0),
        tier_medium_probability=_optional_float(env, "CHURN_TIER_MEDIUM_PROBABILITY"),
        unseen_warn_share=_float(env, "CHURN_UNSEEN_WARN_SHARE", 0.01),
        unseen_fail_share=_float(env, "CHURN_UNSEEN_FAIL_SHARE", 0.05),
        training_profile=_profile(env.get("CHURN_TRAINING_PROFILE") or "default"),
        freshness_warn_hours=_float(env, "CHURN_FRESHNESS_WARN_HOURS", 24.0),
        freshness_fail_hours=_float(env, "CHURN_FRESHNESS_FAIL_HOURS", 72.0),
        retrain_cron=env.get("CHURN_RETRAIN_CRON") or "0 3 * * 0",
        log_retention_days=_int(env, "CHURN_LOG_RETENTION_DAYS", 90),
        syslog_address=env.get("CHURN_SYSLOG_ADDRESS") or None,
        pseudonym_key=env.get("CHURN_PSEUDONYM_KEY") or "",
        backup_target=env.get("CHURN_BACKUP_TARGET") or "",
        backup_keep_daily=_int(env, "CHURN_BACKUP_KEEP_DAILY", 7),
        backup_keep_weekly=_int(env, "CHURN_BACKUP_KEEP_WEEKLY", 4),
        backup_keep_monthly=_int(env, "CHURN_BACKUP_KEEP_MONTHLY", 12),
        backup_max_expanded_bytes=_int(env, "CHURN_BACKUP_MAX_EXPANDED_BYTES", 64 * 2**30),
        models=tuple(k.strip() for k in (env.get("CHURN_MODELS") or "").split(",") if k.strip()),
    )
