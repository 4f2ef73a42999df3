"""Start-up benchmark: how long each command takes to answer, next to the imports it needs.

Each command runs in a fresh interpreter (as a user runs it) against a temporary state root
holding two registered model versions (no model files; these commands read only the registry),
`--runs` times one after the other; the table gives the median and the fastest run, the exit
code, and whether a java process appeared below it (polled every 20 ms). The baselines run the
same way in the same session: an empty interpreter, `import dagster`, `import pyspark`
(importing pyspark starts no JVM) and `import mlflow`. `status` runs once untimed first: the
first status after a code change builds the definitions and records their keys (the row
`status (keys not recorded)` removes that record before each run).

    .venv/bin/python benchmarks/startup.py
    .venv/bin/python benchmarks/startup.py --runs 5 --backup --score --json

`--score` and `--backup` need a real champion: the platform trains one in a second state root
(`generate`, then `run` with the quick profile and `--champion-models`, one logistic regression
by default: untimed, a few minutes; `decision_tree,stacking` gives an ensemble champion, whose
load reads more stages). `--score` times `score` on a file of its first 50 customers, next to the
JVM start it cannot avoid: a SparkSession with the platform's configuration running one job, and
the same with the short-lived JVM `score` starts for a small input (cli_common.scoring_session).
`--backup` times that champion's first backup once (it writes the golden input, hashes the
champion's predictions and re-scores them in the drill: Spark), then the backups after it
(the drill's proof reused: no Spark).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from mlflow import MlflowClient

from churn_platform.core.registry import METRIC_TAG_PREFIX
from churn_platform.core.tracking import CHAMPION, TAG_MODEL_KIND
from churn_platform.datasets import TELCO_FILE
from churn_platform.settings import load_settings
from churn_platform.status import GRAPH_KEYS_FILE

CLI = [sys.executable, "-m", "churn_platform.cli"]
BASELINES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    'python -c "import dagster"': [sys.executable, "-c", "import dagster"],
    'python -c "import pyspark"': [sys.executable, "-c", "import pyspark"],
    'python -c "import mlflow"': [sys.executable, "-c", "import mlflow"],
}
COMMANDS = {
    "--help": ["--help"],
    "score (missing input)": ["score", "--input", "missing.csv", "--output", "scores.csv"],
    "score (CSV without the model's columns)": [
        *("score", "--input", "two_columns.csv", "--output", "scores.csv")
    ],
    "run (missing --config)": ["run", "--config", "missing.yaml"],
    "incidents list": ["incidents", "list"],
    "logs verify": ["logs", "verify"],
    "restore --dry-run (none)": ["restore", "--partition", "2026-01-01", "--dry-run"],
    "status": ["status"],
    "audit --model champion": ["audit", "--model", "champion"],
    "model rollback (refused)": ["model", "rollback", "--to-version", "1"],
}
SCORE_ROWS = 50
SCORE = {
    f"score ({SCORE_ROWS} rows)": [
        *("score", "--input", f"customers_{SCORE_ROWS}.csv"),
        *("--output", "scores.csv", "--overwrite"),
    ]
}
JVM_START = (
    "from churn_platform.core.spark_setup import spark_session; "
    "from churn_platform.settings import load_settings; "
    "spark_session(load_settings()).range(1).count()"
)
SCORE_JVM_START = (
    "from pathlib import Path; "
    "from churn_platform.cli_common import scoring_session; "
    "from churn_platform.settings import load_settings; "
    f"scoring_session(load_settings(), Path('customers_{SCORE_ROWS}.csv')).range(1).count()"
)


def registry(home: Path) -> None:
    """A decision tree v1 and a logistic-regression champion v2, as after two trainings."""
    client = MlflowClient(tracking_uri=load_settings({"CHURN_HOME": str(home)}).mlflow_tracking_uri)
    client.create_registered_model("churn-telco")
    for kind, roc_auc in (("decision_tree", "0.8232"), ("logistic_regression", "0.8627")):
        tags = {TAG_MODEL_KIND: kind, f"{METRIC_TAG_PREFIX}roc_auc": roc_auc}
        version = client.create_model_version("churn-telco", str(home / "model"), tags=tags)
    client.set_registered_model_alias("churn-telco", CHAMPION, version.version)


def trained_champion(home: Path, env: dict[str, str]) -> None:
    """A champion the platform trained on synthetic customers, and `customers_50.csv` beside
    `home` holding the first of them (untimed)."""
    data = home / "data" / TELCO_FILE
    quiet = {"env": env, "cwd": home.parent, "check": True, "stdout": subprocess.DEVNULL}
    subprocess.run([*CLI, "generate", "--rows", "2000", "--output", str(data)], **quiet)
    subprocess.run([*CLI, "run"], **quiet)
    lines = data.read_text().splitlines()[: SCORE_ROWS + 1]
    (home.parent / f"customers_{SCORE_ROWS}.csv").write_text("\n".join(lines) + "\n")


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, bool]:
    """Wall seconds, exit code, and whether a java process ran below the command."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    java = False
    parent = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            java = java or any("java" in p.name() for p in parent.children(recursive=True))
        except psutil.Error:
            pass
        time.sleep(0.02)
    return time.perf_counter() - started, process.returncode, java


def measure(
    commands: dict[str, list[str]],
    runs: int,
    env: dict[str, str],
    cwd: Path,
    before: dict[str, Callable[[], None]] | None = None,
) -> list[dict]:
    """Each command `runs` times; `before[name]`, if any, runs untimed ahead of each run."""
    rows = []
    for name, command in commands.items():
        results = []
        for _ in range(runs):
            (before or {}).get(name, lambda: None)()
            results.append(timed(command, env, cwd))
        seconds = [s for s, _, _ in results]
        rows.append(
            {
                "command": name,
                "median_s": round(statistics.median(seconds), 2),
                "fastest_s": round(min(seconds), 2),
                "exit": results[-1][1],
                "jvm": any(java for _, _, java in results),
            }
        )
        print(f"  {name}: {rows[-1]['median_s']} s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown rows with each median as a multiple of `import dagster`'s in the same run."""
    dagster = next(r["median_s"] for r in rows if r["command"] == 'python -c "import dagster"')
    lines = [
        "| command | median s | fastest s | x import dagster | exit | JVM started |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['command']}` | {row['median_s']:.2f} | {row['fastest_s']:.2f} "
            f"| {row['median_s'] / dagster:.1f} | {row['exit']} | {'yes' if row['jvm'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--backup", action="store_true", help="also time `backup` (trains)")
    parser.add_argument("--score", action="store_true", help="also time `score` (trains)")
    parser.add_argument(
        "--champion-models",
        default="logistic_regression",
        help="CHURN_MODELS of the champion --score and --backup train (default: one LR)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as folder:
        home = Path(folder) / "home"
        home.mkdir()
        registry(home)
        (Path(folder) / "two_columns.csv").write_text("customerID,gender\nC-1,Male\n")
        settings = load_settings({"CHURN_HOME": str(home)})
        env = settings.child_env()
        subprocess.run([*CLI, "status"], env=env, cwd=folder, stdout=subprocess.DEVNULL)
        load = os.getloadavg()[0]
        print(f"{args.runs} runs each, {os.cpu_count()} cores, load {load:.1f}", file=sys.stderr)
        commands = {
            **BASELINES,
            **{f"churn-platform {n}": [*CLI, *a] for n, a in COMMANDS.items()},
            "churn-platform status (keys not recorded)": [*CLI, "status"],
        }
        record = settings.dagster_storage / GRAPH_KEYS_FILE
        forget = {"churn-platform status (keys not recorded)": lambda: record.unlink(True)}
        rows = measure(commands, args.runs, env, Path(folder), forget)
        if args.score or args.backup:
            trained = Path(folder) / "trained"
            rows += with_champion(trained, args.runs, args.score, args.backup, args.champion_models)
    print(f"load average at the start: {load:.1f} ({os.cpu_count()} cores)")
    print(table(rows))
    if args.json:
        print(json.dumps(rows))


def with_champion(
    folder: Path, runs: int, score: bool, backup: bool, models: str = "logistic_regression"
) -> list[dict]:
    """`score` and `backup` against a state root whose champion the platform trained."""
    home = folder / "home"
    home.mkdir(parents=True)
    extra = {"CHURN_HOME": str(home), "CHURN_TRAINING_PROFILE": "quick"}
    env = load_settings({**extra, "CHURN_MODELS": models}).child_env()
    print("  training a champion (untimed)", file=sys.stderr, flush=True)
    trained_champion(home, env)
    rows = []
    if score:
        scoring = {
            "JVM start: SparkSession + 1 job": [sys.executable, "-c", JVM_START],
            "JVM start, score's small-input JVM": [sys.executable, "-c", SCORE_JVM_START],
            **{f"churn-platform {n}": [*CLI, *a] for n, a in SCORE.items()},
        }
        rows += measure(scoring, runs, env, folder)
    if backup:
        first = {"churn-platform backup (champion's first)": [*CLI, "backup"]}
        rows += measure(first, 1, env, folder)
        rows += measure({"churn-platform backup": [*CLI, "backup"]}, runs, env, folder)
    return rows


if __name__ == "__main__":
    main()
