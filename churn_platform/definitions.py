"""The one Definitions object: every asset, check, job, sensor and resource of the platform."""

import dagster as dg

from churn_platform import automation, inbox
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
MANUAL = {"raw_customers", "golden_input", "platform_backup", "backup_retention", "audit_report"}
# Written once and reused for good (backup runs select it only while it is missing): it has no
# freshness policy or check, which it would fail a day after it was written.
WRITTEN_ONCE = {"golden_input"}


def _automation(
    spec: dg.AssetSpec, settings: Settings, model_keys: list[str]
) -> dg.AutomationCondition | None:
    """Models retrain (new features, code or the cron); other non-root assets run eagerly."""
    name = spec.key.to_user_string()
    if name in MANUAL:
        return None
    if name in model_keys:
        return automation.retrain_condition(settings.retrain_cron, model_keys)
    if name == "churn_scores":
        return automation.scores_condition()
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
            freshness_policy=None if spec.key.to_user_string() in WRITTEN_ONCE else policy,
            automation_condition=_automation(spec, settings, model_keys),
        ),
        assets,
    )


# Everything but the daily-partitioned backups: what `churn-platform run` materializes.
PIPELINE = dg.AssetSelection.all() - dg.AssetSelection.groups("backups")
DATA_LAYERS = dg.AssetSelection.groups("ingestion", "cleaning", "features")


def named_jobs(freshness: list[dg.AssetChecksDefinition]) -> list:
    """The jobs runs are named after, in the UI and from the CLI (the runner picks the job whose
    assets are exactly the ones selected). Freshness checks stay with their hourly sensor: in a
    run they would judge the assets before the run has updated them."""
    stale_first = dg.AssetSelection.checks(*freshness)
    return [
        dg.define_asset_job(
            "full_pipeline",
            selection=PIPELINE - stale_first,
            description="Ingest, clean, engineer features, train and evaluate every model, "
            "run the promotion gate, score and monitor (churn-platform run).",
        ),
        dg.define_asset_job(
            "data_layers",
            selection=DATA_LAYERS - stale_first,
            description="Ingest a batch and rebuild the cleaned and feature layers.",
        ),
        dg.define_asset_job(
            "score",
            selection=dg.AssetSelection.assets("churn_scores") - stale_first,
            description="Re-score the customers with the current champion (after a rollback).",
        ),
        automation.retrain_job,
        backups.backup_job,
    ]


def build_definitions(settings: Settings) -> dg.Definitions:
    """Assemble the platform for an environment; only the resources differ between them."""
    assets = platform_assets(settings)
    kept_fresh = [a for a in assets if not {k.to_user_string() for k in a.keys} & WRITTEN_ONCE]
    freshness = automation.freshness_checks(settings, kept_fresh)
    return dg.Definitions(
        assets=assets,
        asset_checks=freshness,
        jobs=named_jobs(freshness),
        schedules=[backups.backup_schedule],
        sensors=[
            automation.automation_sensor(settings.automation_interval_seconds),
            inbox.inbox_sensor(settings.inbox_interval_seconds),
            automation.degradation_sensor,
            automation.incident_on_run_failure,
            automation.resolve_incidents_on_success,
            automation.freshness_sensor(freshness),
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
