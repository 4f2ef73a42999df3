"""What a backup holds: its components, the names of their members and where each comes from.

Archive layout (`<target>/<YYYY-MM-DD>/`; `.enc` is added when CHURN_BACKUP_KEY is set):
    churn-backup-<date>.tar.gz[.enc]                 the archive
    churn-backup-<date>.tar.gz[.enc].manifest.json   copy of the manifest inside the archive
    churn-backup-<date>.tar.gz[.enc].manifest.sig    HMAC of the manifest (core.backup.signing)
    churn-backup-<date>.tar.gz[.enc].sha256          `sha256sum -c` lines: manifest, then archive
Members mirror the state root (`mlflow/`, `dagster/`, `warehouse/`, `logs/`, `incidents/`,
`changes/`, and `secrets/` in encrypted archives only), plus `config/` and a final `MANIFEST.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churn_platform.core.backup.errors import BackupError, UsageError
from churn_platform.core.backup.storage import KEY_ENV
from churn_platform.core.ops.chain import HEADS_NAME, LOCK_NAME
from churn_platform.core.ops.files import local_path, locked
from churn_platform.core.ops.privacy import redact_url
from churn_platform.core.versions import POINTER
from churn_platform.settings import Settings

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
MLFLOW_DB = "mlflow/mlflow.db"
MLFLOW_ARTIFACTS = "mlflow/artifacts"
# Where `core.ops.privacy.pseudonym_key` keeps the key (the path is inline there).
PSEUDONYM_KEY_FILE = "secrets/pseudonym.key"

_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Source:
    """One archive member to be: a file read as is, a database snapshot, or literal bytes."""

    arcname: str
    component: str
    kind: str
    origin: str = ""
    content: bytes = b""


def listed_bytes(entries: list[dict[str, Any]]) -> int:
    """The bytes the manifest entries say their files hold."""
    return sum(int(entry["size"]) for entry in entries)


def select_components(requested: Iterable[str]) -> tuple[str, ...]:
    """The requested components in archive order; an unknown or empty set is a usage error."""
    wanted = set(requested)
    unknown = wanted - set(ALL_COMPONENTS)
    if unknown or not wanted:
        raise UsageError(f"components must be a non-empty subset of {ALL_COMPONENTS}")
    return tuple(c for c in ALL_COMPONENTS if c in wanted)


def sources(
    settings: Settings,
    wanted: tuple[str, ...],
    dagster_yaml: Path,
    encrypted: bool,
    not_included: list[str],
) -> Iterator[Source]:
    """Members in archive order; folders are listed just before they are read."""
    producers: dict[str, Callable[[], Iterator[Source]]] = {
        "mlflow": lambda: _mlflow_sources(settings, not_included),
        "dagster": lambda: _dagster_sources(settings, not_included),
        "data": lambda: _data_sources(settings, not_included),
        "config": lambda: _config_sources(settings, dagster_yaml, not_included),
        "logs": lambda: _logs_sources(settings, encrypted, not_included),
    }
    for component in wanted:
        yield from producers[component]()


def _mlflow_sources(settings: Settings, not_included: list[str]) -> Iterator[Source]:
    uri = settings.mlflow_tracking_uri
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        db = _sqlite_path(uri)
        if db.is_file():
            yield Source(MLFLOW_DB, "mlflow", "sqlite", str(db))
        else:
            not_included.append(f"missing: {db}")
    elif scheme in ("postgresql", "postgres"):
        yield Source("mlflow/mlflow.pgdump", "mlflow", "pg_dump", uri)
    else:
        raise UsageError(
            f"cannot back up MLflow tracking URI {redact_url(uri)!r}: only sqlite and postgresql "
            "backends are supported; back up a tracking server's own database"
        )
    artifacts = artifact_root(settings)
    if artifacts is None:
        not_included.append(f"external: {redact_url(settings.mlflow_artifact_root)}")
    else:
        yield from _tree(MLFLOW_ARTIFACTS, artifacts, "mlflow", not_included)


def artifact_root(settings: Settings) -> Path | None:
    """The local artifact folder, resolved as `tracking` resolves it for MLflow; None if remote."""
    root = local_path(settings.mlflow_artifact_root or str(settings.mlflow_dir / "artifacts"))
    return None if root is None else root.expanduser().resolve()


def _sqlite_path(uri: str) -> Path:
    """SQLAlchemy form: `sqlite:///relative.db`, `sqlite:////absolute.db`."""
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not uri.startswith("sqlite:///") or not path or path == ":memory:":
        raise UsageError(f"MLflow tracking URI {uri!r} does not name a sqlite file")
    return Path(path)


def _dagster_sources(settings: Settings, not_included: list[str]) -> Iterator[Source]:
    root = settings.dagster_storage
    if not root.is_dir():
        not_included.append(f"missing: {root}")
        return
    for path in _walk(root):
        if path.name.endswith(_SQLITE_SIDECARS):
            continue
        kind = "sqlite" if path.suffix == ".db" else "file"
        yield Source(f"dagster/{path.relative_to(root).as_posix()}", "dagster", kind, str(path))


def _data_sources(settings: Settings, not_included: list[str]) -> Iterator[Source]:
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
            yield Source(f"{prefix}/{POINTER}", "data", "bytes", content=f"{name}\n".encode())
            yield from _tree(f"{prefix}/{name}", folder / name, "data", not_included)


def _config_sources(
    settings: Settings, dagster_yaml: Path, not_included: list[str]
) -> Iterator[Source]:
    """What the runs were configured with: the Dagster instance file every state root gets
    (the package's), the dataset spec and the settings."""
    candidates = [
        ("config/dagster.yaml", dagster_yaml),
        (f"config/spec/{settings.spec_path.name}", settings.spec_path),
    ]
    for arcname, path in candidates:
        if path.is_file():
            yield Source(arcname, "config", "file", str(path))
        else:
            not_included.append(f"missing: {path}")
    snapshot = json.dumps(settings.public_values(), indent=2, sort_keys=True) + "\n"
    yield Source("config/settings.json", "config", "bytes", content=snapshot.encode())


def _logs_sources(settings: Settings, encrypted: bool, not_included: list[str]) -> Iterator[Source]:
    """Chain heads and logs are copied under the ops log's own lock, as `verify_logs` reads them.

    Writers hold that lock exclusively around "append, update head", so the copy is one
    consistent cut that verifies after a restore (they wait the few ms the copy takes). The
    pseudonym key is archived only when the archive is encrypted: a plain archive carrying it
    would hand out the key that makes the pseudonyms meaningful.
    """
    with locked(settings.logs / LOCK_NAME, shared=True):
        heads = settings.logs / HEADS_NAME
        if heads.is_file():
            yield Source(f"logs/{HEADS_NAME}", "logs", "file", str(heads))
        else:
            not_included.append(f"missing: {heads}")
        if settings.logs.is_dir():
            for path in sorted(settings.logs.glob("*.jsonl")):
                yield Source(f"logs/{path.name}", "logs", "file", str(path))
    for folder in (settings.incidents, settings.home / "changes"):
        for source in _tree(folder.name, folder, "logs", not_included):
            if source.arcname.endswith(".json"):
                yield source
    key = settings.home / PSEUDONYM_KEY_FILE
    if key.is_file() and encrypted:
        yield Source(PSEUDONYM_KEY_FILE, "logs", "file", str(key))
    elif key.is_file():
        not_included.append(f"secret, archived only when {KEY_ENV} is set: {key}")


def _tree(prefix: str, root: Path, component: str, not_included: list[str]) -> Iterator[Source]:
    if not root.is_dir():
        not_included.append(f"missing: {root}")
        return
    for path in _walk(root):
        yield Source(f"{prefix}/{path.relative_to(root).as_posix()}", component, "file", str(path))


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
