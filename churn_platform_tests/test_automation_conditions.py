"""Automation conditions and the degradation sensor: data flows on, models retrain only when due.

The conditions are the platform's own (`layer_condition`, `retrain_condition`), attached to tiny
pure-Python assets shaped like the platform graph (raw batches -> cleaned -> features -> models,
and an ensemble over the models), and evaluated tick by tick without a daemon. No Spark.
"""

import datetime as dt
from collections.abc import Callable, Iterator, Sequence

import dagster as dg
import pytest

from churn_platform import automation
from churn_platform.assets import training
from churn_platform.definitions import build_definitions
from churn_platform.settings import Settings

BATCHES = dg.DynamicPartitionsDefinition(name="ingest_batches")
RETRAIN_CRON = "0 3 * * 0"  # the platform default: Sundays 03:00 UTC
LAYERS = {"cleaned_customers", "customer_features"}
BASES = {"model_logistic_regression", "model_random_forest"}
ENSEMBLE = "model_stacking"
MODELS = BASES | {ENSEMBLE}


def platform_graph(
    features_version: str = "f1",
    model_code: dict[str, str] | None = None,
    raw_fails: bool = False,
    scoring: bool = False,
    building_features: Callable[[], None] | None = None,
) -> list[dg.AssetsDefinition]:
    """raw -> cleaned -> features -> two models -> an ensemble, with the platform's conditions;
    with `scoring`, also the champion (over the models) and the scores (of the cleaned
    customers, by the champion).

    `features_version` is the content-based data version the features report; `model_code` the
    code version of each model; `building_features` runs while the features are built.
    """
    code = {name: "1" for name in MODELS} | (model_code or {})

    @dg.asset(partitions_def=BATCHES)
    def raw_customers() -> dg.MaterializeResult:
        if raw_fails:
            raise RuntimeError("batch unreadable")
        return dg.MaterializeResult()

    @dg.asset(
        deps=[dg.AssetDep(raw_customers, partition_mapping=dg.AllPartitionMapping())],
        automation_condition=automation.layer_condition(),
        code_version="1",
    )
    def cleaned_customers() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion("cleaned"))

    @dg.asset(
        deps=[cleaned_customers],
        automation_condition=automation.layer_condition(),
        code_version="1",
    )
    def customer_features() -> dg.MaterializeResult:
        if building_features is not None:
            building_features()
        return dg.MaterializeResult(data_version=dg.DataVersion(features_version))

    def model(name: str) -> dg.AssetsDefinition:
        @dg.asset(
            name=name,
            deps=[customer_features, *(sorted(BASES) if name == ENSEMBLE else [])],
            automation_condition=automation.retrain_condition(RETRAIN_CRON, sorted(MODELS)),
            code_version=code[name],
        )
        def _model() -> dg.MaterializeResult:
            return dg.MaterializeResult()

        return _model

    models = [model(n) for n in sorted(MODELS)]

    @dg.asset(deps=models, automation_condition=automation.layer_condition())
    def champion_model() -> None:
        pass

    @dg.asset(
        deps=[cleaned_customers, champion_model],
        automation_condition=automation.scores_condition(),
    )
    def churn_scores() -> None:
        pass

    scored = [champion_model, churn_scores] if scoring else []
    return [raw_customers, cleaned_customers, customer_features, *models, *scored]


class Platform:
    """An instance plus the automation cursor, evaluated tick by tick like the automation sensor."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor = None

    def tick(self, assets: Sequence[dg.AssetsDefinition], at: dt.datetime | None = None) -> set:
        """Names of the assets the automation would request now."""
        result = dg.evaluate_automation_conditions(
            defs=assets, instance=self.instance, cursor=self.cursor, evaluation_time=at
        )
        self.cursor = result.cursor
        return {k.to_user_string() for a in assets for k in a.keys if result.get_num_requested(k)}

    def ingest(self, batch: str, **graph) -> dg.ExecuteInProcessResult:
        self.instance.add_dynamic_partitions(BATCHES.name, [batch])
        return dg.materialize(
            platform_graph(**graph),
            instance=self.instance,
            selection=["raw_customers"],
            partition_key=batch,
            raise_on_error=False,
        )

    def run(self, names: set, **graph) -> None:
        dg.materialize(platform_graph(**graph), instance=self.instance, selection=sorted(names))


@pytest.fixture
def platform() -> Iterator[Platform]:
    """A platform that has ingested its base batch, built every layer and model, and is quiet."""
    instance = dg.DagsterInstance.ephemeral()
    platform = Platform(instance)
    platform.ingest("base")
    platform.run(LAYERS | MODELS)
    assert platform.tick(platform_graph()) == set()
    yield platform
    instance.dispose()


def test_first_batch_on_a_fresh_platform_flows_through_to_the_models():
    platform = Platform(dg.DagsterInstance.ephemeral())
    assert platform.tick(platform_graph()) == set(), "nothing runs before the first batch"
    platform.ingest("base")
    assert platform.tick(platform_graph()) == LAYERS
    platform.run(LAYERS)
    assert platform.tick(platform_graph()) == MODELS
    platform.run(MODELS)
    assert platform.tick(platform_graph()) == set()


def test_new_raw_batch_requests_the_layers_but_not_yet_the_models(platform):
    platform.ingest("20261127T103000Z-new.csv")
    assert platform.tick(platform_graph()) == LAYERS
    assert platform.tick(platform_graph()) == set(), "requested once, not on every tick"


def test_features_rebuilt_with_the_same_data_version_do_not_retrain(platform):
    platform.ingest("20261127T103000Z-same_customers.csv")
    assert platform.tick(platform_graph()) == LAYERS
    platform.run(LAYERS, features_version="f1")
    assert platform.tick(platform_graph()) == set()


def test_features_with_a_new_data_version_retrain_every_model_once(platform):
    platform.ingest("20261127T103000Z-new.csv")
    platform.tick(platform_graph())
    platform.run(LAYERS, features_version="f2")
    assert platform.tick(platform_graph(features_version="f2")) == MODELS
    assert platform.tick(platform_graph(features_version="f2")) == set(), "no second request"
    platform.run(MODELS, features_version="f2")
    assert platform.tick(platform_graph(features_version="f2")) == set()


def test_a_model_code_change_retrains_only_that_model(platform):
    """Not even the ensemble over it: a base model's new version alone does not retrain it."""
    changed = platform_graph(model_code={"model_random_forest": "2"})
    assert platform.tick(changed) == {"model_random_forest"}
    platform.run({"model_random_forest"}, model_code={"model_random_forest": "2"})
    assert platform.tick(changed) == set()


def test_the_weekly_cron_tick_retrains_the_models(platform):
    now = dt.datetime.now(dt.UTC)
    sunday = next(now + dt.timedelta(days=d) for d in range(1, 8) if (now.weekday() + d) % 7 == 6)
    cron_tick = sunday.replace(hour=3, minute=0, second=0, microsecond=0)
    minute = dt.timedelta(minutes=1)
    assert platform.tick(platform_graph(), at=cron_tick - minute) == set()
    assert platform.tick(platform_graph(), at=cron_tick + minute) == MODELS
    assert platform.tick(platform_graph(), at=cron_tick + 2 * minute) == set()


def test_a_failed_raw_batch_does_not_stall_later_batches(platform):
    failed = platform.ingest("20261127T103000Z-unreadable.csv", raw_fails=True)
    assert not failed.success
    assert platform.tick(platform_graph()) == set(), "nothing new to clean"
    platform.ingest("20261127T110000Z-next.csv")
    assert platform.tick(platform_graph()) == LAYERS


def test_layers_wait_for_a_batch_that_has_not_been_ingested_yet(platform):
    platform.instance.add_dynamic_partitions(BATCHES.name, ["20261127T110000Z-queued.csv"])
    platform.ingest("20261127T103000Z-first.csv")
    assert platform.tick(platform_graph()) == set(), "cleaning now would miss the queued batch"
    platform.ingest("20261127T110000Z-queued.csv")
    assert platform.tick(platform_graph()) == LAYERS


def test_scores_wait_for_the_features_and_follow_the_retrained_champion_in_its_run():
    """An inbox run builds cleaned, then features. Between the two, scoring would re-score with
    the champion the new features are about to replace (and hold the Spark slot the retraining
    waits for): the scores are requested with the retraining instead, and run after it."""
    scored = {"champion_model", "churn_scores"}
    platform = Platform(dg.DagsterInstance.ephemeral())
    platform.ingest("base")
    platform.run(LAYERS | MODELS | scored, scoring=True)
    assert platform.tick(platform_graph(scoring=True)) == set()

    platform.ingest("20261127T103000Z-new.csv")
    assert platform.tick(platform_graph(scoring=True)) == LAYERS
    midway: list[set] = []
    graph = {"features_version": "f2", "scoring": True}
    building = lambda: midway.append(platform.tick(platform_graph(**graph)))  # noqa: E731
    platform.run(LAYERS, building_features=building, **graph)
    assert midway == [set()], "cleaned is new, the features not yet: nothing is scored"
    assert platform.tick(platform_graph(**graph)) == MODELS | scored
    platform.run(MODELS | scored, **graph)
    assert platform.tick(platform_graph(**graph)) == set()

    platform.ingest("20261127T110000Z-same_customers.csv")
    platform.tick(platform_graph(**graph))
    platform.run(LAYERS, **graph)
    assert platform.tick(platform_graph(**graph)) == {"churn_scores"}, "no retrain: scores alone"
    platform.instance.dispose()


def test_platform_assets_carry_the_platform_conditions_and_automation_ships_running(
    settings: Settings,
):
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    retrain = automation.retrain_condition(settings.retrain_cron, training.MODEL_ASSET_KEYS)
    by_group: dict[str, list] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        by_group.setdefault(node.group_name, []).append(node)
    models = by_group["training"] + by_group["ensembles"]
    assert models and all(n.key.to_user_string().startswith("model_") for n in models)
    for node in models:
        assert node.automation_condition == retrain, f"{node.key} does not retrain"
    for group in ("cleaning", "features", "scoring", "monitoring"):
        for node in by_group[group]:
            expected = (
                automation.scores_condition()
                if node.key.to_user_string() == "churn_scores"
                else automation.layer_condition()
            )
            assert node.automation_condition == expected, node.key
    sensor = defs.get_sensor_def("churn_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.asset_selection.resolve(graph) >= {n.key for n in models}
    degradation = defs.get_sensor_def("degradation_sensor")
    assert degradation.default_status == dg.DefaultSensorStatus.RUNNING
    retrained = automation.retrain_job.selection.resolve(graph)
    assert degradation.job_name == "retrain_job" and retrained >= {n.key for n in models}
    # A queued check run is invisible to the freshness sensor: at Dagster's 30 s default it
    # queued a run per tick behind a long training run (seen with a real daemon).
    freshness = defs.get_sensor_def("freshness_checks_sensor")
    assert freshness.minimum_interval_seconds >= 3600


# ---------------------------------------------------------------------------------------------
# Degradation sensor


def monitoring(
    failing: Sequence[str] = (), during: Callable[[dg.DagsterInstance], None] | None = None
) -> dg.AssetsDefinition:
    """A stand-in `model_monitoring` with the platform's check names; `failing` checks fail."""

    @dg.asset(
        name="model_monitoring",
        check_specs=[
            dg.AssetCheckSpec(n, asset="model_monitoring") for n in automation.MONITORING_CHECKS
        ],
    )
    def model_monitoring(context: dg.AssetExecutionContext):
        if during is not None:
            during(context.instance)
        yield dg.MaterializeResult()
        for name in automation.MONITORING_CHECKS:
            yield dg.AssetCheckResult(check_name=name, passed=name not in failing)

    return model_monitoring


def sense(instance: dg.DagsterInstance, cursor: str | None) -> tuple[list, str | None]:
    """One sensor tick as the daemon runs it: the run requests and the new cursor."""
    data = automation.degradation_sensor.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor)
    )
    return list(data.run_requests or []), data.cursor


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    instance = dg.DagsterInstance.ephemeral()
    yield instance
    instance.dispose()


def test_a_failing_monitoring_check_requests_one_retrain_once(instance):
    dg.materialize([monitoring(failing=["auc_above_floor"])], instance=instance)
    requests, cursor = sense(instance, None)
    assert len(requests) == 1
    assert requests[0].tags["churn/trigger"] == "degradation:auc_above_floor"
    assert sense(instance, cursor)[0] == [], "the same evaluation does not retrain twice"
    # the run key is stable for one evaluation, so the daemon dedupes a replay with a lost cursor
    assert [r.run_key for r in sense(instance, None)[0]] == [requests[0].run_key]
    dg.materialize([monitoring(failing=["auc_above_floor"])], instance=instance)
    again, _ = sense(instance, cursor)
    assert len(again) == 1 and again[0].run_key != requests[0].run_key


def test_passing_monitoring_requests_nothing_and_a_later_failure_still_fires(instance):
    assert sense(instance, None)[0] == [], "no monitoring yet"
    dg.materialize([monitoring()], instance=instance)
    requests, cursor = sense(instance, None)
    assert requests == []
    dg.materialize([monitoring(failing=["psi_below_threshold"])], instance=instance)
    requests, _ = sense(instance, cursor)
    assert [r.tags["churn/trigger"] for r in requests] == ["degradation:psi_below_threshold"]


def test_several_failing_checks_of_one_evaluation_launch_one_retrain(instance):
    dg.materialize([monitoring(failing=automation.MONITORING_CHECKS)], instance=instance)
    requests, cursor = sense(instance, None)
    assert len(requests) == 1, "one degraded evaluation must not launch parallel retrains"
    for name in automation.MONITORING_CHECKS:
        assert name in requests[0].tags["churn/trigger"]
    assert sense(instance, cursor)[0] == []


def test_the_sensor_waits_while_monitoring_is_still_running(instance):
    seen: list = []

    def tick_mid_run(live: dg.DagsterInstance) -> None:
        seen.append(sense(live, None))

    dg.materialize(
        [monitoring(failing=["auc_above_floor"], during=tick_mid_run)], instance=instance
    )
    ((mid_requests, mid_cursor),) = seen
    assert mid_requests == [], "checks not evaluated yet"
    requests, _ = sense(instance, mid_cursor)
    assert len(requests) == 1, "the evaluation finished after the tick is not skipped"
