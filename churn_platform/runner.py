"""Dagster runs started by the application (CLI, server, benchmarks) on the persistent instance.

Runs go through the instance under $CHURN_HOME/dagster, so everything started here shows up in
the UI's run history, and get the same incident handling as runs the daemon launches.
"""

from __future__ import annotations

import re
import sys
import uuid
from typing import TYPE_CHECKING, Any

import dagster as dg

from churn_platform.cli_common import actor
from churn_platform.settings import DAGSTER_YAML, Settings

if TYPE_CHECKING:
    from churn_platform.core.ops.log import OpsLog

# Tags every run started here carries; the progress watcher finds its run by the token.
RUN_TOKEN_TAG = "churn/cli_run"


def install_dagster_yaml(settings: Settings) -> None:
    """Install the package's dagster.yaml (the top-level one of a checkout) into
    $CHURN_HOME/dagster.

    That file stays the single source of truth; the copy only exists because Dagster reads its
    configuration from DAGSTER_HOME.
    """
    settings.dagster_storage.mkdir(parents=True, exist_ok=True)
    text = DAGSTER_YAML.read_text()
    target = settings.dagster_storage / "dagster.yaml"
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)


def open_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance, with the runs of killed CLI processes marked failed.

    This process's Dagster and MLflow are pointed at the state root first, before the asset
    modules import MLflow (it reads its log level once, at import).
    """
    from churn_platform.run_recovery import fail_abandoned_runs

    install_dagster_yaml(settings)
    settings.export_library_env()
    instance = dg.DagsterInstance.get()
    for run_id in fail_abandoned_runs(settings, instance):
        sys.stderr.write(f"marked run {run_id} failed: its CLI process is gone\n")
    return instance


def materialize_selection(
    settings: Settings,
    selection: str | None,
    tags: dict[str, str] | None = None,
    partition_key: str | None = None,
    progress: bool = False,
) -> dg.ExecuteInProcessResult:
    """Materialize the selected assets in this process (one JVM) and record the run.

    The run's records share one OpsLog: a changed configuration before the run, then the
    incident handling the sensors give daemon runs (they never see runs started here). With
    `progress`, a line per finished asset replaces Dagster's INFO log on the console.
    """
    instance = open_instance(settings)
    from churn_platform.core.ops.log import OpsLog
    from churn_platform.core.process_identity import process_token
    from churn_platform.definitions import build_definitions
    from churn_platform.partitions import BASE_BATCH, ingest_batches
    from churn_platform.progress import RunProgress
    from churn_platform.run_recovery import PROCESS_TAG
    from churn_platform.status import record_graph_keys

    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    record_graph_keys(settings, graph)  # so `status` need not build the definitions again
    # "Everything" is the pipeline; backups are their own daily-partitioned job.
    asset_selection = (
        dg.AssetSelection.from_coercible(selection)
        if selection
        else dg.AssetSelection.all() - dg.AssetSelection.groups("backups")
    )
    keys = asset_selection.resolve(graph)
    whole = whole_steps(graph, keys)
    if whole != keys:  # e.g. '*churn_scores' names cleaned_customers but not its quarantine
        keys, asset_selection = whole, dg.AssetSelection.assets(*whole)
    batch_partitioned = {k for k in keys if graph.get(k).partitions_def == ingest_batches}
    if batch_partitioned and partition_key is None:
        if not instance.has_dynamic_partition(ingest_batches.name, BASE_BATCH):
            instance.add_dynamic_partitions(ingest_batches.name, [BASE_BATCH])
        partition_key = BASE_BATCH
    token = uuid.uuid4().hex
    run_tags = {
        "churn/trigger": "cli",
        "churn/actor": actor(),
        RUN_TOKEN_TAG: token,
        PROCESS_TAG: process_token(),
        **(tags or {}),
    }
    level = "WARNING" if progress else "INFO"

    # As dg.materialize does, but under a name the UI can show (it would be
    # __ephemeral_asset_job__): the named job of exactly these assets, else one for the selection.
    name = job_name(defs, graph, keys, selection)
    job = dg.Definitions(
        assets=list(defs.assets or []),
        resources=defs.resources,
        jobs=[dg.define_asset_job(name, selection=asset_selection)],
    ).resolve_job_def(name)

    def run() -> dg.ExecuteInProcessResult:
        return job.execute_in_process(
            instance=instance,
            partition_key=partition_key,
            raise_on_error=False,
            tags=run_tags,
            run_config={"loggers": {"console": {"config": {"log_level": level}}}},
        )

    with OpsLog(settings) as ops:
        record_configuration(settings, run_tags["churn/actor"], ops)
        if progress:
            with RunProgress(instance, (RUN_TOKEN_TAG, token), total=len(keys)):
                result = run()
        else:
            result = run()
        record_outcome(settings, instance, result, ops)
    return result


def whole_steps(graph: Any, keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
    """`keys` with every asset its step also writes: a multi-asset such as the cleaned layer
    (cleaned and quarantined customers) runs whole, so selecting one of them selects both."""
    return {k for key in keys for k in graph.get(key).execution_set_asset_keys}


def job_name(
    defs: dg.Definitions, graph: Any, keys: set[dg.AssetKey], selection: str | None
) -> str:
    """The platform's job (definitions.named_jobs) whose assets are exactly `keys`; otherwise
    `select_` and the selection in letters, digits and underscores."""
    for job in defs.jobs or []:
        job_selection = getattr(job, "selection", None)
        if isinstance(job_selection, dg.AssetSelection) and job_selection.resolve(graph) == keys:
            return job.name
    return "select_" + (re.sub(r"[^A-Za-z0-9]+", "_", selection or "").strip("_") or "assets")


def record_configuration(settings: Settings, who: str, ops_log: OpsLog) -> None:
    """A `normal` change record when the spec or the non-secret settings differ from the last
    run's or server's: settings are read once per process, so a run or `serve` is where a
    changed configuration takes effect (the first one records the baseline)."""
    from churn_platform.core.ops.changes import record_config_change_if_any

    record_config_change_if_any(settings, settings.spec_path, ops_log=ops_log, who=who)


def record_outcome(
    settings: Settings,
    instance: dg.DagsterInstance,
    result: dg.ExecuteInProcessResult,
    ops_log: OpsLog,
) -> None:
    """Runs started here get the incident handling the sensors give daemon runs (the sensors
    never see them): a failure opens an incident, a success resolves its assets' incidents."""
    from churn_platform.automation import record_run_failure, resolve_after_success

    if result.success:
        resolve_after_success(settings, instance, result.run_id, ops_log)
    else:
        record_run_failure(settings, instance, result.run_id, ops_log)


def run_summary(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """Numeric metadata per materialized asset, plus the quarantine and model summaries."""
    summary: dict[str, Any] = {"run_id": result.run_id, "success": result.success, "assets": {}}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        key = materialization.asset_key.to_user_string()
        numeric = {
            name: value.value
            for name, value in materialization.metadata.items()
            if isinstance(value.value, (int, float)) and not isinstance(value.value, bool)
        }
        summary["assets"][key] = numeric
        if key == "quarantined_customers":
            by_reason = materialization.metadata.get("by_reason")
            summary["quarantine"] = {
                "total": numeric.get("quarantine_total", 0),
                "by_reason": by_reason.value if by_reason is not None else {},
            }
        for extra in ("champion", "leaderboard"):
            if extra in materialization.metadata:
                summary[extra] = materialization.metadata[extra].value
        if key == "churn_scores" and "path" in materialization.metadata:
            summary["scores_path"] = str(materialization.metadata["path"].value)
    return summary


# The champion's figures on the closing lines: ranking metrics, then those at its threshold.
_RANKING = {"roc_auc": "test ROC-AUC", "pr_auc": "PR-AUC"}
_AT_THRESHOLD = {"f1": "F1", "precision": "precision", "recall": "recall", "accuracy": "accuracy"}
_INDENT = " " * 10


def champion_lines(champion: dict[str, Any]) -> str:
    """The champion a run ended with: name, version, kind and test metrics, under 100 columns."""
    if not champion.get("version"):
        return f"champion: none yet ({champion.get('reason', 'no model passed the gate')})"
    metrics = champion.get("metrics", {})

    def figures(names: dict[str, str]) -> str:
        return ", ".join(f"{label} {metrics[m]:.4f}" for m, label in names.items() if m in metrics)

    kind = f" ({champion['model_kind']})" if champion.get("model_kind") else ""
    return (
        f"champion: {champion.get('name')} v{champion['version']}{kind}: {figures(_RANKING)}\n"
        f"{_INDENT}at its threshold: {figures(_AT_THRESHOLD)}"
    )


def next_steps(summary: dict[str, Any]) -> str:
    """The end of a run that scored customers: where the scores are and what to try next."""
    scored = summary["assets"].get("churn_scores", {})

    def count(name: str) -> str:
        value = scored.get(name)
        return f"{value:,}" if isinstance(value, int) else "?"

    steps = (
        ("churn-platform top --n 20", "the 20 highest-risk customers"),
        ("churn-platform score --input FILE --output scores.csv", "score a file of customers"),
        ("make ui  (churn-platform serve)", "the UI at http://127.0.0.1:3000"),
    )
    return "\n".join(
        [
            f"scores:   {count('population_scored')} customers who can still churn "
            f"({count('population_excluded')} excluded), in",
            f"{_INDENT}{summary['scores_path']}",
            *(
                f"{'next:' if i == 0 else '':10}{command:<55}{what}"
                for i, (command, what) in enumerate(steps)
            ),
        ]
    )


def root_error(error: Any) -> str:
    """The user's own exception message, beneath Dagster's wrapping errors."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return (getattr(error, "message", None) or str(error)).strip()


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """What failed in a run, step by step and check by check, in one line."""
    messages = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            messages.append(f"{event.step_key}: {root_error(event.step_failure_data.error)}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                key = evaluation.asset_key.to_user_string()
                messages.append(f"check {evaluation.check_name} on {key} failed")
    return "; ".join(messages) or "the run failed"
