"""The one Definitions object: every asset, check, job, sensor and resource of the platform."""

import dagster as dg

from churn_platform import automation
from churn_platform.assets import (
    audit,
    backups,
    cleaning,
    evaluation,
    features,
    ingestion,
    monitoring,
    registry,
    scoring,
    training,
)
from churn_platform.resources import build_resources
from churn_platform.settings import Settings, load_settings

OWNER = "team:ml-platform"

# Group name = module name, assigned here and nowhere else. The model assets and the leaderboard
# over them are built for the enabled model kinds (CHURN_MODELS); the training module's spec
# table places its models in two groups itself ("training" for base learners, "ensembles").
STAGE_MODULES = {
    "ingestion": ingestion,
    "cleaning": cleaning,
    "features": features,
    "registry": registry,
    "scoring": scoring,
    "monitoring": monitoring,
    "audit": audit,
}
MANUAL = {"raw_customers", "platform_backup", "backup_retention", "audit_report"}


def _automation(
    spec: dg.AssetSpec, settings: Settings, model_keys: list[str]
) -> dg.AutomationCondition | None:
    """Models retrain (new features, code or the cron); other non-root assets run eagerly."""
    name = spec.key.to_user_string()
    if name in MANUAL:
        return None
    if name in model_keys:
        return automation.retrain_condition(settings.retrain_cron, model_keys)
    return automation.layer_condition()


def platform_assets(settings: Settings) -> list:
    """Every asset with its stage group, owner, freshness policy and automation condition."""
    kinds = training.enabled_kinds(settings.models)
    model_keys = [training.model_key(kind) for kind in kinds]
    assets: list = [*training.build_model_assets(kinds), evaluation.leaderboard_asset(model_keys)]
    for group, module in STAGE_MODULES.items():
        assets.extend(dg.load_assets_from_modules([module], group_name=group))
    assets.extend(dg.load_assets_from_modules([backups], group_name="backups"))
    policy = automation.freshness_policy(settings)
    return dg.map_asset_specs(
        lambda spec: spec.replace_attributes(
            owners=[OWNER],
            freshness_policy=policy,
            automation_condition=_automation(spec, settings, model_keys),
        ),
        assets,
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    """Assemble the platform for an environment; only the resources differ between them."""
    assets = platform_assets(settings)
    freshness = automation.freshness_checks(settings, assets)
    return dg.Definitions(
        assets=assets,
        asset_checks=freshness,
        jobs=[automation.retrain_job, backups.backup_job],
        schedules=[backups.backup_schedule],
        sensors=[
            automation.automation_sensor,
            automation.inbox_sensor,
            automation.degradation_sensor,
            automation.incident_on_run_failure,
            automation.resolve_incidents_on_success,
            # Hourly: freshness windows are hours long, and a queued check run is invisible to
            # this sensor, so at the default 30 s it fills the queue behind a long training run.
            dg.build_sensor_for_freshness_checks(
                freshness_checks=freshness,
                minimum_interval_seconds=3600,
                default_status=dg.DefaultSensorStatus.RUNNING,
            ),
        ],
        resources=build_resources(settings),
        # One process and one SparkSession per run: a JVM per step would cost ~15 s each.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location the webserver and daemon load: the settings are read here, once, and
    reach every asset and sensor through the `state` resource."""
    return build_definitions(load_settings())
