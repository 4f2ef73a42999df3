"""Which backups to keep (grandfather-father-son) and deleting the rest, never the last good one."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from datetime import date

from churn_platform.core.backup.errors import Problem, UsageError, VerificationError
from churn_platform.core.backup.storage import open_target
from churn_platform.core.backup.verify import verify_backup
from churn_platform.settings import Settings


def list_backups(settings: Settings) -> list[date]:
    """Published backups in the configured target, oldest first (half-written ones never count)."""
    return open_target(settings).partitions()


def select_retained(
    partitions: Iterable[date],
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    newest_verified: date | None = None,
) -> set[date]:
    """Grandfather-father-son: which backups to keep.

    The newest `keep_daily` backups, the newest backup of each of the newest `keep_weekly` ISO
    weeks that have one, and of each of the newest `keep_monthly` calendar months that have one
    (periods without a backup do not use up a slot). The newest verified backup is always kept,
    so retention can never leave only unrestorable archives.
    """
    if min(keep_daily, keep_weekly, keep_monthly) < 0:
        raise UsageError("retention counts must be >= 0")
    newest_first = sorted(set(partitions), reverse=True)
    keep = set(newest_first[:keep_daily])
    keep |= _newest_per_period(newest_first, lambda d: d.isocalendar()[:2], keep_weekly)
    keep |= _newest_per_period(newest_first, lambda d: (d.year, d.month), keep_monthly)
    if newest_verified in newest_first:
        keep.add(newest_verified)
    return keep


def apply_retention(settings: Settings, dry_run: bool = False) -> list[date]:
    """Delete the backups `select_retained` does not keep; returns the (would-be) deleted dates.

    Refuses to delete anything when no backup verifies: the old ones may then be all there is.
    """
    target = open_target(settings)
    partitions = target.partitions()
    if not partitions:
        return []
    newest_verified = None
    for day in sorted(partitions, reverse=True):
        if verify_backup(day.isoformat(), settings).ok:
            newest_verified = day
            break
    if newest_verified is None:
        raise VerificationError(
            target.describe(""), [Problem("*", "no-verified-backup", detail="retention skipped")]
        )
    keep = select_retained(
        partitions,
        settings.backup_keep_daily,
        settings.backup_keep_weekly,
        settings.backup_keep_monthly,
        newest_verified,
    )
    doomed = sorted(set(partitions) - keep)
    if not dry_run:
        for day in doomed:
            target.delete(day.isoformat())
    return doomed


def _newest_per_period(
    newest_first: list[date], period: Callable[[date], Hashable], count: int
) -> set[date]:
    chosen: dict[Hashable, date] = {}
    for day in newest_first:
        key = period(day)
        if key not in chosen:
            if len(chosen) == count:
                break
            chosen[key] = day
    return set(chosen.values())
