"""Restoring a backup, component by component: verify everything, then swap folders in by rename.

Nothing is overwritten or deleted: a folder the backup replaces is moved aside, and a restore
that fails leaves the state root as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churn_platform.core.backup.errors import (
    BackupError,
    BackupNotFoundError,
    Problem,
    UnlistedMemberError,
    UsageError,
)
from churn_platform.core.backup.members import (
    ALL_COMPONENTS,
    COMPONENT_DIRS,
    MLFLOW_ARTIFACTS,
    MLFLOW_DB,
    listed_bytes,
)
from churn_platform.core.backup.scratch import OWNER, owned_tempdir, remove_abandoned
from churn_platform.core.backup.storage import sha256_file
from churn_platform.core.backup.verify import locate, raise_for, verify_files, vet_member
from churn_platform.core.ops.chain import reanchor
from churn_platform.core.ops.files import fsync_path
from churn_platform.settings import Settings

# Every column where MLflow (3.x, sqlite/SQLAlchemy store) keeps an absolute artifact location.
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
# Temporary folders of restores; a killed run's are removed by the next one.
_RESTORE_PREFIX = ".restore-"
# Restored folders the manifest has no mode for (older manifests, `config/`): service group only.
_DEFAULT_DIR_MODE = 0o750


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
        files, wanted_partition = locate(partition, settings, Path(tmp))
        result, plain = verify_files(files, wanted_partition, Path(tmp), settings)
        raise_for(files.label, result.problems)
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
        plan = [f"verify {files.label}: {len(entries)} files, {listed_bytes(entries)} bytes: ok"]
        plan += [f"move {root / d} -> {aside[d]}" for d in dirs if d in aside]
        for d in dirs:
            mine = [e for e in entries if e["path"].split("/", 1)[0] == d]
            plan.append(f"restore {root / d} ({len(mine)} files, {listed_bytes(mine)} bytes)")
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
        bytes=listed_bytes(entries),
        seconds=time.monotonic() - started,
        restored=restored,
        moved_aside=moved,
        notes=notes,
    )


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
                raise_for(label, [p for p in map(vet_member, members) if p is not None])
                tar.extractall(staging, members=members, filter="data")
            problems = _check_tree(staging, wanted)
            problems += [
                Problem(d, "component-mismatch") for d in dirs if not (staging / d).is_dir()
            ]
            raise_for(label, problems)
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
    if listed_bytes(entries) > free:
        raise BackupError(
            f"restoring {listed_bytes(entries)} bytes into {root}: only {free} bytes free"
        )


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
            elif (digest := sha256_file(path)) != entry["sha256"]:
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
