"""Jobs, sensors, schedules and automation conditions: the platform keeps itself current.

New inbox files become raw batches, cleaned and turned into features in the same run (the inbox
sensor, `churn_platform.inbox`); declarative automation carries them on through training and
scoring, and rebuilds the data layers after any other raw update; failed monitoring checks
launch a retrain (degradation sensor); failed and recovered runs open and resolve incidents.
"""

import contextlib
import datetime as dt
import warnings
from collections.abc import Iterator, Sequence

import dagster as dg

from churn_platform.core.ops.incidents import IncidentStore
from churn_platform.core.ops.log import OpsLog
from churn_platform.partitions import (
    CUSTOMER_FEATURES,
)
from churn_platform.resources import OpsLogResource, StateResource
from churn_platform.settings import Settings

MONITORING_CHECKS = ("auc_above_floor", "psi_below_threshold", "score_distribution_sane")

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.groups("training", "ensembles", "evaluation", "registry")
    | dg.AssetSelection.assets("churn_scores"),
    description="Retrain every model, re-run the promotion gate and rescore customers.",
)


# ---------------------------------------------------------------------------------------------
# Declarative automation


def layer_condition() -> dg.AutomationCondition:
    """Cleaning, features, scoring, monitoring: run once after any upstream update.

    Plain `eager()` waits while any dependency is missing, and a raw batch whose ingestion run
    failed stays missing for good, so one bad batch would stop every later batch silently. A
    missing dependency whose latest run failed does not block (the IO manager leaves missing
    partitions out); one that has not run yet still does.
    """
    missing = (
        dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.will_be_requested()
        & ~dg.AutomationCondition.execution_failed()
    )
    return dg.AutomationCondition.eager().replace(
        "any_deps_missing",
        dg.AutomationCondition.any_deps_match(missing).with_label("any_deps_missing_not_failed"),
    )


def scores_condition() -> dg.AutomationCondition:
    """Scoring: as `layer_condition`, but not while the features are being built or requested.

    An inbox run builds cleaned, then features; scoring in between would re-score with the
    champion the new features are about to retrain, and hold the one Spark slot the retraining
    waits for (a real daemon: scores 71 s after a drop, then the models behind them). Waiting,
    the scores are requested in the tick that requests the retraining and run in its run, right
    after the new champion (features whose data did not change retrain nothing: the scores
    then run alone).
    """
    features = dg.AutomationCondition.asset_matches(
        CUSTOMER_FEATURES,
        dg.AutomationCondition.in_progress() | dg.AutomationCondition.will_be_requested(),
    )
    return (layer_condition() & ~features).with_label("eager, after the features")


def retrain_condition(cron: str, model_keys: Sequence[str] = ()) -> dg.AutomationCondition:
    """Models retrain when the features' data version or the model code changes, or on cron.

    Re-ingesting identical data leaves the features' content-based data version unchanged,
    so it does not retrain. An ensemble also depends on the base models it reuses
    (`model_keys`); their new versions do not trigger it a second time, and it may be requested
    in the same tick as they are.
    """
    ignored = dg.AssetSelection.assets(*model_keys)
    trigger = (
        dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).ignore(
            ignored
        )
        | dg.AutomationCondition.code_version_changed()
        | dg.AutomationCondition.cron_tick_passed(cron)
    )
    missing = dg.AutomationCondition.missing() & ~dg.AutomationCondition.will_be_requested()
    return (
        trigger.since_last_handled()
        & ~dg.AutomationCondition.any_deps_match(missing)
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("retrain on new feature data, new code or cron")


def automation_sensor(interval_seconds: int) -> dg.AutomationConditionSensorDefinition:
    """Shipped running so retraining works; `Settings.automation_interval_seconds` apart."""
    return dg.AutomationConditionSensorDefinition(
        "churn_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_seconds,
        description="Evaluates the automation conditions; shipped running so retraining works.",
    )


# ---------------------------------------------------------------------------------------------
# Degradation and run outcomes


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches retrain_job when a model-monitoring check fails (once per evaluation).",
)
def degradation_sensor(context: dg.SensorEvaluationContext):
    cursor = int(context.cursor or 0)
    newest, failed = cursor, []
    for name in MONITORING_CHECKS:
        key = dg.AssetCheckKey(dg.AssetKey("model_monitoring"), name)
        record = context.instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [key]
        ).get(key)
        # While monitoring runs its checks are only planned; their row keeps its id once
        # evaluated, so the cursor must not pass it yet.
        if (
            record is None
            or record.event is None
            or record.event.dagster_event_type != dg.DagsterEventType.ASSET_CHECK_EVALUATION
            or record.id <= cursor
        ):
            continue
        newest = max(newest, record.id)
        if not record.event.dagster_event.event_specific_data.passed:
            failed.append((record.id, name))
    if failed:  # one retrain per degraded evaluation, however many of its checks failed
        yield dg.RunRequest(
            run_key=f"degradation-{failed[0][0]}",
            tags={
                "churn/trigger": "degradation:" + ",".join(name for _, name in failed),
                "churn/actor": "sensor:degradation",
            },
        )
    context.update_cursor(str(newest))


def _asset_keys_of_run(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    return sorted(k.to_user_string() for k in (run.asset_selection or [])) or [run.job_name]


def record_run_failure(
    settings: Settings, instance: dg.DagsterInstance, run_id: str, ops_log: OpsLog
) -> list:
    """Open one incident per failed run (idempotent on the run id), logged to `ops_log`."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return []
    failures = [
        event.dagster_event
        for event in instance.all_logs(run_id)
        if event.dagster_event is not None
        and event.dagster_event.event_type_value == "STEP_FAILURE"
    ]
    failed_checks = [
        event.dagster_event.event_specific_data
        for event in instance.all_logs(run_id)
        if event.dagster_event is not None
        and event.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        and not event.dagster_event.event_specific_data.passed
    ]
    store = IncidentStore(settings, ops_log)
    incidents = []
    for check in failed_checks:
        asset = check.asset_key.to_user_string()
        incidents.append(
            store.open(
                dedupe_key=f"check:{run_id}:{asset}:{check.check_name}",
                detected_by="run_status_sensor",
                category="data_quality",
                configuration_item=f"asset:{asset}",
                impact="medium",
                urgency="high",
                summary=f"blocking check {check.check_name} failed on {asset}",
                details={"run_id": run_id, "check": check.check_name},
            )
        )
    if failures or not failed_checks:
        steps = sorted({f.step_key for f in failures if f.step_key})
        incidents.append(
            store.open(
                dedupe_key=f"run:{run_id}",
                detected_by="run_failure_sensor",
                category="pipeline_failure",
                configuration_item=f"asset:{steps[0]}" if steps else f"job:{run.job_name}",
                impact="high",
                urgency="high",
                summary=f"run of {run.job_name} failed in {', '.join(steps) or 'the run'}",
                details={"run_id": run_id, "steps": steps},
            )
        )
    return incidents


def resolve_after_success(
    settings: Settings, instance: dg.DagsterInstance, run_id: str, ops_log: OpsLog
) -> list:
    """A successful materialization of an asset resolves that asset's open incidents."""
    store = IncidentStore(settings, ops_log)
    resolved = []
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    for record in records:
        key = record.event_log_entry.dagster_event.asset_key.to_user_string()
        resolved.extend(store.resolve_for(f"asset:{key}", f"materialized successfully by {run_id}"))
    return resolved


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING, monitor_all_code_locations=False
)
def incident_on_run_failure(
    context: dg.RunFailureSensorContext, state: StateResource, ops_log: OpsLogResource
) -> None:
    """A run that failed for good (after step retries) opens an incident."""
    run_id = context.dagster_run.run_id
    record_run_failure(state.settings(), context.instance, run_id, ops_log.log())


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, default_status=dg.DefaultSensorStatus.RUNNING
)
def resolve_incidents_on_success(
    context: dg.RunStatusSensorContext, state: StateResource, ops_log: OpsLogResource
) -> None:
    run_id = context.dagster_run.run_id
    resolve_after_success(state.settings(), context.instance, run_id, ops_log.log())


def freshness_policy(settings: Settings) -> dg.FreshnessPolicy:
    return dg.FreshnessPolicy.time_window(
        fail_window=dt.timedelta(hours=settings.freshness_fail_hours),
        warn_window=dt.timedelta(hours=settings.freshness_warn_hours),
    )


@contextlib.contextmanager
def _superseded_on_purpose() -> Iterator[None]:
    """Dagster's last-update freshness checks and their sensor are superseded by
    `FreshnessPolicy`, which only the daemon evaluates; the platform uses them on purpose (they
    run in-process, in tests too, and know partitions). Their SupersessionWarning would be
    printed by every process that loads the code location (the UI's and the daemon's code
    servers, each run), so it is silenced here, for these two calls only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.SupersessionWarning)
        yield


def freshness_checks(settings: Settings, assets: list) -> list[dg.AssetChecksDefinition]:
    """In-process freshness checks (the daemon-only policies cannot be evaluated in tests)."""
    unpartitioned = [
        key
        for a in assets
        if isinstance(a, dg.AssetsDefinition) and a.partitions_def is None
        for key in a.keys
    ]
    with _superseded_on_purpose():
        return list(
            dg.build_last_update_freshness_checks(
                assets=unpartitioned,
                lower_bound_delta=dt.timedelta(hours=settings.freshness_fail_hours),
            )
        )


def freshness_sensor(freshness: Sequence[dg.AssetChecksDefinition]) -> dg.SensorDefinition:
    """Runs the freshness checks hourly: their windows are hours long, and a queued check run is
    invisible to this sensor, so at the default 30 s it fills the queue behind a long training
    run."""
    with _superseded_on_purpose():
        return dg.build_sensor_for_freshness_checks(
            freshness_checks=freshness,
            minimum_interval_seconds=3600,
            default_status=dg.DefaultSensorStatus.RUNNING,
        )
