"""`churn-platform`: thin commands over the Dagster definitions and the platform's modules.

Runs go through a persistent Dagster instance under $CHURN_HOME, so everything started here
shows up in the UI's run history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from churn_platform.settings import DEFAULT_SPEC, Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(RuntimeError):
    """A failure the user can act on; main() prints it to stderr and exits non-zero."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "config", None):
        os.environ["CHURN_CONFIG"] = str(Path(args.config).resolve())
    return load_settings()


def _progress(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)


def _instance(settings: Settings) -> dg.DagsterInstance:
    from churn_platform.resources import prepare_dagster_home
    from churn_platform.run_recovery import fail_abandoned_runs

    prepare_dagster_home(settings)
    instance = dg.DagsterInstance.get()
    for run_id in fail_abandoned_runs(settings, instance):
        print(f"marked run {run_id} failed: its CLI process is gone", file=sys.stderr)
    return instance


def _root_error(error: Any) -> str:
    """The user's own exception message, beneath Dagster's wrapping errors."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return (getattr(error, "message", None) or str(error)).strip()


def cmd_fetch_data(args: argparse.Namespace) -> int:
    from churn_platform.datasets import ensure_telco_csv

    path = ensure_telco_csv(_settings(args).data_dir)
    print(path)
    return EXIT_OK


def materialize_selection(
    settings: Settings,
    selection: str | None,
    tags: dict[str, str] | None = None,
    partition_key: str | None = None,
    progress: bool = False,
) -> dg.ExecuteInProcessResult:
    """Materialize the selected assets in this process (one JVM) and record the run.

    With `progress`, a line per finished asset replaces Dagster's INFO log on the console.
    """
    # First: the platform's environment (Dagster home, MLflow's log level) must be in place
    # before the asset modules import MLflow.
    instance = _instance(settings)
    from churn_platform.assets.ingestion import BASE_BATCH, ingest_batches
    from churn_platform.core.process_identity import process_token
    from churn_platform.definitions import build_definitions
    from churn_platform.progress import RunProgress
    from churn_platform.run_recovery import PROCESS_TAG

    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    # "Everything" is the pipeline; backups are their own daily-partitioned job.
    asset_selection = (
        dg.AssetSelection.from_coercible(selection)
        if selection
        else dg.AssetSelection.all() - dg.AssetSelection.groups("backups")
    )
    keys = asset_selection.resolve(graph)
    batch_partitioned = {k for k in keys if graph.get(k).partitions_def == ingest_batches}
    if batch_partitioned and partition_key is None:
        if not instance.has_dynamic_partition(ingest_batches.name, BASE_BATCH):
            instance.add_dynamic_partitions(ingest_batches.name, [BASE_BATCH])
        partition_key = BASE_BATCH
    token = uuid.uuid4().hex
    run_tags = {
        "churn/trigger": "cli",
        "churn/actor": _actor(),
        "churn/cli_run": token,
        PROCESS_TAG: process_token(),
        **(tags or {}),
    }
    level = "WARNING" if progress else "INFO"

    def run() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            list(defs.assets or []),
            instance=instance,
            resources=defs.resources,
            selection=asset_selection,
            partition_key=partition_key,
            raise_on_error=False,
            tags=run_tags,
            run_config={"loggers": {"console": {"config": {"log_level": level}}}},
        )

    if not progress:
        return run()
    with RunProgress(instance, ("churn/cli_run", token), total=len(keys)):
        return run()


def _actor() -> str:
    import getpass

    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def run_summary(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """Numeric metadata per materialized asset, plus the quarantine and model summaries."""
    summary: dict[str, Any] = {"run_id": result.run_id, "success": result.success, "assets": {}}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        key = materialization.asset_key.to_user_string()
        numeric = {
            name: value.value
            for name, value in materialization.metadata.items()
            if isinstance(value.value, (int, float)) and not isinstance(value.value, bool)
        }
        summary["assets"][key] = numeric
        if key == "quarantined_customers":
            by_reason = materialization.metadata.get("by_reason")
            summary["quarantine"] = {
                "total": numeric.get("quarantine_total", 0),
                "by_reason": by_reason.value if by_reason is not None else {},
            }
        for extra in ("champion", "leaderboard"):
            if extra in materialization.metadata:
                summary[extra] = materialization.metadata[extra].value
        if key == "churn_scores" and "path" in materialization.metadata:
            summary["scores_path"] = str(materialization.metadata["path"].value)
    return summary


def next_steps(summary: dict[str, Any]) -> str:
    """The end of a run that scored customers: where the scores are and what to try next."""
    scored = summary["assets"].get("churn_scores", {})
    return "\n".join(
        [
            f"scores: {scored.get('population_scored', '?')} customers who can still churn "
            f"({scored.get('population_excluded', '?')} excluded), in {summary['scores_path']}",
            "next:",
            "  churn-platform top --n 20                               "
            "the 20 highest-risk customers, with reasons and contact value",
            "  churn-platform score --input FILE --output scores.csv  score a file of customers",
            "  make ui  (churn-platform serve)                         "
            "the UI at http://127.0.0.1:3000, churn_scores shows the top customers",
        ]
    )


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    messages = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            messages.append(f"{event.step_key}: {_root_error(event.step_failure_data.error)}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                key = evaluation.asset_key.to_user_string()
                messages.append(f"check {evaluation.check_name} on {key} failed")
    return "; ".join(messages) or "the run failed"


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    started = time.monotonic()
    if settings.spec_path == DEFAULT_SPEC.resolve():
        from churn_platform.datasets import TELCO_FILE, ensure_telco_csv

        if not (settings.data_dir / TELCO_FILE).exists():
            ensure_telco_csv(settings.data_dir)
    _progress(f"materializing {args.select or 'all assets'} (state root {settings.home})", started)
    result = materialize_selection(settings, args.select, progress=True)
    summary = run_summary(result)
    _record_outcome(settings, result)
    _progress(f"{len(summary['assets'])} assets materialized", started)
    summary["wall_time_s"] = round(time.monotonic() - started, 2)
    if "champion" in summary:
        champion = summary["champion"]
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in champion.get("metrics", {}).items())
        print(f"champion: {champion.get('name')} v{champion.get('version')} ({metrics})")
    if result.success and "scores_path" in summary:
        print(next_steps(summary))
    if args.json:
        print(json.dumps(summary, default=str))
    if not result.success:
        raise CommandError(_failure_message(result))
    return EXIT_OK


def _record_outcome(settings: Settings, result: dg.ExecuteInProcessResult) -> None:
    """CLI runs get the same incident handling as daemon runs (the sensors never see them)."""
    from churn_platform.automation import record_run_failure, resolve_after_success

    instance = dg.DagsterInstance.get()
    if result.success:
        resolve_after_success(settings, instance, result.run_id)
    else:
        record_run_failure(settings, instance, result.run_id)


def _spark(settings: Settings):
    from pyspark.sql import SparkSession

    from churn_platform.resources import spark_conf

    builder = SparkSession.builder
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _mlflow(settings: Settings):
    from churn_platform.mlflow_resource import MlflowResource

    return MlflowResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )


def _spec(settings: Settings):
    from churn_platform.config import load_spec

    return load_spec(settings.spec_path, settings.home)


def cmd_score(args: argparse.Namespace) -> int:
    from churn_platform.core.output_files import OutputRefused, check_target

    output = Path(args.output)
    if not Path(args.input).exists():
        raise CommandError(f"{args.input}: no such file or folder", EXIT_USAGE)
    try:
        check_target(output, args.overwrite)
    except OutputRefused as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc

    from churn_platform.assets.scoring import score_file, scoring_policy, training_reference
    from churn_platform.core.tracking import SchemaMismatchError
    from churn_platform.io_managers import current_version

    settings = _settings(args)
    spark, spec = _spark(settings), _spec(settings)
    # Reasons are measured from the training customers when the warehouse has them.
    stored = current_version(settings.warehouse / "cleaned_customers")
    reference = training_reference(spark.read.parquet(str(stored)), spec) if stored else None
    try:
        result = score_file(
            spark,
            spec,
            _mlflow(settings),
            Path(args.input),
            output,
            alias=args.alias,
            overwrite=args.overwrite,
            policy=scoring_policy(settings),
            reference=reference,
        )
    except SchemaMismatchError as exc:
        raise CommandError(f"{args.input}: {exc}", EXIT_USAGE) from exc
    print(json.dumps(result))
    return EXIT_OK


TOP_COLUMNS = ("churn_probability", "risk_tier", "expected_value", "reasons")


def cmd_top(args: argparse.Namespace) -> int:
    """The highest-risk current customers from the stored churn_scores, without starting Spark."""
    if args.n < 1:
        raise CommandError("--n must be at least 1", EXIT_USAGE)
    output = Path(args.output) if args.output else None
    if output is not None:
        from churn_platform.core.output_files import OutputRefused, check_target

        if output.suffix != ".csv":
            raise CommandError(f"{output}: top writes CSV; give a .csv path", EXIT_USAGE)
        try:
            check_target(output, args.overwrite, ("churn_probability", "risk_tier"))
        except OutputRefused as exc:
            raise CommandError(str(exc), EXIT_USAGE) from exc

    import pyarrow.parquet as pq

    from churn_platform.io_managers import current_version

    settings = _settings(args)
    spec = _spec(settings)
    stored = current_version(settings.warehouse / "churn_scores")
    if stored is None:
        raise CommandError(
            f"no churn_scores under {settings.warehouse}; run `churn-platform run` first"
        )
    table = pq.read_table(stored, columns=[spec.id_column, *TOP_COLUMNS]).to_pandas()
    if args.tier:
        table = table[table["risk_tier"] == args.tier]
    top = table.sort_values("churn_probability", ascending=False, kind="stable").head(args.n)
    records = [
        {
            "customer_id": str(row[spec.id_column]),
            "churn_probability": float(row["churn_probability"]),
            "risk_tier": row["risk_tier"],
            "expected_value": float(row["expected_value"]),
            "reasons": [
                {
                    "feature": r["feature"],
                    "value": r["value"],
                    "contribution": float(r["contribution"]),
                }
                for r in (row["reasons"] if row["reasons"] is not None else [])
            ],
        }
        for _, row in top.iterrows()
    ]
    if output is not None:
        _write_top_csv(records, output, args.overwrite)
        print(f"{len(records)} customers written to {output}", file=sys.stderr)
    if args.json:
        print(json.dumps(records))
    elif output is None:
        print(_top_table(records))
    return EXIT_OK


def _reason_cells(record: dict[str, Any]) -> list[str]:
    cells = [f"{r['feature']}={r['value']} ({r['contribution']:+.2f})" for r in record["reasons"]]
    return cells + [""] * (3 - len(cells))


def _top_table(records: list[dict[str, Any]]) -> str:
    lines = [f"{'customer':<14} {'prob':>6} {'tier':<6} {'value':>7}  reasons"]
    for r in records:
        reasons = "; ".join(c for c in _reason_cells(r) if c)
        lines.append(
            f"{r['customer_id']:<14} {r['churn_probability']:>6.3f} {r['risk_tier']:<6} "
            f"{r['expected_value']:>7.0f}  {reasons}"
        )
    return "\n".join(lines)


def _write_top_csv(records: list[dict[str, Any]], output: Path, overwrite: bool) -> None:
    """Spreadsheet-safe CSV (formula-looking cells quoted), swapped in when complete."""
    import csv

    from churn_platform.core.output_files import FORMULA_STARTS, staged_output

    def safe(value: object) -> object:
        text = str(value)
        return f"'{text}" if isinstance(value, str) and text.startswith(FORMULA_STARTS) else value

    header = ["customer_id", "churn_probability", "risk_tier", "expected_value"]
    with staged_output(output, overwrite, ("churn_probability", "risk_tier")) as target:
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*header, "reason_1", "reason_2", "reason_3"])
            for r in records:
                writer.writerow([safe(r[c]) for c in header] + list(map(safe, _reason_cells(r))))


def cmd_model_rollback(args: argparse.Namespace) -> int:
    from churn_platform.core.registry import rollback

    settings = _settings(args)
    try:
        decision = rollback(
            _mlflow(settings),
            _spec(settings),
            settings,
            actor=_actor(),
            reason=args.reason,
            to_version=args.to_version,
            force=args.force,
        )
    except ValueError as exc:  # no champion, no such version, worse without --force
        raise CommandError(str(exc)) from None
    print(f"champion is now v{decision.champion_version} ({decision.reason})")
    print(
        "customers are not re-scored yet; to score them with this champion run:\n"
        "  churn-platform run --select churn_scores"
    )
    return EXIT_OK


def cmd_logs_verify(args: argparse.Namespace) -> int:
    from churn_platform.backup import archived_chain_anchor
    from churn_platform.core.ops.chain import anchor_path
    from churn_platform.core.ops.incidents import IncidentStore
    from churn_platform.core.ops.verify import format_verify_report, verify_logs

    settings = _settings(args)
    # The anchor outside logs/ and the newest backup's copy report a deleted log folder.
    report = verify_logs(settings.logs, anchor_path(settings), archived_chain_anchor(settings))
    print(json.dumps(report.to_dict()) if args.json else format_verify_report(report))
    if report.ok:
        return EXIT_OK
    broken = [f for f in report.files if not f.ok]
    IncidentStore(settings).open(
        dedupe_key=f"log-chain:{broken[0].file}:{broken[0].line}",
        detected_by="churn-platform logs verify",
        category="security",
        configuration_item=f"log:{broken[0].file}",
        impact="high",
        urgency="high",
        summary=f"operations log chain broken in {broken[0].file} at line {broken[0].line}",
        details={"reason": broken[0].reason},
    )
    return 3


def cmd_incidents(args: argparse.Namespace) -> int:
    from churn_platform.core.ops.incidents import IncidentStore, format_incidents

    if args.action == "show" and not args.id:
        raise CommandError(
            "incidents show needs an incident id, e.g. INC-20260101-0001", EXIT_USAGE
        )
    store = IncidentStore(_settings(args))
    if args.action == "show":
        try:
            incident = store.get(args.id)
        except (KeyError, ValueError) as exc:
            raise CommandError(exc.args[0], EXIT_USAGE) from None
        print(json.dumps(incident.to_dict(), indent=None if args.json else 2))
        return EXIT_OK
    incidents = store.list(status=args.status)
    print(
        json.dumps([i.to_dict() for i in incidents]) if args.json else format_incidents(incidents)
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from churn_platform.status import platform_status, render_status

    settings = _settings(args)
    status = platform_status(settings, _instance(settings))
    print(json.dumps(status, default=str) if args.json else render_status(status))
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    settings = _settings(args)
    partition = args.partition or time.strftime("%Y-%m-%d", time.gmtime())
    result = materialize_selection(settings, "platform_backup", partition_key=partition)
    _record_outcome(settings, result)
    if not result.success:
        raise CommandError(_failure_message(result))
    summary = run_summary(result)["assets"].get("platform_backup", {})
    for event in result.get_asset_materialization_events():
        archive = event.event_specific_data.materialization.metadata.get("archive")
        if archive is not None:
            print(archive.value)
    return EXIT_OK if summary is not None else EXIT_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    from churn_platform.backup import BackupError, restore_backup

    settings = _settings(args)
    try:
        result = restore_backup(
            settings,
            args.partition,
            component=args.component,
            target_dir=Path(args.target) if args.target else None,
            dry_run=args.dry_run,
        )
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        "\n".join(result.plan)
        if args.dry_run
        else json.dumps(
            {
                "restored": result.restored,
                "moved_aside": result.moved_aside,
                "notes": result.notes,
                "seconds": result.seconds,
            },
            default=str,
        )
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from churn_platform.server import serve

    return serve(
        _settings(args), port=args.port, read_only=args.read_only, daemon=not args.read_only
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    from churn_platform.simulate import simulate

    settings = _settings(args)
    for path in simulate(
        settings,
        batches=args.batches,
        interval=args.interval,
        synthetic_rows=args.synthetic,
        drift=args.drift,
        seed=args.seed,
    ):
        print(f"dropped {path}", flush=True)
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from churn_platform.audit_lineage import audit_model, audit_scores
    from churn_platform.core.audit.render import render_markdown, report_json, write_report
    from churn_platform.core.audit.report import AuditError

    settings = _settings(args)
    instance, mlflow, spec = _instance(settings), _mlflow(settings), _spec(settings)
    try:
        if args.scores:
            report = audit_scores(settings, instance, mlflow, spec, args.scores)
        else:
            report = audit_model(settings, instance, mlflow, spec, args.model)
    except AuditError as exc:
        raise CommandError(str(exc)) from exc
    markdown_path, json_path = write_report(settings, report)
    print(report_json(report) if args.json else render_markdown(report))
    print(f"report written to {markdown_path} and {json_path}", file=sys.stderr)
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from churn_platform.core.synthetic.generate import generate_customers
    from churn_platform.core.synthetic.write import write_customers

    spark = _spark(_settings(args))
    df = generate_customers(
        spark, args.rows, seed=args.seed, drift=args.drift, id_start=args.id_start
    )
    print(write_customers(df, Path(args.output), fmt=args.format))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churn-platform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", help="dataset spec YAML (default: CHURN_CONFIG or Telco)")
        command.set_defaults(handler=handler)
        return command

    add("fetch-data", cmd_fetch_data, "download and verify the default IBM Telco dataset")

    run = add("run", cmd_run, "materialize assets (all by default) in the persistent instance")
    run.add_argument(
        "--select", help="asset selection, e.g. 'customer_features' or '*churn_scores'"
    )
    run.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    generate = add("generate", cmd_generate, "write a synthetic Telco-shaped customer file")
    generate.add_argument("--rows", type=int, required=True)
    generate.add_argument("--output", required=True)
    generate.add_argument("--seed", type=int, default=42)
    generate.add_argument("--drift", type=float, default=0.0)
    generate.add_argument("--id-start", type=int, default=0)
    generate.add_argument("--format", choices=["csv", "parquet"], default="csv")

    score = add(
        "score", cmd_score, "score a CSV or Parquet file of customers with a registered model"
    )
    score.add_argument("--input", required=True)
    score.add_argument("--output", required=True, help="*.csv or *.parquet")
    score.add_argument("--alias", default="champion")
    score.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it is an earlier score output (anything else is never replaced)",
    )

    top = add("top", cmd_top, "the highest-risk current customers: tier, reasons, contact value")
    top.add_argument("--n", type=int, default=100, help="how many customers (default 100)")
    top.add_argument("--tier", choices=["high", "medium", "low"], help="only this risk tier")
    top.add_argument("--output", help="also write them to this CSV file")
    top.add_argument("--overwrite", action="store_true", help="replace an earlier top CSV")
    top.add_argument("--json", action="store_true", help="print one JSON list of customers")

    model = add("model", cmd_model_rollback, "registry operations")
    model.add_argument("action", choices=["rollback"])
    model.add_argument("--to-version", help="version to make champion (default: the previous one)")
    model.add_argument("--reason", default="manual rollback")
    model.add_argument(
        "--force",
        action="store_true",
        help="roll back even to a version clearly worse than the champion (test ROC-AUC)",
    )

    logs = add("logs", cmd_logs_verify, "operations log tools")
    logs.add_argument("action", choices=["verify"])
    logs.add_argument("--json", action="store_true")

    incidents = add("incidents", cmd_incidents, "list or show incident records")
    incidents.add_argument("action", choices=["list", "show"])
    incidents.add_argument("id", nargs="?")
    incidents.add_argument("--status", choices=["open", "resolved"])
    incidents.add_argument("--json", action="store_true")

    status = add("status", cmd_status, "assets, freshness, failed checks, models, open incidents")
    status.add_argument("--json", action="store_true")

    backup = add("backup", cmd_backup, "materialize the backup partition (today by default)")
    backup.add_argument("--partition", help="YYYY-MM-DD")

    restore = add("restore", cmd_restore, "verify and restore a backup partition")
    restore.add_argument("--partition", required=True)
    restore.add_argument(
        "--component", default="all", choices=["mlflow", "dagster", "data", "config", "logs", "all"]
    )
    restore.add_argument("--target", help="restore into this folder instead of CHURN_HOME")
    restore.add_argument("--dry-run", action="store_true")

    serve = add("serve", cmd_serve, "start the Dagster UI and daemon on 127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--read-only", action="store_true", help="auditor UI: no daemon, no writes")

    audit = add("audit", cmd_audit, "lineage report of a model version or a scores run")
    target = audit.add_mutually_exclusive_group()
    target.add_argument("--model", default="champion", help="a version number or 'champion'")
    target.add_argument("--scores", help="a Dagster run id that materialized churn_scores")
    audit.add_argument("--json", action="store_true")

    simulate = add("simulate", cmd_simulate, "drop batches into the inbox one at a time")
    simulate.add_argument("--batches", type=int, default=4)
    simulate.add_argument("--interval", type=float, default=120.0, help="seconds between drops")
    simulate.add_argument("--synthetic", type=int, default=0, help="rows per synthetic batch")
    simulate.add_argument("--drift", type=float, default=0.0, help="drift of the last batch")
    simulate.add_argument("--seed", type=int, default=7)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            # The platform builds on Dagster's beta and superseded APIs (declarative automation,
            # freshness checks) on purpose; saying so on every command buries the output.
            warnings.simplefilter("ignore", dg.BetaWarning)
            warnings.simplefilter("ignore", dg.SupersessionWarning)
            return args.handler(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
