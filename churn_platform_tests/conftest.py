"""Shared fixtures: one local SparkSession for the whole test session, a temp state root."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from churn_platform.core.ops.log import OpsLog
from churn_platform.core.spark_setup import SHORT_JVM_OPTIONS, spark_conf
from churn_platform.settings import Settings, load_settings

# The data layers only (selecting "raw_customers*" would also train every model).
DATA_LAYERS = "group:ingestion or group:cleaning or group:features"

# Tolerances for floating-point model outputs (probabilities, metrics, thresholds, weights), as
# `pytest.approx` keywords. Ids, decisions (0/1), tiers and counts are always compared exactly.
# The same fitted model scoring the same rows again (later, after a save and load, in another
# process): the JVM's Math.exp/log may differ by an ulp between JIT tiers and BLAS summation
# order varies, so the last bit of a probability depends on load (2.2e-16 seen here).
SAME_MODEL = {"abs": 1e-12}
# The same model fitted again from the same rows and seed: those last-bit differences pass
# through every optimizer iteration and boosting round before anything is scored.
REFIT = {"abs": 1e-9}
# One quantity computed two ways (Spark aggregates and a plain Python loop): the sums run in
# different orders.
SUMMATION_ORDER = {"abs": 1e-12}


def assert_same_scores(
    actual: Sequence[Sequence[Any]], expected: Sequence[Sequence[Any]], tolerance: dict[str, float]
) -> None:
    """Rows of (keys..., value): the keys exactly and in the same order, the value (the last
    field: a probability, an importance) within `tolerance`, one of the constants above."""
    assert [tuple(row[:-1]) for row in actual] == [tuple(row[:-1]) for row in expected]
    assert [row[-1] for row in actual] == pytest.approx([row[-1] for row in expected], **tolerance)


# A test that uses one of these fixtures needs the session's JVM, the network (the Telco file
# comes from the package index) or the session's pipeline run; so does one with a service mark.
INTEGRATION_FIXTURES = frozenset({"spark", "telco_csv", "telco_pipeline"})
SERVICE_MARKS = ("cluster", "postgres", "daemon", "browser")


# `make test` (`-n 2 --dist loadgroup --no-loadscope-reorder`) hands a worker a whole group at a
# time, in the order the groups first appear in the collection. These go first, longest first
# (seconds of session 11's fresh-clone CI runs, two workers), so that the daemon's and the
# servers' waits overlap the other worker's work and the run ends on short groups. In xdist's
# own order (most tests first) the daemon test came second to last, so one worker most likely
# sat idle while it ran: 601.8 s. The other groups follow, most tests first. One worker takes
# the pipeline group, the other the daemon and modeling groups; the rest fill in behind them.
LONGEST_GROUPS = (
    "pipeline",  # 360-400 s: the session's run 110 s, the cluster test, the UIs 77 s, 10 readers
    "test_daemon",  # 185-215 s, waiting on the daemon's two runs (each a fresh process and JVM)
    "test_modeling",  # 185-225 s: the nine kinds' fits and their checks
    "test_operator_commands",  # fresh interpreters; 1.4x test_server in a loaded test-fast run
    "test_server",  # three `serve` start-ups and stops, 60 s
    "test_out_of_time",  # 62 s
    "test_etl",  # the worker's first Spark queries
    "test_backup_assets",
    "test_scoring",
    "test_tracking",
    "test_training",
    "test_synthetic",
    "test_csv_properties",  # 24 s
    "test_cli",
)


def group_of(item: pytest.Item) -> str:
    """Every user of the session's pipeline run shares the worker that made it (the run is
    made once); any other test stays with its file's tests and module fixtures."""
    return "pipeline" if "telco_pipeline" in getattr(item, "fixturenames", ()) else item.path.stem


def longest_first(groups: Sequence[str]) -> list[str]:
    """The groups in the order a worker should take them: LONGEST_GROUPS, then by number of
    tests, most first (xdist's own order), then as collected."""
    sizes = {name: groups.count(name) for name in groups}
    first_seen = list(dict.fromkeys(groups))

    def key(name: str) -> tuple[int, int, int]:
        rank = LONGEST_GROUPS.index(name) if name in LONGEST_GROUPS else len(LONGEST_GROUPS)
        return rank, -sizes[name], first_seen.index(name)

    return sorted(first_seen, key=key)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark integration tests from what they use, so `make test-fast` (`-m "not integration"`)
    runs the pure logic without a JVM, services or a pipeline run, whatever the file; group
    them for the workers of `make test`, and in a worker put the longest groups first."""
    groups = [group_of(item) for item in items]
    for item, group in zip(items, groups, strict=True):
        fixtures = getattr(item, "fixturenames", ())
        uses = INTEGRATION_FIXTURES.intersection(fixtures)
        if uses or any(item.get_closest_marker(mark) for mark in SERVICE_MARKS):
            item.add_marker(pytest.mark.integration)
        item.add_marker(pytest.mark.xdist_group(group))
    if hasattr(config, "workerinput"):  # an xdist worker: its order becomes the schedule's
        order = {name: rank for rank, name in enumerate(longest_first(groups))}
        ranked = sorted(zip(items, groups, strict=True), key=lambda pair: order[pair[1]])
        items[:] = [item for item, _ in ranked]


@dataclass
class WorkerTime:
    """Seconds a worker of `make test` spent on each group, and when it reported last."""

    groups: dict[str, float]
    last_report_s: float = 0.0


WORKER_TIMES: dict[str, WorkerTime] = {}
SESSION_START = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller of an xdist run, each report names its worker (`report.node`)."""
    node = getattr(report, "node", None)
    if node is None:
        return
    worker = WORKER_TIMES.setdefault(node.gateway.id, WorkerTime({}))
    group = report.nodeid.rpartition("@")[2]
    worker.groups[group] = worker.groups.get(group, 0.0) + report.duration
    worker.last_report_s = time.monotonic() - SESSION_START


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where an xdist run's time went: the worker that reports last is the critical path."""
    if not WORKER_TIMES:
        return
    terminalreporter.section("seconds per worker and group (setup + call + teardown)")
    for name, worker in sorted(WORKER_TIMES.items()):
        busy = sum(worker.groups.values())
        shown = [f"{g} {s:.0f}" for g, s in worker.groups.items() if s >= 5]
        terminalreporter.line(
            f"{name}: last report at {worker.last_report_s:.0f} s, busy {busy:.0f} s, "
            f"{len(worker.groups)} groups in order: {', '.join(shown)}"
        )


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("churn_home_session")


@pytest.fixture(scope="session")
def spark(session_home: Path) -> Iterator[SparkSession]:
    """The one SparkSession of the test run; JVM start-up costs ~10 s, so it is shared."""
    settings = load_settings({"CHURN_HOME": str(session_home), "CHURN_SHUFFLE_PARTITIONS": "2"})
    # Every JVM of the test run (this one, and the CLI, daemon and code-server runs, cluster
    # daemons, executors and Connect server started from it) works on a few thousand rows while
    # `make test`'s two workers keep both cores busy, so all get `score`'s short-lived JVM
    # options: C1 alone and one collector thread. test_modeling alone 5 % longer but 16 % fewer
    # CPU seconds (208 -> 174); the fresh-clone suite's workers busy 1,148 s instead of 1,177.
    os.environ["JAVA_TOOL_OPTIONS"] = " ".join(
        filter(None, [os.environ.get("JAVA_TOOL_OPTIONS"), SHORT_JVM_OPTIONS])
    )
    builder = SparkSession.builder
    conf = spark_conf(settings)
    conf["spark.master"] = "local[2]"
    conf["spark.driver.memory"] = "2g"
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


@contextmanager
def restored_environ() -> Iterator[None]:
    """Leave os.environ as it was found: the CLI exports DAGSTER_HOME and friends itself."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def churn_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty state root for one test, exported as CHURN_HOME."""
    home = tmp_path / "churn_home"
    home.mkdir()
    with restored_environ():
        monkeypatch.setenv("CHURN_HOME", str(home))
        monkeypatch.setenv("CHURN_PSEUDONYM_KEY", "test-pseudonym-key")
        yield home


@pytest.fixture
def settings(churn_home: Path) -> Settings:
    return load_settings(os.environ)


@pytest.fixture
def ops(settings: Settings) -> Iterator[OpsLog]:
    """The operations log of the test's state root, closed at the end of the test."""
    with OpsLog(settings) as log:
        yield log


TELCO_HEADER = (
    "customerID,gender,SeniorCitizen,Partner,Dependents,tenure,PhoneService,MultipleLines,"
    "InternetService,OnlineSecurity,OnlineBackup,DeviceProtection,TechSupport,StreamingTV,"
    "StreamingMovies,Contract,PaperlessBilling,PaymentMethod,MonthlyCharges,TotalCharges,Churn"
)


def telco_row(customer_id: str, churn: str = "No", tenure: str = "12", total: str = "600.5") -> str:
    """One well-formed Telco line; tests override the fields they exercise."""
    return (
        f"{customer_id},Female,0,Yes,No,{tenure},Yes,No,DSL,Yes,No,No,No,No,No,Month-to-month,"
        f"Yes,Electronic check,50.05,{total},{churn}"
    )


@pytest.fixture(scope="session")
def telco_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real IBM Telco file, fetched once per test session the way `make demo` does."""
    from churn_platform.datasets import ensure_telco_csv

    return ensure_telco_csv(tmp_path_factory.mktemp("telco_data"))


@pytest.fixture
def telco_home(churn_home: Path, telco_csv: Path) -> Path:
    """A state root with the real Telco file where the bundled spec expects it."""
    data = churn_home / "data"
    data.mkdir()
    (data / "telco_churn.csv").symlink_to(telco_csv)
    return churn_home


# The session's end-to-end run trains the decision tree and a stacking ensemble over the tree
# and logistic regression: every kind of model asset (a base; an ensemble that reuses one base
# asset's stored fit and fits the other base itself) without the cost of all nine. The tree is
# the cheapest base, so the cluster test trains it again to compare. Each model kind's fitting
# is tested in test_modeling; `make demo` trains all nine.
PIPELINE_MODELS = ("decision_tree", "stacking")


@dataclass(frozen=True)
class PipelineRun:
    """`churn-platform run --json` of the whole graph: its state root, environment and result."""

    home: Path
    env: dict[str, str]
    exit_code: int
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def telco_pipeline(spark, telco_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The whole asset graph (quick training profile, PIPELINE_MODELS) materialized once per test
    session on the real Telco data, in this session's `local[2]` SparkSession. The end-to-end
    tests inspect its state root; the cluster tests compare their runs with its summary (the
    local-mode reference). The environment is set only while it runs; `env` restores it."""
    from churn_platform import cli

    home = tmp_path_factory.mktemp("pipeline_home")
    (home / "data").mkdir()
    (home / "data" / "telco_churn.csv").symlink_to(telco_csv)
    env = {
        "CHURN_HOME": str(home),
        "CHURN_TRAINING_PROFILE": "quick",
        "CHURN_SHUFFLE_PARTITIONS": "2",
        "CHURN_PSEUDONYM_KEY": "test-pseudonym-key",
        "CHURN_MODELS": ",".join(PIPELINE_MODELS),
    }
    buffer = io.StringIO()
    with restored_environ():
        os.environ.pop("CHURN_CONFIG", None)
        os.environ.update(env)
        with redirect_stdout(buffer):
            code = cli.main(["run", "--json"])
        env.update(load_settings().library_env())  # what the CLI exported: the Dagster instance
    return PipelineRun(home, env, code, json.loads(buffer.getvalue().strip().splitlines()[-1]))
