"""`churn-platform mlflow-ui` serves the state root's MLflow store and lands on the runs table,
and refuses at once what it cannot serve (the browser test opens the real UI)."""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
from pathlib import Path

import pytest

from churn_platform import cli
from churn_platform.settings import load_settings


@pytest.fixture
def exec_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command line the CLI would become, instead of becoming it; its environment is the
    settings' child environment with MLflow's job runner off."""
    calls: list[list[str]] = []

    def execve(path: str, argv: list[str], environment: dict[str, str]) -> None:
        expected = load_settings().child_env()
        assert environment == {**expected, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        calls.append([path, *argv[1:]])

    monkeypatch.setattr(os, "execve", execve)
    return calls


def mlflow_store(home: Path, experiments: dict[str, str]) -> Path:
    """A sqlite store with MLflow's experiments table (the columns the command reads)."""
    database = home / "mlflow" / "mlflow.db"
    database.parent.mkdir(parents=True)
    with sqlite3.connect(database) as connection:
        connection.execute(
            "CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)"
        )
        connection.executemany(
            "INSERT INTO experiments VALUES (?, ?, 'active')",
            [(number, name) for name, number in experiments.items()],
        )
    connection.close()
    return database


def test_it_serves_the_state_roots_store_and_prints_the_runs_url(
    churn_home: Path, exec_calls: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    database = mlflow_store(churn_home, {"Default": "0", "churn-telco": "3"})

    assert cli.main(["mlflow-ui", "--port", "5123"]) == 0

    ((executable, *argv),) = exec_calls
    assert executable == sys.executable and argv[:3] == ["-m", "mlflow", "ui"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert options == {
        "--backend-store-uri": f"sqlite:///{database}",
        "--default-artifact-root": str(churn_home / "mlflow" / "artifacts"),
        "--host": "127.0.0.1",
        "--port": "5123",
        "--workers": "1",
    }
    out = capsys.readouterr().out
    assert out.strip().endswith(
        "http://127.0.0.1:5123/#/experiments/3/runs?workflowType=machine_learning"
    )


def test_without_the_datasets_experiment_it_lands_on_the_experiment_list(
    churn_home: Path, exec_calls: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow_store(churn_home, {"Default": "0"})
    assert cli.main(["mlflow-ui", "--port", "5124"]) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith("http://127.0.0.1:5124/#/experiments?workflowType=machine_learning")
    )


def test_a_state_root_without_a_store_is_refused_before_anything_starts(
    churn_home: Path, exec_calls: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["mlflow-ui"]) == 1
    error = capsys.readouterr().err
    assert f"no MLflow store at {churn_home / 'mlflow' / 'mlflow.db'}" in error
    assert "churn-platform run" in error
    assert not exec_calls


def test_a_tracking_server_is_refused_with_a_pointer_to_its_own_ui(
    churn_home: Path,
    exec_calls: list[list[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.internal")
    assert cli.main(["mlflow-ui"]) == 1
    assert "is a tracking server (https://mlflow.internal): open its own UI" in (
        capsys.readouterr().err
    )
    assert not exec_calls


def test_a_busy_port_is_refused(
    churn_home: Path, exec_calls: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow_store(churn_home, {"churn-telco": "1"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["mlflow-ui", "--port", str(port)]) == 1
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not exec_calls
