"""The one Definitions object: every asset, check, job, sensor and resource of the platform."""

from __future__ import annotations

import dagster as dg

from churn_platform.assets import cleaning, features, ingestion
from churn_platform.resources import build_resources
from churn_platform.settings import Settings

OWNER = "team:ml-platform"

# Group name = module name, assigned here and nowhere else.
STAGE_MODULES = {
    "ingestion": ingestion,
    "cleaning": cleaning,
    "features": features,
}


def platform_assets() -> list[dg.AssetsDefinition]:
    """Every asset with its stage group and owner."""
    assets: list = []
    for group, module in STAGE_MODULES.items():
        assets.extend(dg.load_assets_from_modules([module], group_name=group))
    return dg.map_asset_specs(lambda spec: spec.replace_attributes(owners=[OWNER]), assets)


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Assemble the platform for an environment; only the resources differ between them."""
    return dg.Definitions(
        assets=platform_assets(),
        resources=build_resources(settings),
        # One process and one SparkSession per run: a JVM per step would cost ~15 s each.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
