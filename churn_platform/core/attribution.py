"""The attribution reasons are read from, and its copy beside the batch scores.

An attribution is a linear log-odds model over the feature vector plus the reference customer:
the champion itself for a logistic regression (exact), a surrogate fitted to it otherwise
(`core.reasons` fits one). The batch scores store theirs (`save_attribution`), so a file scored
later by the same model is explained the same way without the reference's and the surrogate's
Spark jobs (`load_attribution`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)
EXACT, SURROGATE = "exact", "surrogate"
# Beside a scores version: the attribution its reasons came from, and the model it explains.
STORED = "_reasons.json"
# Among a training run's artifacts: the reference customer measured on its training rows.
REFERENCE = "reasons_reference.json"


@dataclass(frozen=True)
class Attribution:
    """A linear log-odds model over the feature vector and the reference customer's vector."""

    method: str
    coefficients: np.ndarray
    intercept: float
    reference: np.ndarray
    slot_columns: tuple[str, ...]
    fidelity_r2: float | None = None
    # Vector slots the model also reads on a signed log scale (`stages.SignedLog`), in the order
    # their terms follow the vector's own: coefficients, reference and slot_columns hold them too.
    logged: tuple[int, ...] = ()

    @property
    def baseline_log_odds(self) -> float:
        """The reference customer's log-odds: every customer's contributions start from here."""
        return float(self.intercept + self.coefficients @ self.reference)

    def metadata(self) -> dict[str, Any]:
        described = {"reasons_method": self.method, "baseline_log_odds": self.baseline_log_odds}
        if self.fidelity_r2 is not None:
            described["reasons_surrogate_r2"] = self.fidelity_r2
        return described


def save_attribution(folder: Path, model: Sequence[str], attribution: Attribution) -> None:
    """Store `attribution` beside the scores in `folder` (Spark skips `_` files), with the
    model it explains: `model_identity`'s (name, version, file hash)."""
    stored = {
        "model": list(model),
        "method": attribution.method,
        "coefficients": attribution.coefficients.tolist(),
        "intercept": attribution.intercept,
        "reference": attribution.reference.tolist(),
        "slot_columns": list(attribution.slot_columns),
        "logged": list(attribution.logged),
    }
    (folder / STORED).write_text(json.dumps(stored))


def load_attribution(folder: Path | None, model: Sequence[str]) -> Attribution | None:
    """The attribution stored beside the scores in `folder`, if it explains `model` (else None:
    scores of an earlier champion, or written before attributions were stored). A file that
    does not read as one (damaged, edited) is reported and the reasons are measured again."""
    path = folder / STORED if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        if stored["model"] != list(model):
            return None
        attribution = Attribution(
            stored["method"],
            np.array(stored["coefficients"], dtype=float),
            float(stored["intercept"]),
            np.array(stored["reference"], dtype=float),
            tuple(stored["slot_columns"]),
            logged=tuple(stored["logged"]),
        )
        slots = len(attribution.slot_columns)
        if attribution.coefficients.shape != (slots,) or attribution.reference.shape != (slots,):
            raise ValueError(f"{slots} slot columns, vectors of {attribution.coefficients.shape}")
    except (ValueError, KeyError, TypeError) as exc:
        LOG.warning(
            "%s is unreadable (%s: %s): reasons are measured again", path, type(exc).__name__, exc
        )
        return None
    return attribution


def write_reference(path: Path, mean: np.ndarray | None, rows: int) -> None:
    """Store the reference customer (`reasons.reference_mean` over `rows` training customers)
    as a training run's artifact; an empty list where there were no rows."""
    stored = {"reference": [] if mean is None else mean.tolist(), "rows": rows}
    path.write_text(json.dumps(stored))


def read_reference(path: Path) -> np.ndarray | None:
    """The reference customer `write_reference` stored at `path`; None for a model logged before
    it was stored, a training without rows, or a file that does not read as one (reported)."""
    if not path.is_file():
        return None
    try:
        mean = np.array(json.loads(path.read_text())["reference"], dtype=float)
        if mean.ndim != 1:
            raise ValueError(f"a reference of shape {mean.shape}")
    except (ValueError, KeyError, TypeError) as exc:
        LOG.warning(
            "%s is unreadable (%s: %s): the reference is measured again",
            path,
            type(exc).__name__,
            exc,
        )
        return None
    return mean if mean.size else None
