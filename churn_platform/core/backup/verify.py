"""Checking a backup: checksums, signature, manifest and every member, before anything trusts it.

Every problem is collected and named (`Problem`), so an operator sees all that is wrong at once;
`raise_for` turns them into the error the CLI exits with, unsafe members first.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churn_platform.core.backup.errors import (
    UNSAFE,
    AbsolutePathError,
    BackupNotFoundError,
    DecryptionError,
    DuplicateMemberError,
    HardlinkMemberError,
    PathTraversalError,
    Problem,
    SpecialFileError,
    SymlinkMemberError,
    UnlistedMemberError,
    UsageError,
    VerificationError,
)
from churn_platform.core.backup.members import (
    COMPONENT_DIRS,
    FORMAT,
    MANIFEST_MEMBER,
    PSEUDONYM_KEY_FILE,
    listed_bytes,
)
from churn_platform.core.backup.signing import signature_problem, signing_key
from churn_platform.core.backup.storage import (
    CHUNK,
    KEY_ENV,
    PARTITION_RE,
    BackupFiles,
    decrypt_file,
    fernet_for,
    open_target,
    parse_partition,
    sha256_file,
)
from churn_platform.core.ops.anchor import Link, parse_anchor
from churn_platform.core.ops.privacy import pseudonym_key
from churn_platform.settings import Settings


@dataclass(frozen=True)
class VerifyResult:
    """Every problem found re-reading one backup; empty `problems` means it is restorable."""

    archive: str
    problems: list[Problem]
    manifest: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_backup(backup: str | Path, settings: Settings) -> VerifyResult:
    """Re-read a backup (a partition date or an archive path) and report every mismatch.

    Checks the manifest against its checksum, the archive against its checksum, then every
    member's size and SHA-256 against the manifest, and refuses to trust any member that is
    unsafe or unlisted. Raises only when there is nothing to verify (`BackupNotFoundError`) or
    the archive is encrypted and no key is configured (`UsageError`).
    """
    with tempfile.TemporaryDirectory(prefix="churn-verify-") as tmp:
        files, partition = locate(backup, settings, Path(tmp))
        result, _ = verify_files(files, partition, Path(tmp), settings)
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


def locate(backup: str | Path, settings: Settings, tmp: Path) -> tuple[BackupFiles, str | None]:
    """A partition date is looked up in the configured target; anything else is an archive path."""
    if isinstance(backup, str) and PARTITION_RE.fullmatch(backup):
        partition = parse_partition(backup)
        return open_target(settings).fetch(partition, tmp), partition
    path = Path(backup).expanduser().resolve()
    if not path.is_file():
        raise BackupNotFoundError(f"no backup archive at {path}")
    return BackupFiles(path, str(path)), None


def verify_files(
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
    _compare_sha(files.archive.name, expected, sha256_file(files.archive), problems)
    _check_signature(files, manifest_bytes, settings, problems)
    manifest = _parse_manifest(manifest_bytes, files.manifest.name, problems)
    if manifest is None:
        return VerifyResult(files.label, problems, None), None
    cap = settings.backup_max_expanded_bytes
    if listed_bytes(manifest["files"]) > cap:
        detail = (
            f"lists {listed_bytes(manifest['files'])} bytes; CHURN_BACKUP_MAX_EXPANDED_BYTES={cap}"
        )
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


def vet_member(member: tarfile.TarInfo) -> Problem | None:
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
                problem = vet_member(member)
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


def raise_for(label: str, problems: list[Problem]) -> None:
    """Unsafe members outrank plain mismatches: they are refused by kind, with their own code."""
    for problem in problems:
        if problem.kind in UNSAFE:
            raise UNSAFE[problem.kind](label, problem)
    if any(problem.kind == "decrypt" for problem in problems):
        raise DecryptionError(label, problems)
    if problems:
        raise VerificationError(label, problems)
