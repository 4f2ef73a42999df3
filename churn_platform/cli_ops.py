"""The operator's commands: the registry, the operations log and incidents, status, backups
and audit reports. `cli` adds them to `churn-platform`."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

import click

from churn_platform.cli_common import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    RegistryBackend,
    actor,
    command,
    command_settings,
)


@command("rollback", "make an earlier version the champion (default: the previous one)")
@click.option("--to-version", help="version to make champion (default: the previous one)")
@click.option("--reason", default="manual rollback", show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="roll back even to a version clearly worse than the champion (test ROC-AUC)",
)
def rollback(config: str | None, to_version: str | None, reason: str, force: bool) -> int:
    settings = command_settings(config)
    from churn_platform.config import platform_spec
    from churn_platform.core.ops.log import OpsLog
    from churn_platform.core.registry import rollback as roll_back

    try:
        with OpsLog(settings) as ops:
            decision = roll_back(
                RegistryBackend.from_settings(settings),
                platform_spec(settings),
                settings,
                actor=actor(),
                reason=reason,
                to_version=to_version,
                force=force,
                ops_log=ops,
            )
    except ValueError as exc:  # no champion, no such version, worse without --force
        raise CommandError(str(exc)) from None
    print(f"champion is now v{decision.champion_version} ({decision.reason})")
    print(
        "customers are not re-scored yet; to score them with this champion run:\n"
        "  churn-platform run --select churn_scores"
    )
    return EXIT_OK


model = click.Group("model", commands=[rollback], help="registry operations")


@command("verify", "check the operations log's hash chain against its anchors")
@click.option("--json", "as_json", is_flag=True)
def verify(config: str | None, as_json: bool) -> int:
    settings = command_settings(config)
    from churn_platform.core.backup.verify import archived_chain_anchor
    from churn_platform.core.ops.chain import anchor_path
    from churn_platform.core.ops.incidents import IncidentStore
    from churn_platform.core.ops.log import OpsLog
    from churn_platform.core.ops.verify import format_verify_report, verify_logs

    # The anchor outside logs/ and the newest backup's copy report a deleted log folder.
    report = verify_logs(settings.logs, anchor_path(settings), archived_chain_anchor(settings))
    print(json.dumps(report.to_dict()) if as_json else format_verify_report(report))
    if report.ok:
        return EXIT_OK
    broken = [f for f in report.files if not f.ok]
    with OpsLog(settings) as ops:
        IncidentStore(settings, ops).open(
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


logs = click.Group("logs", commands=[verify], help="operations log tools")


@command("list", "incident records, newest first")
@click.option("--status", type=click.Choice(["open", "resolved"]))
@click.option("--json", "as_json", is_flag=True)
def list_incidents(config: str | None, status: str | None, as_json: bool) -> int:
    from churn_platform.core.ops.incidents import IncidentStore, format_incidents

    found = IncidentStore(command_settings(config)).list(status=status)
    print(json.dumps([i.to_dict() for i in found]) if as_json else format_incidents(found))
    return EXIT_OK


@command("show", "one incident record with its history")
@click.argument("incident_id", required=False)
@click.option("--json", "as_json", is_flag=True)
def show_incident(config: str | None, incident_id: str | None, as_json: bool) -> int:
    if not incident_id:
        raise CommandError(
            "incidents show needs an incident id, e.g. INC-20260101-0001", EXIT_USAGE
        )
    from churn_platform.core.ops.incidents import IncidentStore

    try:
        incident = IncidentStore(command_settings(config)).get(incident_id)
    except (KeyError, ValueError) as exc:
        raise CommandError(exc.args[0], EXIT_USAGE) from None
    print(json.dumps(incident.to_dict(), indent=None if as_json else 2))
    return EXIT_OK


incidents = click.Group(
    "incidents", commands=[list_incidents, show_incident], help="list or show incident records"
)


@command("status", "assets, freshness, failed checks, models, open incidents")
@click.option("--json", "as_json", is_flag=True)
def status(config: str | None, as_json: bool) -> int:
    settings = command_settings(config)
    from churn_platform.runner import open_instance

    instance = open_instance(settings)  # first: it sets MLflow's log level, read at import
    from churn_platform.status import platform_status, render_status

    found = platform_status(settings, instance)
    print(json.dumps(found, default=str) if as_json else render_status(found))
    return EXIT_OK


def partition_day(partition: str) -> str:
    """A backup partition is a day, YYYY-MM-DD: anything else is refused before Dagster loads."""
    try:
        return datetime.date.fromisoformat(partition).isoformat()
    except ValueError:
        raise CommandError(
            f"--partition {partition}: not a day (YYYY-MM-DD, e.g. 2026-11-27)", EXIT_USAGE
        ) from None


@command("backup", "materialize the backup partition (today by default)")
@click.option("--partition", help="YYYY-MM-DD")
def backup(config: str | None, partition: str | None) -> int:
    settings = command_settings(config)
    day = partition_day(partition) if partition else time.strftime("%Y-%m-%d", time.gmtime())
    from churn_platform import runner
    from churn_platform.assets.backups import backup_selection

    keys = backup_selection(settings, retention=False)
    selection = " or ".join(f'key:"{key.to_user_string()}"' for key in keys)
    result = runner.materialize_selection(settings, selection, partition_key=day)
    if not result.success:
        raise CommandError(runner.failure_message(result))
    for event in result.get_asset_materialization_events():
        archive = event.event_specific_data.materialization.metadata.get("archive")
        if archive is not None:
            print(archive.value)
    return EXIT_OK


@command("restore", "verify and restore a backup partition")
@click.option("--partition", required=True)
@click.option(
    "--component",
    default="all",
    show_default=True,
    type=click.Choice(["mlflow", "dagster", "data", "config", "logs", "all"]),
)
@click.option("--target", help="restore into this folder instead of CHURN_HOME")
@click.option("--dry-run", is_flag=True)
def restore(
    config: str | None, partition: str, component: str, target: str | None, dry_run: bool
) -> int:
    settings, day = command_settings(config), partition_day(partition)
    from churn_platform.core.backup.errors import BackupError
    from churn_platform.core.backup.restore import restore_backup

    try:
        result = restore_backup(
            settings,
            day,
            component=component,
            target_dir=Path(target) if target else None,
            dry_run=dry_run,
        )
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if dry_run:
        print("\n".join(result.plan))
        return EXIT_OK
    restored = {
        "restored": result.restored,
        "moved_aside": result.moved_aside,
        "notes": result.notes,
        "seconds": result.seconds,
    }
    print(json.dumps(restored, default=str))
    return EXIT_OK


@command("audit", "lineage report of a model version or a scores run")
@click.option("--model", "model_version", help="a version number or 'champion' (the default)")
@click.option("--scores", help="a Dagster run id that materialized churn_scores")
@click.option("--json", "as_json", is_flag=True)
def audit(config: str | None, model_version: str | None, scores: str | None, as_json: bool) -> int:
    if model_version and scores:
        raise click.UsageError("--model and --scores exclude each other")
    settings = command_settings(config)
    from churn_platform.runner import open_instance

    instance = open_instance(settings)  # first: it sets MLflow's log level, read at import
    from churn_platform.audit_lineage import audit_model, audit_scores
    from churn_platform.config import platform_spec
    from churn_platform.core.audit.render import render_markdown, report_json, write_report
    from churn_platform.core.audit.report import AuditError
    from churn_platform.mlflow_resource import MlflowResource

    mlflow, spec = MlflowResource.from_settings(settings), platform_spec(settings)
    try:
        if scores:
            report = audit_scores(settings, instance, mlflow, spec, scores)
        else:
            report = audit_model(settings, instance, mlflow, spec, model_version or "champion")
    except AuditError as exc:
        raise CommandError(str(exc)) from exc
    markdown_path, json_path = write_report(settings.audit_reports, report)
    print(report_json(report) if as_json else render_markdown(report))
    print(f"report written to {markdown_path} and {json_path}", file=sys.stderr)
    return EXIT_OK


COMMANDS = (model, logs, incidents, status, backup, restore, audit)
