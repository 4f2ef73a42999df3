"""Replay demo: drop customer batches into the inbox one at a time, as new data would arrive."""

import csv
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

from churn_platform.datasets import TELCO_FILE, ensure_telco_csv
from churn_platform.settings import Settings


def _drop(inbox: Path, name: str, write) -> Path:
    """Write under a hidden name, then rename: the inbox sensor never sees a half file."""
    inbox.mkdir(parents=True, exist_ok=True)
    staging = inbox / f".{name}.part"
    write(staging)
    target = inbox / name
    os.replace(staging, target)
    return target


def sample_batches(csv_path: Path, batches: int, seed: int) -> list[list[list[str]]]:
    """The sample's rows shuffled (seeded) and cut into `batches` parts, header first."""
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    random.Random(seed).shuffle(body)
    size = -(-len(body) // batches)
    return [[header, *body[i : i + size]] for i in range(0, len(body), size)]


def simulate(
    settings: Settings,
    batches: int = 4,
    interval: float = 120.0,
    synthetic_rows: int = 0,
    drift: float = 0.0,
    seed: int = 7,
) -> Iterator[Path]:
    """Yield each dropped file; the last synthetic batch carries `drift` to lower model quality."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    if synthetic_rows:
        from churn_platform.core.spark_setup import spark_session
        from churn_platform.core.synthetic.generate import generate_customers
        from churn_platform.core.synthetic.write import write_customers

        spark = spark_session(settings)
        for i in range(batches):
            batch_drift = drift if i == batches - 1 else 0.0
            df = generate_customers(
                spark,
                synthetic_rows,
                seed=seed + i,
                drift=batch_drift,
                id_start=i * synthetic_rows,
            )
            name = f"synthetic-{stamp}-{i + 1:02d}.csv"
            yield _drop(settings.inbox, name, lambda p, df=df: write_customers(df, p, fmt="csv"))
            if i < batches - 1:
                time.sleep(interval)
        return
    sample = settings.data_dir / TELCO_FILE
    if not sample.exists():
        ensure_telco_csv(settings.data_dir)
    parts = sample_batches(sample, batches, seed)
    for i, rows in enumerate(parts):

        def write(path: Path, rows=rows) -> None:
            with path.open("w", newline="") as handle:
                csv.writer(handle, lineterminator="\n").writerows(rows)

        yield _drop(settings.inbox, f"sample-{stamp}-{i + 1:02d}.csv", write)
        if i < len(parts) - 1:
            time.sleep(interval)
