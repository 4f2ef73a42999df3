"""Seeded synthetic customers in the exact schema and text format of the IBM Telco churn CSV.

Demos, load tests and monitoring need realistic data of any size without shipping the real file.
Every value is a pure function of (seed, customer index, purpose): it comes from a hash, not from
`rand()`, so the output is identical however Spark partitions the work, and it is computed by
Spark expressions alone (no UDFs, no driver loops): about ten CPU seconds per million rows.

Categories stay small integer codes until the final projection, and probability tables
(`core.synthetic.telco`) are looked up with CASE over those codes, which keeps Spark's generated
code small and free of null checks.

A customer is an index in `[0, ID_SPACE)`: the same index always yields the same `customerID`,
gender and senior flag, while the account (tenure, services, charges, churn) depends on the
seed, so a batch whose index range overlaps an earlier one carries updates of existing customers
next to new ones.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from churn_platform.core.synthetic import telco

_ID_DIGITS = 10**4
_ID_LETTERS = 26**5
ID_SPACE = _ID_DIGITS * _ID_LETTERS
"""Number of distinct `dddd-LLLLL` customer ids; customer indexes lie in `[0, ID_SPACE)`."""

# Two affine permutations of [0, ID_SPACE) around a digits/letters swap: a bijection (so ids are
# unique) that scatters consecutive indexes. The multipliers are coprime with
# ID_SPACE = 2^9 * 5^4 * 13^5 and small enough that `multiplier * index` fits in a long (ANSI
# mode raises on overflow).
_ID_PERMUTATION = ((48_271_031, 7_919_304_627), (69_069_011, 104_729_000_003))

_NO_OP_COALESCE_PARTITIONS = 1 << 30


class _Draws:
    """Per-row random numbers from a hash of (seed, customer index, purpose)."""

    def __init__(self, seed: int) -> None:
        self._seed = F.lit(seed).cast("long")

    def uniform(self, purpose: str) -> Column:
        """Uniform on [0, 1), different for every seed and purpose."""
        return _unit(F.xxhash64(self._seed, F.col("idx"), _salt(purpose)))

    def normal(self, purpose: str) -> Column:
        """Standard normal by Box-Muller over two uniforms."""
        radius = F.sqrt(F.lit(-2.0) * F.log(F.lit(1.0) - self.uniform(f"{purpose}/1")))
        return radius * F.cos(F.lit(2.0 * math.pi) * self.uniform(f"{purpose}/2"))

    @staticmethod
    def identity(purpose: str) -> Column:
        """Uniform on [0, 1) that ignores the seed: what a customer keeps in every batch."""
        return _unit(F.xxhash64(F.col("idx"), _salt(purpose)))


def _salt(purpose: str) -> Column:
    """A stable integer per purpose (unlike `hash()`, the same in every Python process)."""
    return F.lit(zlib.crc32(purpose.encode())).cast("long")


def _unit(hash64: Column) -> Column:
    return F.shiftrightunsigned(hash64, 11).cast("double") * F.lit(2.0**-53)


def _at(values: Sequence[object], code: Column) -> Column:
    """`values[code]` per row as a CASE chain: never null, so Spark generates no null handling."""
    *head, last = values
    if not head:
        return F.lit(last)
    result = F.when(code == 0, F.lit(head[0]))
    for index, value in enumerate(head[1:], start=1):
        result = result.when(code == index, F.lit(value))
    return result.otherwise(F.lit(last))


def _category(u: Column, table: Sequence[Sequence[float]], key: Column) -> Column:
    """Code of the category whose cumulative-probability slot in `table[key]` holds `u`."""
    bounds = [[math.fsum(row[: k + 1]) for row in table] for k in range(len(table[0]) - 1)]
    choice = F.when(u < _at(bounds[0], key), 0)
    for category, bound in enumerate(bounds[1:], start=1):
        choice = choice.when(u < _at(bound, key), category)
    return choice.otherwise(len(bounds))


def _tilt(table: Sequence[Sequence[float]], favoured: int, shift: float) -> list[tuple[float, ...]]:
    """Move `shift` of each row's mass outside `favoured` onto it; others keep their ratios."""
    return [
        tuple(
            p + shift * (1.0 - p) if i == favoured else p * (1.0 - shift) for i, p in enumerate(row)
        )
        for row in table
    ]


def _flag(condition: Column) -> Column:
    return condition.cast("int")


def _idiv(value: Column, divisor: int) -> Column:
    """Exact integer division of a non-negative long below 2^53 (PySpark has no `div`)."""
    return ((value - F.pmod(value, F.lit(divisor))) / F.lit(divisor)).cast("long")


def _customer_id(index: Column) -> Column:
    """`dddd-LLLLL` text of a bijective scramble of the customer index."""
    (a1, c1), (a2, c2) = _ID_PERMUTATION
    scrambled = F.pmod(index * F.lit(a1) + F.lit(c1), F.lit(ID_SPACE))
    swapped = F.pmod(scrambled, F.lit(_ID_DIGITS)) * F.lit(_ID_LETTERS) + _idiv(
        scrambled, _ID_DIGITS
    )
    code = F.pmod(swapped * F.lit(a2) + F.lit(c2), F.lit(ID_SPACE))
    letters_code = _idiv(code, _ID_DIGITS)
    letters = (
        F.char(F.lit(65) + F.pmod(_idiv(letters_code, 26**k), F.lit(26))) for k in range(4, -1, -1)
    )
    digits = F.lpad(F.pmod(code, F.lit(_ID_DIGITS)).cast("string"), 4, "0")
    return F.concat(digits, F.lit("-"), *letters)


def _money(cents: Column) -> Column:
    """Dollars as the Telco file writes them: `29.85`, `56.5`, `45` (no trailing zeros)."""
    dollars = _idiv(cents, 100).cast("string")
    rest = F.pmod(cents, F.lit(100))
    return (
        F.when(rest == 0, dollars)
        .when(
            F.pmod(rest, F.lit(10)) == 0,
            F.concat(dollars, F.lit("."), (rest / 10).cast("int").cast("string")),
        )
        .otherwise(F.concat(dollars, F.lit("."), F.lpad(rest.cast("string"), 2, "0")))
    )


def _household_and_contract(df: DataFrame, draw: _Draws, drift: float) -> DataFrame:
    """Who the customer is, the contract they signed and how long they have stayed."""
    contract = F.col("contract")
    staying = F.least(
        F.lit(telco.MAX_TENURE),
        (
            F.lit(1.0)
            + F.floor(
                _at([s for s, _ in telco.TENURE_SHAPE], contract)
                * F.pow(draw.uniform("tenure"), _at([p for _, p in telco.TENURE_SHAPE], contract))
            )
        ).cast("int"),
    )
    just_signed = (contract != telco.MONTH_TO_MONTH) & (
        draw.uniform("tenure/new") < telco.NEW_TERM_CONTRACT_RATE
    )
    contract_table = _tilt(
        telco.CONTRACT_BY_PARTNER, telco.MONTH_TO_MONTH, telco.DRIFT_MONTH_TO_MONTH * drift
    )
    return (
        df.withColumns(
            {
                "customerID": _customer_id(F.col("idx")),
                "gender": F.when(draw.identity("gender") < telco.GENDER_MALE, "Male").otherwise(
                    "Female"
                ),
                "senior": _flag(draw.identity("senior") < telco.SENIOR),
                "partner": _flag(draw.uniform("partner") < telco.PARTNER),
            }
        )
        .withColumns(
            {
                "dependents": _flag(
                    draw.uniform("dependents") < _at(telco.DEPENDENTS_BY_PARTNER, F.col("partner"))
                ),
                "contract": _category(draw.uniform("contract"), contract_table, F.col("partner")),
            }
        )
        .withColumn("tenure", F.when(just_signed, F.lit(0)).otherwise(staying))
    )


def _services(df: DataFrame, draw: _Draws, drift: float) -> DataFrame:
    """Internet type, phone lines, add-ons and billing, consistent with each other."""
    internet = F.col("internet")
    tenure_share = F.col("tenure") / F.lit(float(telco.MAX_TENURE))

    def has(service: str) -> Column:
        rates = telco.SERVICE_RATE[service]
        probability = (
            _at([b for b, _ in rates], internet)
            + _at([s for _, s in rates], internet) * tenure_share
        )
        return _flag(draw.uniform(service) < probability)

    internet_table = _tilt(
        telco.INTERNET_BY_SENIOR_CONTRACT, telco.FIBER, telco.DRIFT_FIBER * drift
    )
    return (
        df.withColumn(
            "internet",
            _category(
                draw.uniform("internet"),
                internet_table,
                F.col("senior") * len(telco.CONTRACTS) + F.col("contract"),
            ),
        )
        .withColumn(
            "phone",
            _flag((internet != telco.DSL) | (draw.uniform("phone") >= telco.DSL_WITHOUT_PHONE)),
        )
        .withColumns(
            {
                "MultipleLines": F.col("phone") * has("MultipleLines"),
                **{service: has(service) for service in telco.ADD_ONS},
                "paperless": _flag(
                    draw.uniform("paperless") < _at(telco.PAPERLESS_BY_INTERNET, internet)
                ),
                "payment": _category(
                    draw.uniform("payment"), telco.PAYMENT_BY_CONTRACT, F.col("contract")
                ),
            }
        )
    )


def _charges(df: DataFrame, draw: _Draws, drift: float) -> DataFrame:
    """Monthly charges from the tariff plus noise; total = tenure x monthly with usage noise."""
    list_price = sum(
        (F.col(service) * price for service, price in telco.PRICE_SERVICE.items()),
        F.col("phone") * telco.PRICE_PHONE + _at(telco.PRICE_INTERNET, F.col("internet")),
    )
    noise = F.greatest(
        F.lit(-telco.CHARGE_NOISE_CAP),
        F.least(F.lit(telco.CHARGE_NOISE_CAP), draw.normal("charges") * telco.CHARGE_NOISE),
    )
    monthly = (list_price + noise) * (1.0 + telco.DRIFT_PRICE_RISE * drift)
    low, high = telco.TOTAL_RATIO_RANGE
    usage = F.when(F.col("tenure") == 1, F.lit(1.0)).otherwise(
        F.greatest(F.lit(low), F.least(F.lit(high), 1.0 + draw.normal("total") * telco.TOTAL_NOISE))
    )
    return df.withColumn("monthly_cents", (F.rint(monthly * 20.0) * 5).cast("long")).withColumn(
        "total_cents",
        (F.rint(F.col("tenure") * F.col("monthly_cents") * usage / 5.0) * 5).cast("long"),
    )


def _churn(df: DataFrame, draw: _Draws, drift: float) -> DataFrame:
    """Churn drawn from a logistic model whose coefficients move with `drift`."""
    has_internet = _flag(F.col("internet") != telco.NO_INTERNET)
    features = {
        "month_to_month": _flag(F.col("contract") == telco.MONTH_TO_MONTH),
        "two_year": _flag(F.col("contract") == telco.TWO_YEAR),
        "log_tenure": F.log1p(F.col("tenure")),
        "charges_per_100": F.col("monthly_cents") / 10_000.0,
        "fiber": _flag(F.col("internet") == telco.FIBER),
        "no_internet": 1 - has_internet,
        "electronic_check": _flag(F.col("payment") == telco.ELECTRONIC_CHECK),
        "no_security": has_internet * (1 - F.col("OnlineSecurity")),
        "no_support": has_internet * (1 - F.col("TechSupport")),
        "senior": F.col("senior"),
        "paperless": F.col("paperless"),
        "dependents": F.col("dependents"),
    }
    coefficient = {
        name: (1.0 - drift) * telco.CHURN_UNDRIFTED[name] + drift * telco.CHURN_DRIFTED[name]
        for name in telco.CHURN_UNDRIFTED
    }
    log_odds = sum(
        (value * coefficient[name] for name, value in features.items()),
        F.lit(coefficient["intercept"]),
    )
    return df.withColumn(
        "churn", _flag(draw.uniform("churn") < F.lit(1.0) / (1.0 + F.exp(-log_odds)))
    )


def _as_telco_text(df: DataFrame) -> DataFrame:
    """The 21 Telco columns, in order, as the strings the public CSV holds."""
    yes_no = ("No", "Yes")
    no_internet = 2 * _flag(F.col("internet") == telco.NO_INTERNET)
    return df.select(
        "customerID",
        "gender",
        F.col("senior").cast("string").alias("SeniorCitizen"),
        _at(yes_no, F.col("partner")).alias("Partner"),
        _at(yes_no, F.col("dependents")).alias("Dependents"),
        F.col("tenure").cast("string").alias("tenure"),
        _at(yes_no, F.col("phone")).alias("PhoneService"),
        _at((*yes_no, "No phone service"), F.col("MultipleLines") + 2 * (1 - F.col("phone"))).alias(
            "MultipleLines"
        ),
        _at(telco.INTERNET_SERVICES, F.col("internet")).alias("InternetService"),
        *(
            _at((*yes_no, "No internet service"), F.col(service) + no_internet).alias(service)
            for service in telco.ADD_ONS
        ),
        _at(telco.CONTRACTS, F.col("contract")).alias("Contract"),
        _at(yes_no, F.col("paperless")).alias("PaperlessBilling"),
        _at(telco.PAYMENT_METHODS, F.col("payment")).alias("PaymentMethod"),
        _money(F.col("monthly_cents")).alias("MonthlyCharges"),
        F.when(F.col("tenure") == 0, F.lit(" "))
        .otherwise(_money(F.col("total_cents")))
        .alias("TotalCharges"),
        _at(yes_no, F.col("churn")).alias("Churn"),
    )


def _codegen_barrier(df: DataFrame) -> DataFrame:
    """End Spark's whole-stage code generation here, leaving data and partitioning unchanged.

    Spark fuses all projections of a stage into one generated Java method. Past 8 kB of bytecode
    the JVM stops JIT-compiling it, and this generator ran about 4x slower (45 instead of 10 CPU
    seconds per million rows). A coalesce to more partitions than exist moves no data, but it is
    not code-generated, so it splits the method in two.
    """
    return df.coalesce(_NO_OP_COALESCE_PARTITIONS)


def _check_arguments(rows: int, drift: float, id_start: int, partitions: int | None) -> None:
    if partitions is not None and partitions < 1:
        raise ValueError(f"generate_customers: partitions must be >= 1, got {partitions}")
    if rows < 0:
        raise ValueError(f"generate_customers: rows must be >= 0, got {rows}")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"generate_customers: drift must be within [0, 1], got {drift}")
    if id_start < 0 or id_start + rows > ID_SPACE:
        raise ValueError(
            f"generate_customers: customer indexes [{id_start}, {id_start + rows}) must lie "
            f"within [0, {ID_SPACE})"
        )


def generate_customers(
    spark: SparkSession,
    rows: int,
    seed: int = 42,
    drift: float = 0.0,
    id_start: int = 0,
    *,
    partitions: int | None = None,
) -> DataFrame:
    """Synthetic Telco customers with indexes `id_start .. id_start + rows - 1`.

    Args:
        spark: the session to build the (lazy) DataFrame in.
        rows: number of customers.
        seed: selects the accounts; the same seed, rows, drift and id_start give identical rows
            in the same order, however Spark partitions the work.
        drift: 0 gives Telco-like data; towards 1 the population moves to month-to-month,
            fiber and higher prices and the churn mechanism changes, so a model trained on
            undrifted data loses ROC-AUC (for monitoring and retraining demos).
        id_start: first customer index. Successive ingestion batches overlap by sharing
            indexes: batch k at `id_start = k * round(rows * (1 - overlap))` re-delivers a
            fraction `overlap` of the previous batch's customers (same customerID, gender and
            senior flag; new account values when the seed differs) next to new ones.
        partitions: Spark partitions (tasks) to generate in; None uses Spark's default
            parallelism. It changes how the work is spread, never the rows.

    Returns:
        The 21 Telco columns in Telco order, all strings, formatted like the public CSV
        (`TotalCharges` is a single space when tenure is 0).
    """
    _check_arguments(rows, drift, id_start, partitions)
    draw = _Draws(seed)
    customers = spark.range(id_start, id_start + rows, numPartitions=partitions)
    customers = customers.withColumnRenamed("id", "idx")
    customers = _services(_household_and_contract(customers, draw, drift), draw, drift)
    customers = _churn(_charges(_codegen_barrier(customers), draw, drift), draw, drift)
    return _as_telco_text(_codegen_barrier(customers))
