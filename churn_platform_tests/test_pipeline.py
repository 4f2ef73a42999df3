"""End to end on the real Telco data: champion registered, scores written, logs clean."""

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.entities.model_registry import ModelVersion

from churn_platform import cli
from churn_platform.config import load_spec
from churn_platform.core import reasons
from churn_platform.core.attribution import STORED
from churn_platform.core.encoding import read_encoding
from churn_platform.core.features import engineer_features
from churn_platform.core.registry import registry_snapshot
from churn_platform.core.scoring import reasons_reference, training_reference
from churn_platform.core.tracking import MODEL_ARTIFACT, load_run_model
from churn_platform.core.versions import current_version
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import load_settings
from churn_platform_tests.conftest import PIPELINE_MODELS, PipelineRun, restored_environ

LEADERBOARD_SIZE = len(PIPELINE_MODELS)
CLI = Path(sys.executable).with_name("churn-platform")


@pytest.fixture(scope="module")
def pipeline(telco_pipeline: PipelineRun) -> Iterator[PipelineRun]:
    """The session's full materialization, with its environment set for this module's tests."""
    with restored_environ():
        os.environ.update(telco_pipeline.env)
        yield telco_pipeline


def _mlflow() -> MlflowResource:
    settings = load_settings()
    return MlflowResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )


def test_run_ends_with_a_registered_champion_and_scores(pipeline):
    summary = pipeline.summary
    assert pipeline.exit_code == 0, summary
    champion = summary["champion"]
    assert champion["name"] == "churn-telco"
    assert set(champion["metrics"]) == {
        "roc_auc",
        "pr_auc",
        "accuracy",
        "precision",
        "recall",
        "f1",
    }
    assert 0.75 < champion["metrics"]["roc_auc"] <= 1.0
    assert len(summary["leaderboard"]) == LEADERBOARD_SIZE
    # Only the customers who can still churn are scored; the 1,869 churners are counted.
    scores = summary["assets"]["churn_scores"]
    assert scores["row_count"] == scores["population_scored"] == 7043 - 1869
    assert scores["population_excluded"] == 1869
    settings = load_settings()
    models = registry_snapshot(_mlflow(), load_spec(settings.spec_path, settings.home))
    aliased = {alias: m["version"] for m in models for alias in m["aliases"]}
    assert str(aliased["champion"]) == str(champion["version"])
    assert "challenger" in aliased


def test_data_layers_of_the_real_telco_data(pipeline):
    summary = pipeline.summary
    assert pipeline.exit_code == 0, summary
    assets = summary["assets"]
    assert assets["raw_customers"]["row_count"] == 7043
    assert assets["cleaned_customers"]["row_count"] == 7043
    assert summary["quarantine"] == {"total": 0, "by_reason": {}}
    assert assets["cleaned_customers"]["blank_values_to_impute"] == 11
    features = assets["customer_features"]
    assert features["train_churn"] + features["test_churn"] == 1869
    # The run is recorded in the persistent instance under the state root.
    with dg.DagsterInstance.from_config(str(load_settings().dagster_storage)) as instance:
        assert instance.get_run_by_id(summary["run_id"]) is not None


def test_every_model_run_is_tracked_with_lineage_tags(pipeline):
    summary = pipeline.summary
    client = _mlflow().client()
    runs = client.search_runs(
        [client.get_experiment_by_name("churn-telco").experiment_id], max_results=50
    )
    assert len(runs) >= LEADERBOARD_SIZE
    for run in runs:
        tags = run.data.tags
        assert tags["dagster.run_id"] == summary["run_id"]
        assert tags["data_version"] not in ("", "unknown")
        assert "roc_auc" in run.data.metrics
    # The ensemble reuses the tree asset's fit from this run and names that run; logistic
    # regression has no asset in this run, so the ensemble fitted it itself.
    by_kind = {run.data.tags["model_kind"]: run for run in runs}
    stacking = by_kind["stacking"].data
    assert stacking.tags["churn.base_run.decision_tree"] == by_kind["decision_tree"].info.run_id
    assert "churn.base_run.logistic_regression" not in stacking.tags
    assert json.loads(stacking.params["reused_bases"]) == ["decision_tree"]


def test_scores_file_and_schema_mismatch(pipeline, capsys, tmp_path):
    sample = pipeline.home / "data" / "telco_churn.csv"
    subset = tmp_path / "customers.csv"
    with sample.open(newline="") as src, subset.open("w", newline="") as dst:
        rows = list(csv.reader(src))[:51]
        csv.writer(dst, lineterminator="\n").writerows(rows)
    out = tmp_path / "scores.csv"
    code = cli.main(["score", "--input", str(subset), "--output", str(out)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result["rows_scored"] == 50
    with out.open() as handle:
        scored = list(csv.DictReader(handle))
    assert len(scored) == 50
    assert all(0.0 <= float(r["churn_probability"]) <= 1.0 for r in scored)
    assert {r["risk_tier"] for r in scored} <= {"low", "medium", "high"}
    assert all(r["reason_1"] and r["reason_2"] and r["reason_3"] for r in scored)
    # The batch scores keep their attribution: a file scored by the model that made them reads
    # its reasons from it (another test may have moved the champion since).
    batch = current_version(load_settings().warehouse / "churn_scores")
    made_by = pq.read_table(batch, columns=["model_version"]).column(0).unique().to_pylist()
    same_model = made_by == [result["model"].rsplit(" v", 1)[1]]
    assert result["reasons_from"] == ("batch scores" if same_model else "training run")
    # As a user runs it: the console script in its own short-lived JVM (C1 compiler, no
    # generated code for a small input) writes the same bytes as the test session's JVM.
    child = tmp_path / "child_scores.csv"
    done = subprocess.run(
        [str(CLI), "score", "--input", str(subset), "--output", str(child)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) | {"output": str(out)} == result
    assert child.read_bytes() == out.read_bytes()

    bad = tmp_path / "bad.csv"
    header = rows[0]
    keep = [i for i, c in enumerate(header) if c not in ("tenure", "Contract")]
    with bad.open("w", newline="") as dst:
        csv.writer(dst, lineterminator="\n").writerows([[r[i] for i in keep] for r in rows])
    code = cli.main(["score", "--input", str(bad), "--output", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code != 0
    assert "tenure" in err and "Contract" in err


def test_batch_reasons_start_from_the_reference_customer_training_logged(pipeline, spark):
    """Each training run logs its reference customer, the mean over its training rows: the
    training split's, as scoring measured it before; the batch scores explain from that one
    rather than reading the training split again; a model whose run logged none (trained
    before it was logged) is explained from the training split, read only then."""
    settings = load_settings()
    spec = load_spec(settings.spec_path, settings.home)
    batch = current_version(settings.warehouse / "churn_scores")
    stored = json.loads((batch / STORED).read_text())
    name, number, _ = stored["model"]
    backend = _mlflow()
    version = backend.client().get_model_version(name, number)
    cleaned = spark.read.parquet(str(current_version(settings.warehouse / "cleaned_customers")))
    unread = reasons_reference(backend, version, lambda: pytest.fail("training split read"))
    assert isinstance(unread, np.ndarray) and unread.tolist() == stored["reference"]
    model = load_run_model(backend, f"runs:/{version.run_id}/{MODEL_ARTIFACT}")
    encoding = read_encoding(model)
    training = encoding.vectors(engineer_features(training_reference(cleaned, spec), spec))
    assert unread == pytest.approx(reasons.reference_mean(model, encoding, training), abs=1e-9)
    unlogged = ModelVersion(name, number, 0, run_id="0" * 32)  # no such run, nothing logged
    assert reasons_reference(backend, unlogged, lambda: cleaned) is cleaned


def test_a_file_with_a_repeated_id_is_scored_by_its_last_line(pipeline, capsys, tmp_path):
    """An id twice in a file to score: its later line is scored and the earlier one reported as
    a duplicate, as the cleaned layer treats a batch (`score` plans the scores before it knows
    whether ids repeat, and switches to the id window when they do)."""
    with (pipeline.home / "data" / "telco_churn.csv").open(newline="") as src:
        header, first, *others = list(csv.reader(src))[:11]
    later = list(first)
    later[header.index("tenure")], later[header.index("Contract")] = "71", "Two year"
    files = {"repeated": [header, first, *others, later], "alone": [header, later]}
    found = {}
    for name, rows in files.items():
        with (tmp_path / f"{name}.csv").open("w", newline="") as dst:
            csv.writer(dst, lineterminator="\n").writerows(rows)
        out = tmp_path / f"{name}_scores.csv"
        assert (
            cli.main(["score", "--input", str(tmp_path / f"{name}.csv"), "--output", str(out)]) == 0
        )
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        with out.open() as handle:
            found[name] = (summary, {r["customerID"]: r for r in csv.DictReader(handle)})
    summary, scored = found["repeated"]
    assert summary["rows_scored"] == 10 and summary["quarantine_by_reason"] == {"duplicate_id": 1}
    assert sorted(scored) == sorted(row[0] for row in [first, *others])
    _, alone = found["alone"]
    assert scored[first[0]]["churn_probability"] == alone[first[0]]["churn_probability"]


def test_no_raw_customer_id_in_logs_events_or_incidents(pipeline):
    with open(pipeline.home / "data" / "telco_churn.csv", newline="") as handle:
        ids = {row["customerID"] for row in csv.DictReader(handle)}
    id_pattern = re.compile(r"\b\d{4}-[A-Z]{5}\b")
    texts = []
    for folder in ("logs", "incidents", "changes"):
        for path in (pipeline.home / folder).rglob("*"):
            if path.is_file() and path.suffix in (".jsonl", ".json"):
                texts.append(path.read_text(errors="replace"))
    settings = load_settings()
    with dg.DagsterInstance.from_config(str(settings.dagster_storage)) as instance:
        for record in instance.get_records_for_run(pipeline.summary["run_id"]).records:
            texts.append(record.event_log_entry.user_message or "")
    assert texts
    leaked = {m for text in texts for m in id_pattern.findall(text) if m in ids}
    assert leaked == set()


def test_logs_verify_passes_and_detects_a_flipped_byte(pipeline, capsys):
    assert cli.main(["logs", "verify"]) == 0
    log = sorted((pipeline.home / "logs").glob("ops-*.jsonl"))[-1]
    data = bytearray(log.read_bytes())
    index = data.index(b'"message"') + 12
    data[index] = ord("X") if data[index] != ord("X") else ord("Y")
    log.write_bytes(bytes(data))
    assert cli.main(["logs", "verify"]) != 0
    assert log.name in capsys.readouterr().out


def test_status_lists_models_and_freshness(pipeline, capsys):
    assert cli.main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert any("champion" in m["aliases"] for m in status["models"])
    assert status["assets"]["churn_scores"]["freshness"] == "PASS"
    assert {"name", "version", "aliases"} <= set(status["models"][0])


def test_rollback_restores_previous_champion(pipeline, capsys):
    os.environ["CHURN_PROMOTION_MARGIN"] = "-1"  # any challenger wins: force a second champion
    try:
        code = cli.main(["run", "--select", "model_leaderboard+", "--json"])
    finally:
        del os.environ["CHURN_PROMOTION_MARGIN"]
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    before = pipeline.summary["champion"]["version"]
    assert second["champion"]["version"] != before
    assert cli.main(["model", "rollback", "--reason", "test"]) == 0
    # The operator is told how to re-score with the restored champion (scores are not redone).
    assert "churn-platform run --select churn_scores" in capsys.readouterr().out
    settings = load_settings()
    models = registry_snapshot(_mlflow(), load_spec(settings.spec_path, settings.home))
    champion = [m for m in models if "champion" in m["aliases"]]
    assert [str(m["version"]) for m in champion] == [str(before)]
    changes = [json.loads(p.read_text()) for p in Path(settings.home, "changes").glob("CHG-*.json")]
    assert any(c["change_type"] == "emergency" for c in changes)
    assert any(c["change_type"] == "standard" for c in changes)
    # The run with another promotion margin recorded that configuration change.
    (config,) = [c for c in changes if c["why"].get("changed_settings", {}).get("promotion_margin")]
    assert config["change_type"] == "normal"
    assert config["why"]["changed_settings"]["promotion_margin"] == {"from": 0.0, "to": -1.0}


def test_backup_then_restore_into_an_empty_root_reproduces_the_registry(pipeline, tmp_path, capsys):
    import sqlite3
    import time

    partition = time.strftime("%Y-%m-%d", time.gmtime())
    assert cli.main(["backup", "--partition", partition]) == 0  # includes the restore drill
    archive = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert archive.is_file()
    target = tmp_path / "restored"
    assert cli.main(["restore", "--partition", partition, "--target", str(target)]) == 0
    settings = load_settings()
    spec = load_spec(settings.spec_path, settings.home)
    restored = load_settings({"CHURN_HOME": str(target)})
    restored_mlflow = MlflowResource(
        tracking_uri=restored.mlflow_tracking_uri, artifact_root=restored.mlflow_artifact_root
    )
    assert registry_snapshot(restored_mlflow, spec) == registry_snapshot(_mlflow(), spec)
    with sqlite3.connect(target / "dagster" / "history" / "runs.db") as db:
        run_ids = {row[0] for row in db.execute("SELECT run_id FROM runs")}
    assert pipeline.summary["run_id"] in run_ids


def test_audit_report_for_the_champion_names_source_checksum_and_runs(pipeline, capsys):
    import hashlib

    assert cli.main(["audit", "--model", "champion", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sha = hashlib.sha256((pipeline.home / "data" / "telco_churn.csv").read_bytes()).hexdigest()
    assert sha in json.dumps(report)
    assert pipeline.summary["run_id"] in json.dumps(report["training"])
    assert report["changes"], "the promotion change record is part of the story"
    assert (pipeline.home / "audit").is_dir()
