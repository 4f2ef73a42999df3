"""Backups of the state root: one verified archive per day, restored component by component.

Pure Python on purpose (no Dagster or Spark imports): the backup assets are thin wrappers over these
functions, and the CLI calls them directly when Dagster itself is what needs restoring.

Archive layout (`<target>/<YYYY-MM-DD>/`; `.enc` is added when CHURN_BACKUP_KEY is set):
    churn-backup-<date>.tar.gz[.enc]                 the archive
    churn-backup-<date>.tar.gz[.enc].manifest.json   copy of the manifest inside the archive
    churn-backup-<date>.tar.gz[.enc].manifest.sig    HMAC of the manifest (core.backup.signing)
    churn-backup-<date>.tar.gz[.enc].sha256          `sha256sum -c` lines: manifest, then archive
Members mirror the state root (`mlflow/`, `dagster/`, `warehouse/`, `logs/`, `incidents/`,
`changes/`, and `secrets/` in encrypted archives only), plus `config/` and a final `MANIFEST.json`.

Targets (local folder, S3) and encryption are in `churn_platform.backup_storage`; the exit-code
errors defined there are re-exported here, so callers need only this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shutil
import sqlite3
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from churn_platform.backup_storage import (
    CHUNK,
    ENCRYPTION,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNSAFE_ARCHIVE,
    EXIT_USAGE,
    EXIT_VERIFICATION_FAILED,
    KEY_ENV,
    PARTITION_RE,
    S3_ENDPOINT_ENV,
    BackupError,
    BackupFiles,
    BackupNotFoundError,
    DecryptionError,
    Problem,
    UsageError,
    VerificationError,
    decrypt_file,
    encrypt_file,
    fernet_for,
    fsync_path,
    local_path,
    open_target,
)
from churn_platform.core.backup.scratch import OWNER, owned_tempdir, remove_abandoned
from churn_platform.core.backup.signing import sign, signature_problem, signing_key
from churn_platform.core.ops.anchor import Link, anchor_document, parse_anchor
from churn_platform.core.ops.chain import HEADS_NAME, LOCK_NAME, read_chain_heads, reanchor
from churn_platform.core.ops.files import locked
from churn_platform.core.ops.privacy import pseudonym_key, redact_url
from churn_platform.settings import DAGSTER_YAML, Settings

__all__ = [
    "ALL_COMPONENTS",
    "COMPONENT_DIRS",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNSAFE_ARCHIVE",
    "EXIT_USAGE",
    "EXIT_VERIFICATION_FAILED",
    "FORMAT",
    "KEY_ENV",
    "MANIFEST_MEMBER",
    "MLFLOW_ARTIFACTS",
    "MLFLOW_DB",
    "PSEUDONYM_KEY_FILE",
    "S3_ENDPOINT_ENV",
    "AbsolutePathError",
    "BackupError",
    "BackupNotFoundError",
    "BackupResult",
    "DecryptionError",
    "DuplicateMemberError",
    "HardlinkMemberError",
    "PathTraversalError",
    "Problem",
    "RestoreResult",
    "SpecialFileError",
    "SymlinkMemberError",
    "UnlistedMemberError",
    "UnsafeArchiveError",
    "UsageError",
    "VerificationError",
    "VerifyResult",
    "apply_retention",
    "create_backup",
    "list_backups",
    "restore_backup",
    "select_retained",
    "snapshot_sqlite",
    "verify_backup",
]

COMPONENT_DIRS: dict[str, tuple[str, ...]] = {
    "mlflow": ("mlflow",),
    "dagster": ("dagster",),
    "data": ("warehouse",),
    "config": ("config",),
    "logs": ("logs", "incidents", "changes", "secrets"),
}
ALL_COMPONENTS: tuple[str, ...] = tuple(COMPONENT_DIRS)
MANIFEST_MEMBER = "MANIFEST.json"
FORMAT = "churn-backup/1"
POINTER = "CURRENT"
MLFLOW_DB = "mlflow/mlflow.db"
MLFLOW_ARTIFACTS = "mlflow/artifacts"
# Where `core.ops.privacy.pseudonym_key` keeps the key (the path is inline there).
PSEUDONYM_KEY_FILE = "secrets/pseudonym.key"

_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
# Every column where MLflow (3.x, sqlite/SQLAlchemy store) keeps an absolute artifact location.
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
_GZIP_LEVEL = 1  # Parquet is already compressed; level 1 keeps ~all the gain on sqlite, 2x faster
# Temporary folders of backups and restores; a killed run's are removed by the next one.
_WORK_PREFIX, _RESTORE_PREFIX, _TRASH_PREFIX = ".tmp-", ".restore-", ".trash-"
# Restored folders the manifest has no mode for (older manifests, `config/`): service group only.
_DEFAULT_DIR_MODE = 0o750


class UnsafeArchiveError(BackupError):
    """A member that could write outside the restore folder or was never backed up."""

    exit_code = EXIT_UNSAFE_ARCHIVE
    kind = "unsafe"

    def __init__(self, archive: str, problem: Problem) -> None:
        self.member = problem.path
        super().__init__(f"{archive}: refusing unsafe member {problem}")


class AbsolutePathError(UnsafeArchiveError):
    kind = "absolute-path"


class PathTraversalError(UnsafeArchiveError):
    kind = "path-traversal"


class SymlinkMemberError(UnsafeArchiveError):
    kind = "symlink"


class HardlinkMemberError(UnsafeArchiveError):
    kind = "hardlink"


class SpecialFileError(UnsafeArchiveError):
    kind = "special-file"


class UnlistedMemberError(UnsafeArchiveError):
    kind = "unlisted"


class DuplicateMemberError(UnsafeArchiveError):
    kind = "duplicate"


_UNSAFE: dict[str, type[UnsafeArchiveError]] = {
    cls.kind: cls
    for cls in (
        AbsolutePathError,
        PathTraversalError,
        SymlinkMemberError,
        HardlinkMemberError,
        SpecialFileError,
        UnlistedMemberError,
        DuplicateMemberError,
    )
}


@dataclass(frozen=True)
class BackupResult:
    """What `create_backup` published; `archive` is a local path or an `s3://` URL."""

    partition: str
    archive: str
    manifest: dict[str, Any]
    files: int
    bytes: int
    archive_bytes: int
    seconds: float


@dataclass(frozen=True)
class VerifyResult:
    """Every problem found re-reading one backup; empty `problems` means it is restorable."""

    archive: str
    problems: list[Problem]
    manifest: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class RestoreResult:
    """The plan (always) and what was moved where (unless `dry_run`)."""

    partition: str
    archive: str
    root: Path
    components: tuple[str, ...]
    dry_run: bool
    plan: list[str]
    files: int
    bytes: int
    seconds: float
    restored: list[Path] = field(default_factory=list)
    moved_aside: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    """One archive member to be: a file read as is, a database snapshot, or literal bytes."""

    arcname: str
    component: str
    kind: str
    origin: str = ""
    content: bytes = b""


class _HashingReader:
    """Hashes exactly the bytes tarfile copies, so a file growing meanwhile cannot skew the hash."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        return data


def create_backup(
    settings: Settings,
    partition: str,
    golden: dict[str, Any] | None = None,
    components: Iterable[str] = ALL_COMPONENTS,
    *,
    dagster_yaml: Path = DAGSTER_YAML,
) -> BackupResult:
    """Write and publish the backup of one partition; re-running it replaces it atomically.

    `golden` (champion name, version and golden-prediction hash) is computed by the caller, which
    has Spark and MLflow at hand, and is stored as given so a restore can be checked against it.
    The archive is built in a temporary folder under the target and renamed into place, so a
    crash leaves either the previous backup or the new one, never half of one.
    """
    started = time.monotonic()
    partition = _partition(partition)
    wanted = _components(components)
    try:
        json.dumps(golden)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"golden must be JSON-serialisable: {exc}") from exc
    fernet = fernet_for(settings.backup_key)
    key = signing_key(pseudonym_key(settings))
    target = open_target(settings)
    target.staging.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target.staging, (_WORK_PREFIX, _TRASH_PREFIX))
    with owned_tempdir(target.staging, f"{_WORK_PREFIX}{partition}-") as work:
        out, scratch = work / "out", work / "scratch"
        out.mkdir()
        scratch.mkdir()
        plain = (scratch if fernet else out) / f"churn-backup-{partition}.tar.gz"
        not_included: list[str] = []
        artifact_root = _artifact_root(settings) if "mlflow" in wanted else None
        header = {
            "format": FORMAT,
            "partition": partition,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "components": list(wanted),
            "tools": _tool_versions(),
            "golden": golden,
            "encryption": ENCRYPTION if fernet else None,
            "home": str(settings.home),
            "mlflow_artifact_root": str(artifact_root) if artifact_root else None,
            "not_included": not_included,
        }
        if "logs" in wanted:
            header["ops_chain_anchor"] = _chain_anchor(settings)
        sources = _sources(settings, wanted, dagster_yaml, fernet is not None, not_included)
        manifest, manifest_bytes = _write_archive(
            plain, sources, scratch, header, settings.child_env()
        )
        archive = plain
        if fernet:
            archive = out / (plain.name + ".enc")
            encrypt_file(plain, archive, fernet)
            plain.unlink()
        files = BackupFiles(archive, str(archive))
        files.manifest.write_bytes(manifest_bytes)
        files.signature.write_text(sign(manifest_bytes, key))
        files.checksums.write_text(
            f"{hashlib.sha256(manifest_bytes).hexdigest()}  {files.manifest.name}\n"
            f"{_sha256_file(archive)}  {archive.name}\n"
        )
        archive_bytes = archive.stat().st_size
        for path in (archive, files.manifest, files.signature, files.checksums, out):
            fsync_path(path)
        published = target.publish(out, partition, archive.name)
    return BackupResult(
        partition=partition,
        archive=published,
        manifest=manifest,
        files=len(manifest["files"]),
        bytes=sum(entry["size"] for entry in manifest["files"]),
        archive_bytes=archive_bytes,
        seconds=time.monotonic() - started,
    )


def list_backups(settings: Settings) -> list[date]:
    """Published backups in the configured target, oldest first (half-written ones never count)."""
    return open_target(settings).partitions()


def verify_backup(backup: str | Path, settings: Settings) -> VerifyResult:
    """Re-read a backup (a partition date or an archive path) and report every mismatch.

    Checks the manifest against its checksum, the archive against its checksum, then every
    member's size and SHA-256 against the manifest, and refuses to trust any member that is
    unsafe or unlisted. Raises only when there is nothing to verify (`BackupNotFoundError`) or
    the archive is encrypted and no key is configured (`UsageError`).
    """
    with tempfile.TemporaryDirectory(prefix="churn-verify-") as tmp:
        files, partition = _locate(backup, settings, Path(tmp))
        result, _ = _verify_files(files, partition, Path(tmp), settings)
    return result


def archived_chain_anchor(settings: Settings) -> dict[str, Link] | None:
    """The ops log's chain anchor as the newest backup recorded it; None without one.

    Why: `logs verify` needs a witness that survives deleting both the logs and the anchor file.
    """
    target = open_target(settings)
    partitions = target.partitions()
    if not partitions:
        return None
    manifest = json.loads(target.read_manifest(partitions[-1].isoformat()))
    anchor = manifest.get("ops_chain_anchor") if isinstance(manifest, dict) else None
    return None if anchor is None else parse_anchor(anchor)


def restore_backup(
    settings: Settings,
    partition: str | Path,
    component: str = "all",
    target_dir: str | Path | None = None,
    dry_run: bool = False,
) -> RestoreResult:
    """Restore one component (or all) of a backup into the state root or `target_dir`.

    `partition` is a date looked up in the configured target, or the path of an archive file.

    Everything is verified before anything is touched. Members are extracted into a temporary
    folder inside the target, re-hashed there, and only then swapped in; an existing folder the
    backup replaces is renamed to `<dir>.before-restore-<timestamp>`, never overwritten or
    deleted, and a folder the backup holds nothing for is left alone. `config` is
    restored to `<target>/config/` for comparison: the version-controlled files under the
    project root are never written. When the MLflow database lands away from where it was
    backed up, its artifact locations are rewritten to the restored artifacts (relocation).
    """
    started = time.monotonic()
    if component != "all" and component not in COMPONENT_DIRS:
        raise UsageError(
            f"unknown component {component!r}; use one of all, {', '.join(ALL_COMPONENTS)}"
        )
    root = Path(target_dir or settings.home).expanduser().resolve()
    if os.path.lexists(root) and not root.is_dir():
        raise UsageError(f"restore target {root} exists and is not a folder")
    with tempfile.TemporaryDirectory(prefix="churn-restore-") as tmp:
        files, wanted_partition = _locate(partition, settings, Path(tmp))
        result, plain = _verify_files(files, wanted_partition, Path(tmp), settings)
        _raise_for(files.label, result.problems)
        assert result.manifest is not None and plain is not None
        manifest = result.manifest
        wanted = ALL_COMPONENTS if component == "all" else (component,)
        present = tuple(c for c in wanted if c in manifest["components"])
        if not present:
            raise BackupNotFoundError(f"{files.label} holds no {component} component")
        entries = [e for e in manifest["files"] if e["component"] in present]
        tops = {e["path"].split("/", 1)[0] for e in entries}
        dirs = [d for c in present for d in COMPONENT_DIRS[c] if d in tops]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = {d: _aside(root / d, stamp) for d in dirs if os.path.lexists(root / d)}
        plan = [f"verify {files.label}: {len(entries)} files, {_size(entries)} bytes: ok"]
        plan += [f"move {root / d} -> {aside[d]}" for d in dirs if d in aside]
        for d in dirs:
            mine = [e for e in entries if e["path"].split("/", 1)[0] == d]
            plan.append(f"restore {root / d} ({len(mine)} files, {_size(mine)} bytes)")
        relocation = _relocation(manifest, entries, root)
        if relocation is not None:
            plan.append(f"relocate MLflow artifact locations {relocation[0]} -> {relocation[1]}")
        notes = _restore_notes(entries, root, relocation)
        restored: list[Path] = []
        moved: list[Path] = []
        if not dry_run:
            _check_space(root, entries)
            modes = manifest.get("dirs", {})
            restored, moved = _install(
                plain, files.label, entries, root, dirs, aside, relocation, modes
            )
            if "logs" in dirs and root == settings.home:
                reanchor(settings)
                notes.append(
                    "ops log chain anchor reset to the restored logs; events logged after the "
                    f"backup are in {aside.get('logs', 'no earlier logs folder')}"
                )
    return RestoreResult(
        partition=str(manifest["partition"]),
        archive=files.label,
        root=root,
        components=present,
        dry_run=dry_run,
        plan=plan,
        files=len(entries),
        bytes=_size(entries),
        seconds=time.monotonic() - started,
        restored=restored,
        moved_aside=moved,
        notes=notes,
    )


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


def snapshot_sqlite(source: Path, dest: Path, timeout: float = 60.0) -> None:
    """Copy a possibly live sqlite database consistently (online backup API, never `cp`).

    The source is opened read-only so the snapshot can never checkpoint or change it; the copy
    must pass `PRAGMA integrity_check` or the backup fails here rather than at restore time.
    """
    uri = f"{source.resolve().as_uri()}?mode=ro"
    with (
        contextlib.closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as src,
        contextlib.closing(sqlite3.connect(dest)) as dst,
    ):
        src.backup(dst)
        rows = [row[0] for row in dst.execute("PRAGMA integrity_check")]
    if rows != ["ok"]:
        raise BackupError(f"snapshot of {source} failed integrity_check: {'; '.join(rows)}")


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


def _partition(value: str) -> str:
    if not PARTITION_RE.fullmatch(value):
        raise UsageError(f"partition {value!r} is not a YYYY-MM-DD date")
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise UsageError(f"partition {value!r} is not a valid date") from exc


def _components(components: Iterable[str]) -> tuple[str, ...]:
    requested = set(components)
    unknown = requested - set(ALL_COMPONENTS)
    if unknown or not requested:
        raise UsageError(f"components must be a non-empty subset of {ALL_COMPONENTS}")
    return tuple(c for c in ALL_COMPONENTS if c in requested)


def _size(entries: list[dict[str, Any]]) -> int:
    return sum(int(entry["size"]) for entry in entries)


def _tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("mlflow", "dagster", "pyspark"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _sources(
    settings: Settings,
    wanted: tuple[str, ...],
    dagster_yaml: Path,
    encrypted: bool,
    not_included: list[str],
) -> Iterator[_Source]:
    """Members in archive order; folders are listed just before they are read."""
    producers: dict[str, Callable[[], Iterator[_Source]]] = {
        "mlflow": lambda: _mlflow_sources(settings, not_included),
        "dagster": lambda: _dagster_sources(settings, not_included),
        "data": lambda: _data_sources(settings, not_included),
        "config": lambda: _config_sources(settings, dagster_yaml, not_included),
        "logs": lambda: _logs_sources(settings, encrypted, not_included),
    }
    for component in wanted:
        yield from producers[component]()


def _mlflow_sources(settings: Settings, not_included: list[str]) -> Iterator[_Source]:
    uri = settings.mlflow_tracking_uri
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        db = _sqlite_path(uri)
        if db.is_file():
            yield _Source(MLFLOW_DB, "mlflow", "sqlite", str(db))
        else:
            not_included.append(f"missing: {db}")
    elif scheme in ("postgresql", "postgres"):
        yield _Source("mlflow/mlflow.pgdump", "mlflow", "pg_dump", uri)
    else:
        raise UsageError(
            f"cannot back up MLflow tracking URI {redact_url(uri)!r}: only sqlite and postgresql "
            "backends are supported; back up a tracking server's own database"
        )
    artifacts = _artifact_root(settings)
    if artifacts is None:
        not_included.append(f"external: {redact_url(settings.mlflow_artifact_root)}")
    else:
        yield from _tree(MLFLOW_ARTIFACTS, artifacts, "mlflow", not_included)


def _artifact_root(settings: Settings) -> Path | None:
    """The local artifact folder, resolved as `tracking` resolves it for MLflow; None if remote."""
    root = local_path(settings.mlflow_artifact_root or str(settings.mlflow_dir / "artifacts"))
    return None if root is None else root.expanduser().resolve()


def _sqlite_path(uri: str) -> Path:
    """SQLAlchemy form: `sqlite:///relative.db`, `sqlite:////absolute.db`."""
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not uri.startswith("sqlite:///") or not path or path == ":memory:":
        raise UsageError(f"MLflow tracking URI {uri!r} does not name a sqlite file")
    return Path(path)


def _dagster_sources(settings: Settings, not_included: list[str]) -> Iterator[_Source]:
    root = settings.dagster_storage
    if not root.is_dir():
        not_included.append(f"missing: {root}")
        return
    for path in _walk(root):
        if path.name.endswith(_SQLITE_SIDECARS):
            continue
        kind = "sqlite" if path.suffix == ".db" else "file"
        yield _Source(f"dagster/{path.relative_to(root).as_posix()}", "dagster", kind, str(path))


def _data_sources(settings: Settings, not_included: list[str]) -> Iterator[_Source]:
    """Only the versions the `CURRENT` pointers name; older versions are rebuildable history.

    The warehouse must exist (the base-model fits the ensembles reuse are model assets in it).
    """
    if not settings.warehouse.is_dir():
        not_included.append(f"missing: {settings.warehouse}")
        return
    for top, root in (("warehouse", settings.warehouse),):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(("v-", ".")))
            if POINTER not in filenames:
                continue
            folder = Path(dirpath)
            name = (folder / POINTER).read_text().strip()
            if not name or "/" in name or name in (".", "..") or not (folder / name).is_dir():
                raise BackupError(
                    f"{folder / POINTER} names {name!r}, not a version folder beside it"
                )
            prefix = "/".join((top, *folder.relative_to(root).parts))
            yield _Source(f"{prefix}/{POINTER}", "data", "bytes", content=f"{name}\n".encode())
            yield from _tree(f"{prefix}/{name}", folder / name, "data", not_included)


def _config_sources(
    settings: Settings, dagster_yaml: Path, not_included: list[str]
) -> Iterator[_Source]:
    """What the runs were configured with: the Dagster instance file every state root gets
    (the package's), the dataset spec and the settings."""
    candidates = [
        ("config/dagster.yaml", dagster_yaml),
        (f"config/spec/{settings.spec_path.name}", settings.spec_path),
    ]
    for arcname, path in candidates:
        if path.is_file():
            yield _Source(arcname, "config", "file", str(path))
        else:
            not_included.append(f"missing: {path}")
    snapshot = json.dumps(settings.public_values(), indent=2, sort_keys=True) + "\n"
    yield _Source("config/settings.json", "config", "bytes", content=snapshot.encode())


def _logs_sources(
    settings: Settings, encrypted: bool, not_included: list[str]
) -> Iterator[_Source]:
    """Chain heads and logs are copied under the ops log's own lock, as `verify_logs` reads them.

    Writers hold that lock exclusively around "append, update head", so the copy is one
    consistent cut that verifies after a restore (they wait the few ms the copy takes). The
    pseudonym key is archived only when the archive is encrypted: a plain archive carrying it
    would hand out the key that makes the pseudonyms meaningful.
    """
    with locked(settings.logs / LOCK_NAME, shared=True):
        heads = settings.logs / HEADS_NAME
        if heads.is_file():
            yield _Source(f"logs/{HEADS_NAME}", "logs", "file", str(heads))
        else:
            not_included.append(f"missing: {heads}")
        if settings.logs.is_dir():
            for path in sorted(settings.logs.glob("*.jsonl")):
                yield _Source(f"logs/{path.name}", "logs", "file", str(path))
    for folder in (settings.incidents, settings.home / "changes"):
        for source in _tree(folder.name, folder, "logs", not_included):
            if source.arcname.endswith(".json"):
                yield source
    key = settings.home / PSEUDONYM_KEY_FILE
    if key.is_file() and encrypted:
        yield _Source(PSEUDONYM_KEY_FILE, "logs", "file", str(key))
    elif key.is_file():
        not_included.append(f"secret, archived only when {KEY_ENV} is set: {key}")


def _tree(prefix: str, root: Path, component: str, not_included: list[str]) -> Iterator[_Source]:
    if not root.is_dir():
        not_included.append(f"missing: {root}")
        return
    for path in _walk(root):
        yield _Source(f"{prefix}/{path.relative_to(root).as_posix()}", component, "file", str(path))


def _walk(root: Path) -> Iterator[Path]:
    """Regular files below `root`, sorted; links and special files fail the backup loudly."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        for name in dirnames:
            if (folder / name).is_symlink():
                raise BackupError(
                    f"{folder / name} is a symlink; the state root holds real folders"
                )
        for name in sorted(filenames):
            path = folder / name
            if not path.is_symlink() and not path.exists():
                continue  # removed since listed, e.g. an SQLite journal at commit
            if path.is_symlink() or not path.is_file():
                raise BackupError(f"{path} is not a regular file; refusing to archive it")
            yield path


def _write_archive(
    path: Path,
    sources: Iterator[_Source],
    scratch: Path,
    header: dict[str, Any],
    child_env: Mapping[str, str],
) -> tuple[dict[str, Any], bytes]:
    """Stream every source into the tar.gz, hashing as it goes, and close with the manifest.

    `child_env` is the environment pg_dump runs in (`Settings.child_env()`).
    """
    files: list[dict[str, Any]] = []
    dirs: dict[str, int] = {}
    with tarfile.open(path, "w:gz", compresslevel=_GZIP_LEVEL) as tar:
        for source in sources:
            if source.kind == "bytes":
                size, digest = _add_bytes(tar, source.arcname, source.content)
            elif source.kind == "file":
                size, digest = _add_file(tar, source.arcname, Path(source.origin))
            else:
                staged = scratch / "snapshot"
                if source.kind == "sqlite":
                    snapshot_sqlite(Path(source.origin), staged)
                else:
                    _pg_dump(source.origin, staged, child_env)
                size, digest = _add_file(tar, source.arcname, staged)
                staged.unlink()
            entry = {"path": source.arcname, "size": size, "sha256": digest}
            files.append({**entry, "component": source.component})
            if source.kind in ("file", "sqlite") and source.component != "config":
                _record_dir_modes(source.arcname, Path(source.origin), dirs)
        manifest = {**header, "dirs": dirs, "files": files}
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        _add_bytes(tar, MANIFEST_MEMBER, manifest_bytes)
    return manifest, manifest_bytes


def _record_dir_modes(arcname: str, origin: Path, dirs: dict[str, int]) -> None:
    """Each folder above a member gets the mode of the folder as far above its source file."""
    for arc, real in zip(PurePosixPath(arcname).parents, origin.parents, strict=False):
        if arc.name and arc.as_posix() not in dirs:
            dirs[arc.as_posix()] = stat.S_IMODE(real.stat().st_mode)


def _tarinfo(arcname: str, size: int, mtime: float, mode: int = 0o644) -> tarfile.TarInfo:
    """Owner-neutral entries that keep permission bits (the ops log is 0640, the key 0600)."""
    info = tarfile.TarInfo(arcname)
    info.size = size
    info.mtime = int(mtime)
    info.mode = mode
    return info


def _add_file(tar: tarfile.TarFile, arcname: str, path: Path) -> tuple[int, str]:
    with path.open("rb") as handle:
        status = os.fstat(handle.fileno())
        reader = _HashingReader(handle)
        info = _tarinfo(arcname, status.st_size, status.st_mtime, stat.S_IMODE(status.st_mode))
        tar.addfile(info, reader)  # type: ignore[arg-type]
    return status.st_size, reader.sha256.hexdigest()


def _add_bytes(tar: tarfile.TarFile, arcname: str, content: bytes) -> tuple[int, str]:
    tar.addfile(_tarinfo(arcname, len(content), time.time()), io.BytesIO(content))
    return len(content), hashlib.sha256(content).hexdigest()


def _pg_dump(uri: str, dest: Path, child_env: Mapping[str, str]) -> None:
    """`pg_dump --format=custom`; the password goes through PGPASSWORD, not the process list."""
    if shutil.which("pg_dump") is None:
        raise BackupError("pg_dump not found on PATH; install the PostgreSQL client")
    parts = urlsplit(uri)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}@{hostport}" if user else hostport
    dsn = urlunsplit(("postgresql", netloc, parts.path, parts.query, ""))
    env = dict(child_env)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    command = ["pg_dump", "--format=custom", "--no-owner", "--file", str(dest), "--dbname", dsn]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"pg_dump of {redact_url(uri)} failed: {done.stderr.strip()}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _locate(backup: str | Path, settings: Settings, tmp: Path) -> tuple[BackupFiles, str | None]:
    """A partition date is looked up in the configured target; anything else is an archive path."""
    if isinstance(backup, str) and PARTITION_RE.fullmatch(backup):
        partition = _partition(backup)
        return open_target(settings).fetch(partition, tmp), partition
    path = Path(backup).expanduser().resolve()
    if not path.is_file():
        raise BackupNotFoundError(f"no backup archive at {path}")
    return BackupFiles(path, str(path)), None


def _verify_files(
    files: BackupFiles, partition: str | None, tmp: Path, settings: Settings
) -> tuple[VerifyResult, Path | None]:
    """Verify sidecars, archive and members; returns the plaintext archive when it is readable."""
    problems: list[Problem] = []
    expected = _read_checksums(files, problems)
    if not files.manifest.is_file():
        problems.append(Problem(files.manifest.name, "missing"))
        return VerifyResult(files.label, problems, None), None
    manifest_bytes = files.manifest.read_bytes()
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    _compare_sha(files.manifest.name, expected, manifest_sha, problems)
    _compare_sha(files.archive.name, expected, _sha256_file(files.archive), problems)
    _check_signature(files, manifest_bytes, settings, problems)
    manifest = _parse_manifest(manifest_bytes, files.manifest.name, problems)
    if manifest is None:
        return VerifyResult(files.label, problems, None), None
    cap = settings.backup_max_expanded_bytes
    if _size(manifest["files"]) > cap:
        detail = f"lists {_size(manifest['files'])} bytes; CHURN_BACKUP_MAX_EXPANDED_BYTES={cap}"
        problems.append(Problem(files.manifest.name, "too-large", detail=detail))
        return VerifyResult(files.label, problems, manifest), None
    if partition is not None and manifest.get("partition") != partition:
        problems.append(
            Problem(
                files.manifest.name, "partition-mismatch", partition, str(manifest["partition"])
            )
        )
    plain = files.archive
    if files.archive.name.endswith(".enc"):
        fernet = fernet_for(settings.backup_key)
        if fernet is None:
            raise UsageError(
                f"{files.label} is encrypted; set {KEY_ENV} to the key it was made with"
            )
        plain = tmp / files.archive.name.removesuffix(".enc")
        try:
            decrypt_file(files.archive, plain, fernet)
        except DecryptionError as exc:
            problems.extend(exc.problems)
            return VerifyResult(files.label, problems, manifest), None
    problems.extend(_check_members(plain, manifest, manifest_sha, len(manifest_bytes), cap))
    return VerifyResult(files.label, problems, manifest), plain


def _verify_key(settings: Settings) -> bytes | None:
    """The signing key, never generated here: a new key would only call every backup forged."""
    if settings.pseudonym_key or (settings.home / PSEUDONYM_KEY_FILE).is_file():
        return signing_key(pseudonym_key(settings))
    return None


def _check_signature(
    files: BackupFiles, manifest: bytes, settings: Settings, problems: list[Problem]
) -> None:
    name = files.signature.name
    if not files.signature.is_file():
        problems.append(Problem(name, "missing", detail="unsigned manifest"))
        return
    key = _verify_key(settings)
    if key is None:
        detail = f"no platform key: set CHURN_PSEUDONYM_KEY or restore {PSEUDONYM_KEY_FILE}"
        problems.append(Problem(name, "unverifiable", detail=detail))
        return
    problem = signature_problem(manifest, files.signature.read_text(errors="replace"), key)
    if problem is not None:
        problems.append(Problem(name, "signature-mismatch", detail=problem))


def _chain_anchor(settings: Settings) -> dict[str, Any]:
    """The ops log's chain heads, to witness in the manifest that these log files existed."""
    with locked(settings.logs / LOCK_NAME, shared=True):
        try:
            heads = read_chain_heads(settings.logs)
        except ValueError:  # damaged heads: the backup still goes; `logs verify` reports them
            heads = {}
    return anchor_document({name: Link(head.seq, head.hash) for name, head in heads.items()})


def _read_checksums(files: BackupFiles, problems: list[Problem]) -> dict[str, str]:
    if not files.checksums.is_file():
        problems.append(Problem(files.checksums.name, "missing"))
        return {}
    expected: dict[str, str] = {}
    for line in files.checksums.read_text().splitlines():
        match = re.fullmatch(r"([0-9a-f]{64})  (\S+)", line)
        if match is None:
            problems.append(Problem(files.checksums.name, "malformed", detail=line[:80]))
        else:
            expected[match.group(2)] = match.group(1)
    return expected


def _compare_sha(name: str, expected: dict[str, str], actual: str, problems: list[Problem]) -> None:
    if name not in expected:
        problems.append(Problem(name, "no-checksum", actual=actual))
    elif expected[name] != actual:
        problems.append(Problem(name, "sha256-mismatch", expected[name], actual))


def _parse_manifest(data: bytes, name: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        problems.append(Problem(name, "unreadable", detail=str(exc)))
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        problems.append(Problem(name, "unknown-format", FORMAT, str(found)))
        return None
    if not (
        isinstance(manifest.get("partition"), str)
        and isinstance(manifest.get("components"), list)
        and isinstance(manifest.get("files"), list)
    ):
        problems.append(Problem(name, "malformed", detail="needs partition, components, files"))
        return None
    for entry in manifest["files"]:
        valid = (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))) is not None
            and entry.get("component") in COMPONENT_DIRS
        )
        if not valid:
            problems.append(Problem(name, "malformed-entry", detail=str(entry)[:120]))
            return None
        unsafe = _vet_name(entry["path"])
        if unsafe is not None:
            problems.append(unsafe)
        elif entry["path"].split("/", 1)[0] not in COMPONENT_DIRS[entry["component"]]:
            problems.append(Problem(entry["path"], "component-mismatch", detail=entry["component"]))
        elif "/" not in entry["path"]:
            detail = "a file where a component folder belongs"
            problems.append(Problem(entry["path"], "component-mismatch", detail=detail))
    dirs = manifest.get("dirs", {})
    if not (
        isinstance(dirs, dict)
        and all(isinstance(m, int) and not isinstance(m, bool) for m in dirs.values())
    ):
        problems.append(Problem(name, "malformed", detail="dirs must map folders to modes"))
        return None
    return manifest


def _vet_name(name: str) -> Problem | None:
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return Problem(name, AbsolutePathError.kind)
    parts = name.split("/")
    if ".." in parts:
        return Problem(name, PathTraversalError.kind)
    if "" in parts or "." in parts or "\\" in name:
        return Problem(name, PathTraversalError.kind, detail="not a plain relative path")
    return None


def _vet(member: tarfile.TarInfo) -> Problem | None:
    """Our own check, on top of tarfile's `data` filter (which has had bypasses)."""
    problem = _vet_name(member.name)
    if problem is not None:
        return problem
    if member.issym():
        return Problem(member.name, SymlinkMemberError.kind, detail=f"-> {member.linkname}")
    if member.islnk():
        return Problem(member.name, HardlinkMemberError.kind, detail=f"-> {member.linkname}")
    if not (member.isfile() or member.isdir()):
        return Problem(member.name, SpecialFileError.kind, detail=f"tar type {member.type!r}")
    return None


def _check_members(
    plain: Path, manifest: dict[str, Any], manifest_sha: str, manifest_size: int, cap: int
) -> list[Problem]:
    """Every member against the manifest; reads no more than the manifest lists (and `cap`).

    Why: a member's data is decompressed to hash or even to skip it, so a member larger than
    listed (a decompression bomb) is refused from its header, before any of it is read.
    """
    problems: list[Problem] = []
    listed = {entry["path"]: entry for entry in manifest["files"]}
    seen: set[str] = set()
    expanded = 0
    try:
        with tarfile.open(plain, "r:gz") as tar:
            for member in tar:
                expanded += member.size
                if expanded > cap:
                    detail = f"members exceed CHURN_BACKUP_MAX_EXPANDED_BYTES={cap}"
                    problems.append(Problem(member.name, "too-large", detail=detail))
                    break
                problem = _vet(member)
                if problem is None and member.name in seen:
                    problem = Problem(member.name, DuplicateMemberError.kind)
                unlisted = member.name not in listed and member.name != MANIFEST_MEMBER
                if problem is None and member.isfile() and unlisted:
                    problem = Problem(member.name, UnlistedMemberError.kind)
                if problem is not None:
                    problems.append(problem)
                    continue
                seen.add(member.name)
                if member.isdir():
                    continue
                is_manifest = member.name == MANIFEST_MEMBER
                want = manifest_size if is_manifest else listed[member.name]["size"]
                if member.size != want:
                    problems.append(
                        Problem(member.name, "size-mismatch", str(want), str(member.size))
                    )
                    continue
                digest = _hash_member(tar, member)
                expected = manifest_sha if is_manifest else listed[member.name]["sha256"]
                if digest != expected:
                    problems.append(Problem(member.name, "sha256-mismatch", expected, digest))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        problems.append(Problem(plain.name, "unreadable", detail=str(exc)))
    for path in sorted(set(listed) - seen):
        problems.append(Problem(path, "missing", listed[path]["sha256"], "absent"))
    if MANIFEST_MEMBER not in seen:
        problems.append(Problem(MANIFEST_MEMBER, "missing", manifest_sha, "absent"))
    return problems


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    handle = tar.extractfile(member)
    assert handle is not None
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _raise_for(label: str, problems: list[Problem]) -> None:
    """Unsafe members outrank plain mismatches: they are refused by kind, with their own code."""
    for problem in problems:
        if problem.kind in _UNSAFE:
            raise _UNSAFE[problem.kind](label, problem)
    if any(problem.kind == "decrypt" for problem in problems):
        raise DecryptionError(label, problems)
    if problems:
        raise VerificationError(label, problems)


def _aside(path: Path, stamp: str) -> Path:
    candidate = path.with_name(f"{path.name}.before-restore-{stamp}")
    counter = 1
    while os.path.lexists(candidate):
        counter += 1
        candidate = path.with_name(f"{path.name}.before-restore-{stamp}-{counter}")
    return candidate


def _install(
    plain: Path,
    label: str,
    entries: list[dict[str, Any]],
    root: Path,
    dirs: list[str],
    aside: dict[str, Path],
    relocation: tuple[Path, Path] | None,
    modes: dict[str, int],
) -> tuple[list[Path], list[Path]]:
    """Extract into a temp folder inside `root`, re-hash there, then swap folders in by rename.

    MLflow's artifact locations are rewritten in the extracted copy, after the re-hash and before
    the swap, so a crash leaves either the old folder or a relocated one in place, never a mix.
    Folders get the modes they had when backed up (extraction would give them 0755).
    """
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True, mode=_DEFAULT_DIR_MODE)
    remove_abandoned(root, (_RESTORE_PREFIX,))
    try:
        with owned_tempdir(root, _RESTORE_PREFIX) as staging:
            wanted = {entry["path"]: entry for entry in entries}
            with tarfile.open(plain, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.name in wanted]
                _raise_for(label, [p for p in map(_vet, members) if p is not None])
                tar.extractall(staging, members=members, filter="data")
            problems = _check_tree(staging, wanted)
            problems += [
                Problem(d, "component-mismatch") for d in dirs if not (staging / d).is_dir()
            ]
            _raise_for(label, problems)
            _apply_dir_modes(staging, modes)
            if relocation is not None:
                _relocate_mlflow(staging / MLFLOW_DB, *relocation)
            moved = []
            for d in dirs:
                if d in aside:
                    os.rename(root / d, aside[d])
                    moved.append(aside[d])
            restored = []
            for d in dirs:
                os.rename(staging / d, root / d)
                restored.append(root / d)
            fsync_path(root)
    finally:
        if created and not any(root.iterdir()):
            root.rmdir()
    return restored, moved


def _apply_dir_modes(staging: Path, modes: dict[str, int]) -> None:
    """Recorded modes, never group- or world-writable beyond 0775 and always usable by us."""
    for dirpath, _, _ in os.walk(staging):
        folder = Path(dirpath)
        if folder != staging:
            mode = modes.get(folder.relative_to(staging).as_posix(), _DEFAULT_DIR_MODE)
            os.chmod(folder, (mode & 0o775) | 0o700)


def _check_space(root: Path, entries: list[dict[str, Any]]) -> None:
    """Refuse before extracting what the disk cannot hold, rather than fill it half-way."""
    probe = root if root.exists() else next(p for p in root.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if _size(entries) > free:
        raise BackupError(f"restoring {_size(entries)} bytes into {root}: only {free} bytes free")


def _relocation(
    manifest: dict[str, Any], entries: list[dict[str, Any]], root: Path
) -> tuple[Path, Path] | None:
    """(original, restored) artifact folder when the restored MLflow DB would point elsewhere.

    Manifests written before `mlflow_artifact_root` was recorded fall back to the default
    `<home>/mlflow/artifacts`; a remote artifact root (recorded as null) is never relocated.
    """
    if MLFLOW_DB not in {entry["path"] for entry in entries}:
        return None
    if "mlflow_artifact_root" in manifest:
        original = manifest["mlflow_artifact_root"]
    else:
        original = f"{manifest['home']}/{MLFLOW_ARTIFACTS}" if manifest.get("home") else None
    restored = root / MLFLOW_ARTIFACTS
    if not original or Path(original) == restored:
        return None
    return Path(original), restored


def _relocate_mlflow(db: Path, old: Path, new: Path) -> None:
    """Rewrite artifact locations under `old` to `new`, as `file:` URIs or plain paths.

    MLflow stores absolute locations, so without this a registry restored elsewhere lists fine
    but loads its models from the original folder, which may be gone by then.
    """
    forms = {old.as_uri(): new.as_uri(), f"file://{old}": f"file://{new}", str(old): str(new)}
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        for table, column in _ARTIFACT_COLUMNS:
            if table not in tables:
                continue
            for before, after in forms.items():
                conn.execute(
                    f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                    f'WHERE "{column}" = ? OR substr("{column}", 1, ?) = ?',
                    (after, len(before) + 1, before, len(before) + 1, f"{before}/"),
                )


def _check_tree(staging: Path, wanted: dict[str, dict[str, Any]]) -> list[Problem]:
    """The extracted files, re-hashed: this closes the gap between verifying and extracting."""
    problems: list[Problem] = []
    found: set[str] = set()
    for dirpath, _, filenames in os.walk(staging):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(staging).as_posix()
            if rel == OWNER:
                continue
            found.add(rel)
            entry = wanted.get(rel)
            if entry is None or path.is_symlink():
                problems.append(Problem(rel, UnlistedMemberError.kind, detail="after extraction"))
            elif (digest := _sha256_file(path)) != entry["sha256"]:
                problems.append(Problem(rel, "sha256-mismatch", entry["sha256"], digest))
    for rel in sorted(set(wanted) - found):
        problems.append(Problem(rel, "missing", wanted[rel]["sha256"], "absent"))
    return problems


def _restore_notes(
    entries: list[dict[str, Any]], root: Path, relocation: tuple[Path, Path] | None
) -> list[str]:
    paths = {entry["path"] for entry in entries}
    notes = []
    if "mlflow/mlflow.pgdump" in paths:
        dump = root / "mlflow" / "mlflow.pgdump"
        notes.append(
            f"MLflow ran on PostgreSQL: load {dump} into a new database with "
            f"`pg_restore --no-owner --dbname <new-db-uri> {dump}`, then point "
            "MLFLOW_TRACKING_URI at it"
        )
    if relocation is not None:
        old, new = relocation
        notes.append(
            f"MLflow artifact locations relocated {old} -> {new} in {root / MLFLOW_DB} "
            "(so that file no longer matches its manifest hash)"
        )
    if any(p.startswith("config/") for p in paths):
        notes.append(
            f"config restored to {root / 'config'} for comparison; compare it with the package's "
            "dagster.yaml and the dataset spec (version-controlled, never overwritten)"
        )
    return notes
