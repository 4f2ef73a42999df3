"""How every model is judged: threshold out of fold, metrics on the test split, curves.

Predictions arrive on the driver as numpy arrays (one Arrow collect of id, label and
probability): at the platform's sizes (training rows capped, test a fifth of the customers)
sorting a few million numbers in numpy is far cheaper than the dozens of Spark jobs a
distributed exact AUC needs. ROC-AUC and average precision come from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

THRESHOLD_STRATEGIES = ("f1", "profit")
LEADERBOARD_METRICS = ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "brier")
RANKING_METRIC = "roc_auc"
# Fitted on the older batches, judged on the newest (present only once two batches arrived).
OUT_OF_TIME_METRICS = ("oot_roc_auc", "oot_pr_auc", "oot_brier")
# An ensemble (stacking, voting) against the best of its own bases out of fold.
BASE_COMPARISON_METRICS = ("best_base_cv_roc_auc", "cv_gain_over_best_base")


def _as_arrays(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {p.shape} must be equal-length vectors")
    if len(y) == 0:
        raise ValueError("no predictions to evaluate")
    return y, p


def ranking_metrics(labels: Any, scores: Any) -> tuple[float, float]:
    """Exact ROC-AUC (ties count one half) and average precision; NaN with one class only."""
    y, p = _as_arrays(labels, scores)
    if y.min() == y.max():
        return float("nan"), float("nan")
    return float(roc_auc_score(y, p)), float(average_precision_score(y, p))


def evaluate(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """Metrics of the scores against the labels; churn is predicted when p >= threshold.

    pr_auc is average precision (step-wise, no interpolation), as scikit-learn defines it.
    """
    y, p = _as_arrays(labels, scores)
    hit = p >= threshold
    tp = int(np.sum(hit & (y == 1)))
    fp = int(np.sum(hit & (y == 0)))
    tn = int(np.sum(~hit & (y == 0)))
    fn = int(np.sum(~hit & (y == 1)))
    roc_auc, pr_auc = ranking_metrics(y, p)
    return {
        "accuracy": (tp + tn) / len(y),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "brier": float(np.mean((p - y) ** 2)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def roc_auc_by_group(labels: Any, scores: Any, groups: Any) -> dict[Any, float]:
    """ROC-AUC of each group (e.g. each CV fold); NaN for a group with one class."""
    y, p = _as_arrays(labels, scores)
    g = np.asarray(groups)
    return {key.item(): ranking_metrics(y[g == key], p[g == key])[0] for key in np.unique(g)}


def choose_threshold(
    labels: Any,
    scores: Any,
    strategy: str = "f1",
    cost_missed_churner: float = 0.0,
    cost_retention_offer: float = 0.0,
) -> tuple[float, float]:
    """The churn threshold that is best on out-of-fold predictions, and its value there.

    Candidates are the distinct scores (churn predicted when p >= threshold). "f1" maximises
    F1. "profit" maximises cost_missed_churner x churners caught - cost_retention_offer x
    customers contacted; when no threshold saves money it returns a threshold above every
    score (contact nobody) and 0.0. Ties go to the highest threshold (fewest contacted).
    """
    if strategy not in THRESHOLD_STRATEGIES:
        raise ValueError(f"unknown threshold strategy {strategy!r}; use 'f1' or 'profit'")
    if strategy == "profit" and (cost_missed_churner <= 0 or cost_retention_offer < 0):
        raise ValueError(
            "the profit strategy needs CHURN_COST_MISSED_CHURNER > 0 and "
            "CHURN_COST_RETENTION_OFFER >= 0"
        )
    y, p = _as_arrays(labels, scores)
    order = np.argsort(-p, kind="stable")
    p_desc, y_desc = p[order], y[order]
    # Last index of each distinct score, going down: counts at "p >= that score".
    last = np.flatnonzero(np.r_[p_desc[1:] != p_desc[:-1], True])
    tp = np.cumsum(y_desc)[last].astype(float)
    contacted = (last + 1).astype(float)
    if strategy == "f1":
        value = np.where(tp > 0, 2 * tp / (contacted + y.sum()), 0.0)
    else:
        value = cost_missed_churner * tp - cost_retention_offer * contacted
    best = int(np.argmax(value))  # first maximum = highest threshold among ties
    if strategy == "profit" and value[best] <= 0:
        return float(np.nextafter(p_desc[0], np.inf)), 0.0
    return float(p_desc[last[best]]), float(value[best])


@dataclass(frozen=True)
class Curves:
    """The three curves of a model's test predictions, as (x, y) arrays."""

    roc: tuple[np.ndarray, np.ndarray]  # false positive rate, true positive rate
    precision_recall: tuple[np.ndarray, np.ndarray]  # recall, precision
    calibration: tuple[np.ndarray, np.ndarray]  # mean predicted probability, observed rate
    roc_auc: float
    churn_rate: float


def curves(labels: Any, scores: Any) -> Curves:
    """ROC, precision-recall and reliability (10 equal-width bins) curves of the scores.

    Compute them once per model: at 10M customers (2M test rows) this takes about 2 s.
    """
    y, p = _as_arrays(labels, scores)
    if y.min() == y.max():
        raise ValueError("curves need both churners and non-churners in the predictions")
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    bins = np.minimum((p * 10).astype(int), 9)
    count = np.bincount(bins, minlength=10)
    filled = count > 0
    mean_p = np.bincount(bins, p, 10)[filled] / count[filled]
    rate = np.bincount(bins, y, 10)[filled] / count[filled]
    return Curves(
        (fpr, tpr),
        (recall, precision),
        (mean_p, rate),
        # roc_auc_score's own computation (the area under this curve), without its second sort.
        float(auc(fpr, tpr)),
        float(y.mean()),
    )


def plot_curves(found: Curves, out_dir: Path | str) -> dict[str, Path]:
    """ROC, precision-recall and reliability PNGs of `curves` (matplotlib's Figure API: no
    pyplot state); each line drawn through at most `PLOT_POINTS` of its points."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "roc": out / "roc_curve.png",
        "precision_recall": out / "precision_recall_curve.png",
        "calibration": out / "calibration_curve.png",
    }
    figure, axes = _figure()
    axes.plot(*thinned(found.roc, PLOT_POINTS), label=f"model (AUC {found.roc_auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    _save(figure, axes, paths["roc"])

    figure, axes = _figure()
    axes.plot(*thinned(found.precision_recall, PLOT_POINTS), label="model")
    axes.axhline(found.churn_rate, linestyle="--", color="grey", label="churn rate")
    axes.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve", ylim=(0, 1.02))
    _save(figure, axes, paths["precision_recall"])

    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot(*found.calibration, marker="o", label="model")
    axes.set(
        xlabel="Mean predicted churn probability",
        ylabel="Observed churn rate",
        title="Reliability (10 bins)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    _save(figure, axes, paths["calibration"])
    return paths


# Thumbnails: at most this many vertices per curve keep an SVG at a few hundred characters
# (one percent of the axis per coordinate), small enough for a UI to show inline.
SVG_POINTS = 40
# A 550-pixel plot shows no more: a precision-recall curve has a point per test customer (2M at
# 10M customers), and drawing them all took matplotlib over a second per model.
PLOT_POINTS = 2_000


def thinned(curve: tuple[np.ndarray, np.ndarray], points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `points` of the curve's points, evenly spaced along it, first and last kept."""
    x, y = curve
    keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), points)).round().astype(int))
    return x[keep], y[keep]


def curve_svgs(found: Curves) -> dict[str, str]:
    """The three curves as small self-contained SVG images (unit square, reference dashed).

    References: the diagonal for ROC and calibration, the churn rate for precision-recall.
    """
    rate = 100 - round(found.churn_rate * 100)
    return {
        "roc": _svg(found.roc, "M0 100L100 0"),
        "precision_recall": _svg(found.precision_recall, f"M0 {rate}H100"),
        "calibration": _svg(found.calibration, "M0 100L100 0"),
    }


def _svg(curve: tuple[np.ndarray, np.ndarray], reference: str) -> str:
    x, y = (np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0) for v in curve)
    x, y = thinned((x, y), SVG_POINTS)
    points = " ".join(f"{round(a * 100)},{100 - round(b * 100)}" for a, b in zip(x, y, strict=True))
    return (
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='-2 -2 104 104' width='180' "
        "height='180'><rect width='100' height='100' fill='#fff' stroke='#999'/>"
        f"<path d='{reference}' stroke='#999' stroke-dasharray='3'/>"
        f"<polyline points='{points}' fill='none' stroke='#1f77b4' stroke-width='1.5'/></svg>"
    )


def _figure() -> tuple[Figure, Any]:
    figure = Figure(figsize=(5.5, 5), dpi=100)
    return figure, figure.add_subplot()


def _save(figure: Figure, axes: Any, path: Path) -> None:
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, format="png")


def judge(
    oof: Mapping[str, Any],
    test: Mapping[str, Any],
    strategy: str = "f1",
    cost_missed_churner: float = 0.0,
    cost_retention_offer: float = 0.0,
) -> tuple[float, float, dict[str, float]]:
    """The one way every model is judged: (threshold, its OOF value, test metrics + CV AUC).

    `oof` and `test` map "label", "churn_probability" (and `oof` "fold") to arrays.
    """
    threshold, value = choose_threshold(
        oof["label"], oof["churn_probability"], strategy, cost_missed_churner, cost_retention_offer
    )
    metrics = evaluate(test["label"], test["churn_probability"], threshold)
    folds = roc_auc_by_group(oof["label"], oof["churn_probability"], oof["fold"])
    metrics["cv_roc_auc_mean"] = float(np.mean(list(folds.values())))
    return threshold, value, metrics


def leaderboard_rows(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, best test ROC-AUC first (ties: better CV mean, then name).

    An ensemble's row also names its best base on CV ROC-AUC (`best_base`), that base's CV
    figure and the ensemble's gain over it; other rows hold None there.
    """
    rows = [
        {
            "model": summary["kind"],
            "threshold": summary["threshold"],
            "cv_roc_auc_mean": summary["metrics"].get("cv_roc_auc_mean"),
            **{m: summary["metrics"][m] for m in LEADERBOARD_METRICS},
            **{m: summary["metrics"].get(m) for m in OUT_OF_TIME_METRICS},
            "best_base": summary.get("best_base"),
            **{m: summary["metrics"].get(m) for m in BASE_COMPARISON_METRICS},
            "mlflow_run_id": summary["mlflow_run_id"],
        }
        for summary in models.values()
    ]
    return sorted(
        rows, key=lambda r: (-r[RANKING_METRIC], -(r["cv_roc_auc_mean"] or 0.0), r["model"])
    )


def earns_its_place(row: Mapping[str, Any]) -> bool:
    """False for an ensemble whose CV ROC-AUC does not beat its best base's (a tie included:
    the simpler model does as well); True for every other model, and when a fold's figure is
    undefined (NaN) so the comparison cannot be made."""
    gain = row.get("cv_gain_over_best_base")
    return gain is None or not gain <= 0.0


def promotion_candidate(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The model the promotion gate judges, and why: the best test ROC-AUC (the leaderboard's
    order) among the models that earn their place.

    A test split of a few thousand rows moves ROC-AUC by about 0.01 between models whose CV
    differs by a few thousandths, so an ensemble that ranks first on test but does no better
    than one of its own bases out of fold has not shown that combining pays; the better of the
    two on CV (the base) or the next model in the ranking is promoted instead.
    """
    if not rows:
        raise ValueError("no models on the leaderboard to choose a promotion candidate from")
    skipped = []
    for row in rows:
        if earns_its_place(row):
            reason = f"best test ROC-AUC {row[RANKING_METRIC]:.4f}"
            if skipped:
                reason += " among the models that earn their place; passed over: " + "; ".join(
                    skipped
                )
            return row["model"], reason
        skipped.append(
            f"{row['model']} (test {row[RANKING_METRIC]:.4f}, CV {row['cv_roc_auc_mean']:.4f} "
            f"does not beat its base {row['best_base']}'s {row['best_base_cv_roc_auc']:.4f})"
        )
    top = rows[0]
    return top["model"], (
        f"best test ROC-AUC {top[RANKING_METRIC]:.4f}; no model earns its place on CV, so the "
        "leaderboard's first row"
    )
