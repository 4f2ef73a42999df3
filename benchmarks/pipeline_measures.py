"""How benchmarks/pipeline.py measures and reports a run: the memory sampler, the measured run
(step spans, Spark jobs, memory samples) by layer, and the tables and JSON line it prints."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psutil

from churn_platform.core.models.kinds import MODEL_KINDS, model_key

SAMPLE_SECONDS = 0.2
PF_FORKNOEXEC = 0x40
MB = 2**20
LAYERS = ("raw", "cleaned", "features", "training", "scoring", "other")
ETL_LAYERS = ("raw", "cleaned", "features")
# Step names of the asset graph; the baselines use the same names for the same work, plus
# "training_sample" for the training frame the platform builds inside its first model step.
STEP_LAYERS = {
    "raw_customers": "raw",
    "cleaned_customers": "cleaned",
    "customer_features": "features",
    "training_sample": "training",
    "model_leaderboard": "training",
    "champion_model": "training",
    "churn_scores": "scoring",
}
MODEL_STEPS = frozenset(model_key(kind) for kind in MODEL_KINDS)


def layer_of(step: str) -> str:
    if step in STEP_LAYERS:
        return STEP_LAYERS[step]
    return "training" if step in MODEL_STEPS else "other"


@dataclass(frozen=True)
class Sample:
    at: float
    driver: int
    jvm: int


class MemorySampler:
    """Polls the RSS of a process and of all its descendants from a background thread."""

    def __init__(self, pid: int) -> None:
        self.samples: list[Sample] = []
        self._process = psutil.Process(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                driver = self._process.memory_info()
                children = self._process.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            seen = {self._process.pid: driver}
            jvm = 0
            for child in children:  # parents come before their children
                with contextlib.suppress(psutil.Error, OSError):  # a child that ended
                    unexeced = _not_execed(child.pid)
                    memory = seen[child.pid] = child.memory_info()
                    parent = seen.get(child.ppid())
                    if not (unexeced and parent and _same_size(memory.vms, parent.vms)):
                        jvm += memory.rss
            self.samples.append(Sample(time.time(), driver.rss, jvm))
            self._done.wait(SAMPLE_SECONDS)


def _not_execed(pid: int) -> bool:
    """Whether a process is a clone that has not called exec yet (the kernel's PF_FORKNOEXEC).

    The JVM starts commands (Hadoop's `chmod` while writing, for one) by posix_spawn: until its
    exec the child shares the JVM's address space and reports the JVM's whole RSS. Counting it
    counted the JVM twice or three times (peaks of 9.6 and 14.8 GB for a 4.9 GB JVM). The flag
    is read before the child's memory, so a child that execs in between is counted, small.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    return bool(int(stat.rpartition(")")[2].split()[6]) & PF_FORKNOEXEC)


def _same_size(a: int, b: int) -> bool:
    """Virtual sizes read a moment apart from one address space (the JVM maps as it runs)."""
    return abs(a - b) <= 0.01 * max(a, b)


@dataclass(frozen=True)
class Run:
    """One measured run: its timed window, step spans, champion and memory samples."""

    name: str
    start: float
    end: float
    steps: dict[str, tuple[float, float]]
    champion: str
    roc_auc: float
    retried: list[str]
    samples: list[Sample]
    jobs: list[float]

    @property
    def total(self) -> float:
        return self.end - self.start

    def seconds(self, layer: str | None = None, step: str | None = None) -> float:
        """Seconds of one step, of one layer's steps, or (no argument) of all steps."""
        return sum(
            end - start
            for name, (start, end) in self.steps.items()
            if (step is None or name == step) and (layer is None or layer_of(name) == layer)
        )

    def job_count(self, layer: str | None = None) -> int:
        """Spark jobs submitted while a layer's steps ran (or in the whole run)."""
        spans = [s for name, s in self.steps.items() if layer is None or layer_of(name) == layer]
        return sum(1 for t in self.jobs if any(a <= t <= b for a, b in spans))

    def peak_mb(self, layer: str | None = None) -> tuple[float, float]:
        """Peak driver and JVM RSS while a layer's steps ran (or over the whole process)."""
        windows = [span for name, span in self.steps.items() if layer_of(name) == layer]
        pad = SAMPLE_SECONDS
        inside = [
            s
            for s in self.samples
            if layer is None or any(a - pad <= s.at <= b + pad for a, b in windows)
        ]
        if not inside:
            return math.nan, math.nan
        return max(s.driver for s in inside) / MB, max(s.jvm for s in inside) / MB

    @property
    def peak_total_mb(self) -> float:
        return max((s.driver + s.jvm for s in self.samples), default=0) / MB


def _cell(value: float, digits: int = 1) -> str:
    return "-" if not value or math.isnan(value) else f"{value:,.{digits}f}"


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}" if seconds > 0 else "-"


def platform_table(run: Run, rows: int) -> str:
    header = f"{'layer':<10}{'wall s':>10}{'rows/s':>12}{'jobs':>7}{'driver MB':>12}{'JVM MB':>10}"
    lines = [header, "-" * len(header)]
    for layer in LAYERS:
        seconds = run.seconds(layer)
        if layer == "other" and not seconds:
            continue
        driver, jvm = run.peak_mb(layer)
        lines.append(
            f"{layer:<10}{seconds:>10.1f}{_rate(rows, seconds):>12}{run.job_count(layer):>7}"
            f"{_cell(driver, 0):>12}{_cell(jvm, 0):>10}"
        )
    lines.append(f"{'overhead':<10}{run.total - run.seconds():>10.1f}")
    driver, jvm = run.peak_mb()
    lines.append(
        f"{'total':<10}{run.total:>10.1f}{_rate(rows, run.total):>12}{len(run.jobs):>7}"
        f"{_cell(driver, 0):>12}{_cell(jvm, 0):>10}"
    )
    other = sorted(step for step in run.steps if layer_of(step) == "other")
    lines += [
        "rows/s: input customers / wall time. jobs: Spark jobs submitted in the layer's steps.",
        "MB: peak RSS while the layer ran.",
        "training: model_* steps, model_leaderboard, champion_model (MLflow registry).",
        *([f"other: {', '.join(other)}."] if other else []),
        "overhead: total minus steps: Spark start-up, Dagster run set-up, between-step work.",
    ]
    return "\n".join(lines)


def compare_table(runs: Mapping[str, Run], rows: int) -> str:
    names = list(runs)
    platform = runs["platform"]
    ratios = [name for name in names if name != "platform"]
    header = (
        f"{'seconds':<28}"
        + "".join(f"{name:>11}" for name in names)
        + "".join(f"{'platform/' + name:>18}" for name in ratios)
    )

    def row(label: str, values: dict[str, float]) -> str:
        cells = "".join(f"{_cell(values[name]):>11}" for name in names)
        cells += "".join(
            f"{platform_ratio(values['platform'], values[name]):>18}" for name in ratios
        )
        return f"{label:<28}{cells}"

    lines = [header, "-" * len(header)]
    for layer in LAYERS:
        lines.append(row(layer, {n: r.seconds(layer) for n, r in runs.items()}))
        if layer == "training":
            for step in (model_key(k) for k in MODEL_KINDS if model_key(k) in platform.steps):
                lines.append(row(f"  {step}", {n: r.seconds(step=step) for n, r in runs.items()}))
    lines.append(row("overhead", {n: r.total - r.seconds() for n, r in runs.items()}))
    lines.append(row("total", {n: r.total for n, r in runs.items()}))
    lines.append(
        f"{'peak driver / JVM RSS MB':<28}"
        + "".join(f"{'/'.join(_cell(mb, 0) for mb in r.peak_mb()):>11}" for r in runs.values())
    )
    lines.append(f"{'Spark jobs':<28}" + "".join(f"{'':>11}" for _ in names))
    for layer in LAYERS:
        lines.append(f"  {layer:<26}" + "".join(f"{r.job_count(layer):>11}" for r in runs.values()))
    lines.append(
        f"{'data layers rows/s':<28}"
        + "".join(
            f"{_rate(rows, sum(r.seconds(x) for x in ETL_LAYERS)):>11}" for r in runs.values()
        )
    )
    champions = ", ".join(
        f"{n} {r.champion} ({r.roc_auc:.4f})" for n, r in runs.items() if r.champion != "-"
    )
    if champions:
        lines.append(f"champion (test ROC-AUC): {champions}")
    return "\n".join(lines)


def platform_ratio(platform: float, other: float) -> str:
    """platform / other, unless either side is too short (under 0.05 s) to mean anything."""
    return f"{platform / other:.2f}x" if min(platform, other) >= 0.05 else "-"


def summary(rows: int, runs: Mapping[str, Run]) -> dict[str, Any]:
    """The --json line: platform throughput and peak memory, and the three totals."""
    platform = runs["platform"]
    etl_seconds = sum(platform.seconds(layer) for layer in ETL_LAYERS)

    def per_second(seconds: float) -> float | None:  # None for a layer the run left out
        return round(rows / seconds, 1) if seconds >= 0.05 else None

    return {
        "rows": rows,
        "platform_s": round(platform.total, 2),
        "pyspark_s": round(runs["pyspark"].total, 2) if "pyspark" in runs else None,
        "pandas_s": round(runs["pandas"].total, 2) if "pandas" in runs else None,
        "etl_rows_per_s": per_second(etl_seconds),
        "score_rows_per_s": per_second(platform.seconds("scoring")),
        "peak_rss_mb": round(platform.peak_total_mb, 1),
    }
