"""MLflow run tracking: one run per trained model, and the model files it logs kept honest.

Every trained model is logged as one MLflow run (FINISHED, or FAILED on error) with its
parameters, metrics, evaluation artifacts, provenance tags and the SHA-256 of its files. Models
are loaded only from our own registry (`core.registry` moves the aliases), after checking their
files against that hash. The Dagster resource over this is `churn_platform.mlflow_resource`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, Protocol

import mlflow
import mlflow.spark
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.types import ColSpec, Schema
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession
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
from churn_platform.core.attribution import REFERENCE, read_reference
from churn_platform.core.columns import PROBABILITY_COL
from churn_platform.core.model_loading import load_checked
from churn_platform.core.ops.files import ensure_dir, locked
from churn_platform.settings import PACKAGE_DIR, environ_restored

LOG = logging.getLogger(__name__)
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
CHAMPION = "champion"  # the alias of the version that scores customers (see core.registry)
MODEL_ARTIFACT = "model"

TAG_DAGSTER_RUN_ID = "dagster.run_id"
TAG_ASSET_KEY = "dagster.asset_key"
TAG_CODE_VERSION = "code_version"
TAG_DATA_VERSION = "data_version"
TAG_GIT_COMMIT = "git_commit"
TAG_MODEL_KIND = "model_kind"
TAG_MODEL_SHA256 = "model_sha256"
TAG_THRESHOLD = "threshold"
# A training run's artifacts besides the model: curves, importances, out-of-fold scores and
# the reasons' reference customer.
EVALUATION_ARTIFACTS = "evaluation"
OOF_SCORES = "oof_scores.parquet"  # among them: label, fold and P(churn) of each training row
_ARTIFACT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class ModelIntegrityError(RuntimeError):
    """A registered model's files differ from what was logged, or carry no recorded hash."""


class MlflowBackend(Protocol):
    """Where runs and models live (tracking + registry URIs); `MlflowResource` is one."""

    tracking_uri: str

    def client(self) -> MlflowClient: ...

    def experiment_id(self, spec_name: str) -> str: ...


def backend_client(tracking_uri: str) -> MlflowClient:
    """A client whose tracking and registry are both the backend at `tracking_uri`."""
    initialise_backend(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(client: MlflowClient, artifact_root: str, spec_name: str) -> str:
    """The `churn-<spec>` experiment, created once with its artifacts under artifact_root."""
    name = f"churn-{spec_name}"
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=_artifact_location(artifact_root, name)
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
def initialise_backend(tracking_uri: str) -> None:
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
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; the environment is put back exactly.
    with environ_restored(TRACKING_URI_ENV):
        mlflow.set_tracking_uri(tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


def git_commit(cwd: Path = PACKAGE_DIR) -> str:
    """The checked-out commit of the code that trained a model; "unknown" when the package is
    not in a checkout (installed from a wheel)."""
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
    """A logged model: the run and the URI a registry version is created from."""

    run_id: str
    model_uri: str


def log_training_run(
    resource: MlflowBackend,
    spec: DatasetSpec,
    *,
    model_kind: str,
    model: PipelineModel,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    threshold: float,
    input_schema: StructType,
    dagster_run_id: str,
    asset_key: str,
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
            mlflow.set_tag(TAG_MODEL_SHA256, model_digest(local))
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
        mlflow.log_artifacts(tmp, EVALUATION_ARTIFACTS)


def local_artifacts(artifact_uri: str, tracking_uri: str, tmp: str) -> Path:
    """A local path holding the artifacts (a folder, or one file): in place for a local store,
    else copied into tmp.

    Hashing or loading a model from the sqlite + local-folder default needs no copy of it.
    `runs:/` and `models:/` URIs are resolved against our tracking server, not MLflow's default.
    """
    with _fluent_tracking(tracking_uri):
        repository = get_artifact_repository(artifact_uri)
        underlying = getattr(repository, "repo", repository)
        if isinstance(underlying, LocalArtifactRepository):
            if Path(underlying.artifact_dir).is_file():
                return Path(underlying.artifact_dir)
            return Path(underlying.download_artifacts(""))
        downloaded = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=tracking_uri
        )
    return Path(downloaded)


def evaluation_file(backend: MlflowBackend, version: ModelVersion, name: str, tmp: str) -> Path:
    """One file of the version's training-run evaluation artifacts, that file alone fetched
    (in place for a local store)."""
    uri = f"runs:/{version.run_id}/{EVALUATION_ARTIFACTS}/{name}"
    return local_artifacts(uri, backend.tracking_uri, tmp)


def logged_reference(backend: MlflowBackend, version: ModelVersion) -> np.ndarray | None:
    """The reasons' reference customer logged with the version's training run (the mean over
    its training rows), without a Spark job; None for a model logged before it was, or where
    the artifact cannot be read (reported: scoring then measures it)."""
    try:
        with tempfile.TemporaryDirectory(prefix="churn-reference-") as tmp:
            return read_reference(evaluation_file(backend, version, REFERENCE, tmp))
    except (MlflowException, OSError) as exc:
        LOG.warning("%s v%s: no reasons reference read (%s)", version.name, version.version, exc)
        return None


def model_digest(model_dir: Path) -> str:
    """SHA-256 over the files a load reads (MLmodel and the Spark model), by relative path."""
    files = [model_dir / "MLmodel", *(model_dir / "sparkml").rglob("*")]
    digest = hashlib.sha256()
    for path in sorted(p for p in files if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_model(
    resource: MlflowBackend, spec: DatasetSpec, alias: str = CHAMPION
) -> tuple[PipelineModel, ModelVersion]:
    """The model an alias names, from our registry, after checking its recorded SHA-256.

    The alias is resolved once and that exact version is downloaded, verified and loaded, so
    an alias moved meanwhile cannot hand back a model other than the returned version. A model
    this process logged (`churn-platform run` trains, then scores) is checked the same way and
    then not read back: the fitted object its files were written from is returned.
    """
    client = resource.client()
    version = client.get_model_version_by_alias(spec.model_name, alias)
    expected = version.tags.get(TAG_MODEL_SHA256)
    if not expected:
        raise ModelIntegrityError(f"{version.name} v{version.version} records no model hash")
    source = client.get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory(prefix="churn-model-") as tmp:
        local = local_artifacts(source, resource.tracking_uri, tmp)
        actual = model_digest(local)
        if actual != expected:
            raise ModelIntegrityError(
                f"{version.name} v{version.version}: model files hash to {actual}, "
                f"but {expected} was recorded when it was logged"
            )
        logged = _LOGGED.get(_cache_key(version.source))
        if logged is not None:
            return logged, version
        return load_checked(local, downloaded=local.is_relative_to(tmp)), version


# Models this process logged, by model URI: an ensemble in the same run reuses the fitted
# objects instead of loading them back (a URI names one immutable logged model).
_LOGGED: dict[tuple[str, str], PipelineModel] = {}


def _cache_key(model_uri: str) -> tuple[str, str]:
    session = SparkSession.active()
    owner = str(id(session)) if is_remote() else session.sparkContext.applicationId
    return (owner, model_uri)


def load_run_model(resource: MlflowBackend, model_uri: str) -> PipelineModel:
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


def model_input_columns(resource: MlflowBackend, model_version: ModelVersion) -> list[str]:
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
