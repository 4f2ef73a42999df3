"""Scoring a file: an arbitrary CSV or Parquet file of customers in, a score file out.

Batch scoring (core.scoring) scores the warehouse's population into a table; this module reads
a file through the same cleaning, scores every row and writes a flat CSV or Parquet file.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.config import DatasetSpec
from churn_platform.core import cleaning, output_files, reasons, sources, tracking
from churn_platform.core.attribution import load_attribution
from churn_platform.core.columns import BATCH_COL, BATCH_ORDER_COL
from churn_platform.core.input_files import check_input_columns, score_source
from churn_platform.core.scoring import (
    UNSEEN_COL,
    Scores,
    ScoringPolicy,
    load_champion,
    model_identity,
    reasons_reference,
    score_customers,
)


def flat(scores: DataFrame) -> DataFrame:
    """Scores for files: `reason_1..3` as text cells, unseen values `;`-joined."""
    columns = []
    for column in scores.columns:
        if column == reasons.REASONS_COL:
            columns += [
                reasons.reason_text(F.col(column), i).alias(f"reason_{i + 1}")
                for i in range(reasons.TOP_REASONS)
            ]
        elif column == UNSEEN_COL:
            columns.append(F.array_join(F.col(column), ";").alias(column))
        else:
            columns.append(F.col(f"`{column}`"))
    return scores.select(*columns)


def score_file(
    spark: SparkSession,
    spec: DatasetSpec,
    mlflow: tracking.MlflowBackend,
    input_path: Path,
    output_path: Path,
    alias: str = "champion",
    overwrite: bool = False,
    policy: ScoringPolicy | None = None,
    reference: Callable[[], DataFrame | None] | None = None,
    batch_scores: Path | None = None,
) -> dict:
    """Score an arbitrary CSV or Parquet file of customers into a CSV or Parquet file.

    Input columns are checked against the spec before any work; unusable rows are reported,
    not scored. Every row is scored (the file is the population). Reasons are those of the
    batch scores' version folder `batch_scores` when they come from the same model (its stored
    attribution: the same reference customer and surrogate, no Spark job); otherwise they are
    measured from the reference customer logged with the model's training run, else from the
    cleaned customers `reference` gives (the warehouse's training split), or from the file's
    own rows. The output appears atomically (staged beside it, then renamed); an existing output
    is replaced only with `overwrite` and only if it is an earlier score output.
    """
    output_files.check_target(output_path, overwrite, output_files.SCORE_COLUMNS)
    source = score_source(input_path)
    # The champion loads while the file is read and cleaned, the ids are checked for repeats
    # while the scores are planned, and the rows are counted while they are written: on a small
    # file each is mostly a cold JVM planning small jobs, and each waits on its own.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="score") as pool:
        champion = pool.submit(load_champion, mlflow, spec, alias)
        read = sources.read_source(spark, source)
        try:
            check_input_columns(read.frame.columns, spec.scoring_columns)
            raw = read.frame.withColumn(BATCH_COL, F.lit("score")).withColumn(
                BATCH_ORDER_COL, F.lit(0).cast("long")
            )
            cleaned = cleaning.clean_customers(
                raw, spec, require_target=False, ranges=spec.ranges, window=False
            )
            settling = pool.submit(cleaned.settled)
            model, version = champion.result()
            stored = load_attribution(batch_scores, model_identity(version))
            given = (
                reasons_reference(mlflow, version, reference or (lambda: None))
                if stored is None
                else None
            )

            def scored(rows: cleaning.CleanResult) -> Scores:
                return score_customers(
                    rows.cleaned,
                    spec,
                    model,
                    (version.name, str(version.version), tracking.model_threshold(version)),
                    policy or ScoringPolicy(),
                    given,
                    attribution=stored,
                )

            result = scored(cleaned)
            if (settled := settling.result()) is not cleaned:  # an id repeats: the window's plan
                cleaned, result = settled, scored(settled)
            counting = pool.submit(lambda: cleaned.counts)
            scores = flat(result.frame)
            with output_files.staged_output(
                output_path, overwrite, output_files.SCORE_COLUMNS
            ) as target:
                if output_path.suffix == ".parquet":
                    scores.write.parquet(str(target))
                else:
                    folder = target.with_name(target.name + ".parts")
                    output_files.formula_safe(scores).coalesce(1).write.option("header", True).csv(
                        str(folder)
                    )
                    next(folder.glob("part-*.csv")).replace(target)
            summary = result.summary()
            counts = counting.result()
        finally:
            read.release()
    return {
        "output": str(output_path),
        "rows_scored": summary["rows"],
        "rows_quarantined": counts["rows_quarantined"],
        "quarantine_by_reason": cleaned.by_reason,
        "model": f"{version.name} v{version.version}",
        "reasons_from": (
            "batch scores"
            if stored is not None
            else "training run"
            if isinstance(given, np.ndarray)
            else "measured now"
        ),
        "unseen_values": summary["unseen_by_column"],
        **result.metadata(),
    }
