"""What every `churn-platform` command shares: exit codes, the user's errors, --config."""

from __future__ import annotations

import contextlib
import getpass
import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from churn_platform.settings import Settings, load_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from pyspark.sql import SparkSession

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(RuntimeError):
    """A failure the user can act on; `cli.main` prints it to stderr and exits non-zero."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def command_settings(config: str | None) -> Settings:
    """The settings of a command: the environment's, with --config as the dataset spec.

    A --config that is not a file is the user's mistake: refused here, before the command
    imports anything heavy.
    """
    settings = load_settings()
    if config:
        path = Path(config).resolve()
        if not path.is_file():
            raise CommandError(f"--config {config}: no such dataset spec file", EXIT_USAGE)
        return settings.model_copy(update={"spec_path": path})
    return settings


def command(name: str, help_text: str) -> Callable[[Callable[..., int]], click.Command]:
    """A command taking the --config option every command has."""

    def decorate(function: Callable[..., Any]) -> click.Command:
        option = click.option("--config", help="dataset spec YAML (default: CHURN_CONFIG or Telco)")
        return click.command(name, help=help_text)(option(function))

    return decorate


def actor() -> str:
    """Who started a run or moved a model, for run tags and the operations log."""
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


@dataclass(frozen=True)
class RegistryBackend:
    """The state root's MLflow backend for commands outside a Dagster run (`score`, `model
    rollback`): what `MlflowResource` gives, without importing Dagster (about 1 s) for it."""

    tracking_uri: str
    artifact_root: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryBackend:
        return cls(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)

    def client(self) -> MlflowClient:
        from churn_platform.core.tracking import backend_client

        return backend_client(self.tracking_uri)

    def experiment_id(self, spec_name: str) -> str:
        from churn_platform.core.tracking import ensure_experiment

        return ensure_experiment(self.client(), self.artifact_root, spec_name)


# Inputs up to this size are scored by a JVM that lives for seconds: HotSpot's C1 compiler only
# and one collector thread (`score` on 50 rows spent about half the JVM CPU seconds of the
# default tiered JIT and collector, with identical output), and no generated code at all:
# Janino compiling the wide scoring projection and each expression costs more than it saves on
# a few rows (whole-stage code generation off; `factoryMode` NO_CODEGEN, Spark's switch to its
# interpreted projections and predicates, saved another 1.2-1.5 s of 10 on 50 rows, same
# output). A larger input keeps the defaults, which pay off on long stages.
SMALL_INPUT_BYTES = 16 * 1024 * 1024


@contextlib.contextmanager
def importing(*modules: str, then: Callable[[], object] | None = None) -> Iterator[None]:
    """Import `modules` in a thread while the body runs, then call `then`: the body starts a
    JVM, seconds in which the interpreter would otherwise only wait. A module that fails to
    import here raises again where the command imports it, as does a failing `then` where the
    command calls it again (what it prepares is cached)."""

    def load() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        if then is not None:
            with contextlib.suppress(Exception):
                then()

    thread = threading.Thread(target=load, name="command-imports", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def input_bytes(path: Path) -> int:
    """Size of an input file, or of the files in an input folder (a Parquet dataset)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def scoring_session(settings: Settings, input_path: Path) -> SparkSession:
    """The SparkSession of `score`: the platform's configuration, for a short JVM when the
    input is small and this call starts the driver's JVM (not with Spark Connect, nor when a
    session is already running in this process: it is returned as it is configured)."""
    from pyspark.sql import SparkSession

    from churn_platform.core.spark_setup import session_of, spark_conf

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    small = not settings.spark_remote and input_bytes(input_path) <= SMALL_INPUT_BYTES
    conf = spark_conf(settings, short_lived=small)
    if small:
        conf |= {
            "spark.sql.codegen.wholeStage": "false",
            "spark.sql.codegen.factoryMode": "NO_CODEGEN",
        }
    return session_of(conf)
