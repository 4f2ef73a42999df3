"""MLflow tracking, registry and promotion: one run per trained model, aliases as the release gate.

`champion` is the version that scores customers and `challenger` the latest candidate. A
candidate replaces the champion only when its test metric beats the champion's by more than
`promotion_margin` (and never with a test ROC-AUC so perfect it means leakage, unless
`allow_perfect_metrics`); every alias move is tagged on the version, written to the operations log
and, when the champion changes, recorded as a change. Models are loaded only from our own
registry, after checking their files against the SHA-256 recorded when they were logged.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import mlflow.spark
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.types import ColSpec, Schema
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructType,
)
from pyspark.sql.utils import is_remote
from sqlalchemy.engine import make_url

from churn_platform.config import DatasetSpec
from churn_platform.core.models.fitting import PROBABILITY_COL
from churn_platform.core.ops.changes import record_change
from churn_platform.core.ops.files import ensure_dir, locked, utc_iso
from churn_platform.core.ops.log import OpsLog, default_actor, ops_log_scope
from churn_platform.settings import PROJECT_ROOT, Settings

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
LOWER_IS_BETTER = frozenset({"brier"})
# No churn model ranks customers this well on held-out data; the target or the id leaked in.
PERFECT_ROC_AUC = 0.999

TAG_DAGSTER_RUN_ID = "dagster.run_id"
TAG_ASSET_KEY = "dagster.asset_key"
TAG_CODE_VERSION = "code_version"
TAG_DATA_VERSION = "data_version"
TAG_GIT_COMMIT = "git_commit"
TAG_MODEL_KIND = "model_kind"
TAG_MODEL_SHA256 = "model_sha256"
TAG_THRESHOLD = "threshold"
METRIC_TAG_PREFIX = "metric."
# A rollback to a version this much worse (test ROC-AUC) than the champion needs --force.
ROLLBACK_MARGIN = 0.01
TAG_DECISION = "promotion.decision"
TAG_BY = "promotion.by"
TAG_REASON = "promotion.reason"
TAG_PREVIOUS_CHAMPION = "promotion.previous_champion"
TAG_AT = "promotion.at"
_RUN_TAGS_ON_VERSION = (TAG_MODEL_KIND, TAG_DATA_VERSION, TAG_CODE_VERSION, TAG_GIT_COMMIT)
_ARTIFACT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class SchemaMismatchError(ValueError):
    """The data to score lacks columns the model's signature requires."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            f"input is missing {len(self.missing)} column(s) the model needs: "
            + ", ".join(self.missing)
        )


class ModelIntegrityError(RuntimeError):
    """A registered model's files differ from what was logged, or carry no recorded hash."""


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry at explicit URIs: a sqlite file locally, a server elsewhere.

    We do not use dagster-mlflow: its resource is the legacy function-style kind and the run it
    opens is only ended by a beta success/failure hook, so without the hook runs stay RUNNING,
    and it ties one MLflow run to a whole Dagster run. Here `log_training_run` opens and ends
    one MLflow run per trained model (FINISHED, or FAILED on error) with URIs we pass in.
    """

    tracking_uri: str
    artifact_root: str

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowResource:
        return cls(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Create a new sqlite backend's schema in the background, beside the data layers.

        MLflow's first use migrates a new database (about 5 s); started here, the first model
        asset finds it ready instead of paying for it. `client()` waits for it under the lock.
        """
        threading.Thread(target=_initialise_backend, args=(self.tracking_uri,), daemon=True).start()

    def client(self) -> MlflowClient:
        """A client whose tracking and registry are both this resource's backend."""
        _initialise_backend(self.tracking_uri)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self, spec_name: str) -> str:
        """The `churn-<spec>` experiment, created once with its artifacts under artifact_root."""
        client = self.client()
        name = f"churn-{spec_name}"
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(
                    name, artifact_location=_artifact_location(self.artifact_root, name)
                )
            except MlflowException as exc:  # another process created it in between
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)
                assert experiment is not None
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id


@functools.cache
def _initialise_backend(tracking_uri: str) -> None:
    """Create a sqlite backend's tables once, under a file lock.

    MLflow creates and migrates the schema on first use; when four processes did that at once
    on one new sqlite file, three failed ("duplicate column name", alembic "expected to match
    one row"), so the first use per process is serialised on a lock file beside the database.
    """
    url = make_url(tracking_uri) if tracking_uri.startswith("sqlite:") else None
    if url is None or not url.database or url.database == ":memory:":
        return
    db = Path(url.database)
    ensure_dir(db.parent)
    with locked(db.with_name(f"{db.name}.init.lock")):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)


def _artifact_location(root: str, experiment_name: str) -> str:
    if urllib.parse.urlparse(root).scheme:
        return f"{root.rstrip('/')}/{experiment_name}"
    return (Path(root).expanduser().resolve() / experiment_name).as_uri()


@contextlib.contextmanager
def _fluent_tracking(tracking_uri: str) -> Iterator[None]:
    """`mlflow.spark.log_model` only speaks the process-global URI: point it at ours, then back."""
    previous = mlflow.get_tracking_uri()
    previous_env = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        # set_tracking_uri also exports MLFLOW_TRACKING_URI; put the environment back exactly,
        # or later load_settings() calls in this process would follow MLflow's default.
        if previous_env is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = previous_env


def git_commit(cwd: Path = PROJECT_ROOT) -> str:
    """The checked-out commit of the code that trained a model; "unknown" outside a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def pip_requirements() -> list[str]:
    """Explicit pins: inferring them makes MLflow reload the model in a subprocess (~30 s)."""
    return [f"{dist}=={installed_version(dist)}" for dist in ("pyspark", "mlflow")]


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    model_uri: str


def log_training_run(
    resource: MlflowResource,
    spec: DatasetSpec,
    *,
    model_kind: str,
    model: PipelineModel,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    threshold: float,
    input_schema: StructType,
    dagster_run_id: str,
    asset_key: str | dg.AssetKey,
    code_version: str,
    data_version: str,
    git_commit: str,
    artifacts: Mapping[str, Path] | None = None,
    feature_importance: Sequence[tuple[str, float]] | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainingRun:
    """Record one trained model as one MLflow run, ended FINISHED or, on any error, FAILED.

    `model` goes from the engineered customer columns of `input_schema` to
    `churn_probability`; its signature is built from that schema, so nothing is scored here.
    `artifacts` (e.g. the curves of `evaluation.plot_curves`) are stored as `evaluation/<key>`.
    """
    signature = model_signature(input_schema)
    if isinstance(asset_key, dg.AssetKey):
        asset_key = asset_key.to_user_string()
    run_tags = {
        **(tags or {}),
        TAG_DAGSTER_RUN_ID: dagster_run_id,
        TAG_ASSET_KEY: asset_key,
        TAG_CODE_VERSION: code_version,
        TAG_DATA_VERSION: data_version,
        TAG_GIT_COMMIT: git_commit,
        "mlflow.source.git.commit": git_commit,
        TAG_MODEL_KIND: model_kind,
        "dataset": spec.name,
    }
    experiment_id = resource.experiment_id(spec.name)
    with (
        _fluent_tracking(resource.tracking_uri),
        mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{spec.name}-{model_kind}", tags=run_tags
        ) as run,
    ):
        mlflow.log_params({**_flat_params(params), "threshold": threshold})
        mlflow.log_metrics(dict(metrics))
        _log_evaluation(artifacts or {}, feature_importance)
        info = mlflow.spark.log_model(
            model, MODEL_ARTIFACT, signature=signature, pip_requirements=pip_requirements()
        )
        with tempfile.TemporaryDirectory(prefix="churn-model-") as tmp:
            uri = mlflow.get_artifact_uri(MODEL_ARTIFACT)
            local = local_artifacts(uri, resource.tracking_uri, tmp)
            mlflow.set_tag(TAG_MODEL_SHA256, _model_digest(local))
    _LOGGED[_cache_key(info.model_uri)] = model
    return TrainingRun(run.info.run_id, info.model_uri)


_MLFLOW_TYPES = {
    StringType: "string",
    DoubleType: "double",
    FloatType: "float",
    IntegerType: "integer",
    LongType: "long",
    ShortType: "integer",
    BooleanType: "boolean",
}


def model_signature(input_schema: StructType) -> ModelSignature:
    """The logged signature: the engineered columns in, `churn_probability` (double) out."""
    inputs = []
    for fld in input_schema.fields:
        mlflow_type = _MLFLOW_TYPES.get(type(fld.dataType), "double")
        inputs.append(ColSpec(mlflow_type, fld.name))
    return ModelSignature(Schema(inputs), Schema([ColSpec("double", PROBABILITY_COL)]))


def _flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameter dicts (ensemble base params) as dotted keys; lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _log_evaluation(
    artifacts: Mapping[str, Path], feature_importance: Sequence[tuple[str, float]] | None
) -> None:
    with tempfile.TemporaryDirectory(prefix="churn-evaluation-") as tmp:
        for key, path in artifacts.items():
            if not _ARTIFACT_NAME_RE.fullmatch(key):
                raise ValueError(f"artifact name {key!r} must be a plain file name")
            source = Path(path)
            if not source.is_file():
                raise FileNotFoundError(f"artifact {key!r}: no file at {source}")
            shutil.copyfile(source, Path(tmp) / f"{key}{source.suffix}")
        if feature_importance is not None:
            ranked = [{"feature": name, "importance": value} for name, value in feature_importance]
            (Path(tmp) / "feature_importance.json").write_text(json.dumps(ranked, indent=2))
        mlflow.log_artifacts(tmp, "evaluation")


def local_artifacts(artifact_uri: str, tracking_uri: str, tmp: str) -> Path:
    """A local path holding the artifacts: in place for a local store, else copied into tmp.

    Hashing or loading a model from the sqlite + local-folder default needs no copy of it.
    `runs:/` and `models:/` URIs are resolved against our tracking server, not MLflow's default.
    """
    with _fluent_tracking(tracking_uri):
        repository = get_artifact_repository(artifact_uri)
        underlying = getattr(repository, "repo", repository)
        if isinstance(underlying, LocalArtifactRepository):
            return Path(underlying.download_artifacts(""))
        downloaded = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=tracking_uri
        )
    return Path(downloaded)


def _model_digest(model_dir: Path) -> str:
    """SHA-256 over the files a load reads (MLmodel and the Spark model), by relative path."""
    files = [model_dir / "MLmodel", *(model_dir / "sparkml").rglob("*")]
    digest = hashlib.sha256()
    for path in sorted(p for p in files if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def register_candidate(
    resource: MlflowResource,
    spec: DatasetSpec,
    training_run: TrainingRun,
    metrics: Mapping[str, float],
    threshold: float,
) -> ModelVersion:
    """A new version of `churn-<spec>`, tagged with what the promotion gate and scoring need."""
    client = resource.client()
    name = spec.model_name
    try:
        client.create_registered_model(name, description=f"Churn model for dataset {spec.name}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run_tags = client.get_run(training_run.run_id).data.tags
    if TAG_MODEL_SHA256 not in run_tags:
        raise ModelIntegrityError(f"run {training_run.run_id} records no {TAG_MODEL_SHA256}")
    version_tags = {
        TAG_THRESHOLD: repr(float(threshold)),
        TAG_MODEL_SHA256: run_tags[TAG_MODEL_SHA256],
        **{tag: run_tags[tag] for tag in _RUN_TAGS_ON_VERSION if tag in run_tags},
        **{f"{METRIC_TAG_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()},
    }
    return client.create_model_version(
        name, training_run.model_uri, training_run.run_id, tags=version_tags
    )


@dataclass(frozen=True)
class PromotionDecision:
    """What a promotion or rollback did; `gate` holds the compared metrics (or the reason)."""

    promoted: bool
    champion_version: str | None
    previous_champion: str | None
    reason: str
    gate: dict[str, Any]


def _metric(version: ModelVersion, metric: str) -> float:
    raw = version.tags.get(f"{METRIC_TAG_PREFIX}{metric}")
    if raw is None:
        raise ValueError(f"{version.name} v{version.version} has no '{metric}' metric tag")
    return float(raw)


def _gate(
    metric: str,
    candidate: ModelVersion,
    champion: ModelVersion | None,
    margin: float,
    allow_perfect: bool,
) -> tuple[bool, str, dict[str, Any]]:
    """(promote?, reason, gate metrics): beat the champion by more than `margin` on `metric`."""
    value = _metric(candidate, metric)
    gate: dict[str, Any] = {"metric": metric, f"candidate_{metric}": value, "margin": margin}
    if not math.isfinite(value):
        return False, f"candidate {metric} is {value}, not a finite number", gate
    roc_auc = candidate.tags.get(f"{METRIC_TAG_PREFIX}roc_auc")
    if not allow_perfect and roc_auc is not None and float(roc_auc) >= PERFECT_ROC_AUC:
        reason = (
            f"candidate roc_auc {float(roc_auc):.4f} is implausibly perfect (the target or the id "
            "among the features?); set CHURN_ALLOW_PERFECT_METRICS=true to promote it anyway"
        )
        return False, reason, gate
    if champion is None:
        return True, f"first model with {metric} {value:.4f}: no champion yet", gate
    best = _metric(champion, metric)
    improvement = best - value if metric in LOWER_IS_BETTER else value - best
    gate |= {f"champion_{metric}": best, "improvement": improvement}
    verdict = "beats" if improvement > margin else "does not beat"
    reason = (
        f"{metric} {value:.4f} {verdict} champion v{champion.version} ({best:.4f}) by more than "
        f"the margin {margin} (improvement {improvement:+.4f})"
    )
    return improvement > margin, reason, gate


def promote(
    resource: MlflowResource,
    spec: DatasetSpec,
    candidate_version: ModelVersion | str | int,
    *,
    settings: Settings,
    metric: str = "roc_auc",
    margin: float | None = None,
    actor: str | None = None,
    ops_log: OpsLog | None = None,
    context: Any = None,
) -> PromotionDecision:
    """Make the candidate `challenger`, and `champion` if it passes the gate.

    Both metrics come from version tags computed on the same fixed test split, so the gate
    never rescores. `margin` defaults to `settings.promotion_margin`.
    """
    client = resource.client()
    name = spec.model_name
    margin = settings.promotion_margin if margin is None else margin
    actor = actor or default_actor()
    with _registry_lock(settings, name):
        if isinstance(candidate_version, ModelVersion):
            candidate_version = candidate_version.version
        candidate = client.get_model_version(name, str(candidate_version))
        champion = _aliased(client, name, CHAMPION)
        new = str(candidate.version)
        if champion is not None and str(champion.version) == new:
            return PromotionDecision(False, new, None, f"v{new} is already the champion", {})
        promoted, reason, gate = _gate(
            metric, candidate, champion, margin, settings.allow_perfect_metrics
        )
        old = None if champion is None else str(champion.version)
        client.set_registered_model_alias(name, CHALLENGER, candidate.version)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, candidate.version)
        decision = "promoted" if promoted else "rejected"
        _tag(client, candidate, decision, actor, reason, previous=old or "")
        with ops_log_scope(settings, ops_log) as ops:
            if promoted:
                record_change(
                    settings, "standard", f"model:{name}", actor,
                    None if old is None else f"v{old}", f"v{new}", gate,
                    f"Promote {name} v{new} to champion: {reason}", ops_log=ops,
                )  # fmt: skip
            aliases = f"champion -> v{new}" if promoted else f"challenger -> v{new}"
            ops.event(
                "registry.alias.set",
                f"{name}: {aliases} ({decision}: {reason})",
                component="registry",
                configuration_item=f"model:{name}",
                outcome=decision,
                actor=actor,
                metrics=_numbers(gate),
                model_version=new,
                mlflow_run_id=candidate.run_id,
                context=context,
            )
    champion_now = new if promoted else old
    return PromotionDecision(promoted, champion_now, old, reason, gate)


def rollback(
    resource: MlflowResource,
    spec: DatasetSpec,
    settings: Settings,
    actor: str,
    reason: str,
    to_version: str | int | None = None,
    *,
    force: bool = False,
    ops_log: OpsLog | None = None,
    context: Any = None,
) -> PromotionDecision:
    """Move `champion` back to the previous champion (or `to_version`): an emergency change.

    A version whose test ROC-AUC is worse than the champion's by more than ROLLBACK_MARGIN is
    refused unless `force`: an operator should not make the worst model champion by a typo.
    """
    client = resource.client()
    name = spec.model_name
    with _registry_lock(settings, name):
        current = _aliased(client, name, CHAMPION) if _registered(client, name) else None
        if current is None:
            raise ValueError(f"{name} has no champion to roll back")
        target = str(to_version) if to_version is not None else _rollback_target(client, current)
        if target == str(current.version):
            raise ValueError(f"{name} v{target} is already the champion")
        try:
            restored = client.get_model_version(name, target)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise ValueError(f"{name} has no version {target!r} to roll back to") from None
        if not force:
            _refuse_a_worse_model(current, restored)
        client.set_registered_model_alias(name, CHAMPION, restored.version)
        _tag(client, restored, "rollback", actor, reason, previous=str(current.version))
        _tag(client, current, "rolled_back", actor, reason)
        why = {"reason": reason, "rolled_back": f"v{current.version}", "restored": f"v{target}"}
        with ops_log_scope(settings, ops_log) as ops:
            record_change(
                settings, "emergency", f"model:{name}", actor, f"v{current.version}", f"v{target}",
                why, f"Roll back {name} champion to v{target}: {reason}", ops_log=ops,
            )  # fmt: skip
            ops.event(
                "registry.alias.set",
                f"{name}: champion -> v{target} (rollback from v{current.version}: {reason})",
                level="WARNING",
                component="registry",
                configuration_item=f"model:{name}",
                outcome="rolled_back",
                actor=actor,
                model_version=target,
                mlflow_run_id=restored.run_id,
                context=context,
            )
    return PromotionDecision(True, target, str(current.version), reason, why)


def _refuse_a_worse_model(current: ModelVersion, restored: ModelVersion) -> None:
    """A rollback target clearly worse than the champion (test ROC-AUC) needs --force."""
    auc = {
        v.version: float(v.tags[f"{METRIC_TAG_PREFIX}roc_auc"])
        for v in (current, restored)
        if f"{METRIC_TAG_PREFIX}roc_auc" in v.tags
    }
    if len(auc) < 2 or auc[current.version] - auc[restored.version] <= ROLLBACK_MARGIN:
        return
    raise ValueError(
        f"{restored.name} v{restored.version} ({restored.tags.get(TAG_MODEL_KIND)}, test "
        f"ROC-AUC {auc[restored.version]:.4f}) is worse than the champion v{current.version} "
        f"({current.tags.get(TAG_MODEL_KIND)}, {auc[current.version]:.4f}) by more than "
        f"{ROLLBACK_MARGIN}; pass --force to roll back anyway"
    )


@contextlib.contextmanager
def _registry_lock(settings: Settings, name: str) -> Iterator[None]:
    """One alias decision at a time per model, so two finishing trainings cannot both win."""
    with locked(ensure_dir(settings.home / "registry") / f"{name}.lock"):
        yield


def _registered(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


def _aliased(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else client.get_model_version(name, str(version))


def _tag(
    client: MlflowClient,
    version: ModelVersion,
    decision: str,
    actor: str,
    reason: str,
    *,
    previous: str | None = None,
) -> None:
    """The latest decision about a version; `previous` (the champion it replaced) if it has one.

    A rolled-back version keeps its own `previous_champion`, so history stays walkable.
    """
    tags = {TAG_DECISION: decision, TAG_BY: actor, TAG_REASON: reason}
    tags[TAG_AT] = utc_iso(datetime.now(UTC))
    if previous is not None:
        tags[TAG_PREVIOUS_CHAMPION] = previous
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)


def _rollback_target(client: MlflowClient, champion: ModelVersion) -> str:
    """The champion this one replaced; else the newest earlier champion not itself rolled back."""
    name = champion.name
    previous = champion.tags.get(TAG_PREVIOUS_CHAMPION)
    if (
        previous
        and client.get_model_version(name, previous).tags.get(TAG_DECISION) != "rolled_back"
    ):
        return previous
    earlier = [
        int(v.version)
        for v in _versions(client, name)
        if int(v.version) < int(champion.version)
        and v.tags.get(TAG_DECISION) in ("promoted", "rollback")
    ]
    if not earlier:
        raise ValueError(f"{name}: no earlier champion to roll back to; pass to_version")
    return str(max(earlier))


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: v for k, v in values.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def load_model(
    resource: MlflowResource, spec: DatasetSpec, alias: str = CHAMPION
) -> tuple[PipelineModel, ModelVersion]:
    """The model an alias names, from our registry, after checking its recorded SHA-256.

    The alias is resolved once and that exact version is downloaded, verified and loaded, so
    an alias moved meanwhile cannot hand back a model other than the returned version.
    """
    client = resource.client()
    version = client.get_model_version_by_alias(spec.model_name, alias)
    expected = version.tags.get(TAG_MODEL_SHA256)
    if not expected:
        raise ModelIntegrityError(f"{version.name} v{version.version} records no model hash")
    source = client.get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory(prefix="churn-model-") as tmp:
        local = local_artifacts(source, resource.tracking_uri, tmp)
        actual = _model_digest(local)
        if actual != expected:
            raise ModelIntegrityError(
                f"{version.name} v{version.version}: model files hash to {actual}, "
                f"but {expected} was recorded when it was logged"
            )
        return mlflow.spark.load_model(str(local)), version


# Models this process logged, by model URI: an ensemble in the same run reuses the fitted
# objects instead of loading them back (a URI names one immutable logged model).
_LOGGED: dict[tuple[str, str], PipelineModel] = {}


def _cache_key(model_uri: str) -> tuple[str, str]:
    session = SparkSession.active()
    owner = str(id(session)) if is_remote() else session.sparkContext.applicationId
    return (owner, model_uri)


def load_run_model(resource: MlflowResource, model_uri: str) -> PipelineModel:
    """A model this platform logged in one of its runs (an ensemble reusing a base model)."""
    cached = _LOGGED.get(_cache_key(model_uri))
    if cached is not None:
        return cached
    with _fluent_tracking(resource.tracking_uri):
        return mlflow.spark.load_model(model_uri)


def model_threshold(version: ModelVersion) -> float:
    """The churn threshold chosen on out-of-fold predictions when the version was trained."""
    raw = version.tags.get(TAG_THRESHOLD)
    if raw is None:
        raise ValueError(f"{version.name} v{version.version} has no '{TAG_THRESHOLD}' tag")
    return float(raw)


def model_input_columns(resource: MlflowResource, model_version: ModelVersion) -> list[str]:
    """The columns the version's logged signature requires, in signature order."""
    client = resource.client()
    source = client.get_model_version_download_uri(model_version.name, model_version.version)
    with tempfile.TemporaryDirectory(prefix="churn-mlmodel-") as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source.rstrip('/')}/MLmodel",
            dst_path=tmp,
            tracking_uri=resource.tracking_uri,
        )
        signature = Model.load(path).signature
    if signature is None:
        raise ValueError(f"{model_version.name} v{model_version.version} has no signature")
    return list(signature.inputs.input_names())


def check_input_columns(df_columns: Sequence[str], required: Sequence[str]) -> None:
    """Fail before scoring, naming every missing column, instead of deep inside Spark."""
    present = set(df_columns)
    missing = [column for column in required if column not in present]
    if missing:
        raise SchemaMismatchError(missing)


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


def registry_snapshot(resource: MlflowResource, spec: DatasetSpec) -> list[dict[str, Any]]:
    """Every version of the spec's model with its aliases, oldest first (status, backups)."""
    client = resource.client()
    name = spec.model_name
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    return [
        {
            "name": name,
            "version": str(v.version),
            "aliases": sorted(by_version.get(str(v.version), [])),
            "model_kind": v.tags.get(TAG_MODEL_KIND),
            "roc_auc": v.tags.get(f"{METRIC_TAG_PREFIX}roc_auc"),
        }
        for v in sorted(_versions(client, name), key=lambda v: int(v.version))
    ]
