"""The audit traces a model version to its runs, data versions, source checksums and changes."""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from churn_platform.assets.audit import audit_report
from churn_platform.audit_lineage import audit_model, audit_scores
from churn_platform.config import DatasetSpec, load_spec
from churn_platform.core.audit.render import render_markdown, report_json
from churn_platform.core.audit.report import AuditError
from churn_platform.core.ops.changes import record_change
from churn_platform.core.ops.log import OpsLog
from churn_platform.io_managers import AuditReportIOManager
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.resources import StateResource
from churn_platform.settings import Settings, load_settings

CUSTOMER_ID = "7590-VHVEG"
BATCHES = dg.DynamicPartitionsDefinition(name="ingest_batches")
NEW_BATCH = "20250101T000000-extra"
SPEC_YAML = """\
name: audit
sources:
  - {name: customers, format: csv, path: customers.csv}
id_column: customerID
target: {column: Churn, positive: "Yes"}
"""


def _sha(generation: int, batch: str) -> str:
    return hashlib.sha256(f"{generation}:{batch}".encode()).hexdigest()


def _raw(generation: int) -> dg.AssetsDefinition:
    """Stand-in for ingestion: the same metadata keys, plus a row preview the audit must drop."""

    @dg.asset(name="raw_customers", partitions_def=BATCHES)
    def raw(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        batch = context.partition_key
        path = f"/data/{batch}.csv"
        return dg.MaterializeResult(
            data_version=dg.DataVersion(f"raw-{generation}-{batch}"),
            metadata={
                "batch": batch,
                "rows_read": 3,
                "sources": dg.MetadataValue.json({"customers": path}),
                "source_sha256": dg.MetadataValue.json({path: _sha(generation, batch)}),
                "preview": dg.MetadataValue.md(f"| customerID |\n|---|\n| {CUSTOMER_ID} |"),
            },
        )

    return raw


def _pipeline(generation: int) -> list[dg.AssetsDefinition]:
    """Stand-ins for cleaning, features and one model asset, each with an explicit version."""

    @dg.multi_asset(
        specs=[dg.AssetSpec("cleaned_customers"), dg.AssetSpec("quarantined_customers")]
    )
    def cleaning() -> Iterator[dg.MaterializeResult]:
        yield dg.MaterializeResult(
            asset_key="cleaned_customers",
            data_version=dg.DataVersion(f"cleaned-{generation}"),
            metadata={"rows_in": 6, "rows_out": 5, "rows_superseded": 0},
        )
        yield dg.MaterializeResult(
            asset_key="quarantined_customers",
            data_version=dg.DataVersion(f"cleaned-{generation}-1"),
            metadata={"quarantine_total": 1, "by_reason": dg.MetadataValue.json({"bad_id": 1})},
        )

    @dg.multi_asset(specs=[dg.AssetSpec("customer_features"), dg.AssetSpec("feature_pipeline")])
    def features() -> Iterator[dg.MaterializeResult]:
        version = dg.DataVersion(f"features-{generation}")
        yield dg.MaterializeResult(
            asset_key="customer_features", data_version=version, metadata={"vector_size": 7}
        )
        yield dg.MaterializeResult(
            asset_key="feature_pipeline", data_version=version, metadata={"stages": 4}
        )

    return [cleaning, features, _model()]


def _model() -> dg.AssetsDefinition:
    @dg.asset(name="model_gbt")
    def model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"roc_auc": 0.84, "threshold": 0.41})

    return model


def _scores(version: str) -> dg.AssetsDefinition:
    @dg.asset(name="churn_scores")
    def scores() -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata={
                "model_name": "churn-audit",
                "model_version": version,
                "row_count": 5,
                "predicted_churners": 2,
                "path": dg.MetadataValue.path(f"/warehouse/churn_scores/v-{version}"),
            }
        )

    return scores


def _run(
    instance: dg.DagsterInstance, assets: list[dg.AssetsDefinition], partition: str | None = None
) -> str:
    result = dg.materialize(assets, instance=instance, partition_key=partition)
    assert result.success
    return result.run_id


@dataclass(frozen=True)
class World:
    """A Dagster instance, MLflow registry and change log holding two trainings and scorings."""

    settings: Settings
    spec: DatasetSpec
    instance: dg.DagsterInstance
    mlflow: MlflowResource
    mlflow_runs: dict[str, str]
    pipeline_run: str
    drift_run: str
    retrain_run: str
    scores_runs: dict[str, str]
    change_id: str


def _register(
    mlflow: MlflowResource, spec: DatasetSpec, dagster_run: str, data_version: str
) -> tuple[str, str]:
    """An MLflow run with the training provenance tags, registered as a new version."""
    client = mlflow.client()
    run = client.create_run(
        mlflow.experiment_id(spec.name),
        run_name=f"{spec.name}-gbt",
        tags={
            "dagster.run_id": dagster_run,
            "dagster.asset_key": "model_gbt",
            "code_version": "1",
            "data_version": data_version,
            "git_commit": "abc123",
            "model_kind": "gbt",
            "model_sha256": "f" * 64,
        },
    )
    run_id = run.info.run_id
    client.log_param(run_id, "maxDepth", "3")
    client.log_metric(run_id, "roc_auc", 0.84)
    client.set_terminated(run_id)
    if not client.search_registered_models(f"name = '{spec.model_name}'"):
        client.create_registered_model(spec.model_name)
    version = client.create_model_version(
        spec.model_name,
        f"{run.info.artifact_uri}/model",
        run_id,
        tags={"model_sha256": "f" * 64, "metric.roc_auc": "0.84", "threshold": "0.41"},
    )
    return run_id, str(version.version)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Two trainings and their scorings, in a real Dagster instance and sqlite MLflow registry.

    Runs 1-2 ingest two batches; run 3 cleans, builds features and trains v1 as one pipeline
    run; later runs re-ingest one batch and rebuild, then retrain alone (v2); v3 names a Dagster
    run this instance never saw; v1 and v2 each score once.
    """
    home = tmp_path_factory.mktemp("audit_home")
    spec_path = home / "spec.yaml"
    spec_path.write_text(SPEC_YAML)
    settings = load_settings(
        {"CHURN_HOME": str(home), "CHURN_CONFIG": str(spec_path), "CHURN_PSEUDONYM_KEY": "k"}
    )
    spec = load_spec(spec_path, home)
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=str(home / "artifacts")
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(BATCHES.name, ["base", NEW_BATCH])
        _run(instance, [_raw(1)], "base")
        _run(instance, [_raw(1)], NEW_BATCH)
        pipeline_run = _run(instance, _pipeline(1))
        _run(instance, [_raw(2)], "base")
        drift_run = _run(instance, _pipeline(2)[:2])
        retrain_run = _run(instance, [_model()])
        runs = {}
        runs["1"], v1 = _register(mlflow, spec, pipeline_run, "features-1")
        runs["2"], v2 = _register(mlflow, spec, retrain_run, "features-2")
        runs["3"], _ = _register(mlflow, spec, "0" * 36, "features-2")
        client = mlflow.client()
        client.set_registered_model_alias(spec.model_name, "champion", v1)
        with OpsLog(settings) as ops:
            change = record_change(
                settings,
                "standard",
                f"model:{spec.model_name}",
                "user:alice",
                None,
                f"v{v1}",
                {"metric": "roc_auc", "candidate_roc_auc": 0.84},
                "Promote churn-audit v1 to champion",
                ops_log=ops,
            )
            record_change(
                settings, "normal", "platform_config", "user:bob", None, "spec:x", {}, "x",
                ops_log=ops,
            )  # fmt: skip
        scores_runs = {v: _run(instance, [_scores(v)]) for v in (v1, v2)}
        yield World(
            settings=settings,
            spec=spec,
            instance=instance,
            mlflow=mlflow,
            mlflow_runs=runs,
            pipeline_run=pipeline_run,
            drift_run=drift_run,
            retrain_run=retrain_run,
            scores_runs=scores_runs,
            change_id=change.id,
        )


def _layers(report: dict) -> dict[str, dict]:
    return {
        f"{r['layer']}[{r['partition']}]" if r["partition"] else r["layer"]: r
        for r in report["lineage"]
    }


def test_champion_traces_one_run_pipeline_to_its_sources_and_promotion(world: World) -> None:
    report = audit_model(world.settings, world.instance, world.mlflow, world.spec)

    assert report["model"]["version"] == "1"
    assert report["model"]["aliases"] == ["champion"]
    training = report["training"]
    assert training["mlflow_run"]["id"] == world.mlflow_runs["1"]
    assert training["mlflow_run"]["params"] == {"maxDepth": "3"}
    assert training["provenance"]["git_commit"] == "abc123"
    assert training["dagster_run"]["id"] == world.pipeline_run
    layers = _layers(report)
    for layer in ("cleaned_customers", "quarantined_customers", "customer_features", "model_gbt"):
        assert layers[layer]["run_id"] == world.pipeline_run, layer
    assert layers["customer_features"]["data_version"] == "features-1"
    assert layers["quarantined_customers"]["metadata"]["quarantine_total"] == 1
    assert report["checks"] == {"features_data_version": True, "model_sha256": True}
    assert report["source_files"] == [
        {
            "batch": "base",
            "source": "customers",
            "path": "/data/base.csv",
            "sha256": _sha(1, "base"),
        },
        {
            "batch": NEW_BATCH,
            "source": "customers",
            "path": f"/data/{NEW_BATCH}.csv",
            "sha256": _sha(1, NEW_BATCH),
        },
    ]
    assert [c["id"] for c in report["changes"]] == [world.change_id]
    assert report["changes"][0]["role"] == "became champion"
    assert [s["run_id"] for s in report["score_tables"]] == [world.scores_runs["1"]]
    assert report["score_tables"][0]["row_count"] == 5


def test_retrain_run_reads_the_layers_latest_before_it_started(world: World) -> None:
    report = audit_model(world.settings, world.instance, world.mlflow, world.spec, "v2")

    layers = _layers(report)
    assert report["training"]["dagster_run"]["id"] == world.retrain_run
    assert layers["customer_features"]["run_id"] == world.drift_run
    assert layers["cleaned_customers"]["data_version"] == "cleaned-2"
    assert {f["batch"]: f["sha256"] for f in report["source_files"]} == {
        "base": _sha(2, "base"),
        NEW_BATCH: _sha(1, NEW_BATCH),
    }
    assert layers["model_gbt"]["run_id"] == world.retrain_run
    assert report["changes"] == []
    assert [s["run_id"] for s in report["score_tables"]] == [world.scores_runs["2"]]


def test_unknown_dagster_run_falls_back_to_the_mlflow_start(world: World) -> None:
    report = audit_model(world.settings, world.instance, world.mlflow, world.spec, "3")

    assert report["training"]["dagster_run"] is None
    assert _layers(report)["customer_features"]["data_version"] == "features-2"
    assert "model_gbt" not in _layers(report)
    assert "not in this Dagster instance" in render_markdown(report)


def test_scores_run_is_traced_to_the_version_that_produced_it(world: World) -> None:
    report = audit_scores(
        world.settings, world.instance, world.mlflow, world.spec, world.scores_runs["2"]
    )

    assert report["model"]["version"] == "2"
    assert report["scores_run"]["run_id"] == world.scores_runs["2"]
    with pytest.raises(AuditError, match="materialized no churn_scores"):
        audit_scores(world.settings, world.instance, world.mlflow, world.spec, world.pipeline_run)


def test_unknown_version_names_model_and_version(world: World) -> None:
    with pytest.raises(AuditError, match="churn-audit: no version or alias '9'"):
        audit_model(world.settings, world.instance, world.mlflow, world.spec, "9")


def test_report_renders_every_section_without_customer_rows(world: World) -> None:
    report = audit_model(world.settings, world.instance, world.mlflow, world.spec)
    markdown = render_markdown(report)

    for heading in (
        "## Model",
        "## Training run",
        "## Data lineage",
        "## Source files",
        "## Promotion history",
        "## Score tables",
    ):
        assert f"\n{heading}\n" in markdown
    assert f"| base | /data/base.csv | {_sha(1, 'base')} |" in markdown
    assert world.change_id in markdown and world.pipeline_run in markdown
    assert CUSTOMER_ID not in markdown
    assert CUSTOMER_ID not in report_json(report)


def test_render_markdown_says_what_is_missing() -> None:
    report = {
        "generated_at": "2025-01-02T03:04:05.000000Z",
        "model": {
            "name": "churn-x",
            "version": "4",
            "aliases": [],
            "status": "READY",
            "created_at": "2025-01-01T00:00:00.000000Z",
            "source": "s3://models/4",
            "run_id": None,
            "tags": {"promotion.reason": "a|b"},
        },
        "training": None,
        "checks": {"features_data_version": None, "model_sha256": None},
        "lineage": [],
        "source_files": [],
        "changes": [],
        "score_tables": [],
    }
    markdown = render_markdown(report)

    assert markdown.startswith("# Audit: churn-x v4\n")
    assert "_No MLflow run is recorded for this version._" in markdown
    assert "_this version has not scored customers_" in markdown
    assert "`promotion.reason`: a\\|b" in markdown


def test_audit_report_asset_writes_markdown_and_json(world: World) -> None:
    resources = {
        "state": StateResource(platform=world.settings),
        "mlflow": world.mlflow,
        "audit_reports": AuditReportIOManager(folder=str(world.settings.audit_reports)),
    }
    result = dg.materialize([audit_report], instance=world.instance, resources=resources)

    assert result.success
    metadata = result.asset_materializations_for_node("audit_report")[0].metadata
    markdown = Path(str(metadata["markdown_path"].value))
    assert markdown == world.settings.home / "audit" / "audit-churn-audit-v1.md"
    assert metadata["report"].value == markdown.read_text()
    saved = json.loads(Path(str(metadata["json_path"].value)).read_text())
    assert saved["model"]["version"] == "1"
    assert saved["training"]["dagster_run"]["id"] == world.pipeline_run
    # A downstream asset would get the same report back from the files.
    reader = dg.build_input_context(asset_key=dg.AssetKey("audit_report"), instance=world.instance)
    assert resources["audit_reports"].load_input(reader) == saved
