"""The read-only UI shows the materialized platform, and serving never leaves a process behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from churn_platform.server import PlatformError, running_platform, serve
from churn_platform.settings import Settings, load_settings
from churn_platform_tests.conftest import PipelineRun, restored_environ

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def check_ui(url: str, shots: Path, rows_in: int) -> None:
    """Groups in the asset graph; lineage, latest metadata and no Materialize on an asset page;
    freshness policy and check results on the data layers' pages."""
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

            page.goto(f"{url}/asset-groups")
            for group in ("ingestion", "cleaning", "features"):
                # Group boxes of the graph canvas (CSS-module class of Dagster 1.13's UI).
                node = page.locator("[class*='GroupNode']").filter(has_text=group)
                expect(node.first).to_be_visible()
            page.screenshot(path=shots / "asset_graph.png")

            page.goto(f"{url}/assets/cleaned_customers")
            expect(page.get_by_text("Latest materialization")).to_be_visible()
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
        finally:
            browser.close()


@pytest.mark.browser
def test_read_only_ui_shows_groups_lineage_and_latest_materialization(
    telco_pipeline: PipelineRun, tmp_path: Path
) -> None:
    """The UI over the state root of the session's end-to-end run (Telco, whole graph)."""
    with restored_environ():  # the platform exports its variables into os.environ
        os.environ.update(telco_pipeline.env)
        settings = load_settings()
        rows_in = telco_pipeline.summary["assets"]["cleaned_customers"]["rows_in"]
        shots = Path(os.environ.get("CHURN_SCREENSHOT_DIR") or tmp_path / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        with running_platform(settings, free_port(), read_only=True, daemon=False) as url:
            lines = dagster_descendants(psutil.Process()).values()
            webserver = [line for line in lines if "dagster-webserver" in line]
            assert any("--read-only" in line for line in webserver), lines
            assert not any("dagster-daemon" in line for line in lines), lines
            check_ui(url, shots, rows_in)
    assert_nothing_left(telco_pipeline.home)
    print(f"screenshots: {shots}")  # noqa: T201
