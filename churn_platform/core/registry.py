"""The model registry: versions of `churn-<spec>`, and aliases as the release gate.

`champion` is the version that scores customers and `challenger` the latest candidate. A
candidate replaces the champion only when its test metric beats the champion's by more than
`promotion_margin` (and never with a test ROC-AUC so perfect it means leakage, unless
`allow_perfect_metrics`); every alias move is tagged on the version, written to the operations log
and, when the champion changes, recorded as a change. A rollback is an emergency change.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from churn_platform.config import DatasetSpec
from churn_platform.core.ops.changes import record_change
from churn_platform.core.ops.files import ensure_dir, locked, utc_iso
from churn_platform.core.ops.log import OpsLog, default_actor
from churn_platform.core.tracking import (
    CHAMPION,
    TAG_CODE_VERSION,
    TAG_DATA_VERSION,
    TAG_GIT_COMMIT,
    TAG_MODEL_KIND,
    TAG_MODEL_SHA256,
    TAG_THRESHOLD,
    MlflowBackend,
    ModelIntegrityError,
    TrainingRun,
)
from churn_platform.settings import Settings

CHALLENGER = "challenger"
LOWER_IS_BETTER = frozenset({"brier"})
# No churn model ranks customers this well on held-out data; the target or the id leaked in.
PERFECT_ROC_AUC = 0.999
METRIC_TAG_PREFIX = "metric."
# A rollback to a version this much worse (test ROC-AUC) than the champion needs --force.
ROLLBACK_MARGIN = 0.01
TAG_DECISION = "promotion.decision"
TAG_BY = "promotion.by"
TAG_REASON = "promotion.reason"
TAG_PREVIOUS_CHAMPION = "promotion.previous_champion"
TAG_AT = "promotion.at"
_RUN_TAGS_ON_VERSION = (TAG_MODEL_KIND, TAG_DATA_VERSION, TAG_CODE_VERSION, TAG_GIT_COMMIT)


def register_candidate(
    resource: MlflowBackend,
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
    resource: MlflowBackend,
    spec: DatasetSpec,
    candidate_version: ModelVersion | str | int,
    *,
    settings: Settings,
    ops_log: OpsLog,
    metric: str = "roc_auc",
    margin: float | None = None,
    actor: str | None = None,
    context: Any = None,
) -> PromotionDecision:
    """Make the candidate `challenger`, and `champion` if it passes the gate.

    Both metrics come from version tags computed on the same fixed test split, so the gate
    never rescores. `margin` defaults to `settings.promotion_margin`. The alias move and the
    change record go to the caller's `ops_log` (its run's, or its command's).
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
        if promoted:
            record_change(
                settings, "standard", f"model:{name}", actor,
                None if old is None else f"v{old}", f"v{new}", gate,
                f"Promote {name} v{new} to champion: {reason}", ops_log=ops_log,
            )  # fmt: skip
        aliases = f"champion -> v{new}" if promoted else f"challenger -> v{new}"
        ops_log.event(
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
    resource: MlflowBackend,
    spec: DatasetSpec,
    settings: Settings,
    actor: str,
    reason: str,
    to_version: str | int | None = None,
    *,
    ops_log: OpsLog,
    force: bool = False,
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
        record_change(
            settings, "emergency", f"model:{name}", actor, f"v{current.version}", f"v{target}",
            why, f"Roll back {name} champion to v{target}: {reason}", ops_log=ops_log,
        )  # fmt: skip
        ops_log.event(
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


def registry_snapshot(resource: MlflowBackend, spec: DatasetSpec) -> list[dict[str, Any]]:
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
