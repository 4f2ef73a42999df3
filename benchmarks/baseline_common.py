"""What every baseline run of benchmarks/pipeline_baselines.py shares: its step clock and
the trained model it reports."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timeline:
    """Wall-clock spans per step, in epoch seconds: the clock of Dagster's event log."""

    steps: dict[str, tuple[float, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.time()
        yield
        self.steps[name] = (started, time.time())


@dataclass(frozen=True)
class Candidate:
    """A trained model as the leaderboard sees it."""

    kind: str
    model: Any
    threshold: float
    roc_auc: float
    cv_roc_auc: float


def champion_of(candidates: Sequence[Candidate]) -> Candidate:
    """The leaderboard's winner: best test ROC-AUC, then CV mean, then name (leaderboard_rows)."""
    return min(candidates, key=lambda c: (-c.roc_auc, -c.cv_roc_auc, c.kind))
