"""The operator's commands answer without Spark: mistakes are refused before any heavy import,
status, incidents, logs, audit, restore, rollback and backup (with no champion, or one an
earlier drill re-scored) never start a JVM, and a rollback to a clearly worse model needs
--force and says how to re-score."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from churn_platform import cli, cli_common, status
from churn_platform.backup_drill import (
    GOLDEN_INPUT,
    TAG_GOLDEN_HASH,
    proven_golden_hash,
    same_files_drill,
)
from churn_platform.config import platform_spec
from churn_platform.core import tracking
from churn_platform.core.registry import METRIC_TAG_PREFIX
from churn_platform.core.tracking import CHAMPION, TAG_MODEL_KIND
from churn_platform.core.versions import current_version
from churn_platform.io_managers import new_version_dir, publish_version
from churn_platform.mlflow_resource import MlflowResource
from churn_platform.settings import load_settings

# Runs commands one after the other (a JSON list of argument lists); after each, reports its
# exit code, what the interpreter has imported so far (the heavy libraries, and whether the
# definitions with every asset module) and whether a JVM is up (pyspark's gateway, or a java
# process below this interpreter).
PROBE = """
import json, sys
import psutil
from churn_platform import cli
for argv in json.loads(sys.argv[1]):
    code = cli.main(argv)
    context = sys.modules.get("pyspark.core.context") or sys.modules.get("pyspark.context")
    gateway = getattr(getattr(context, "SparkContext", None), "_gateway", None)
    java = [p.name() for p in psutil.Process().children(recursive=True) if "java" in p.name()]
    heavy = [m for m in ("pyspark", "dagster", "mlflow") if m in sys.modules]
    assets = "churn_platform.definitions" in sys.modules
    found = {"code": code, "jvm": gateway is not None or bool(java), "heavy": heavy}
    print(json.dumps(found | {"definitions": assets}))
"""
MODEL = "churn-telco"
# The case: a decision tree (the worst model) behind a logistic-regression champion.
VERSIONS = (("decision_tree", 0.8232), ("logistic_regression", 0.8627))


def probe(home: Path, *commands: tuple[str, ...]) -> list[dict]:
    """The commands in one new interpreter (a fresh import state), against `home`."""
    env = load_settings({"CHURN_HOME": str(home)}).child_env()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)],
        cwd=home,  # relative paths in the commands land in the test's folder
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"code"')]
    assert len(found) == len(commands), done.stdout
    return [f | {"stderr": done.stderr} for f in found]


def register_versions(home: Path) -> MlflowClient:
    """Two registered versions with their kind and test ROC-AUC tags, the better one champion
    (no model files: the commands here read only the registry)."""
    client = MlflowClient(tracking_uri=load_settings({"CHURN_HOME": str(home)}).mlflow_tracking_uri)
    client.create_registered_model(MODEL)
    for kind, roc_auc in VERSIONS:
        tags = {TAG_MODEL_KIND: kind, f"{METRIC_TAG_PREFIX}roc_auc": str(roc_auc)}
        version = client.create_model_version(MODEL, str(home / "model"), tags=tags)
    client.set_registered_model_alias(MODEL, CHAMPION, version.version)
    return client


@pytest.fixture
def registry_home(churn_home: Path) -> Path:
    register_versions(churn_home)
    return churn_home


@pytest.mark.parametrize(
    "argv",
    [
        ("score", "--input", "missing.csv", "--output", "scores.csv"),
        ("run", "--config", "missing.yaml"),
        ("status", "--config", "missing.yaml"),
        ("generate", "--rows", "0", "--output", "out.csv"),
        ("top", "--n", "0"),
        ("backup", "--partition", "2026-13-01"),
        ("restore", "--partition", "yesterday"),
        ("model", "rollback", "--to-version"),
        ("audit", "--model", "1", "--scores", "run"),
    ],
)
def test_a_mistake_is_refused_before_spark_dagster_or_mlflow_load(
    churn_home: Path, argv: tuple[str, ...]
) -> None:
    (found,) = probe(churn_home, argv)
    assert found["code"] == cli.EXIT_USAGE, found
    assert found["heavy"] == [] and not found["jvm"], found
    assert "Traceback" not in found["stderr"]


LIGHT = {
    ("incidents", "list"): cli.EXIT_OK,
    ("logs", "verify"): cli.EXIT_OK,
    ("restore", "--partition", "2026-01-01", "--dry-run"): 5,  # no such backup
}
# These need Dagster's definitions or the registry's modules, which import pyspark (no JVM).
REGISTRY_READERS = {
    ("status",): cli.EXIT_OK,
    ("audit", "--model", "champion"): cli.EXIT_OK,
    ("model", "rollback", "--to-version", "1"): cli.EXIT_FAILED,  # worse: needs --force
}


@pytest.mark.parametrize(("argv", "code"), list(LIGHT.items()))
def test_incidents_logs_and_restore_import_no_spark_dagster_or_mlflow(
    churn_home: Path, argv: tuple[str, ...], code: int
) -> None:
    (found,) = probe(churn_home, argv)
    assert found["code"] == code and found["heavy"] == [] and not found["jvm"], found


def test_operator_commands_never_start_a_jvm(registry_home: Path) -> None:
    commands = {**REGISTRY_READERS, **LIGHT}
    found = probe(registry_home, *commands)
    assert [f["code"] for f in found] == list(commands.values()), found
    assert not any(f["jvm"] for f in found), found


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("customerID,gender\nC-1,Male\n", "input is missing 18 column(s) the model needs: Senior"),
        ("", "the file is empty (no header line)"),
        ("customerID,tenure,TENURE\n", "columns 'tenure' and 'TENURE' differ only in case"),
        ("customerID;gender\nC-1;Male\n", "the header is one column ('customerID;gender')"),
    ],
)
def test_score_refuses_a_csv_it_cannot_score_before_spark_starts(
    churn_home: Path, header: str, message: str
) -> None:
    """A CSV file's header is read before the JVM starts: a file without the columns the model
    needs, or without a usable header, is refused by name with no Spark, MLflow or Dagster."""
    customers = churn_home / "customers.csv"
    customers.write_text(header)
    (found,) = probe(churn_home, ("score", "--input", str(customers), "--output", "scores.csv"))
    assert found["code"] == cli.EXIT_USAGE and not found["jvm"] and found["heavy"] == [], found
    assert f"{customers}: {message}" in found["stderr"]
    assert not (churn_home / "scores.csv").exists()


def test_score_refuses_a_folder_that_is_not_parquet_before_spark_starts(churn_home: Path) -> None:
    """A folder is scored as Parquet: one of CSV files is refused, naming a file, without a JVM
    (Spark's own error was a Java stack trace about a file footer)."""
    folder = churn_home / "exports"
    folder.mkdir()
    (folder / "_SUCCESS").touch()  # hidden from Spark, so not checked
    (folder / "customers.csv").write_text("customerID,gender\nC-1,Male\n")
    (found,) = probe(churn_home, ("score", "--input", str(folder), "--output", "scores.csv"))
    assert found["code"] == cli.EXIT_USAGE and not found["jvm"] and found["heavy"] == [], found
    assert f"{folder / 'customers.csv'}: not a Parquet file" in found["stderr"]
    assert "Traceback" not in found["stderr"]


def test_score_reads_with_spark_and_mlflow_but_without_dagster(churn_home: Path) -> None:
    """`score` needs a JVM and the registry, not Dagster (about 1 s of imports): here a Parquet
    file without the columns the model needs is refused after Spark has read its schema."""
    customers = churn_home / "customers.parquet"
    pq.write_table(pa.table({"customerID": ["C-1"], "gender": ["Male"]}), customers)
    (found,) = probe(churn_home, ("score", "--input", str(customers), "--output", "scores.csv"))
    assert found["code"] == cli.EXIT_USAGE and found["jvm"], found
    assert found["heavy"] == ["pyspark", "mlflow"] and not found["definitions"], found
    assert "missing 18 column(s) the model needs: SeniorCitizen" in found["stderr"]
    assert not (churn_home / "scores.csv").exists()


def test_score_prepares_the_registry_in_the_background_while_the_jvm_starts() -> None:
    """`importing` imports the command's modules, then calls `then` (the registry's client), in
    a thread while the body starts the JVM; a failure there is not raised: the command meets it
    again where it calls the same thing itself."""
    seen: list[tuple[str, bool]] = []

    def prepare() -> None:
        seen.append(
            (threading.current_thread().name, "churn_platform.core.score_file" in sys.modules)
        )
        raise RuntimeError("registry unavailable")

    with cli_common.importing("churn_platform.core.score_file", then=prepare):
        pass
    assert seen == [("command-imports", True)]


def proven_champion(home: Path) -> tuple[Path, str]:
    """A champion as every backup after its first finds it: model files under the artifact root
    with their SHA-256, a golden input, and the proof tag a drill that re-scored it left (stand-in
    files: nothing here may read them with Spark). Returns the model folder and the hash."""
    settings = load_settings({"CHURN_HOME": str(home)})
    model = Path(settings.mlflow_artifact_root) / "models" / "m-1"
    (model / "sparkml" / "metadata").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "sparkml" / "metadata" / "part-00000").write_text("{}\n")
    folder = settings.warehouse / GOLDEN_INPUT
    folder.mkdir(parents=True)
    rows = new_version_dir(folder, "testrun0")
    rows.mkdir()
    (rows / "part-00000.parquet").write_bytes(b"golden rows")
    publish_version(folder, rows)
    golden = "ab" * 32
    tags = {
        TAG_MODEL_KIND: "logistic_regression",
        tracking.TAG_MODEL_SHA256: tracking.model_digest(model),
        TAG_GOLDEN_HASH: f"{rows.name}:{golden}",
    }
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, str(model), tags=tags)
    client.set_registered_model_alias(MODEL, CHAMPION, version.version)
    return model, golden


def test_backup_starts_no_jvm_without_a_champion_or_for_one_a_drill_proved(
    churn_home: Path, tmp_path: Path
) -> None:
    """The archive needs no Spark: only scoring does, once per champion (its first backup)."""
    (fresh,) = probe(churn_home, ("backup", "--partition", "2026-11-26"))
    assert fresh["code"] == cli.EXIT_OK and not fresh["jvm"], fresh

    home = tmp_path / "proven"
    home.mkdir()
    _, golden = proven_champion(home)
    (found,) = probe(home, ("backup", "--partition", "2026-11-27"))
    assert found["code"] == cli.EXIT_OK and not found["jvm"], found
    (manifest,) = (home / "backups").rglob("*.manifest.json")
    recorded = json.loads(manifest.read_text())["golden"]
    assert recorded["golden_prediction_hash"] == golden
    assert (recorded["model_name"], recorded["model_version"]) == (MODEL, "1")


def test_backup_does_not_reuse_the_proof_of_a_champion_whose_files_changed(
    churn_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = proven_champion(churn_home)
    (model / "sparkml" / "metadata" / "part-00000").write_text('{"tampered": true}\n')
    assert cli.main(["backup", "--partition", "2026-11-27"]) == cli.EXIT_FAILED
    assert "model files hash to" in capsys.readouterr().err
    assert not list((churn_home / "backups").rglob("*.manifest.json"))


def test_a_drills_proof_counts_only_for_its_hash_files_and_golden_rows(churn_home: Path) -> None:
    _, golden = proven_champion(churn_home)
    settings = load_settings({"CHURN_HOME": str(churn_home)})
    mlflow = MlflowResource.from_settings(settings)
    version = mlflow.client().get_model_version_by_alias(MODEL, CHAMPION)
    rows = current_version(settings.warehouse / GOLDEN_INPUT)
    assert rows is not None
    assert proven_golden_hash(mlflow, version, rows.name) == golden
    assert proven_golden_hash(mlflow, version, "v-other-rows") is None

    backed_up = {
        "model_name": MODEL,
        "model_version": "1",
        "golden_input": rows.name,
        "golden_prediction_hash": golden,
    }
    spec = platform_spec(settings)
    passed, facts = same_files_drill(mlflow, spec, rows.name, backed_up, {})
    assert passed and facts["rescored"] is False and "failed" not in facts
    other = {**backed_up, "golden_prediction_hash": "cd" * 32, "model_version": "2"}
    passed, facts = same_files_drill(mlflow, spec, rows.name, other, {})
    assert not passed
    assert facts["failed"] == [
        "restored champion is not the backed-up one",
        "no drill proved this hash on these rows",
    ]


def test_status_reads_the_recorded_asset_keys_without_importing_the_asset_modules(
    registry_home: Path,
) -> None:
    """Importing the definitions (every asset module: Spark ML, scikit-learn, plotting) took
    most of status's 7.4 s; a run or an earlier status records the keys it needs."""
    status.graph_keys(load_settings({"CHURN_HOME": str(registry_home)}))  # as a run records them
    (found,) = probe(registry_home, ("status",))
    assert found["code"] == cli.EXIT_OK and not found["definitions"] and not found["jvm"], found


def test_rollback_moves_aliases_without_importing_dagster(registry_home: Path) -> None:
    (found,) = probe(registry_home, ("model", "rollback", "--to-version", "1"))
    assert found["code"] == cli.EXIT_FAILED  # refused: v1 is clearly worse
    assert "dagster" not in found["heavy"] and not found["jvm"], found


def test_status_shows_each_versions_kind_and_test_roc_auc(registry_home: Path, capsys) -> None:
    assert cli.main(["status"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert f"{MODEL} v1 [-] decision_tree, test ROC-AUC 0.8232" in out
    assert f"{MODEL} v2 [champion] logistic_regression, test ROC-AUC 0.8627" in out


def test_rollback_to_a_clearly_worse_version_needs_force_then_says_how_to_rescore(
    registry_home: Path, capsys
) -> None:
    client = MlflowClient(tracking_uri=load_settings().mlflow_tracking_uri)
    assert cli.main(["model", "rollback", "--to-version", "1"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "v1 (decision_tree, test ROC-AUC 0.8232) is worse than the champion v2" in err
    assert "pass --force" in err
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "2"

    assert cli.main(["model", "rollback", "--to-version", "1", "--force"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("champion is now v1")
    assert "customers are not re-scored yet" in out
    assert "churn-platform run --select churn_scores\n" in out
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "1"


def test_recovery_guide_rescores_with_exactly_the_scores_asset() -> None:
    """`'*churn_scores'` would retrain every model and run the gate again (20+ minutes, and the
    gate may promote the model just rolled back)."""
    guide = (Path(__file__).parents[1] / "docs" / "RECOVERY.md").read_text()
    rescore = [line for line in guide.splitlines() if "re-score" in line and "run --select" in line]
    assert rescore and all("--select churn_scores " in line for line in rescore), rescore
    assert "run --select '*churn_scores'" not in guide
