"""`churn-platform top`: the retention team's action list, read from the stored churn_scores;
and what a run prints on the way there (a line per asset, the closing block)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churn_platform import cli, runner
from churn_platform.progress import RunProgress, key_figure


def _reason(feature: str, value: str, contribution: float) -> dict:
    return {"feature": feature, "value": value, "contribution": contribution}


def _store_scores(home: Path) -> None:
    """A published churn_scores version, as the IO manager leaves it."""
    folder = home / "warehouse" / "churn_scores"
    version = folder / "v-20260101T000000-000-run"
    version.mkdir(parents=True)
    rows = [
        ("a", 0.91, "high", 405.0, [_reason("Contract", "Month-to-month", 0.8)]),
        ("=b", 0.42, "high", 160.0, [_reason("tenure", "2", 0.5), _reason("auto_pay", "0", 0.1)]),
        ("c", 0.20, "medium", 50.0, [_reason("Contract", "Two year", -0.9)]),
        ("d", 0.05, "low", -25.0, []),
    ]
    table = pa.Table.from_pylist(
        [
            {
                "customerID": i,
                "churn_probability": p,
                "churn_predicted": int(p >= 0.4),
                "risk_tier": t,
                "expected_value": v,
                "reasons": r,
                "model_version": "3",
            }
            for i, p, t, v, r in rows
        ]
    )
    pq.write_table(table, version / "part-00000.parquet")
    (folder / "CURRENT").write_text(version.name + "\n")


def test_top_lists_the_highest_risk_customers_first_with_reasons(churn_home, capsys) -> None:
    _store_scores(churn_home)
    assert cli.main(["top", "--n", "2", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)
    assert [c["customer_id"] for c in top] == ["a", "=b"]
    assert top[0]["risk_tier"] == "high" and top[0]["churn_probability"] == pytest.approx(0.91)
    assert top[1]["reasons"] == [
        {"feature": "tenure", "value": "2", "contribution": 0.5},
        {"feature": "auto_pay", "value": "0", "contribution": 0.1},
    ]


def test_top_filters_by_tier_and_writes_a_spreadsheet_safe_csv(churn_home, capsys) -> None:
    _store_scores(churn_home)
    out = churn_home / "calls.csv"
    assert cli.main(["top", "--tier", "high", "--output", str(out)]) == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["customer_id"] for r in rows] == ["a", "'=b"]
    assert rows[0]["reason_1"] == "Contract=Month-to-month (+0.80)"
    assert rows[1]["expected_value"] == "160.0"
    # An existing file is replaced only when asked.
    assert cli.main(["top", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["top", "--output", str(out), "--overwrite", "--tier", "low"]) == 0
    assert out.read_text().count("\n") == 2


def test_top_before_any_scores_says_what_to_run(churn_home, capsys) -> None:
    assert cli.main(["top"]) == 1
    assert "churn-platform run" in capsys.readouterr().err


def test_a_run_that_scored_ends_with_where_the_scores_are_and_what_to_try() -> None:
    summary = {
        "assets": {"churn_scores": {"population_scored": 5174, "population_excluded": 1869}},
        "scores_path": "/home/warehouse/churn_scores/v-1",
    }
    message = runner.next_steps(summary)
    assert "5,174 customers who can still churn (1,869 excluded)" in message
    assert "/home/warehouse/churn_scores/v-1" in message
    for command in ("churn-platform top --n 20", "churn-platform score --input", "make ui"):
        assert command in message
    assert "http://127.0.0.1:3000" in message
    champion = {
        "name": "churn-telco",
        "version": "1",
        "model_kind": "bagged_lr",
        "metrics": {"roc_auc": 0.86384, "pr_auc": 0.6888, "f1": 0.6721, "recall": 0.7769},
    }
    lines = runner.champion_lines(champion)
    assert lines.startswith("champion: churn-telco v1 (bagged_lr): test ROC-AUC 0.8638")
    assert "at its threshold: F1 0.6721, recall 0.7769" in lines
    closing = f"{lines}\n{message}".replace(summary["scores_path"], "")
    assert all(len(line) <= 100 for line in closing.splitlines()), closing
    assert runner.champion_lines({"version": None, "reason": "no model"}) == (
        "champion: none yet (no model)"
    )


def test_each_asset_line_gives_its_key_figures_once() -> None:
    assert key_figure({"rows_out": 7043, "row_count": 7043, "rows_quarantined": 0}) == (
        "7,043 rows, 0 quarantined"
    )
    assert key_figure({"roc_auc": 0.86384, "row_count": 1409}) == "ROC-AUC 0.8638, 1,409 rows"
    assert key_figure({}) == ""


def test_on_a_terminal_still_running_lines_give_way_to_the_next_line(capsys) -> None:
    progress = RunProgress(None, ("tag", "value"), total=2, transient=True)
    progress.say("model_gbt: still running (30 s)", transient=True)
    progress.say("model_gbt: still running (60 s)", transient=True)
    progress.say("[1/2] model_gbt  85.9 s  ROC-AUC 0.8598")
    shown = capsys.readouterr().out
    assert shown == (
        "model_gbt: still running (30 s)\r\033[Kmodel_gbt: still running (60 s)"
        "\r\033[K[1/2] model_gbt  85.9 s  ROC-AUC 0.8598\n"
    )
    # What a terminal shows in the end: the asset's line only.
    assert shown.split("\r\033[K")[-1] == "[1/2] model_gbt  85.9 s  ROC-AUC 0.8598\n"


def test_in_a_log_every_line_stays() -> None:
    lines: list[str] = []
    progress = RunProgress(None, ("tag", "value"), total=2, emit=lines.append)
    progress.say("model_gbt: still running (30 s)", transient=True)
    progress.say("[1/2] model_gbt  85.9 s")
    assert lines == ["model_gbt: still running (30 s)", "[1/2] model_gbt  85.9 s"]
