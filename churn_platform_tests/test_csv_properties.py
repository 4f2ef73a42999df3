"""Generated CSV files through raw -> cleaned: every row is cleaned or quarantined, never lost."""

import csv
import io
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from churn_platform.config import SourceSpec, load_spec
from churn_platform.core import cleaning, lines, sources
from churn_platform.core.columns import (
    INVALID_ENCODING,
    LINE_COL,
    MALFORMED_LINE,
    MISSING_TARGET,
    NON_FINITE_NUMBER,
    REASON_COL,
    UNKNOWN_TARGET,
    UNPARSEABLE_NUMBER,
    WRONG_FIELD_COUNT,
)
from churn_platform.settings import DEFAULT_SPEC
from churn_platform_tests.conftest import TELCO_HEADER

COLUMNS = TELCO_HEADER.split(",")
NUMERIC = ("tenure", "MonthlyCharges", "TotalCharges")
GOOD_NUMBERS = ("12", " 3.5 ", "0", "", "1e3")
BAD_NUMBERS = {"abc": UNPARSEABLE_NUMBER, "Infinity": NON_FINITE_NUMBER}
BAD_NUMBERS |= {"1e309": NON_FINITE_NUMBER, "NaN": NON_FINITE_NUMBER}
# Text that CSV must carry intact: delimiters, quotes, newlines, long values, non-ASCII.
TEXT = st.one_of(
    st.sampled_from(["Yes", "No", "DSL", 'say "hi", twice', "two\nlines", "é ü ß", " padded "]),
    st.integers(1, 6000).map(lambda n: "x" * n),
    st.text(
        st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"], exclude_characters="\ufffd"),
        max_size=30,
    ),
)


@st.composite
def rows(draw: st.DrawFn) -> tuple[list[str], str, bool]:
    """Fields of one record, the reason it must be quarantined ("" if none), its encoding."""
    number_values = {c: draw(st.sampled_from([*GOOD_NUMBERS, *BAD_NUMBERS])) for c in NUMERIC}
    churn = draw(st.sampled_from(["Yes", "No", "Maybe", ""]))
    fields = [draw(TEXT) if c not in NUMERIC else number_values[c] for c in COLUMNS]
    fields[-1] = churn
    latin1 = draw(st.booleans()) and draw(st.booleans())
    if latin1:
        fields[1] = "Fémale"
    shape = draw(st.sampled_from(["ok", "ok", "ok", "short", "long"]))
    if shape == "short":
        fields = fields[:-2]
    elif shape == "long":
        fields = [*fields, "extra"]
    # A number that does not parse outranks one that is not finite, whichever column it is in.
    bad = sorted(
        (BAD_NUMBERS[v] for v in number_values.values() if v in BAD_NUMBERS),
        key=[UNPARSEABLE_NUMBER, NON_FINITE_NUMBER].index,
    )
    reason = (
        INVALID_ENCODING
        if latin1
        else WRONG_FIELD_COUNT
        if shape != "ok"
        else MISSING_TARGET
        if churn == ""
        else UNKNOWN_TARGET
        if churn == "Maybe"
        else (bad[0] if bad else "")
    )
    return fields, reason, latin1


def _line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


# Each example costs a few Spark jobs (seconds): few examples, and no shrinking, whose dozens of
# extra runs would only shorten a failing example that is already small.
@settings(
    max_examples=12,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(rows(), min_size=1, max_size=8), st.booleans())
def test_every_generated_row_is_cleaned_or_quarantined_with_its_reason(spark, records, blank):
    spec = load_spec(DEFAULT_SPEC, Path(tempfile.gettempdir()))
    body, expected, line = bytearray((TELCO_HEADER + "\n").encode()), {}, 2
    for i, (fields, reason, latin1) in enumerate(records):
        fields[0] = f"id{i}"
        text = _line(fields)
        body += text.encode("latin-1", errors="replace") if latin1 else text.encode()
        expected[line] = reason
        line += text.count("\n")
        if blank and i == 0:
            body += b"\n"
            expected[line] = MALFORMED_LINE
            line += 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generated.csv"
        path.write_bytes(bytes(body))
        source = SourceSpec(name="customers", format="csv", path=str(path))
        read = sources.read_batch(spark, spec, (source,), "base", 0)
        result = cleaning.clean_customers(read.frame, spec)
        try:
            quarantined = {r[LINE_COL]: r[REASON_COL] for r in result.quarantined.collect()}
            cleaned = {r["customerID"] for r in result.cleaned.collect()}
            counts = result.counts
        finally:
            read.release()
    assert quarantined == {n: r for n, r in expected.items() if r}
    assert cleaned == {f"id{i}" for i, (_, reason, _) in enumerate(records) if not reason}
    assert counts["rows_in"] == len(expected)
    assert counts["rows_out"] + counts["rows_quarantined"] == len(expected)


LINE_PIECES = st.sampled_from(
    ["a,b", '"x', 'say "hi"', "\n", "\r\n", "\r", " ", "\t", "\x0b", "é", '""', ",", "\x00"]
)


@settings(
    max_examples=15,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(LINE_PIECES, max_size=40))
def test_a_small_file_is_counted_on_the_driver_as_spark_counts_it(spark, pieces):
    """The driver's count of a one-partition file (no job) equals Spark's job over its text:
    lines per partition, irregular lines (blank, odd quotes) and the file's hash and lines."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lines.csv"
        path.write_bytes("".join(["id,plan\n", *pieces]).encode())
        assert path.stat().st_size <= lines.one_split_bytes(spark)
        counted, scanned = lines.count_lines_here(path)
        assert counted == lines.count_lines(spark, path)
        assert scanned == lines.scan_file(path)


# Lines of a file split into ranges of a few bytes, so that lines start on range boundaries;
# what makes a file irregular comes from one `extra` piece inserted after its header.
REGULAR_LINES = st.lists(st.from_regex(r"[ab,é][ab,é\t ]{0,8}", fullmatch=True), max_size=60)


@settings(
    max_examples=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(["ab", "cd", "ef"], 4, "\r\n", True, "")
@example(["ab", "cd"], 4, "\n", True, "\r")
@example(["ab", "cd"], 5, "\n", False, '"')
@given(
    REGULAR_LINES,
    st.integers(3, 40),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.sampled_from(["", '""', '"', "\r", "\n"]),
)
def test_a_split_file_is_counted_on_the_driver_as_spark_counts_it(
    spark, body, split_bytes, newline, final_newline, extra
):
    """The driver's per-split count of a many-partition file (the scan's planned byte ranges,
    no job) equals Spark's job over its text, with LF or CR LF line ends; a file with a lone
    CR, a blank line or a line with an odd number of quotes is left to Spark's job."""
    text = f"id,plan{newline}" + newline.join(body) + (newline if final_newline else "")
    text = text.replace(newline, newline + extra, 1) if body else text
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lines.csv"
        path.write_bytes(text.encode())
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(split_bytes))
        spark.conf.set("spark.sql.files.openCostInBytes", str(split_bytes))
        try:
            frame = spark.read.schema("id string, plan string").csv(str(path), header=True)
            splits = lines.planned_splits(frame)
            counted = lines.count_lines_split(path, splits)
            job = lines.count_lines(spark, path)
        finally:
            spark.conf.unset("spark.sql.files.maxPartitionBytes")
            spark.conf.unset("spark.sql.files.openCostInBytes")
    assert splits and len(splits) == -(-len(text.encode()) // split_bytes)
    file_lines = re.split(r"\r\n|\r|\n", text)
    if not file_lines[-1]:
        file_lines.pop()  # the final line end ends the last line
    lone_cr = re.search(r"\r(?!\n)", text)
    if lone_cr or any(not line.strip(" \t") or line.count('"') % 2 for line in file_lines):
        assert counted is None
    else:
        assert counted == job
