"""Start-up benchmark: how long each command that needs no Spark takes, next to the imports.

Each command runs in a fresh interpreter (as a user runs it) against a temporary state root
holding two registered model versions (no model files; these commands read only the registry),
`--runs` times one after the other; the table gives the median and the fastest run, the exit
code, and whether a java process appeared below it (polled every 20 ms). The baselines run the
same way in the same session: an empty interpreter, `import dagster`, `import pyspark`
(importing pyspark starts no JVM) and `import mlflow`.

    .venv/bin/python benchmarks/startup.py
    .venv/bin/python benchmarks/startup.py --runs 5 --backup --json

`--backup` adds `backup`, which materializes the backup partition: it starts Spark for the
champion's golden predictions and the restore drill, and writes an archive per run.
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
from pathlib import Path

import psutil
from mlflow import MlflowClient

from churn_platform.core.registry import METRIC_TAG_PREFIX
from churn_platform.core.tracking import CHAMPION, TAG_MODEL_KIND
from churn_platform.settings import load_settings

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
    "run (missing --config)": ["run", "--config", "missing.yaml"],
    "incidents list": ["incidents", "list"],
    "logs verify": ["logs", "verify"],
    "restore --dry-run (none)": ["restore", "--partition", "2026-01-01", "--dry-run"],
    "status": ["status"],
    "audit --model champion": ["audit", "--model", "champion"],
    "model rollback (refused)": ["model", "rollback", "--to-version", "1"],
}
BACKUP = {"backup": ["backup"]}


def registry(home: Path) -> None:
    """A decision tree v1 and a logistic-regression champion v2, as after two trainings."""
    client = MlflowClient(tracking_uri=load_settings({"CHURN_HOME": str(home)}).mlflow_tracking_uri)
    client.create_registered_model("churn-telco")
    for kind, roc_auc in (("decision_tree", "0.8232"), ("logistic_regression", "0.8627")):
        tags = {TAG_MODEL_KIND: kind, f"{METRIC_TAG_PREFIX}roc_auc": roc_auc}
        version = client.create_model_version("churn-telco", str(home / "model"), tags=tags)
    client.set_registered_model_alias("churn-telco", CHAMPION, version.version)


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
    commands: dict[str, list[str]], runs: int, env: dict[str, str], cwd: Path
) -> list[dict]:
    rows = []
    for name, command in commands.items():
        results = [timed(command, env, cwd) for _ in range(runs)]
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
    lines = [
        "| command | median s | fastest s | exit | JVM started |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['command']}` | {row['median_s']:.2f} | {row['fastest_s']:.2f} "
            f"| {row['exit']} | {'yes' if row['jvm'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--backup", action="store_true", help="also time `backup` (starts Spark)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as folder:
        home = Path(folder) / "home"
        home.mkdir()
        registry(home)
        env = load_settings({"CHURN_HOME": str(home)}).child_env()
        load = os.getloadavg()[0]
        print(f"{args.runs} runs each, {os.cpu_count()} cores, load {load:.1f}", file=sys.stderr)
        commands = {
            **BASELINES,
            **{f"churn-platform {n}": [*CLI, *a] for n, a in COMMANDS.items()},
            **(
                {f"churn-platform {n}": [*CLI, *a] for n, a in BACKUP.items()}
                if args.backup
                else {}
            ),
        }
        rows = measure(commands, args.runs, env, Path(folder))
    print(f"load average at the start: {load:.1f} ({os.cpu_count()} cores)")
    print(table(rows))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
