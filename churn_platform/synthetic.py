"""Seeded synthetic customers in the exact schema and text format of the IBM Telco churn CSV.

Demos, load tests and monitoring need realistic data of any size without shipping the real file.
Every value is a pure function of (seed, customer index, column): it comes from a hash, not from
`rand()`, so the output is identical for any partitioning, and it is computed by Spark expressions
alone (no UDFs, no driver loops), so ten million rows take a few minutes on a laptop.

Marginals, service bundles and prices were calibrated once against the public Telco file; the
project never reads that file. A customer is identified by its index in `[0, ID_SPACE)`: the same
index always yields the same `customerID`, gender and senior flag, while the account (tenure,
services, charges, churn) depends on the seed, so a batch whose id range overlaps an earlier one
carries updates of existing customers next to new ones.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

TELCO_COLUMNS: tuple[str, ...] = (
    "customerID",
    "gender",
    "SeniorCitizen",
    "Partner",
    "Dependents",
    "tenure",
    "PhoneService",
    "MultipleLines",
    "InternetService",
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
    "StreamingTV",
    "StreamingMovies",
    "Contract",
    "PaperlessBilling",
    "PaymentMethod",
    "MonthlyCharges",
    "TotalCharges",
    "Churn",
)
ADD_ONS: tuple[str, ...] = (
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
    "StreamingTV",
    "StreamingMovies",
)

_ID_DIGITS = 10**4
_ID_LETTERS = 26**5
ID_SPACE = _ID_DIGITS * _ID_LETTERS
"""Number of distinct `dddd-LLLLL` ids; customer indexes must lie in `[0, ID_SPACE)`."""

# Two affine permutations of [0, ID_SPACE) around a digits/letters swap: a bijection, so ids are
# unique, that scatters consecutive indexes. Multipliers are coprime with ID_SPACE (2^9 5^4 13^5)
# and small enough that `multiplier * index` never overflows a long (ANSI mode would raise).
_ID_PERMUTATION = ((48_271_031, 7_919_304_627), (69_069_011, 104_729_000_003))

_MAX_TENURE = 72
_CHARGE_NOISE = 1.0
_TOTAL_RATIO_NOISE = 0.05

# P(contract | partner), from the Telco file.
_CONTRACT_GIVEN_PARTNER = {
    True: {"Month-to-month": 0.405, "One year": 0.244, "Two year": 0.351},
    False: {"Month-to-month": 0.685, "One year": 0.177, "Two year": 0.138},
}
# P(internet | senior, contract): seniors and month-to-month customers lean to fiber.
_INTERNET_GIVEN_CONTRACT = {
    False: {
        "Month-to-month": {"DSL": 0.347, "Fiber optic": 0.486, "No": 0.167},
        "One year": {"DSL": 0.405, "Fiber optic": 0.323, "No": 0.272},
        "Two year": {"DSL": 0.373, "Fiber optic": 0.231, "No": 0.396},
    },
    True: {
        "Month-to-month": {"DSL": 0.197, "Fiber optic": 0.788, "No": 0.015},
        "One year": {"DSL": 0.263, "Fiber optic": 0.653, "No": 0.084},
        "Two year": {"DSL": 0.345, "Fiber optic": 0.490, "No": 0.165},
    },
}
_DSL_WITHOUT_PHONE = 0.28
_PAYMENT_GIVEN_CONTRACT = {
    "Month-to-month": {
        "Electronic check": 0.477,
        "Mailed check": 0.231,
        "Bank transfer (automatic)": 0.152,
        "Credit card (automatic)": 0.140,
    },
    "One year": {
        "Electronic check": 0.236,
        "Mailed check": 0.229,
        "Bank transfer (automatic)": 0.265,
        "Credit card (automatic)": 0.270,
    },
    "Two year": {
        "Electronic check": 0.099,
        "Mailed check": 0.225,
        "Bank transfer (automatic)": 0.333,
        "Credit card (automatic)": 0.343,
    },
}
# Tenure = 1 + floor(scale * u^power), capped at 72: short for month-to-month, long (with the
# Telco pile-up at 72 months) for two-year contracts. Only term contracts start at tenure 0.
_TENURE_SHAPE = {
    "Month-to-month": (72, 2.6),
    "One year": (72, 0.8),
    "Two year": (76, 0.3),
}
_NEW_TERM_CONTRACT_RATE = 0.0035
# P(service | internet, tenure share t) = base + slope * t: long-standing customers buy more.
_ADD_ON_RATE = {
    "DSL": {
        "MultipleLines": (0.12, 0.60),
        "OnlineSecurity": (0.22, 0.55),
        "OnlineBackup": (0.25, 0.40),
        "DeviceProtection": (0.25, 0.40),
        "TechSupport": (0.22, 0.55),
        "StreamingTV": (0.18, 0.45),
        "StreamingMovies": (0.18, 0.45),
    },
    "Fiber optic": {
        "MultipleLines": (0.38, 0.50),
        "OnlineSecurity": (0.07, 0.45),
        "OnlineBackup": (0.25, 0.40),
        "DeviceProtection": (0.25, 0.40),
        "TechSupport": (0.07, 0.45),
        "StreamingTV": (0.35, 0.43),
        "StreamingMovies": (0.35, 0.43),
    },
    "No": {"MultipleLines": (0.06, 0.45)},
}
_PAPERLESS_GIVEN_INTERNET = {"DSL": 0.55, "Fiber optic": 0.77, "No": 0.29}
# Monthly list price in dollars: the Telco charges are this tariff plus about a dollar of noise.
_PRICE = {
    "PhoneService": 20.0,
    "MultipleLines": 5.0,
    "DSL": 25.0,
    "Fiber optic": 50.0,
    "No": 0.0,
    "OnlineSecurity": 5.0,
    "OnlineBackup": 5.0,
    "DeviceProtection": 5.0,
    "TechSupport": 5.0,
    "StreamingTV": 10.0,
    "StreamingMovies": 10.0,
}

# Churn log-odds = intercept + sum(coefficient * feature). `drift` interpolates linearly from the
# Telco-like mechanism (contract, tenure, fiber, electronic check, missing support) to a market
# where a cheaper competitor poaches price-sensitive, long-standing and DSL customers.
_CHURN_UNDRIFTED = {
    "intercept": -2.05,
    "month_to_month": 0.8,
    "two_year": -0.9,
    "log_tenure": -0.55,
    "charges_per_100": 0.8,
    "fiber": 0.5,
    "no_internet": -0.5,
    "electronic_check": 0.45,
    "no_security": 0.35,
    "no_support": 0.35,
    "senior": 0.3,
    "paperless": 0.3,
    "dependents": -0.2,
}
_CHURN_DRIFTED = {
    "intercept": -3.0,
    "month_to_month": 0.2,
    "two_year": -0.2,
    "log_tenure": 0.25,
    "charges_per_100": 2.5,
    "fiber": -0.8,
    "no_internet": -0.3,
    "electronic_check": 0.0,
    "no_security": 0.0,
    "no_support": 0.0,
    "senior": 0.0,
    "paperless": 0.0,
    "dependents": 0.0,
}
# How far drift=1 tilts the population: shares moved towards month-to-month and fiber, and a
# general price rise.
_DRIFT_MONTH_TO_MONTH = 0.2
_DRIFT_FIBER = 0.3
_DRIFT_PRICE_RISE = 0.12


class _Draws:
    """Per-row random numbers derived from a hash of (seed, customer index, purpose)."""

    def __init__(self, seed: int) -> None:
        self._seed = F.lit(seed).cast("long")

    def uniform(self, purpose: str) -> Column:
        """Uniform on [0, 1), different for every seed."""
        return _to_unit(F.xxhash64(self._seed, F.col("idx"), F.lit(purpose)))

    def normal(self, purpose: str) -> Column:
        """Standard normal by Box-Muller over two uniforms."""
        u1 = self.uniform(f"{purpose}/1")
        u2 = self.uniform(f"{purpose}/2")
        return F.sqrt(F.lit(-2.0) * F.log(F.lit(1.0) - u1)) * F.cos(F.lit(2 * math.pi) * u2)

    @staticmethod
    def identity(purpose: str) -> Column:
        """Uniform on [0, 1) that ignores the seed: attributes a customer keeps in every batch."""
        return _to_unit(F.xxhash64(F.col("idx"), F.lit(purpose)))


def _to_unit(hash64: Column) -> Column:
    return F.shiftrightunsigned(hash64, 11).cast("double") * F.lit(2.0**-53)


def _idiv(value: Column, divisor: int) -> Column:
    """Exact integer division of a non-negative long (PySpark has no `div` column operator)."""
    return ((value - F.pmod(value, F.lit(divisor))) / F.lit(divisor)).cast("long")


def _choose(u: Column, probabilities: Sequence[tuple[str, Column]]) -> Column:
    """The label whose cumulative-probability slot contains `u`; the last label takes the rest."""
    *head, (last_label, _) = probabilities
    cumulative: Column = F.lit(0.0)
    choice: Column | None = None
    for label, probability in head:
        cumulative = cumulative + probability
        choice = (
            F.when(u < cumulative, label) if choice is None else choice.when(u < cumulative, label)
        )
    return F.lit(last_label) if choice is None else choice.otherwise(last_label)


def _lookup(key: Column, table: Mapping[object, float]) -> Column:
    """A per-row value from a small table keyed by the values of `key` (which covers all keys)."""
    *head, (_, last_value) = table.items()
    result: Column | None = None
    for k, v in head:
        result = F.when(key == k, v) if result is None else result.when(key == k, v)
    return F.lit(last_value) if result is None else result.otherwise(F.lit(last_value))


def _tilt(table: Mapping[str, Column], favoured: str, shift: float) -> list[tuple[str, Column]]:
    """Move `shift` of the mass outside `favoured` onto it, keeping the others' proportions."""
    return [
        (
            label,
            p + F.lit(shift) * (F.lit(1.0) - p) if label == favoured else p * (1 - shift),
        )
        for label, p in table.items()
    ]


def _service_rate(internet: Column, tenure_share: Column, service: str) -> Column:
    """P(customer has `service`): zero where the internet type does not offer it."""
    base, slope = (
        _lookup(
            internet,
            {i: rates.get(service, (0.0, 0.0))[k] for i, rates in _ADD_ON_RATE.items()},
        )
        for k in (0, 1)
    )
    return base + slope * tenure_share


def _customer_id(index: Column) -> Column:
    """`dddd-LLLLL` text of a bijective scramble of the customer index."""
    (a1, c1), (a2, c2) = _ID_PERMUTATION
    scrambled = F.pmod(index * F.lit(a1) + F.lit(c1), F.lit(ID_SPACE))
    swapped = F.pmod(scrambled, F.lit(_ID_DIGITS)) * F.lit(_ID_LETTERS) + _idiv(
        scrambled, _ID_DIGITS
    )
    code = F.pmod(swapped * F.lit(a2) + F.lit(c2), F.lit(ID_SPACE))
    letters_code = _idiv(code, _ID_DIGITS)
    letters = [
        F.char(F.lit(65) + F.pmod(_idiv(letters_code, 26**k), F.lit(26))) for k in range(4, -1, -1)
    ]
    digits = F.lpad(F.pmod(code, F.lit(_ID_DIGITS)).cast("string"), 4, "0")
    return F.concat(digits, F.lit("-"), *letters)


def _money(cents: Column) -> Column:
    """Dollars as the Telco file writes them: `29.85`, `56.5`, `45` (no trailing zeros)."""
    text = F.format_string("%d.%02d", _idiv(cents, 100), F.pmod(cents, F.lit(100)))
    return F.regexp_replace(text, r"\.?0+$", "")


def _yes_no(flag: Column) -> Column:
    return F.when(flag, "Yes").otherwise("No")


def _check_arguments(rows: int, drift: float, id_start: int) -> None:
    if rows < 0:
        raise ValueError(f"generate_customers: rows must be >= 0, got {rows}")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"generate_customers: drift must be within [0, 1], got {drift}")
    if id_start < 0 or id_start + rows > ID_SPACE:
        raise ValueError(
            f"generate_customers: customer indexes [{id_start}, {id_start + rows}) must lie "
            f"within [0, {ID_SPACE})"
        )


def _household_and_contract(df: DataFrame, draw: _Draws, drift: float) -> DataFrame:
    """Who the customer is, the contract they signed, and how long they have stayed."""
    contract = F.col("Contract")
    contract_p = {
        label: F.when(F.col("partner"), p).otherwise(_CONTRACT_GIVEN_PARTNER[False][label])
        for label, p in _CONTRACT_GIVEN_PARTNER[True].items()
    }
    scale, power = (
        _lookup(contract, {c: float(shape[i]) for c, shape in _TENURE_SHAPE.items()})
        for i in (0, 1)
    )
    staying = F.least(
        F.lit(_MAX_TENURE),
        (F.lit(1.0) + F.floor(scale * F.pow(draw.uniform("tenure"), power))).cast("int"),
    )
    just_signed = (contract != "Month-to-month") & (
        draw.uniform("tenure/new") < _NEW_TERM_CONTRACT_RATE
    )
    return (
        df.withColumns(
            {
                "customerID": _customer_id(F.col("idx")),
                "gender": F.when(draw.identity("gender") < 0.505, "Male").otherwise("Female"),
                "senior": draw.identity("senior") < 0.162,
                "partner": draw.uniform("partner") < 0.483,
            }
        )
        .withColumns(
            {
                "dependents": draw.uniform("dependents")
                < F.when(F.col("partner"), 0.514).otherwise(0.099),
                "Contract": _choose(
                    draw.uniform("contract"),
                    _tilt(contract_p, "Month-to-month", _DRIFT_MONTH_TO_MONTH * drift),
                ),
            }
        )
        .withColumn("tenure", F.when(just_signed, F.lit(0)).otherwise(staying))
    )


def _services(df: DataFrame, draw: _Draws, drift: float) -> DataFrame:
    """Internet type, phone lines, add-ons and billing, consistent with each other."""
    internet = F.col("InternetService")
    contract = F.col("Contract")
    tenure_share = F.col("tenure") / F.lit(float(_MAX_TENURE))
    internet_p = {
        label: F.when(
            F.col("senior"),
            _lookup(contract, {c: t[label] for c, t in _INTERNET_GIVEN_CONTRACT[True].items()}),
        ).otherwise(
            _lookup(contract, {c: t[label] for c, t in _INTERNET_GIVEN_CONTRACT[False].items()})
        )
        for label in ("DSL", "Fiber optic", "No")
    }
    payment_p = [
        (method, _lookup(contract, {c: t[method] for c, t in _PAYMENT_GIVEN_CONTRACT.items()}))
        for method in _PAYMENT_GIVEN_CONTRACT["Month-to-month"]
    ]
    return (
        df.withColumn(
            "InternetService",
            _choose(
                draw.uniform("internet"), _tilt(internet_p, "Fiber optic", _DRIFT_FIBER * drift)
            ),
        )
        .withColumns(
            {
                "phone": (internet != "DSL") | (draw.uniform("phone") >= _DSL_WITHOUT_PHONE),
                "paperless": draw.uniform("paperless")
                < _lookup(internet, _PAPERLESS_GIVEN_INTERNET),
                "PaymentMethod": _choose(draw.uniform("payment"), payment_p),
                **{
                    name: draw.uniform(name) < _service_rate(internet, tenure_share, name)
                    for name in ADD_ONS
                },
            }
        )
        .withColumn(
            "MultipleLines",
            F.col("phone")
            & (
                draw.uniform("MultipleLines")
                < _service_rate(internet, tenure_share, "MultipleLines")
            ),
        )
    )


def _charges(df: DataFrame, draw: _Draws, drift: float) -> DataFrame:
    """Monthly charges from the tariff plus noise; total = tenure x monthly with usage noise."""
    one = F.lit(1.0)
    list_price = sum(
        (F.col(name).cast("double") * _PRICE[name] for name in ("MultipleLines", *ADD_ONS)),
        F.col("phone").cast("double") * _PRICE["PhoneService"]
        + _lookup(F.col("InternetService"), {k: _PRICE[k] for k in ("DSL", "Fiber optic", "No")}),
    )
    noise = F.greatest(F.lit(-1.75), F.least(F.lit(1.75), draw.normal("charges") * _CHARGE_NOISE))
    monthly = (list_price + noise) * (1.0 + _DRIFT_PRICE_RISE * drift)
    usage = F.when(F.col("tenure") == 1, one).otherwise(
        F.greatest(F.lit(0.7), F.least(F.lit(1.5), one + draw.normal("total") * _TOTAL_RATIO_NOISE))
    )
    return df.withColumn("monthly_cents", (F.round(monthly * 20.0) * 5).cast("long")).withColumn(
        "total_cents",
        (F.round(F.col("tenure") * F.col("monthly_cents") * usage / 5.0) * 5).cast("long"),
    )


def _churn(df: DataFrame, draw: _Draws, drift: float) -> DataFrame:
    """Churn drawn from a logistic model whose coefficients move with `drift`."""
    internet = F.col("InternetService")
    features = {
        "month_to_month": F.col("Contract") == "Month-to-month",
        "two_year": F.col("Contract") == "Two year",
        "log_tenure": F.log1p(F.col("tenure").cast("double")),
        "charges_per_100": F.col("monthly_cents") / F.lit(10_000.0),
        "fiber": internet == "Fiber optic",
        "no_internet": internet == "No",
        "electronic_check": F.col("PaymentMethod") == "Electronic check",
        "no_security": (internet != "No") & ~F.col("OnlineSecurity"),
        "no_support": (internet != "No") & ~F.col("TechSupport"),
        "senior": F.col("senior"),
        "paperless": F.col("paperless"),
        "dependents": F.col("dependents"),
    }
    coefficient = {
        name: (1.0 - drift) * _CHURN_UNDRIFTED[name] + drift * _CHURN_DRIFTED[name]
        for name in _CHURN_UNDRIFTED
    }
    log_odds = sum(
        (F.lit(coefficient[name]) * value.cast("double") for name, value in features.items()),
        F.lit(coefficient["intercept"]),
    )
    return df.withColumn("churn", draw.uniform("churn") < F.lit(1.0) / (1.0 + F.exp(-log_odds)))


def _as_telco_text(df: DataFrame) -> DataFrame:
    """The 21 Telco columns, in order, as the strings the public CSV holds."""
    internet = F.col("InternetService")
    return df.select(
        "customerID",
        "gender",
        F.col("senior").cast("int").cast("string").alias("SeniorCitizen"),
        _yes_no(F.col("partner")).alias("Partner"),
        _yes_no(F.col("dependents")).alias("Dependents"),
        F.col("tenure").cast("string").alias("tenure"),
        _yes_no(F.col("phone")).alias("PhoneService"),
        F.when(~F.col("phone"), "No phone service")
        .otherwise(_yes_no(F.col("MultipleLines")))
        .alias("MultipleLines"),
        "InternetService",
        *(
            F.when(internet == "No", "No internet service")
            .otherwise(_yes_no(F.col(name)))
            .alias(name)
            for name in ADD_ONS
        ),
        "Contract",
        _yes_no(F.col("paperless")).alias("PaperlessBilling"),
        "PaymentMethod",
        _money(F.col("monthly_cents")).alias("MonthlyCharges"),
        F.when(F.col("tenure") == 0, " ")
        .otherwise(_money(F.col("total_cents")))
        .alias("TotalCharges"),
        _yes_no(F.col("churn")).alias("Churn"),
    )


def generate_customers(
    spark: SparkSession, rows: int, seed: int = 42, drift: float = 0.0, id_start: int = 0
) -> DataFrame:
    """Synthetic Telco customers with indexes `id_start .. id_start + rows - 1`.

    Args:
        spark: the session to build the (lazy) DataFrame in.
        rows: number of customers.
        seed: selects the accounts; same seed, rows, drift and id_start give identical rows in
            the same order, however Spark partitions the work.
        drift: 0 reproduces Telco-like data; towards 1 the population moves to month-to-month,
            fiber and higher prices, and the churn mechanism changes, so models trained on
            undrifted data lose ROC-AUC (for monitoring and retraining demos).
        id_start: first customer index. Successive ingestion batches overlap by choosing ranges
            that share indexes: e.g. batch k at `id_start = k * rows * (1 - overlap)` re-delivers
            a fraction `overlap` of the previous batch's customers (with new account values when
            the seed differs) next to new ones.

    Returns:
        The 21 Telco columns in Telco order, all strings, formatted like the public CSV
        (`TotalCharges` is a single space when tenure is 0).
    """
    _check_arguments(rows, drift, id_start)
    draw = _Draws(seed)
    customers = spark.range(id_start, id_start + rows).withColumnRenamed("id", "idx")
    for stage in (_household_and_contract, _services, _charges, _churn):
        customers = stage(customers, draw, drift)
    return _as_telco_text(customers)


def write_customers(
    df: DataFrame, path: str | Path, fmt: Literal["csv", "parquet"] = "csv"
) -> Path:
    """Write `df` as ONE file at `path`, replacing any previous file atomically.

    Spark writes a single part file into a hidden staging folder next to `path` (same file
    system), which is then renamed onto `path` with `os.replace`: readers see the old file or the
    new one, never half a file. CSV has a header, LF line endings and values verbatim (Spark's
    default write trims whitespace, which would turn the Telco blank `TotalCharges` into an
    empty field). Parquet is also a single file (snappy, all columns strings): Spark reads a
    file path like a folder and splits it by row group, and one file keeps the same atomic
    replacement and CLI `--output FILE` contract as CSV. The path must be on a file system the
    Spark driver and executors share (local mode or a common mount).

    Returns:
        The absolute path of the written file.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"write_customers: fmt must be 'csv' or 'parquet', got {fmt!r}")
    target = Path(path).absolute()
    if target.is_dir():
        raise IsADirectoryError(f"write_customers: {target} is a directory, expected a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        writer = df.coalesce(1).write.mode("errorifexists")
        if fmt == "csv":
            writer.options(
                header=True,
                lineSep="\n",
                ignoreLeadingWhiteSpace=False,
                ignoreTrailingWhiteSpace=False,
            ).csv(str(staging))
        else:
            writer.parquet(str(staging))
        parts = sorted(staging.glob("part-*"))
        if len(parts) != 1:
            raise RuntimeError(
                f"write_customers: expected one part file in {staging}, found {len(parts)}"
            )
        os.replace(parts[0], target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
