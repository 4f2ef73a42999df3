"""Where backups live and how they are sealed: local and S3 targets, chunked Fernet encryption.

Apart from the archive format (what goes in, how it is verified and restored), so that format
does not depend on the storage details.

A target holds one folder (or key prefix) per partition date; a partition counts as published
only once its `.sha256` checksums file is there, so a half-written backup is never listed.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError
from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from churn_platform.core.backup.errors import (
    BackupNotFoundError,
    DecryptionError,
    Problem,
    UsageError,
)
from churn_platform.core.ops.files import fsync_path, local_path
from churn_platform.settings import Settings

KEY_ENV = "CHURN_BACKUP_KEY"
S3_ENDPOINT_ENV = "CHURN_BACKUP_S3_ENDPOINT"
ENCRYPTION = "fernet-chunked/1"
PARTITION_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
CHUNK = 1 << 20

_MAGIC = b"CHURNENC1\n"
_STREAM_ID = 16
_CHUNK_HEADER = struct.Struct(">Q?")
_MAX_TOKEN = 2 * CHUNK + 4096
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class BackupFiles:
    """An archive and its two sidecars, wherever they were fetched to."""

    archive: Path
    label: str

    @property
    def manifest(self) -> Path:
        return self.archive.with_name(self.archive.name + ".manifest.json")

    @property
    def checksums(self) -> Path:
        return self.archive.with_name(self.archive.name + ".sha256")

    @property
    def signature(self) -> Path:
        """The manifest's HMAC (`churn_platform.core.backup.signing`)."""
        return self.archive.with_name(self.archive.name + ".manifest.sig")


def parse_partition(value: str) -> str:
    """A partition date as `YYYY-MM-DD`; anything else is the caller's mistake (exit 2)."""
    if not PARTITION_RE.fullmatch(value):
        raise UsageError(f"partition {value!r} is not a YYYY-MM-DD date")
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise UsageError(f"partition {value!r} is not a valid date") from exc


def sha256_file(path: Path) -> str:
    """The file's SHA-256 as the `.sha256` sidecar and the manifest record it."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fernet_for(key: SecretStr | None) -> Fernet | None:
    """The Fernet of the configured key (CHURN_BACKUP_KEY); None: archives stay unencrypted."""
    if not key:
        return None
    try:
        return Fernet(key.get_secret_value())
    except ValueError as exc:
        raise UsageError(
            f"{KEY_ENV} is not a Fernet key (Fernet.generate_key() makes one)"
        ) from exc


def encrypt_file(source: Path, dest: Path, fernet: Fernet) -> None:
    """Chunked Fernet: 1 MiB plaintext per token, so memory stays bounded for any archive size.

    Each token carries a random per-archive stream id, its index and a final flag, so chunks
    cannot be reordered, dropped, truncated or spliced in from another archive unnoticed. Tokens
    are stored decoded from base64, which would otherwise add a third to the archive size.
    """
    stream = os.urandom(_STREAM_ID)
    with source.open("rb") as fin, dest.open("wb") as fout:
        fout.write(_MAGIC + stream)
        index, chunk = 0, fin.read(CHUNK)
        while True:
            following = fin.read(CHUNK)
            token = fernet.encrypt(stream + _CHUNK_HEADER.pack(index, not following) + chunk)
            raw = base64.urlsafe_b64decode(token)
            fout.write(struct.pack(">I", len(raw)) + raw)
            if not following:
                return
            index, chunk = index + 1, following


def decrypt_file(source: Path, dest: Path, fernet: Fernet) -> None:
    """Undo `encrypt_file`; any wrong key, reordering or truncation raises DecryptionError."""

    def fail(detail: str) -> DecryptionError:
        return DecryptionError(str(source), [Problem(source.name, "decrypt", detail=detail)])

    header = len(_MAGIC) + _STREAM_ID
    with source.open("rb") as fin, dest.open("wb") as fout:
        head = fin.read(header)
        if len(head) != header or not head.startswith(_MAGIC):
            raise fail("not an encrypted churn backup")
        stream = head[len(_MAGIC) :]
        index = 0
        while True:
            raw = fin.read(4)
            if len(raw) != 4:
                raise fail("truncated: the final chunk is missing")
            (length,) = struct.unpack(">I", raw)
            token = fin.read(length) if length <= _MAX_TOKEN else b""
            if len(token) != length:
                raise fail(f"chunk {index} is truncated or oversized")
            try:
                plain = fernet.decrypt(base64.urlsafe_b64encode(token))
            except InvalidToken:
                raise fail(f"chunk {index} does not decrypt: wrong key or tampered") from None
            body = plain[_STREAM_ID + _CHUNK_HEADER.size :]
            chunk_index, final = _CHUNK_HEADER.unpack_from(plain, _STREAM_ID)
            if plain[:_STREAM_ID] != stream or chunk_index != index:
                raise fail(f"chunk {index} is out of order or from another archive")
            fout.write(body)
            if final:
                break
            index += 1
        if fin.read(1):
            raise fail("data after the final chunk")


class LocalTarget:
    """A folder of `<date>/` partition folders, each published by one atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root

    def describe(self, partition: str) -> str:
        return str(self.root / partition)

    def partitions(self) -> list[date]:
        if not self.root.is_dir():
            return []
        return sorted(
            date.fromisoformat(p.name)
            for p in self.root.iterdir()
            if PARTITION_RE.fullmatch(p.name) and any(p.glob("*.sha256"))
        )

    def publish(self, built: Path, partition: str, archive_name: str) -> str:
        """Rename `built` into place; an existing partition is exchanged with it atomically."""
        final = self.root / partition
        try:
            os.rename(built, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            _exchange(built, final)
        fsync_path(self.root)
        return str(final / archive_name)

    def fetch(self, partition: str, tmp: Path) -> BackupFiles:
        folder = self.root / partition
        checksums = sorted(folder.glob("*.sha256")) if folder.is_dir() else []
        if len(checksums) != 1:
            raise BackupNotFoundError(f"no published backup for {partition} in {self.root}")
        archive = folder / checksums[0].name.removesuffix(".sha256")
        if not archive.is_file():
            raise BackupNotFoundError(f"{archive} is missing (its checksums file is there)")
        return BackupFiles(archive, str(archive))

    def read_manifest(self, partition: str) -> bytes:
        """The manifest sidecar of a published partition."""
        return self.fetch(partition, self.root).manifest.read_bytes()

    def delete(self, partition: str) -> None:
        """Rename away first, so a half-deleted partition is never visible as a backup."""
        trash = self.root / f".trash-{partition}-{uuid.uuid4().hex}"
        os.rename(self.root / partition, trash)
        shutil.rmtree(trash)


def _exchange(new: Path, current: Path) -> None:
    """Swap two folders atomically with Linux `renameat2(RENAME_EXCHANGE)`.

    Where the kernel or filesystem lacks it, fall back to two renames (a window of a few
    microseconds in which the partition is absent, never half-written).
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        old, cur = os.fsencode(new), os.fsencode(current)
        if renameat2(_AT_FDCWD, old, _AT_FDCWD, cur, _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(current))
    parked = new.with_name(new.name + ".previous")
    os.rename(current, parked)
    os.rename(new, current)
    os.rename(parked, new)


class S3Target:
    """`s3://bucket/prefix/<date>/...`: built locally, uploaded with the checksums file last."""

    def __init__(self, url: str, staging: Path, endpoint: str | None = None) -> None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise UsageError(f"backup target {url!r} names no bucket")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.staging = staging
        self.client = boto3.client("s3", endpoint_url=endpoint)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def describe(self, partition: str, name: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(partition, name)}"

    def _keys(self, partition: str) -> list[str]:
        prefix = self._key(partition)
        prefix = f"{prefix}/" if prefix else ""
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def partitions(self) -> list[date]:
        found = set()
        for key in self._keys(""):
            parts = key.removeprefix(f"{self.prefix}/" if self.prefix else "").split("/")
            if (
                len(parts) == 2
                and PARTITION_RE.fullmatch(parts[0])
                and parts[1].endswith(".sha256")
            ):
                found.add(date.fromisoformat(parts[0]))
        return sorted(found)

    def publish(self, built: Path, partition: str, archive_name: str) -> str:
        """Each PUT is atomic; the checksums object goes last and marks the backup complete."""
        files = BackupFiles(built / archive_name, archive_name)
        sealed = (files.archive, files.manifest, files.signature, files.checksums)
        new = {self._key(partition, p.name) for p in sealed}
        for path in (files.archive, files.manifest, files.signature):
            self.client.upload_file(str(path), self.bucket, self._key(partition, path.name))
        stale = sorted(set(self._keys(partition)) - new, key=lambda k: not k.endswith(".sha256"))
        for key in stale:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        checksums_key = self._key(partition, files.checksums.name)
        self.client.upload_file(str(files.checksums), self.bucket, checksums_key)
        return self.describe(partition, archive_name)

    def fetch(self, partition: str, tmp: Path) -> BackupFiles:
        checksums = [k for k in self._keys(partition) if k.endswith(".sha256")]
        if len(checksums) != 1:
            raise BackupNotFoundError(f"no published backup for {partition} at {self.describe('')}")
        name = checksums[0].rsplit("/", 1)[-1].removesuffix(".sha256")
        files = BackupFiles(tmp / name, self.describe(partition, name))
        for path in (files.checksums, files.manifest, files.signature, files.archive):
            key = self._key(partition, path.name)
            try:
                self.client.download_file(self.bucket, key, str(path))
            except ClientError as exc:
                if path == files.signature:
                    continue  # verification reports an unsigned manifest by name
                raise BackupNotFoundError(f"s3://{self.bucket}/{key}: {exc}") from exc
        return files

    def read_manifest(self, partition: str) -> bytes:
        """The manifest sidecar alone, without downloading the archive."""
        names = [k for k in self._keys(partition) if k.endswith(".manifest.json")]
        if len(names) != 1:
            raise BackupNotFoundError(f"no manifest for {partition} at {self.describe('')}")
        return self.client.get_object(Bucket=self.bucket, Key=names[0])["Body"].read()

    def delete(self, partition: str) -> None:
        """The checksums object goes first, so a half-deleted partition is no longer listed."""
        for key in sorted(self._keys(partition), key=lambda k: not k.endswith(".sha256")):
            self.client.delete_object(Bucket=self.bucket, Key=key)


def open_target(settings: Settings) -> LocalTarget | S3Target:
    """`s3://bucket/prefix`, a folder path, or empty for `settings.backups`."""
    spec = settings.backup_target
    if spec.startswith("s3://"):
        return S3Target(spec, settings.backups, settings.backup_s3_endpoint)
    location = local_path(spec)
    if location is None:
        raise UsageError(f"backup target {spec!r}: use s3://bucket/prefix or a folder path")
    return LocalTarget(location.expanduser().resolve() if spec else settings.backups)
