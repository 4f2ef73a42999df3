"""Writing a backup: one tar.gz of the state root, hashed as it streams, sealed and published.

The layout of what goes in is `core.backup.members`; where it is published and how it is
encrypted is `core.backup.storage`. Pure Python: the backup asset and the CLI both call this.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import sqlite3
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from churn_platform.core.backup.errors import BackupError, UsageError
from churn_platform.core.backup.members import (
    ALL_COMPONENTS,
    FORMAT,
    MANIFEST_MEMBER,
    Source,
    artifact_root,
    select_components,
    sources,
)
from churn_platform.core.backup.scratch import owned_tempdir, remove_abandoned
from churn_platform.core.backup.signing import sign, signing_key
from churn_platform.core.backup.storage import (
    ENCRYPTION,
    BackupFiles,
    encrypt_file,
    fernet_for,
    open_target,
    parse_partition,
    sha256_file,
)
from churn_platform.core.ops.anchor import Link, anchor_document
from churn_platform.core.ops.chain import LOCK_NAME, read_chain_heads
from churn_platform.core.ops.files import fsync_path, locked
from churn_platform.core.ops.privacy import pseudonym_key, redact_url
from churn_platform.settings import DAGSTER_YAML, Settings

_GZIP_LEVEL = 1  # Parquet is already compressed; level 1 keeps ~all the gain on sqlite, 2x faster
# Temporary folders of backups; a killed run's are removed by the next one.
_WORK_PREFIX, _TRASH_PREFIX = ".tmp-", ".trash-"


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
    partition = parse_partition(partition)
    wanted = select_components(components)
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
        artifacts = artifact_root(settings) if "mlflow" in wanted else None
        header = {
            "format": FORMAT,
            "partition": partition,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "components": list(wanted),
            "tools": _tool_versions(),
            "golden": golden,
            "encryption": ENCRYPTION if fernet else None,
            "home": str(settings.home),
            "mlflow_artifact_root": str(artifacts) if artifacts else None,
            "not_included": not_included,
        }
        if "logs" in wanted:
            header["ops_chain_anchor"] = _chain_anchor(settings)
        members = sources(settings, wanted, dagster_yaml, fernet is not None, not_included)
        manifest, manifest_bytes = _write_archive(
            plain, members, scratch, header, settings.child_env()
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
            f"{sha256_file(archive)}  {archive.name}\n"
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


def _tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("mlflow", "dagster", "pyspark"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _chain_anchor(settings: Settings) -> dict[str, Any]:
    """The ops log's chain heads, to witness in the manifest that these log files existed."""
    with locked(settings.logs / LOCK_NAME, shared=True):
        try:
            heads = read_chain_heads(settings.logs)
        except ValueError:  # damaged heads: the backup still goes; `logs verify` reports them
            heads = {}
    return anchor_document({name: Link(head.seq, head.hash) for name, head in heads.items()})


def _write_archive(
    path: Path,
    sources: Iterator[Source],
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
