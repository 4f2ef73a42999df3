"""Inbox drop to re-scored customers with the real daemon (issue 16: within 5 minutes).

A state root that already has a champion: `--home` (for instance `make demo`'s `.churn_home`),
or by default one built in a temporary folder the way `make demo` builds it (`fetch-data`, then
`run` with every enabled model and the default profile; untimed). Then `churn-platform serve`'s
webserver and daemon run (`server.running_platform`, the settings' own inbox and automation
intervals), and a file of `--rows` generated Telco-shaped customers is moved into the inbox as
the state's next batch. Printed: seconds from the drop to each step's first materialization
after it (raw, cleaned, features, every model, the champion decision) and to the scores written
after that decision, which is the figure the README gives. Scores written before it (the scores
also follow the cleaned layer) are listed too.

    .venv/bin/python benchmarks/daemon.py
    .venv/bin/python benchmarks/daemon.py --home .churn_home --rows 1000 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import dagster as dg

from churn_platform.cluster import free_port
from churn_platform.core.models.kinds import MODEL_KINDS, model_key
from churn_platform.core.synthetic.generate import ID_SPACE
from churn_platform.core.versions import current_version
from churn_platform.server import running_platform
from churn_platform.settings import load_settings

CLI = [sys.executable, "-m", "churn_platform.cli"]
DATA_STEPS = ("raw_customers", "cleaned_customers", "customer_features")
CHAMPION, SCORES = "champion_model", "churn_scores"
POLL_S = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="a state root with a champion (default: build)")
    parser.add_argument("--rows", type=int, default=1000, help="customers in the dropped file")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds to wait at most")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument(
        "--log",
        type=Path,
        default=Path(tempfile.gettempdir()) / "churn-daemon-bench.log",
        help="where the webserver's, daemon's and runs' output goes",
    )
    return parser.parse_args(argv)


def built_state(folder: Path) -> Path:
    """A state root as `make demo` leaves it: the default data, every model trained."""
    home = folder / "home"
    env = load_settings({"CHURN_HOME": str(home)}).child_env()
    for command in (["fetch-data"], ["run"]):
        print(f"  churn-platform {command[0]} (untimed)", file=sys.stderr, flush=True)
        subprocess.run([*CLI, *command], env=env, check=True, stdout=subprocess.DEVNULL)
    return home


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[TextIO]:
    """The platform's processes inherit this process's stdout and stderr: both point at `log`
    while they run. Yields the terminal's stderr, for progress lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("ab") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    try:
        with os.fdopen(os.dup(saved[1]), "w", buffering=1) as terminal:
            yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, target in zip(saved, (1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)


def latest(instance: dg.DagsterInstance, key: str) -> float | None:
    """Epoch seconds of the asset's latest materialization, any partition."""
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return event.timestamp if event is not None else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="daemon-bench-") as tmp:
        home = (args.home or built_state(Path(tmp))).resolve()
        settings = load_settings({"CHURN_HOME": str(home)})
        if current_version(settings.warehouse / SCORES) is None:
            sys.exit(f"{home}: no churn_scores yet; run `churn-platform run` on it first")
        settings.export_library_env()
        models = [model_key(k) for k in (settings.models or MODEL_KINDS)]
        batch = Path(tmp) / "batch.csv"
        # A block of ids per second of the clock: each run drops customers the state has not
        # seen (an earlier run's block, reused with --home, would only update them).
        id_start = int(time.time()) * args.rows % (ID_SPACE - args.rows)
        subprocess.run(
            [*CLI, "generate", "--rows", str(args.rows), "--output", str(batch)]
            + ["--id-start", str(id_start)],
            env=settings.child_env(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        watched = (*DATA_STEPS, *models, CHAMPION)
        after: dict[str, float] = {}
        scores: list[float] = []
        with (
            output_to(args.log) as terminal,
            running_platform(settings, free_port(), daemon=True) as url,
        ):
            print(
                f"  platform up at {url} (output: {args.log}); dropping {args.rows} customers",
                file=terminal,
            )
            settings.inbox.mkdir(exist_ok=True)
            staged = settings.inbox / f".{batch.name}.part"  # not *.csv: unseen until renamed
            staged.write_bytes(batch.read_bytes())
            dropped = time.time()
            staged.rename(settings.inbox / f"batch-{int(dropped)}.csv")
            with dg.DagsterInstance.from_config(str(settings.dagster_storage)) as instance:
                while time.time() - dropped < args.deadline:
                    for key in watched:
                        stamp = latest(instance, key)
                        if key not in after and stamp is not None and stamp > dropped:
                            after[key] = stamp - dropped
                            print(f"  {after[key]:7.1f} s  {key}", file=terminal, flush=True)
                    stamp = latest(instance, SCORES)
                    if stamp is not None and stamp > dropped and stamp - dropped not in scores:
                        scores.append(stamp - dropped)
                        print(f"  {scores[-1]:7.1f} s  {SCORES}", file=terminal, flush=True)
                    if CHAMPION in after and any(s > after[CHAMPION] for s in scores):
                        break
                    time.sleep(POLL_S)
    rescored = next((s for s in scores if CHAMPION in after and s > after[CHAMPION]), None)
    result = {
        "rows": args.rows,
        "home": str(home),
        "after_drop_s": after,
        "scores_after_drop_s": scores,
        "models_retrained": sum(m in after for m in models),
        "models": len(models),
        "rescored_after_champion_s": rescored,
    }
    print(f"| step | seconds after the drop of {args.rows} customers |")
    print("|---|---:|")
    for key in watched:
        print(f"| {key} | {after[key]:.1f} |" if key in after else f"| {key} | not seen |")
    for seconds in scores:
        print(f"| {SCORES} | {seconds:.1f} |")
    print(
        f"models retrained: {result['models_retrained']} of {len(models)}; customers re-scored "
        f"after the champion decision: {rescored if rescored is None else f'{rescored:.1f} s'}"
    )
    if args.json:
        print(json.dumps(result))
    return 0 if rescored is not None else 1


if __name__ == "__main__":
    sys.exit(main())
