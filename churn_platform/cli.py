"""`churn-platform`: thin commands over the Dagster definitions and the platform's modules.

Arguments and paths are checked before anything heavy (Spark, Dagster, MLflow) is imported, so
a mistake is reported at once; each command imports what it needs.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from churn_platform import cli_ops
from churn_platform.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    RegistryBackend,
    command,
    command_settings,
    importing,
    scoring_session,
)
from churn_platform.settings import DEFAULT_SPEC

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def _progress(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)


@command("fetch-data", "download and verify the default IBM Telco dataset")
def fetch_data(config: str | None) -> int:
    from churn_platform.datasets import ensure_telco_csv

    print(ensure_telco_csv(command_settings(config).data_dir))
    return EXIT_OK


@command("jvm-archive", "build the Spark driver's class-data archive (`make install` runs it)")
def jvm_archive(config: str | None) -> int:
    settings = command_settings(config)
    from churn_platform.core.jvm_archive import build

    try:
        path, built = build(settings.java_home)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(f"{exc}\nEvery command works without it.", EXIT_FAILED) from exc
    print(f"{'built' if built else 'already built'}: {path}")
    return EXIT_OK


@command("run", "materialize assets (all by default) in the persistent instance")
@click.option("--select", help="asset selection, e.g. 'customer_features' or '*churn_scores'")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary as the last line")
def run(config: str | None, select: str | None, as_json: bool) -> int:
    settings = command_settings(config)
    started = time.monotonic()
    if settings.spec_path == DEFAULT_SPEC.resolve():
        from churn_platform.datasets import TELCO_FILE, ensure_telco_csv

        if not (settings.data_dir / TELCO_FILE).exists():
            ensure_telco_csv(settings.data_dir)
    from churn_platform import runner

    _progress(f"materializing {select or 'all assets'} (state root {settings.home})", started)
    result = runner.materialize_selection(settings, select, progress=True)
    summary = runner.run_summary(result)
    _progress(f"{len(summary['assets'])} assets materialized", started)
    summary["wall_time_s"] = round(time.monotonic() - started, 2)
    if "champion" in summary:
        print(runner.champion_lines(summary["champion"]))
    if result.success and "scores_path" in summary:
        print(runner.next_steps(summary))
    if as_json:
        print(json.dumps(summary, default=str))
    if not result.success:
        raise CommandError(runner.failure_message(result))
    return EXIT_OK


@command("generate", "write a synthetic Telco-shaped customer file")
@click.option("--rows", type=int, required=True)
@click.option("--output", required=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--drift", type=float, default=0.0, show_default=True)
@click.option("--id-start", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv")
def generate(
    config: str | None, rows: int, output: str, seed: int, drift: float, id_start: int, fmt: str
) -> int:
    if rows < 1:
        raise CommandError("--rows must be at least 1", EXIT_USAGE)
    settings = command_settings(config)
    from churn_platform.core.spark_setup import spark_session
    from churn_platform.core.synthetic.generate import generate_customers
    from churn_platform.core.synthetic.write import write_customers

    spark = spark_session(settings)
    df = generate_customers(spark, rows, seed=seed, drift=drift, id_start=id_start)
    print(write_customers(df, Path(output), fmt=fmt))
    return EXIT_OK


@command("score", "score a CSV or Parquet file of customers with a registered model")
@click.option("--input", "input_path", required=True)
@click.option("--output", required=True, help="*.csv or *.parquet")
@click.option("--alias", default="champion", show_default=True)
@click.option(
    "--overwrite",
    is_flag=True,
    help="replace OUTPUT if it is an earlier score output (anything else is never replaced)",
)
def score(config: str | None, input_path: str, output: str, alias: str, overwrite: bool) -> int:
    settings = command_settings(config)
    from churn_platform.core.output_files import OutputRefused, check_target

    if not Path(input_path).exists():
        raise CommandError(f"{input_path}: no such file or folder", EXIT_USAGE)
    try:
        check_target(Path(output), overwrite)
    except OutputRefused as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    from churn_platform.config import platform_spec
    from churn_platform.core.input_files import (
        InputDataError,
        SchemaMismatchError,
        check_score_header,
        score_source,
    )

    spec = platform_spec(settings)
    try:  # a CSV file's header, before the JVM starts
        check_score_header(score_source(Path(input_path)), spec)
    except InputDataError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except SchemaMismatchError as exc:
        raise CommandError(f"{input_path}: {exc}", EXIT_USAGE) from exc

    backend = RegistryBackend.from_settings(settings)
    # The registry's client (MLflow's sqlite store: about 1 s) is ready when the JVM is.
    with importing("churn_platform.core.score_file", then=backend.client):
        spark = scoring_session(settings, Path(input_path))
    from churn_platform.core.score_file import score_file
    from churn_platform.core.scoring import scoring_policy, training_reference
    from churn_platform.core.versions import current_version

    def reference() -> DataFrame | None:
        """The warehouse's training customers, if reasons are measured now (read lazily)."""
        stored = current_version(settings.warehouse / "cleaned_customers")
        return training_reference(spark.read.parquet(str(stored)), spec) if stored else None

    try:
        result = score_file(
            spark,
            spec,
            backend,
            Path(input_path),
            Path(output),
            alias=alias,
            overwrite=overwrite,
            policy=scoring_policy(settings),
            reference=reference,
            batch_scores=current_version(settings.warehouse / "churn_scores"),
        )
    except SchemaMismatchError as exc:
        raise CommandError(f"{input_path}: {exc}", EXIT_USAGE) from exc
    print(json.dumps(result))
    return EXIT_OK


@command("top", "the highest-risk current customers: tier, reasons, contact value")
@click.option("--n", type=int, default=100, help="how many customers (default 100)")
@click.option("--tier", type=click.Choice(["high", "medium", "low"]), help="only this risk tier")
@click.option("--output", help="also write them to this CSV file")
@click.option("--overwrite", is_flag=True, help="replace an earlier top CSV")
@click.option("--json", "as_json", is_flag=True, help="print one JSON list of customers")
def top(
    config: str | None,
    n: int,
    tier: str | None,
    output: str | None,
    overwrite: bool,
    as_json: bool,
) -> int:
    """The highest-risk current customers from the stored churn_scores, without starting Spark."""
    if n < 1:
        raise CommandError("--n must be at least 1", EXIT_USAGE)
    settings = command_settings(config)
    target = Path(output) if output else None
    if target is not None:
        from churn_platform.core.output_files import OutputRefused, check_target

        if target.suffix != ".csv":
            raise CommandError(f"{target}: top writes CSV; give a .csv path", EXIT_USAGE)
        try:
            check_target(target, overwrite, ("churn_probability", "risk_tier"))
        except OutputRefused as exc:
            raise CommandError(str(exc), EXIT_USAGE) from exc

    from churn_platform.config import platform_spec
    from churn_platform.top import NoScoresError, top_customers, top_table, write_top_csv

    try:
        records = top_customers(settings, platform_spec(settings), n, tier)
    except NoScoresError as exc:
        raise CommandError(str(exc)) from None
    if target is not None:
        write_top_csv(records, target, overwrite)
        print(f"{len(records)} customers written to {target}", file=sys.stderr)
    if as_json:
        print(json.dumps(records))
    elif target is None:
        print(top_table(records))
    return EXIT_OK


@command("serve", "start the Dagster UI and daemon on 127.0.0.1")
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--read-only", is_flag=True, help="auditor UI: no daemon, no writes")
def serve(config: str | None, port: int, read_only: bool) -> int:
    settings = command_settings(config)
    from churn_platform.server import serve as serve_platform

    return serve_platform(settings, port=port, read_only=read_only, daemon=not read_only)


@command("mlflow-ui", "MLflow's UI on the state root's tracking store (runs, metrics, models)")
@click.option("--port", type=int, default=5000, show_default=True)
def mlflow_ui(config: str | None, port: int) -> int:
    """Prints the URL of the experiment's runs, then becomes `mlflow ui` (Ctrl-C stops it)."""
    settings = command_settings(config)
    from churn_platform.config import platform_spec
    from churn_platform.mlflow_ui import mlflow_ui as ui_command

    ui = ui_command(settings, f"churn-{platform_spec(settings).name}", port)
    print(f"MLflow UI on {settings.mlflow_tracking_uri}: {ui.url}", flush=True)
    os.execve(ui.command[0], ui.command, ui.environment)


@command("simulate", "drop batches into the inbox one at a time")
@click.option("--batches", type=int, default=4, show_default=True)
@click.option("--interval", type=float, default=120.0, help="seconds between drops")
@click.option("--synthetic", type=int, default=0, help="rows per synthetic batch")
@click.option("--drift", type=float, default=0.0, help="drift of the last batch")
@click.option("--seed", type=int, default=7, show_default=True)
def simulate(
    config: str | None, batches: int, interval: float, synthetic: int, drift: float, seed: int
) -> int:
    from churn_platform.simulate import simulate as drop_batches

    dropped = drop_batches(
        command_settings(config),
        batches=batches,
        interval=interval,
        synthetic_rows=synthetic,
        drift=drift,
        seed=seed,
    )
    for path in dropped:
        print(f"dropped {path}", flush=True)
    return EXIT_OK


cli = click.Group(
    "churn-platform",
    commands=[
        fetch_data,
        jvm_archive,
        run,
        generate,
        score,
        top,
        simulate,
        serve,
        mlflow_ui,
        *cli_ops.COMMANDS,
    ],
    help="Runs, scores and operations of the churn platform. Runs go through the persistent "
    "Dagster instance under $CHURN_HOME, so they show up in the UI's run history.",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code: 0 done, 1 failed, 2 usage, others per command."""
    try:
        with warnings.catch_warnings():
            # The platform builds on Dagster's beta and superseded APIs on purpose (declarative
            # automation, freshness checks); saying so on every command buries the output.
            # Matched by message: importing Dagster for its warning classes would make every
            # command, even one refused for a bad argument, wait for Dagster.
            warnings.filterwarnings("ignore", message=r".* is currently in beta")
            warnings.filterwarnings("ignore", message=r".* is superseded")
            code = cli.main(args=argv, prog_name="churn-platform", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("aborted", file=sys.stderr)
        return EXIT_FAILED
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code if isinstance(code, int) else EXIT_OK


def entry() -> NoReturn:
    """The console script: `main`, then an exit that skips the interpreter's garbage collection
    of everything the command imported (MLflow, pandas, PySpark): 1.5 s after `score` had
    printed its result. Every file and connection is closed by then; freezing the objects only
    spares the collector from walking them at exit."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
