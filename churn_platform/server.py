"""The Dagster UI and daemon over the persistent instance, started and stopped as one unit.

Each child runs in its own process group: Dagster's code servers and run workers are started in
their parent's group, so signalling the group reaches all of them and none is left behind.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import dagster as dg

from churn_platform.cli_common import actor
from churn_platform.core.ops.log import OpsLog
from churn_platform.core.process_groups import stop_groups
from churn_platform.definitions import PIPELINE, build_definitions
from churn_platform.runner import install_dagster_yaml, record_configuration
from churn_platform.settings import Settings, environ_restored

# The code location is the installed package, not a workspace file: there may be no checkout.
CODE_LOCATION = ("-m", "churn_platform.definitions")
START_TIMEOUT_S = 240.0
# SIGINT is Dagster's clean shutdown (it also stops its code servers); then escalate.
STOP_STEPS: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 15.0),
    (signal.SIGTERM, 5.0),
    (signal.SIGKILL, 5.0),
)
# A command started with `&` from a non-interactive shell ignores SIGINT, and ignored signals
# survive exec: without this reset the children would never hear a Ctrl-C or `kill -INT`.
_RESET_SIGNALS_THEN_EXEC = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def graph_groups(settings: Settings) -> list[str]:
    """The asset graph's groups in the order the pipeline runs them (how deep in the graph their
    assets start and end), the groups outside the pipeline (backups) last."""
    graph = build_definitions(settings).resolve_asset_graph()
    in_pipeline = PIPELINE.resolve(graph)
    depths: dict[str, list[int]] = {}
    depth: dict[dg.AssetKey, int] = {}
    for key in graph.toposorted_asset_keys:
        depth[key] = 1 + max(
            (depth[p] for p in graph.get(key).parent_keys if p in depth), default=-1
        )
        depths.setdefault(graph.get(key).group_name, []).append(depth[key])
    outside = {graph.get(key).group_name for key in graph.get_all_asset_keys() - in_pipeline}
    return sorted(depths, key=lambda g: (g in outside, min(depths[g]), max(depths[g]), g))


def expanded_graph_url(url: str, groups: list[str]) -> str:
    """The asset graph with every group open: Dagster opens it collapsed and has no setting for
    another default, but its `expanded` parameter lists the groups to open."""
    expanded = ",".join(f"global@global:{group}" for group in groups)
    return f"{url}/asset-groups?expanded={urllib.parse.quote(expanded, safe='@:,')}"


class PlatformError(RuntimeError):
    """The webserver or daemon failed to start, died, or would not stop."""


def _ensure_port_free(host: str, port: int) -> None:
    """Fail before starting: a server already on the port would answer our health check."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As uvicorn does: connections of a previous server in TIME_WAIT must not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PlatformError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc


def _create_instance(settings: Settings) -> None:
    """Install dagster.yaml and create the instance's sqlite tables before the children start.

    Both would create a new state root's tables at once, and one then dies with "table
    alembic_version already exists". This process's environment is left as it was.
    """
    install_dagster_yaml(settings)
    with environ_restored(*settings.library_env()):
        settings.export_library_env()
        dg.DagsterInstance.get().dispose()


class _Platform:
    """The child processes behind one `serve` or `running_platform` call."""

    def __init__(
        self, settings: Settings, port: int, host: str, read_only: bool, daemon: bool
    ) -> None:
        self.settings = settings
        self.port = port
        self.host = host
        self.read_only = read_only
        self.daemon = daemon and not read_only
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _health_url(self) -> str:
        probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{probe_host}]" if ":" in probe_host else probe_host
        return f"http://{host}:{self.port}/server_info"

    def start(self) -> None:
        _ensure_port_free(self.host, self.port)
        _create_instance(self.settings)
        env = self.settings.child_env()
        bin_dir = Path(sys.executable).parent
        webserver = [str(bin_dir / "dagster-webserver"), "-h", self.host, "-p", str(self.port)]
        commands = {"dagster-webserver": [*webserver, *CODE_LOCATION]}
        if self.read_only:
            commands["dagster-webserver"].append("--read-only")
        if self.daemon:
            commands["dagster-daemon"] = [str(bin_dir / "dagster-daemon"), "run", *CODE_LOCATION]
        for name, command in commands.items():
            self.children[name] = subprocess.Popen(
                [sys.executable, "-c", _RESET_SIGNALS_THEN_EXEC, *command],
                env=env,
                process_group=0,
            )

    def dead_child(self) -> str | None:
        """A description of the first child that has exited, if any."""
        for name, process in self.children.items():
            code = process.poll()
            if code is not None:
                return f"{name} (pid {process.pid}) exited with code {code}"
        return None

    def wait_until_ready(self, stop_requested: threading.Event | None = None) -> bool:
        """Poll the webserver's health endpoint; False if a stop was requested meanwhile."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while stop_requested is None or not stop_requested.is_set():
            dead = self.dead_child()
            if dead:
                raise PlatformError(f"{dead} while starting; its log above says why")
            try:
                with urllib.request.urlopen(self._health_url(), timeout=5) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise PlatformError(f"{self.url} did not answer within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        """Stop every process group, escalating from SIGINT to SIGKILL; raise if any survives."""
        survivors = stop_groups(self.children, STOP_STEPS)
        if survivors:
            raise PlatformError(f"{', '.join(survivors)} survived SIGKILL")


@contextlib.contextmanager
def running_platform(
    settings: Settings, port: int, read_only: bool = False, daemon: bool = True
) -> Iterator[str]:
    """Run the webserver (and daemon) for the duration of a block; yields the base URL.

    Every process started here, including Dagster's code servers and run workers, is stopped
    on exit. If a child died while the block ran, that is raised on a normal exit, since the
    block's results may then be wrong. Read-only mode never starts the daemon.
    """
    platform = _Platform(settings, port, "127.0.0.1", read_only, daemon)
    try:
        platform.start()
        platform.wait_until_ready()
        yield platform.url
        dead = platform.dead_child()
        if dead:
            raise PlatformError(f"{dead} while the platform was in use")
    finally:
        platform.stop()


def serve(
    settings: Settings,
    port: int = 3000,
    host: str = "127.0.0.1",
    read_only: bool = False,
    daemon: bool = True,
) -> int:
    """Serve the UI (and run the daemon) until Ctrl-C or SIGTERM; the exit code for the CLI.

    Returns 0 after a requested stop and 1 if a child failed to start or died, after stopping
    the other: a UI without its daemon silently stops running schedules and sensors. Read-only
    mode (for auditors) starts no daemon, so nothing can be launched behind their back either.
    """
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    if not read_only:
        with OpsLog(settings) as ops:
            record_configuration(settings, actor(), ops)
    platform = _Platform(settings, port, host, read_only, daemon)
    try:
        platform.start()
        graph_url = expanded_graph_url(platform.url, graph_groups(settings))  # while it starts
        if platform.wait_until_ready(stop_requested):
            mode = " (read-only)" if read_only else ""
            sys.stdout.write(
                f"Dagster UI{mode} for {settings.home}: {platform.url}\n"
                f"Asset graph with every group expanded: {graph_url}\n"
            )
            sys.stdout.flush()
        while not stop_requested.wait(0.5):
            dead = platform.dead_child()
            if dead:
                raise PlatformError(f"{dead}; stopping the platform")
        return 0
    except PlatformError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    finally:
        try:
            platform.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
