"""The champion's golden-prediction hash and the restore drill of a backup (`platform_backup`).

Spark is started only to score: the first backup of a champion hashes its predictions on the
golden input and its drill re-scores them from the restored copy. A drill that matched records
the hash on the model version (`TAG_GOLDEN_HASH`), so later backups of the same champion (its
files checked against their SHA-256, the same golden input) reuse the hash and drill by checking
the restored files instead: scoring the same bytes again repeats a deterministic computation at
the cost of a JVM start, most of what `churn-platform backup` took.
"""

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from churn_platform.config import DatasetSpec
from churn_platform.core import tracking
from churn_platform.core.backup.members import MLFLOW_DB
from churn_platform.core.backup.restore import restore_backup
from churn_platform.core.columns import PROBABILITY_COL
from churn_platform.core.registry import registry_snapshot
from churn_platform.core.versions import current_version
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import Settings

GOLDEN_INPUT = "golden_input"
# On a model version: "<golden input version>:<sha256>", the golden-prediction hash a restore
# drill reproduced by re-scoring the restored copy of exactly these model files.
TAG_GOLDEN_HASH = "golden_prediction_hash"
SHA256 = tracking.TAG_MODEL_SHA256


def golden_prediction_hash(model: PipelineModel, golden_df: DataFrame, *, id_col: str) -> str:
    """SHA-256 of (id, probability) lines sorted by id, probabilities rounded to 12 decimals.

    Rounding absorbs last-bit floating-point noise (summation order across partitions), so a
    restored model scoring the golden rows hashes the same while any real change does not.
    """
    rows = model.transform(golden_df).select(id_col, PROBABILITY_COL).collect()
    lines = sorted((str(key), "null" if p is None else f"{p:.12f}") for key, p in rows)
    digest = hashlib.sha256()
    for key, probability in lines:
        digest.update(f"{key}\t{probability}\n".encode())
    return digest.hexdigest()


def model_files_digest(mlflow: MlflowResource, version: ModelVersion) -> str:
    """SHA-256 of a version's model files, as `tracking.load_model` checks them, without Spark."""
    source = mlflow.client().get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory(prefix="churn-model-") as tmp:
        return tracking.model_digest(tracking.local_artifacts(source, mlflow.tracking_uri, tmp))


def proven_golden_hash(mlflow: MlflowResource, version: ModelVersion, rows: str) -> str | None:
    """The hash a drill reproduced for this version on golden input `rows`, while its files are
    still the ones logged; None when it must be computed (then `load_model` says what is wrong)."""
    proof, _, digest = version.tags.get(TAG_GOLDEN_HASH, "").partition(":")
    recorded = version.tags.get(SHA256)
    if not digest or proof != rows or not recorded:
        return None
    return digest if model_files_digest(mlflow, version) == recorded else None


def champion_golden(
    spark: Callable[[], SparkSession], mlflow: MlflowResource, settings: Settings, spec: DatasetSpec
) -> tuple[dict[str, Any] | None, bool]:
    """Champion name, version and golden-prediction hash (None while there is no champion), and
    whether a drill already proved that hash (then no Spark is started)."""
    registry = registry_snapshot(mlflow, spec)
    if not any(tracking.CHAMPION in version["aliases"] for version in registry):
        return None, False
    rows = current_version(settings.warehouse / GOLDEN_INPUT)
    if rows is None:
        raise FileNotFoundError(
            f"no {GOLDEN_INPUT} under {settings.warehouse}, but a champion exists: run the "
            f"backup with {GOLDEN_INPUT} selected (backup_selection does while it is missing)"
        )
    version = mlflow.client().get_model_version_by_alias(spec.model_name, tracking.CHAMPION)
    digest = proven_golden_hash(mlflow, version, rows.name)
    if digest is None:
        model, version = tracking.load_model(mlflow, spec, alias=tracking.CHAMPION)
        golden_df = spark().read.parquet(str(rows))
        digest = golden_prediction_hash(model, golden_df, id_col=spec.id_column)
        proven = False
    else:
        proven = True
    return {
        "model_name": version.name,
        "model_version": str(version.version),
        "golden_prediction_hash": digest,
        "golden_input": rows.name,
    }, proven


def drill(
    spark: Callable[[], SparkSession],
    settings: Settings,
    spec: DatasetSpec,
    partition: str,
    golden: dict[str, Any] | None,
    proven: bool = False,
) -> tuple[bool, dict[str, Any]]:
    """Restore a backup into a scratch folder and re-score the golden rows from it alone (or,
    for a `proven` champion, check the restored copy is the one a drill re-scored before).

    The restored MLflow database is relocated to the scratch folder by `restore_backup`, so the
    champion is loaded from the restored artifacts, never from the live state root.
    """
    with tempfile.TemporaryDirectory(prefix=f"churn-drill-{partition}-") as tmp:
        home = Path(tmp) / "home"
        restored = restore_backup(settings, partition, "all", target_dir=home)
        facts: dict[str, Any] = {"restored_files": restored.files, "notes": restored.notes}
        if golden is None:
            return True, {**facts, "skipped": "no champion when the backup was taken"}
        if not (home / MLFLOW_DB).is_file():
            return True, {**facts, "skipped": "MLflow is on PostgreSQL: only files were drilled"}
        restored_mlflow = MlflowResource(
            tracking_uri=f"sqlite:///{home / MLFLOW_DB}",
            artifact_root=str(home / "mlflow" / "artifacts"),
        )
        rows = current_version(home / "warehouse" / GOLDEN_INPUT)
        if rows is None:
            raise FileNotFoundError(f"the backup of {partition} holds no {GOLDEN_INPUT}")
        if proven:
            return same_files_drill(restored_mlflow, spec, rows.name, golden, facts)
        model, version = tracking.load_model(restored_mlflow, spec, alias=tracking.CHAMPION)
        digest = golden_prediction_hash(
            model, spark().read.parquet(str(rows)), id_col=spec.id_column
        )
    expected = golden["golden_prediction_hash"]
    return digest == expected, {
        **facts,
        "rescored": True,
        "expected_hash": expected,
        "restored_hash": digest,
        "expected_champion": f"{golden['model_name']} v{golden['model_version']}",
        "restored_champion": f"{version.name} v{version.version}",
    }


def same_files_drill(
    restored: MlflowResource,
    spec: DatasetSpec,
    rows: str,
    golden: dict[str, Any],
    facts: dict[str, Any],
) -> tuple[bool, dict[str, Any]]:
    """The drill of a champion whose golden hash an earlier drill reproduced: the restored
    champion is the manifest's version, its files hash to the SHA-256 recorded when it was
    logged, and its proof names this backup's hash and golden input (restored byte for byte)."""
    version = restored.client().get_model_version_by_alias(spec.model_name, tracking.CHAMPION)
    proof = f"{golden['golden_input']}:{golden['golden_prediction_hash']}"
    digest = model_files_digest(restored, version)
    expected_champion = f"{golden['model_name']} v{golden['model_version']}"
    restored_champion = f"{version.name} v{version.version}"
    failed = [
        what
        for what, ok in (
            ("restored champion is not the backed-up one", restored_champion == expected_champion),
            ("model files differ from their SHA-256", digest == version.tags.get(SHA256)),
            ("no drill proved this hash on these rows", version.tags.get(TAG_GOLDEN_HASH) == proof),
            ("golden input differs", rows == golden["golden_input"]),
        )
        if not ok
    ]
    return not failed, {
        **facts,
        "rescored": False,
        "expected_hash": golden["golden_prediction_hash"],
        "restored_model_sha256": digest,
        "expected_champion": expected_champion,
        "restored_champion": restored_champion,
        **({"failed": failed} if failed else {}),
    }
