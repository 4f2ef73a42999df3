"""A local Spark standalone cluster and Spark Connect server, as child processes.

Tests and benchmarks use them to run the unchanged pipeline against `spark://...` or
`sc://...` URLs, the way production does. Each daemon runs in a process group of its own: a
Worker starts its executors (and they their Python workers) in that group, so signalling the
group on exit stops all of them and nothing is left behind. If the Python process that started
a daemon dies without unwinding (SIGKILL, or SIGTERM with no handler), Linux sends the daemon
SIGTERM (`PR_SET_PDEATHSIG`), so even then no JVM outlives it. The kernel ties this to the
thread that entered the context manager: keep the context in a thread that outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from churn_platform.core.process_groups import stop_groups

HOST = "127.0.0.1"
START_TIMEOUT_S = 300.0
STOP_STEPS = ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0))
POLL_S = 0.5
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
# Runs between fork and Spark's launcher script: ask the kernel for SIGTERM when our parent
# dies (PR_SET_PDEATHSIG = 1; it survives exec), give up if it already has, then exec.
_EXEC_WITH_PARENT_DEATH_SIGNAL = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('parent exited before the Spark daemon started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class ClusterError(RuntimeError):
    """A Spark daemon failed to start, died early, or never became ready."""


def spark_home() -> Path:
    """The installed pyspark package: the pip wheel ships `bin/spark-class` and all jars."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port that is free right now; the OS picks it, so parallel clusters differ."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Daemon:
    """One JVM started through Spark's launcher scripts, leader of its own process group."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            # The trampoline and the launcher scripts `exec`, so this pid and group are the JVM's.
            self.process = subprocess.Popen(
                [sys.executable, "-c", _EXEC_WITH_PARENT_DEATH_SIGNAL, str(os.getpid()), *command],
                env=dict(env),
                cwd=log_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ClusterError(
                f"Spark {self.name} (pid {self.process.pid}) exited with code {code}; "
                f"end of {self.log}:\n{_log_tail(self.log)}"
            )

    def stop(self) -> None:
        """SIGTERM the whole group (executors included), then SIGKILL whatever remains."""
        stop_groups({self.name: self.process}, STOP_STEPS)
        self.process.wait()


@contextlib.contextmanager
def _daemons() -> Iterator[list[_Daemon]]:
    """Stops every daemon appended to the list, newest first, however the block ends."""
    started: list[_Daemon] = []
    try:
        yield started
    finally:
        for daemon in reversed(started):
            daemon.stop()


@contextlib.contextmanager
def _log_dir(log_dir: Path | None) -> Iterator[Path]:
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        yield log_dir
        return
    with tempfile.TemporaryDirectory(prefix="churn-spark-") as tmp:
        yield Path(tmp)


def _wait(ready: Callable[[], bool], daemons: list[_Daemon], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for daemon in daemons:
            daemon.check_alive()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- end of {d.log}\n{_log_tail(d.log)}" for d in daemons)
            raise ClusterError(f"{what} not ready after {timeout:.0f} s\n{logs}")
        time.sleep(POLL_S)


def _daemon_env(base: Mapping[str, str]) -> dict[str, str]:
    return {
        **base,
        "SPARK_HOME": str(spark_home()),
        # Otherwise Spark binds to the first non-loopback interface it finds.
        "SPARK_LOCAL_IP": HOST,
        # The master's REST submission server would take the fixed port 6066.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }


def master_status(webui_port: int) -> dict[str, Any] | None:
    """The master web UI's JSON (workers, cores, applications), or None if it is not up."""
    url = f"http://{HOST}:{webui_port}/json/"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _alive_cores(webui_port: int) -> int:
    workers = (master_status(webui_port) or {}).get("workers", [])
    return sum(int(w.get("cores", 0)) for w in workers if w.get("state") == "ALIVE")


@contextlib.contextmanager
def standalone_cluster(
    env: Mapping[str, str],
    cores: int = 2,
    memory: str = "2g",
    log_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[str]:
    """A Spark standalone master and one worker on 127.0.0.1; yields the master URL.

    The daemons start from `env` (PATH, JAVA_HOME, ...: the caller's environment) plus what
    Spark needs to stay on loopback. Returns only once the worker has registered with all its
    cores, so the first application gets executors at once. Daemon logs, and the worker's
    per-application folders, go to `log_dir` (a temporary folder, removed on exit, when None).
    """
    with _log_dir(log_dir) as logs, _daemons() as started:
        daemon_env = _daemon_env(env)
        spark_class = str(spark_home() / "bin" / "spark-class")
        port, webui_port, worker_webui_port = free_port(), free_port(), free_port()
        master_url = f"spark://{HOST}:{port}"
        master = [spark_class, "org.apache.spark.deploy.master.Master", "--host", HOST]
        master += ["--port", str(port), "--webui-port", str(webui_port)]
        started.append(_Daemon("master", master, daemon_env, logs))
        worker = [spark_class, "org.apache.spark.deploy.worker.Worker", master_url]
        worker += ["--host", HOST, "--cores", str(cores), "--memory", memory]
        worker += ["--webui-port", str(worker_webui_port), "--work-dir", str(logs / "work")]
        started.append(_Daemon("worker", worker, daemon_env, logs))
        _wait(
            lambda: _alive_cores(webui_port) >= cores,
            started,
            f"Spark master {master_url} with an ALIVE {cores}-core worker",
            timeout,
        )
        yield master_url


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=2):
        return True
    return False


@contextlib.contextmanager
def connect_server(
    env: Mapping[str, str],
    master: str = "local[2]",
    conf: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[str]:
    """A Spark Connect server (the jar ships in the pyspark wheel); yields its `sc://` URL.

    The server starts from `env`, as `standalone_cluster` daemons do. It is the Spark driver:
    `master` is where its executors run (local threads or a
    `standalone_cluster()` URL), and `conf` holds server-side settings such as `spark.jars`
    for a JDBC driver, which a Connect client cannot add itself.
    """
    with _log_dir(log_dir) as logs, _daemons() as started:
        port = free_port()
        settings = {
            "spark.connect.grpc.binding.address": HOST,
            "spark.connect.grpc.binding.port": str(port),
            "spark.ui.enabled": "false",
            **(conf or {}),
        }
        command = [str(spark_home() / "bin" / "spark-submit"), "--class", CONNECT_SERVER_CLASS]
        command += ["--master", master, "--name", "churn-connect-server"]
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        started.append(_Daemon("connect-server", command, _daemon_env(env), logs))
        _wait(lambda: _port_open(port), started, f"Spark Connect server on port {port}", timeout)
        yield f"sc://{HOST}:{port}"
