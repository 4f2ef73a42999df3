"""The Dagster and MLflow UIs show the materialized platform; serving leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from churn_platform.cluster import free_port
from churn_platform.core.models.kinds import ENSEMBLE_KINDS
from churn_platform.server import (
    PlatformError,
    expanded_graph_url,
    graph_groups,
    running_platform,
    serve,
)
from churn_platform.settings import Settings, load_settings
from churn_platform_tests.conftest import PIPELINE_MODELS, PipelineRun, restored_environ

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Two loaded cores: the webserver takes 20-60 s to start and a React page up to a minute.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0
UI_TIMEOUT_MS = 120_000
# `serve` in its own interpreter, so the test can signal it the way a terminal or systemd would.
SERVE = (
    "import sys\n"
    "from churn_platform.server import serve\n"
    "from churn_platform.settings import load_settings\n"
    "sys.exit(serve(load_settings(), port=int(sys.argv[1])))\n"
)
URL_LINE = re.compile(r"^Dagster UI .*: (http://\S+)$", re.MULTILINE)
GRAPH_LINE = re.compile(r"^Asset graph with every group expanded: (http://\S+)$", re.MULTILINE)
README = Path(__file__).parents[1] / "README.md"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def dagster_descendants(parent: psutil.Process, recursive: bool = True) -> dict[int, str]:
    """Command lines of the webserver, daemon and code servers below `parent`, by pid (not
    Spark's JVM, not the browser)."""
    found = {}
    for process in parent.children(recursive=recursive):
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "dagster" in line:
            found[process.pid] = line
    return found


def processes_of(home: Path) -> list[str]:
    """Every live Dagster process whose environment points at this state root, wherever it is
    in the process tree: orphans re-parented to init are found too."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("CHURN_HOME") != str(home):
                continue
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "dagster" in line:
            found.append(f"{process.pid}: {line[:160]}")
    return found


def assert_nothing_left(home: Path) -> None:
    # Allow init a moment to reap what it inherited; anything still running is an orphan.
    deadline = time.monotonic() + 15
    while (left := processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left running: {left}"


@dataclass
class Served:
    """A `serve()` running in its own interpreter, with its output (and its children's)."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def wait_until_serving(self) -> None:
        wait_for(
            lambda: URL_LINE.search(self.output()) is not None or self.process.poll() is not None,
            START_TIMEOUT_S,
            "the URL line",
        )
        assert URL_LINE.search(self.output()), f"serve exited early:\n{self.output()}"

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def start_serve(churn_home: Path, tmp_path: Path) -> Iterator[Callable[[], Served]]:
    """Start `serve()` as a separate process; whatever a failed test leaves running is stopped."""
    started: list[Served] = []

    def start() -> Served:
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("w") as out:
            command = [sys.executable, "-c", SERVE, str(free_port())]
            started.append(Served(subprocess.Popen(command, stdout=out, stderr=out), log))
        return started[-1]

    yield start
    for served in started:
        if served.process.poll() is None:
            served.stop(signal.SIGTERM)


def test_sigterm_stops_webserver_daemon_and_code_servers(
    start_serve: Callable[[], Served], churn_home: Path
) -> None:
    served = start_serve()
    served.wait_until_serving()
    base = URL_LINE.search(served.output()).group(1)
    graph = GRAPH_LINE.search(served.output())
    assert graph and graph.group(1) == expanded_graph_url(base, graph_groups(load_settings()))
    lines = dagster_descendants(psutil.Process(served.process.pid)).values()
    assert any("dagster-webserver" in line for line in lines), lines
    assert any("dagster-daemon run" in line for line in lines), lines
    assert any("dagster api grpc" in line for line in lines), lines

    assert served.stop(signal.SIGTERM) == 0, served.output()
    assert_nothing_left(churn_home)


def test_ctrl_c_during_start_up_stops_everything(
    start_serve: Callable[[], Served], churn_home: Path
) -> None:
    served = start_serve()
    parent = psutil.Process(served.process.pid)
    wait_for(lambda: len(dagster_descendants(parent)) >= 2, START_TIMEOUT_S, "both children")

    assert served.stop(signal.SIGINT) == 0, served.output()
    assert not URL_LINE.search(served.output())
    assert_nothing_left(churn_home)


def test_a_dying_daemon_stops_the_webserver_and_fails(
    start_serve: Callable[[], Served], churn_home: Path
) -> None:
    served = start_serve()
    served.wait_until_serving()
    children = dagster_descendants(psutil.Process(served.process.pid), recursive=False)
    (daemon,) = [pid for pid, line in children.items() if "dagster-daemon" in line]
    os.kill(daemon, signal.SIGKILL)  # its code server is orphaned, as after a real crash

    assert served.process.wait(timeout=STOP_TIMEOUT_S) == 1
    assert f"dagster-daemon (pid {daemon}) exited with code -9" in served.output()
    assert_nothing_left(churn_home)


def test_the_expanded_graph_opens_every_group_in_pipeline_order(tmp_path: Path) -> None:
    groups = graph_groups(load_settings({"CHURN_HOME": str(tmp_path)}))
    assert groups[:4] == ["ingestion", "cleaning", "features", "training"]
    assert groups.index("training") < groups.index("scoring") and groups[-1] == "backups"
    url = expanded_graph_url("http://127.0.0.1:3000", groups)
    assert url.count("global@global:") == len(set(groups)) == len(groups)
    # The README gives the address `serve` prints for the default port.
    assert url in README.read_text()


def test_a_busy_port_fails_before_anything_starts(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PlatformError, match=f"cannot serve on 127.0.0.1:{port}"):
            with running_platform(settings, port):
                pytest.fail("the platform started on a busy port")
        assert serve(settings, port=port) == 1
    assert not dagster_descendants(psutil.Process())


LAYER_CHECKS = {
    "cleaned_customers": ("schema_valid", "unique_ids", "quarantine_ratio_within_limit"),
    "customer_features": ("schema_valid", "non_empty"),
}
FRESHNESS_RULE = re.compile(r"^Fails if more than .+ since last materialization$")
SCORES_CHECKS = ("rows_equal_scoring_population", "probabilities_within_0_and_1")
CURVES = ("ROC curve, test ROC-AUC", "Precision-recall curve", "Reliability curve")
LEADERBOARD_TABLES = {
    "ranking": ["model", "roc_auc", "pr_auc", "brier", "cv_roc_auc_mean"],
    "at_threshold": ["model", "threshold", "precision", "recall", "f1", "accuracy"],
    # The ensembles only (the session's run has one), each against its best base out of fold.
    "vs_best_base": ["model", "cv_roc_auc", "best_base", "base_cv", "gain", "earns"],
}
# A metadata table whose header cells are exactly `headers`: its first column, and its left
# and right edges against the scroll container the asset page shows its metadata in.
TABLE_PLACEMENT = """headers => {
  const found = Array.from(document.querySelectorAll('table')).filter(table => {
    const cells = Array.from(table.querySelectorAll(':scope > thead th'));
    return JSON.stringify(cells.map(th => th.innerText.trim())) === JSON.stringify(headers);
  });
  if (found.length !== 1) return {count: found.length};
  const table = found[0].getBoundingClientRect();
  const shown = found[0].closest("[class*='MetadataScrollContainer']").getBoundingClientRect();
  const rows = Array.from(found[0].querySelectorAll(':scope > tbody > tr'));
  return {
    count: 1,
    models: rows.map(row => row.querySelector('td').innerText.trim()),
    inside: table.left >= shown.left && table.right <= shown.right,
  };
}"""
MLFLOW_URL_LINE = re.compile(r"^MLflow UI on .*: (http://\S+)$", re.MULTILINE)


@contextmanager
def ui_page() -> Iterator[Page]:
    """A page of headless Chromium, 1600 x 1000, with Dagster's sign-up dialog marked seen."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # On localhost the UI opens a community sign-up dialog over the page; mark it seen.
            context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def check_ui(page: Page, url: str, shots: Path, pipeline: PipelineRun) -> None:
    """Groups in the asset graph, expanded by URL; the CLI's run under its job's name; lineage,
    latest metadata and no Materialize on an asset page; freshness policy and check results on
    the data layers' pages; a model's curves as images; the whole leaderboard; the promotion
    gate's blocking check with the gate's reason; the scores' blocking checks, passed."""
    from playwright.sync_api import expect

    page.goto(f"{url}/asset-groups")
    for group in ("ingestion", "cleaning", "features"):
        # Group boxes of the graph canvas (CSS-module class of Dagster 1.13's UI).
        node = page.locator("[class*='GroupNode']").filter(has_text=group)
        expect(node.first).to_be_visible()
    page.screenshot(path=shots / "asset_graph.png")

    page.goto(expanded_graph_url(url, graph_groups(load_settings())))
    for asset in ("raw_customers", "cleaned_customers", "champion_model", "churn_scores"):
        expect(page.get_by_text(asset, exact=True)).to_be_visible()
    page.screenshot(path=shots / "asset_graph_expanded.png")

    page.goto(f"{url}/runs")
    expect(page.get_by_role("link", name="full_pipeline").first).to_be_visible()
    expect(page.get_by_text("__ephemeral_asset_job__")).to_have_count(0)
    page.screenshot(path=shots / "runs.png")

    page.goto(f"{url}/assets/cleaned_customers")
    expect(page.get_by_text("Latest materialization")).to_be_visible()
    rows_in = pipeline.summary["assets"]["cleaned_customers"]["rows_in"]
    expect(page.get_by_role("row").filter(has_text="rows_in")).to_contain_text(str(rows_in))
    expect(page.get_by_role("link", name="raw_customers")).to_be_visible()
    # Its accessible name starts with the icon's ("materialization Materialize").
    expect(page.get_by_role("button", name=re.compile(r"Materialize$"))).to_be_disabled()
    page.screenshot(path=shots / "cleaned_customers.png", full_page=True)

    page.get_by_role("tab", name="Lineage").click()
    page.get_by_role("button", name="Upstream").click()
    expect(page).to_have_url(re.compile(r"lineageScope=upstream"))
    expect(page.get_by_text("raw_customers", exact=True)).to_be_visible()
    expect(page.get_by_text("customer_features", exact=True)).to_have_count(0)
    page.screenshot(path=shots / "cleaned_customers_upstream.png")

    # Freshness policy and asset-check status on each data layer's page.
    for asset, checks in LAYER_CHECKS.items():
        page.goto(f"{url}/assets/{asset}")
        expect(page.get_by_text("Latest check results")).to_be_visible()
        expect(page.get_by_text(FRESHNESS_RULE).first).to_be_visible()
        page.get_by_role("tab", name=re.compile(r"^Checks")).click()
        for check in checks:
            expect(page.get_by_text(check, exact=True).first).to_be_visible()
        page.screenshot(path=shots / f"{asset}_checks.png", full_page=True)

    # The curves are images on the model's page itself, not behind a "[Show Markdown]" link.
    page.goto(f"{url}/assets/model_{PIPELINE_MODELS[0]}")
    for curve in CURVES:
        image = page.get_by_role("img", name=re.compile(f"^{re.escape(curve)}"))
        expect(image).to_be_visible()
        assert image.evaluate("image => image.complete && image.naturalWidth > 0"), curve
    page.screenshot(path=shots / "model_curves.png", full_page=True)

    # Every model and every column, inside the page's metadata column (nothing cut off).
    page.goto(f"{url}/assets/model_leaderboard")
    expect(page.get_by_text("Show schema", exact=True)).to_have_count(len(LEADERBOARD_TABLES))
    ranked = [row["model"] for row in pipeline.summary["leaderboard"]]
    for name, headers in LEADERBOARD_TABLES.items():
        placement = page.evaluate(TABLE_PLACEMENT, headers)
        assert placement["count"] == 1, (name, placement)
        ensembles = [m for m in ranked if m in ENSEMBLE_KINDS]
        shown = ensembles if name == "vs_best_base" else ranked
        assert placement["models"] == shown, (name, placement)
        assert placement["inside"], f"the {name} table is cut off: {placement}"
    page.screenshot(path=shots / "model_leaderboard.png", full_page=True)

    page.goto(f"{url}/assets/champion_model?view=checks&checkDetail=promotion_gate")
    expect(page.get_by_text(re.compile(r"This is a\s+blocking\s+asset check"))).to_be_visible()
    expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
    # Other tests may promote or roll back on this state root; the latest gate's reason shows.
    expect(page.get_by_role("row").filter(has_text="reason").first).to_be_visible()
    decision = page.get_by_role("row").filter(has_text="decision").first
    expect(decision).to_contain_text(re.compile(r"promoted|champion kept"))
    page.screenshot(path=shots / "champion_model_gate.png", full_page=True)

    for check in SCORES_CHECKS:
        page.goto(f"{url}/assets/churn_scores?view=checks&checkDetail={check}")
        expect(page.get_by_text(re.compile(r"This is a\s+blocking\s+asset check"))).to_be_visible()
        expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
        page.screenshot(path=shots / f"churn_scores_{check}.png", full_page=True)


def check_mlflow_ui(page: Page, url: str, shots: Path) -> None:
    """The printed URL opens the experiment's runs table (not the GenAI Traces view), and a run
    says how long its training took."""
    from playwright.sync_api import expect

    page.goto(url)
    for model in PIPELINE_MODELS:
        expect(page.get_by_role("link", name=f"telco-{model}")).to_be_visible()
    page.screenshot(path=shots / "mlflow_runs.png")
    page.get_by_role("link", name=f"telco-{PIPELINE_MODELS[0]}").click()
    expect(page.get_by_text(re.compile(r"^Training took \d+\.\d s")).first).to_be_visible()
    page.screenshot(path=shots / "mlflow_run.png", full_page=True)


@contextmanager
def mlflow_ui_started(log: Path) -> Iterator[str]:
    """`churn-platform mlflow-ui` on a free port until the block ends: the URL it printed, once
    the server answers. Stopped by SIGTERM, with nothing left behind."""
    port = free_port()
    command = [sys.executable, "-m", "churn_platform.cli", "mlflow-ui", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        wait_for(
            lambda: (
                MLFLOW_URL_LINE.search(log.read_text()) is not None or process.poll() is not None
            ),
            START_TIMEOUT_S,
            "the MLflow UI's URL",
        )
        found = MLFLOW_URL_LINE.search(log.read_text())
        assert found, f"mlflow-ui exited early:\n{log.read_text()}"
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), START_TIMEOUT_S, "MLflow")
        # One server process: no MLflow job runner (started with the server) or its consumers.
        children = psutil.Process(process.pid).children(recursive=True)
        assert not [c for c in children if "mlflow.server.jobs" in " ".join(c.cmdline())]
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT_S)
    serving = f"--port {port}"
    wait_for(lambda: not command_lines_with(serving), 15, f"every process with {serving} to end")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def command_lines_with(text: str) -> list[str]:
    found = []
    for process in psutil.process_iter():
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if text in line:
            found.append(line)
    return found


@pytest.mark.browser
def test_read_only_ui_and_mlflow_ui_show_the_materialized_platform(
    telco_pipeline: PipelineRun, tmp_path: Path
) -> None:
    """The UIs over the state root of the session's end-to-end run (Telco, whole graph)."""
    with restored_environ():  # the platform exports its variables into os.environ
        os.environ.update(telco_pipeline.env)
        settings = load_settings()
        shots = Path(os.environ.get("CHURN_SCREENSHOT_DIR") or tmp_path / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        with (
            mlflow_ui_started(tmp_path / "mlflow-ui.log") as mlflow_url,
            running_platform(settings, free_port(), read_only=True, daemon=False) as url,
        ):
            lines = dagster_descendants(psutil.Process()).values()
            webserver = [line for line in lines if "dagster-webserver" in line]
            assert any("--read-only" in line for line in webserver), lines
            assert not any("dagster-daemon" in line for line in lines), lines
            with ui_page() as page:
                check_ui(page, url, shots, telco_pipeline)
                check_mlflow_ui(page, mlflow_url, shots)
    assert_nothing_left(telco_pipeline.home)
    print(f"screenshots: {shots}")  # noqa: T201
