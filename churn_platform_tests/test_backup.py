"""Backups restore byte-for-byte (relocated MLflow loads), refuse bad archives, keep right days."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import date, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import psycopg2
import pytest
from mlflow import MlflowClient
from pydantic import SecretStr

from churn_platform import cli
from churn_platform.core.backup import archive
from churn_platform.core.backup.archive import BackupResult, create_backup, snapshot_sqlite
from churn_platform.core.backup.errors import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNSAFE_ARCHIVE,
    EXIT_USAGE,
    EXIT_VERIFICATION_FAILED,
    AbsolutePathError,
    BackupError,
    BackupNotFoundError,
    DuplicateMemberError,
    HardlinkMemberError,
    PathTraversalError,
    SpecialFileError,
    SymlinkMemberError,
    UnlistedMemberError,
    UnsafeArchiveError,
    UsageError,
    VerificationError,
)
from churn_platform.core.backup.members import (
    ALL_COMPONENTS,
    FORMAT,
    MANIFEST_MEMBER,
    PSEUDONYM_KEY_FILE,
)
from churn_platform.core.backup.restore import restore_backup
from churn_platform.core.backup.retention import apply_retention, list_backups, select_retained
from churn_platform.core.backup.scratch import OWNER, owned_tempdir
from churn_platform.core.backup.signing import sign, signing_key
from churn_platform.core.backup.verify import verify_backup
from churn_platform.core.ops.chain import anchor_path
from churn_platform.core.ops.log import OpsLog
from churn_platform.core.ops.verify import verify_logs
from churn_platform.settings import Settings, load_settings

PARTITION = "2026-11-27"
SECRET = "pseudonym-key-that-must-never-be-archived"
MODEL = "churn_model"
PYFUNC = "churn_pyfunc"


@dataclasses.dataclass(frozen=True)
class State:
    settings: Settings
    project: Path

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def dagster_yaml(self) -> Path:
        return self.project / "dagster.yaml"


def _build_state(root: Path) -> None:
    """A small but real state root: MLflow registry, Dagster sqlite storage, warehouse, logs."""
    home = root / "home"
    artifacts = home / "mlflow" / "artifacts"
    artifacts.mkdir(parents=True)
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("churn", artifact_location=artifacts.as_uri())
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "fake model bytes", "model/model.pkl")
    client.log_metric(run.info.run_id, "auc", 0.81)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    for _ in range(2):
        client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", "2")
    client.set_registered_model_alias(MODEL, "challenger", "1")

    dagster = home / "dagster"
    for rel, table in [
        ("history/runs.db", "runs"),
        ("history/runs/abc123.db", "event_logs"),
        ("schedules/schedules.db", "jobs"),
    ]:
        (dagster / rel).parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(dagster / rel)) as conn, conn:
            conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, run_id TEXT, body BLOB)")
            conn.executemany(
                f"INSERT INTO {table} (run_id, body) VALUES (?, ?)",
                [(f"run-{i}", os.urandom(64)) for i in range(50)],
            )
    _write(dagster / "storage/abc123/out.pickle", os.urandom(300))
    _write(dagster / "compute_logs/abc123/step.out", b"step output\n")

    warehouse = home / "warehouse"
    _write(warehouse / "customers/CURRENT", b"v-2\n")
    _write(warehouse / "customers/v-1/part-0.parquet", b"old version")
    _write(warehouse / "customers/v-2/part-0.parquet", os.urandom(2048))
    _write(warehouse / "customers/v-2/_SUCCESS", b"")
    _write(warehouse / "customers/.CURRENT.99.tmp", b"v-3\n")
    _write(warehouse / "scores/2026-11-26/CURRENT", b"v-a\n")
    _write(warehouse / "scores/2026-11-26/v-a/part-0.parquet", os.urandom(512))
    _write(warehouse / "model_gbt/CURRENT", b"v-new\n")
    _write(warehouse / "model_gbt/v-old/oof.table.parquet", b"old fit")
    _write(warehouse / "model_gbt/v-new/oof.table.parquet", os.urandom(256))
    _write(warehouse / "model_gbt/v-new/summary.json", b'{"kind": "gbt"}')

    ops = OpsLog(load_settings({"CHURN_HOME": str(home), "CHURN_PSEUDONYM_KEY": SECRET}))
    for code in ("ingestion.completed", "training.completed", "registry.promoted"):
        ops.event(code, f"{code} for the backup tests")
    ops.close()
    _write(home / "logs/spark-driver.log", b"not an operations log\n")
    _write(home / PSEUDONYM_KEY_FILE, b"0123456789abcdef" * 4)
    (home / PSEUDONYM_KEY_FILE).chmod(0o600)
    _write(home / "incidents/INC-0001.json", b'{"id": "INC-0001"}\n')
    _write(home / "changes/CHG-0001.json", b'{"id": "CHG-0001"}\n')
    _write(home / "changes/notes.txt", b"scratch\n")

    project = root / "project"
    _write(project / "dagster.yaml", b"storage: {}\n")
    _write(project / "telco.yaml", b"dataset: telco\n")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Every entry below root with a content hash: equal trees mean nothing changed."""
    found: dict[str, str] = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = _sha(path.read_bytes())
    return found


def _rows(db: Path, table: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def _registry(db: Path) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name='{MODEL}'")
    listed = sorted((v.name, v.version, v.source) for v in versions)
    return listed, dict(client.get_registered_model(MODEL).aliases)


@pytest.fixture(scope="session", name="template")
def template_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template")
    _build_state(root)
    return root


@pytest.fixture(name="state")
def state_fixture(template: Path, tmp_path: Path) -> State:
    shutil.copytree(template / "home", tmp_path / "home")
    shutil.copytree(template / "project", tmp_path / "project")
    settings = load_settings(
        {
            "CHURN_HOME": str(tmp_path / "home"),
            "CHURN_CONFIG": str(tmp_path / "project" / "telco.yaml"),
            "CHURN_PSEUDONYM_KEY": SECRET,
            "CHURN_BACKUP_TARGET": str(tmp_path / "offsite"),
        }
    )
    return State(settings, tmp_path / "project")


def _backup(
    state: State, golden: dict[str, str] | None = None, components: tuple[str, ...] = ALL_COMPONENTS
) -> BackupResult:
    return create_backup(
        state.settings, PARTITION, golden, components, dagster_yaml=state.dagster_yaml
    )


def _member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive, "r:gz") as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def test_round_trip_restores_same_files_and_registry(state: State, tmp_path: Path) -> None:
    golden = {"model": MODEL, "version": "2", "predictions_sha256": "ab" * 32}
    registry = _registry(state.home / "mlflow" / "mlflow.db")
    runs = _rows(state.home / "dagster/history/runs.db", "runs")
    originals = _tree(state.home)

    result = _backup(state, golden=golden)

    archive = Path(result.archive)
    assert archive == tmp_path / "offsite" / PARTITION / f"churn-backup-{PARTITION}.tar.gz"
    manifest = result.manifest
    assert manifest["golden"] == golden
    assert manifest["partition"] == PARTITION
    assert set(manifest["tools"]) == {"python", "mlflow", "dagster", "pyspark"}
    assert json.loads(_member(archive, "MANIFEST.json")) == manifest
    paths = {entry["path"] for entry in manifest["files"]}
    assert {
        "mlflow/mlflow.db",
        "dagster/history/runs/abc123.db",
        "dagster/compute_logs/abc123/step.out",
        "warehouse/customers/CURRENT",
        "warehouse/customers/v-2/part-0.parquet",
        "warehouse/scores/2026-11-26/v-a/part-0.parquet",
        "warehouse/model_gbt/CURRENT",
        "warehouse/model_gbt/v-new/oof.table.parquet",
        "warehouse/model_gbt/v-new/summary.json",
        "logs/chain_heads.json",
        "incidents/INC-0001.json",
        "config/dagster.yaml",
        "config/spec/telco.yaml",
        "config/settings.json",
    } <= paths
    assert any(p.startswith("mlflow/artifacts/") and p.endswith("model.pkl") for p in paths)
    excluded = {"warehouse/customers/v-1/part-0.parquet", "logs/spark-driver.log"}
    excluded |= {"warehouse/model_gbt/v-old/oof.table.parquet"}
    excluded |= {"changes/notes.txt", "warehouse/customers/.CURRENT.99.tmp", PSEUDONYM_KEY_FILE}
    assert not paths & excluded
    assert any(PSEUDONYM_KEY_FILE in line for line in manifest["not_included"])
    settings_json = _member(archive, "config/settings.json")
    assert SECRET.encode() not in settings_json
    assert "pseudonym_key" not in json.loads(settings_json)

    shutil.rmtree(state.home)
    target = tmp_path / "restored"
    restored = restore_backup(state.settings, PARTITION, target_dir=target)

    assert restored.moved_aside == []
    after = _tree(target)
    assert {p for p, h in after.items() if h != "dir"} == paths
    by_path = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    for path in paths:
        assert after[path] == by_path[path]
        if not path.endswith(".db") and not path.startswith("config/"):
            assert after[path] == originals[path], path
    assert _rows(target / "dagster/history/runs.db", "runs") == runs
    assert _registry(target / "mlflow" / "mlflow.db") == registry
    assert verify_logs(target / "logs").ok
    ops_log_file = next((target / "logs").glob("ops-*.jsonl"))
    assert ops_log_file.stat().st_mode & 0o777 == 0o640


class _Doubler(mlflow.pyfunc.PythonModel):
    """A real (if tiny) pyfunc model: loading it needs its artifacts, not just registry rows."""

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: None
    ) -> pd.DataFrame:
        return model_input * 2


@contextmanager
def _mlflow_at(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for one block; `set_tracking_uri` also exports
    MLFLOW_TRACKING_URI, which would otherwise leak into every later test's settings."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def test_restore_elsewhere_relocates_mlflow_so_the_champion_loads(
    state: State, tmp_path: Path
) -> None:
    artifacts = state.home / "mlflow" / "artifacts"
    uri = state.settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("relocation", artifact_location=artifacts.as_uri())
    with _mlflow_at(uri), mlflow.start_run(experiment_id=experiment):
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=_Doubler(),
            pip_requirements=["mlflow"],
            registered_model_name=PYFUNC,
        )
    client.set_registered_model_alias(PYFUNC, "champion", str(logged.registered_model_version))
    create_backup(state.settings, PARTITION, None, ("mlflow",), dagster_yaml=state.dagster_yaml)
    shutil.rmtree(state.home)

    target = tmp_path / "restored"
    result = restore_backup(state.settings, PARTITION, "mlflow", target_dir=target)

    moved_to = target / "mlflow" / "artifacts"
    assert f"relocate MLflow artifact locations {artifacts} -> {moved_to}" in result.plan
    assert any(f"{artifacts} -> {moved_to}" in note for note in result.notes)
    with closing(sqlite3.connect(target / "mlflow" / "mlflow.db")) as conn:
        dump = "\n".join(conn.iterdump())
    assert str(state.home) not in dump
    assert moved_to.as_uri() in dump
    restored_uri = f"sqlite:///{target / 'mlflow' / 'mlflow.db'}"
    with _mlflow_at(restored_uri):
        champion = mlflow.pyfunc.load_model(f"models:/{PYFUNC}@champion")
    predictions = champion.predict(pd.DataFrame({"x": [1.0, 2.5]}))
    assert predictions["x"].tolist() == [2.0, 5.0]


def test_restore_in_place_moves_the_existing_component_aside(state: State) -> None:
    _backup(state)
    _write(state.home / "mlflow" / "junk.txt", b"written after the backup")
    others = {d: _tree(state.home / d) for d in ("dagster", "warehouse", "secrets")}

    result = restore_backup(state.settings, PARTITION, "mlflow")
    logs = restore_backup(state.settings, PARTITION, "logs")

    assert {p.name for p in logs.restored} == {"logs", "incidents", "changes"}
    logs_aside = next(p for p in logs.moved_aside if p.name.startswith("logs."))
    assert (logs_aside / "spark-driver.log").is_file()
    assert result.components == ("mlflow",)
    (aside,) = result.moved_aside
    assert aside.name.startswith("mlflow.before-restore-")
    assert (aside / "junk.txt").is_file()
    assert not (state.home / "mlflow" / "junk.txt").exists()
    assert {d: _tree(state.home / d) for d in others} == others
    assert not list(state.home.glob(".restore-*"))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite(
    archive: Path,
    edit: Callable[[list[tuple[tarfile.TarInfo, bytes]]], list[tuple[tarfile.TarInfo, bytes]]],
) -> None:
    """Rebuild the archive with edited members and re-seal its own checksum line, as an
    attacker or a bit-rotting copy tool would, so only the member checks can catch it."""
    with tarfile.open(archive, "r:gz") as tar:
        members = []
        for info in tar.getmembers():
            handle = tar.extractfile(info) if info.isfile() else None
            members.append((info, handle.read() if handle else b""))
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in edit(members):
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    _reseal(archive)


def _reseal(archive: Path) -> None:
    sums = archive.with_name(archive.name + ".sha256")
    lines = [line for line in sums.read_text().splitlines() if not line.endswith(archive.name)]
    lines.append(f"{_sha(archive.read_bytes())}  {archive.name}")
    sums.write_text("\n".join(lines) + "\n")


PARQUET = "warehouse/customers/v-2/part-0.parquet"


def _raw_byte(archive: Path) -> list[str]:
    expected = _sha(archive.read_bytes())
    _flip(archive, archive.stat().st_size // 2)
    return [archive.name, expected, _sha(archive.read_bytes())]


def _member_byte(archive: Path) -> list[str]:
    original = _member(archive, PARQUET)
    flipped = bytes([original[0] ^ 1]) + original[1:]

    def edit(members: list[tuple[tarfile.TarInfo, bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
        return [(i, flipped if i.name == PARQUET else d) for i, d in members]

    _rewrite(archive, edit)
    return [PARQUET, "sha256-mismatch", _sha(original), _sha(flipped)]


def _deleted_member(archive: Path) -> list[str]:
    original = _member(archive, PARQUET)
    _rewrite(archive, lambda members: [(i, d) for i, d in members if i.name != PARQUET])
    return [PARQUET, "missing", _sha(original), "absent"]


def _edited_manifest(archive: Path) -> list[str]:
    sidecar = archive.with_name(archive.name + ".manifest.json")
    expected = _sha(sidecar.read_bytes())
    manifest = json.loads(sidecar.read_bytes())
    manifest["golden"] = {"model": MODEL, "version": "666"}
    sidecar.write_text(json.dumps(manifest))
    return [sidecar.name, "sha256-mismatch", expected, _sha(sidecar.read_bytes())]


@pytest.mark.parametrize("damage", [_raw_byte, _member_byte, _deleted_member, _edited_manifest])
def test_damaged_backup_is_refused_naming_file_and_hashes(
    state: State, tmp_path: Path, damage: Callable[[Path], list[str]]
) -> None:
    archive = Path(_backup(state).archive)
    needles = damage(archive)
    before = _tree(tmp_path)

    with pytest.raises(VerificationError) as raised:
        restore_backup(state.settings, PARTITION)

    assert raised.value.exit_code == EXIT_VERIFICATION_FAILED
    message = str(raised.value)
    for needle in needles:
        assert needle in message
    assert _tree(tmp_path) == before
    assert not verify_backup(PARTITION, state.settings).ok


def _forge(
    folder: Path, members: list[tuple[tarfile.TarInfo, bytes]], listed: list[tuple[str, bytes]]
) -> None:
    """A backup whose checksums and manifest are all consistent: only the members are hostile."""
    files = [
        {"path": p, "size": len(d), "sha256": _sha(d), "component": "mlflow"} for p, d in listed
    ]
    manifest = {"format": FORMAT, "partition": PARTITION, "components": ["mlflow"]}
    manifest_bytes = json.dumps({**manifest, "files": files}).encode()
    archive = folder / f"churn-backup-{PARTITION}.tar.gz"
    folder.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in [*members, (tarfile.TarInfo(MANIFEST_MEMBER), manifest_bytes)]:
            if info.isfile():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    archive.with_name(archive.name + ".manifest.json").write_bytes(manifest_bytes)
    archive.with_name(archive.name + ".sha256").write_text(
        f"{_sha(manifest_bytes)}  {archive.name}.manifest.json\n"
        f"{_sha(archive.read_bytes())}  {archive.name}\n"
    )


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


GOOD = ("mlflow/mlflow.db", b"a harmless file")
HOSTILE = [
    ("../x", [(_info("../x"), b"escaped")], PathTraversalError),
    ("nested ..", [(_info("mlflow/../../x"), b"escaped")], PathTraversalError),
    ("absolute", [(_info("/etc/x"), b"escaped")], AbsolutePathError),
    ("symlink", [(_info("mlflow/ln", tarfile.SYMTYPE, "/etc/passwd"), b"")], SymlinkMemberError),
    ("hardlink", [(_info("mlflow/hl", tarfile.LNKTYPE, "/etc/passwd"), b"")], HardlinkMemberError),
    ("fifo", [(_info("mlflow/fifo", tarfile.FIFOTYPE), b"")], SpecialFileError),
    ("device", [(_info("mlflow/dev", tarfile.CHRTYPE), b"")], SpecialFileError),
    ("unlisted", [(_info("mlflow/extra.txt"), b"smuggled")], UnlistedMemberError),
    ("duplicate", [(_info(GOOD[0]), b"second copy")], DuplicateMemberError),
]


@pytest.mark.parametrize(
    ("members", "refusal"), [(m, r) for _, m, r in HOSTILE], ids=[i for i, _, _ in HOSTILE]
)
def test_unsafe_archives_are_refused_and_write_nothing(
    state: State,
    tmp_path: Path,
    members: list[tuple[tarfile.TarInfo, bytes]],
    refusal: type[UnsafeArchiveError],
) -> None:
    offsite = tmp_path / "offsite"
    _forge(offsite / PARTITION, [(_info(GOOD[0]), GOOD[1]), *members], [GOOD])
    before = _tree(tmp_path.parent)
    assert not Path("/etc/x").exists()

    with pytest.raises(refusal) as raised:
        restore_backup(state.settings, PARTITION, target_dir=tmp_path / "restored")

    assert raised.value.exit_code == EXIT_UNSAFE_ARCHIVE
    assert _tree(tmp_path.parent) == before
    assert not Path("/etc/x").exists()
    problems = verify_backup(PARTITION, state.settings).problems
    assert refusal.kind in {problem.kind for problem in problems}


def test_dry_run_changes_nothing(state: State, tmp_path: Path) -> None:
    _backup(state)
    _write(state.home / "warehouse" / "late.txt", b"after the backup")
    before = _tree(tmp_path)

    result = restore_backup(state.settings, PARTITION, "all", dry_run=True)

    assert result.dry_run
    assert _tree(tmp_path) == before
    assert any(line.startswith(f"move {state.home / 'warehouse'} -> ") for line in result.plan)
    assert any(line.startswith(f"restore {state.home / 'mlflow'}") for line in result.plan)
    assert result.restored == [] and result.moved_aside == []


def _calendar_expectation(end: date, daily: int, weekly: int, monthly: int) -> set[date]:
    """For an unbroken run of daily backups the answer follows from the calendar alone."""
    keep = {end - timedelta(days=i) for i in range(daily)}
    for i in range(weekly):
        day = end - timedelta(weeks=i)
        keep.add(min(end, day + timedelta(days=7 - day.isoweekday())))
    year, month = end.year, end.month
    for _ in range(monthly):
        first_of_next = date(year + month // 12, month % 12 + 1, 1)
        keep.add(min(end, first_of_next - timedelta(days=1)))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return keep


def _brute_force(days: list[date], daily: int, weekly: int, monthly: int) -> set[date]:
    """Straight from the definition, comparing every backup with every other one."""

    week = {d: (d.isocalendar().year, d.isocalendar().week) for d in days}
    month = {d: (d.year, d.month) for d in days}

    def representative(d: date, period: dict[date, tuple[int, int]], count: int) -> bool:
        newest_in_period = all(o <= d for o in days if period[o] == period[d])
        newer_periods = {period[o] for o in days if period[o] > period[d]}
        return newest_in_period and len(newer_periods) < count

    return {
        d
        for d in days
        if sum(o > d for o in days) < daily
        or representative(d, week, weekly)
        or representative(d, month, monthly)
    }


def test_retention_over_400_days_keeps_exactly_the_expected_set() -> None:
    end = date(2026, 11, 27)
    days = [end - timedelta(days=i) for i in range(400)]
    for counts in [(7, 4, 12), (3, 8, 6), (0, 0, 13), (10, 0, 0)]:
        expected = _calendar_expectation(end, *counts)
        assert select_retained(days, *counts) == expected
        assert _brute_force(days, *counts) == expected
    rng = random.Random(7)
    sparse = sorted(rng.sample(days, 120))
    for counts in [(7, 4, 12), (2, 10, 3), (0, 1, 24)]:
        assert select_retained(sparse, *counts) == _brute_force(sparse, *counts)
    assert select_retained(days, 0, 0, 0, newest_verified=days[200]) == {days[200]}
    assert select_retained(days, 1, 0, 0, newest_verified=end + timedelta(days=1)) == {end}
    with pytest.raises(UsageError):
        select_retained(days, -1, 0, 0)


def test_apply_retention_deletes_old_and_keeps_newest_verified(state: State) -> None:
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(6)]
    for day in days:
        create_backup(
            state.settings, day.isoformat(), None, ("config",), dagster_yaml=state.dagster_yaml
        )
    offsite = Path(state.settings.backup_target)
    settings = state.settings.model_copy(
        update={"backup_keep_daily": 2, "backup_keep_weekly": 0, "backup_keep_monthly": 0}
    )

    assert apply_retention(settings, dry_run=True) == days[:4]
    assert list_backups(settings) == days
    assert apply_retention(settings) == days[:4]
    assert sorted(p.name for p in offsite.iterdir()) == [d.isoformat() for d in days[4:]]

    newest = offsite / days[-1].isoformat() / f"churn-backup-{days[-1]}.tar.gz"
    _flip(newest, 40)
    one_daily = settings.model_copy(update={"backup_keep_daily": 1})
    assert apply_retention(one_daily) == []
    _flip(offsite / days[-2].isoformat() / f"churn-backup-{days[-2]}.tar.gz", 40)
    with pytest.raises(VerificationError, match="no-verified-backup"):
        apply_retention(one_daily)


def _keep_writing(db: Path, stop: threading.Event, written: list[int]) -> None:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        while not stop.is_set():
            with conn:
                conn.execute(
                    "INSERT INTO runs (run_id, body) VALUES (?, ?)", ("live", os.urandom(4096))
                )
            written.append(1)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_snapshot_taken_while_another_thread_writes_passes_integrity_check(
    state: State, tmp_path: Path, journal: str
) -> None:
    db = state.home / "dagster/history/runs.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA journal_mode={journal}")
    stop, written = threading.Event(), []
    writer = threading.Thread(target=_keep_writing, args=(db, stop, written))
    writer.start()
    try:
        while len(written) < 100:
            stop.wait(0.01)
        result = _backup(state, components=("dagster",))
        during = len(written)
    finally:
        stop.set()
        writer.join()
    assert during > 100

    snapshot = tmp_path / "runs.db"
    snapshot.write_bytes(_member(Path(result.archive), "dagster/history/runs.db"))
    with closing(sqlite3.connect(snapshot)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] >= 150
    assert verify_backup(PARTITION, state.settings).ok
    idle = tmp_path / "idle.db"
    snapshot_sqlite(db, idle)
    assert len(_rows(idle, "runs")) == 50 + len(written)


def test_ops_log_written_during_backup_still_verifies_after_restore(
    state: State, tmp_path: Path
) -> None:
    ops = OpsLog(state.settings)
    stop, written = threading.Event(), []

    def keep_logging() -> None:
        while not stop.is_set():
            ops.event("backup.probe", "written while the backup copies the log")
            written.append(1)

    writer = threading.Thread(target=keep_logging)
    writer.start()
    try:
        while len(written) < 20:
            stop.wait(0.01)
        for _ in range(5):
            _backup(state, components=("logs",))
    finally:
        stop.set()
        writer.join()
        ops.close()

    restore_backup(state.settings, PARTITION, "logs", target_dir=tmp_path / "restored")
    report = verify_logs(tmp_path / "restored" / "logs")
    assert report.ok, report.to_dict()


def test_rerunning_a_partition_is_idempotent_and_atomic(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backup(state)
    second = _backup(state)
    offsite = Path(state.settings.backup_target)

    assert first.archive == second.archive
    assert [p.name for p in offsite.iterdir()] == [PARTITION]
    assert len(list((offsite / PARTITION).iterdir())) == 4  # archive, manifest, sig, sums
    assert verify_backup(PARTITION, state.settings).ok
    assert verify_backup(second.archive, state.settings).manifest == second.manifest
    published = _tree(offsite)

    def crash(source: Path, dest: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(archive, "snapshot_sqlite", crash)
    with pytest.raises(OSError, match="disk full"):
        _backup(state)
    assert _tree(offsite) == published


def test_usage_and_not_found_errors_carry_their_exit_codes(state: State) -> None:
    with pytest.raises(UsageError) as bad_date:
        create_backup(state.settings, "2026-02-30", None, dagster_yaml=state.dagster_yaml)
    assert bad_date.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError, match="golden"):
        _backup(state, golden={"predictions": object()})  # type: ignore[dict-item]
    with pytest.raises(UsageError):
        restore_backup(state.settings, PARTITION, "everything")
    with pytest.raises(BackupNotFoundError) as missing:
        restore_backup(state.settings, "2020-01-01")
    assert missing.value.exit_code == EXIT_NOT_FOUND
    _backup(state, components=("config",))
    with pytest.raises(BackupNotFoundError):
        restore_backup(state.settings, PARTITION, "mlflow")
    (state.home / "warehouse/customers/CURRENT").write_text("v-9\n")
    with pytest.raises(BackupError, match="v-9") as broken:
        _backup(state)
    assert broken.value.exit_code == EXIT_FAILED


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a private unix socket (the production MLflow backend)."""
    bin_dir = Path("/usr/lib/postgresql/15/bin")
    if not (bin_dir / "initdb").exists() or shutil.which("pg_dump") is None:
        pytest.skip("PostgreSQL 15 server binaries are not installed")
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="churn-pg-"))
    root.chmod(0o755)
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if run_as:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    password = root / "password"
    password.write_text("s3cr/t:pw\n")
    if run_as:
        shutil.chown(password, "postgres")
    quiet = {"check": True, "capture_output": True}
    initdb = [bin_dir / "initdb", "-D", data, "-U", "postgres", f"--pwfile={password}"]
    subprocess.run([*run_as, *initdb, "--auth=scram-sha-256", "--no-sync"], **quiet)
    options = f"-k {sockets} -c listen_addresses='' -c fsync=off"
    pg_ctl = [*run_as, bin_dir / "pg_ctl", "-D", data, "-l", root / "server.log"]
    subprocess.run([*pg_ctl, "-w", "-o", options, "start"], **quiet)
    try:
        yield f"postgresql://postgres:s3cr%2Ft%3Apw@/postgres?host={sockets}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(root)


def test_postgres_tracking_backend_is_dumped_with_pg_dump(
    state: State, tmp_path: Path, postgres: str
) -> None:
    with closing(psycopg2.connect(postgres)) as conn, conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE registered_models (name TEXT PRIMARY KEY)")
        cursor.execute("INSERT INTO registered_models VALUES (%s)", (MODEL,))
    settings = state.settings.model_copy(update={"mlflow_tracking_uri": postgres})

    components = ("mlflow", "config")
    result = create_backup(settings, PARTITION, None, components, dagster_yaml=state.dagster_yaml)

    paths = {entry["path"] for entry in result.manifest["files"]}
    assert "mlflow/mlflow.pgdump" in paths and "mlflow/mlflow.db" not in paths
    settings_json = _member(Path(result.archive), "config/settings.json").decode()
    assert "postgres:***@" in settings_json and "s3cr" not in settings_json
    restored = restore_backup(settings, PARTITION, "mlflow", target_dir=tmp_path / "restored")
    dump = tmp_path / "restored" / "mlflow" / "mlflow.pgdump"
    listing = subprocess.run(
        ["pg_restore", "--list", str(dump)], check=True, capture_output=True, text=True
    ).stdout
    assert "TABLE public registered_models" in listing
    assert any("pg_restore" in note for note in restored.notes)


def _sign_forgery(folder: Path) -> None:
    """Sign a forged manifest with the platform key, so only the check under test can refuse."""
    (manifest,) = folder.glob("*.manifest.json")
    signature = sign(manifest.read_bytes(), signing_key(SECRET))
    manifest.with_name(manifest.name.removesuffix(".json") + ".sig").write_text(signature)


def test_a_forged_manifest_with_recomputed_checksums_is_refused(
    state: State, tmp_path: Path
) -> None:
    archive = Path(_backup(state).archive)
    forged = b"an attacker's parquet"
    entries: list[dict[str, object]] = []

    def edit(members: list[tuple[tarfile.TarInfo, bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
        manifest = json.loads(dict((i.name, d) for i, d in members)[MANIFEST_MEMBER])
        for entry in manifest["files"]:
            if entry["path"] == PARQUET:
                entry.update(size=len(forged), sha256=_sha(forged))
        entries.append(manifest)
        manifest_bytes = json.dumps(manifest).encode()
        archive.with_name(archive.name + ".manifest.json").write_bytes(manifest_bytes)
        replaced = {PARQUET: forged, MANIFEST_MEMBER: manifest_bytes}
        return [(i, replaced.get(i.name, d)) for i, d in members]

    _rewrite(archive, edit)
    sums = archive.with_name(archive.name + ".sha256")
    manifest_name = f"{archive.name}.manifest.json"
    manifest_sha = _sha(archive.with_name(manifest_name).read_bytes())
    lines = [line for line in sums.read_text().splitlines() if not line.endswith(manifest_name)]
    sums.write_text("\n".join([f"{manifest_sha}  {manifest_name}", *lines]) + "\n")
    before = _tree(tmp_path)

    with pytest.raises(VerificationError, match="signature-mismatch") as raised:
        restore_backup(state.settings, PARTITION)

    assert [p.kind for p in raised.value.problems] == ["signature-mismatch"]
    assert _tree(tmp_path) == before


def test_a_manifest_without_signature_or_key_is_refused(state: State) -> None:
    archive = Path(_backup(state).archive)
    unkeyed = state.settings.model_copy(update={"pseudonym_key": SecretStr("")})
    shutil.rmtree(state.home / "secrets")
    assert {p.kind for p in verify_backup(PARTITION, unkeyed).problems} == {"unverifiable"}
    archive.with_name(archive.name + ".manifest.sig").unlink()
    (problem,) = verify_backup(PARTITION, state.settings).problems
    assert problem.kind == "missing" and problem.path.endswith(".manifest.sig")


def test_a_file_named_like_a_component_folder_never_replaces_it(
    state: State, tmp_path: Path
) -> None:
    offsite = tmp_path / "offsite"
    hostile = (_info("mlflow"), b"a plain file where the folder belongs")
    _forge(offsite / PARTITION, [hostile], [("mlflow", hostile[1])])
    _sign_forgery(offsite / PARTITION)
    before = _tree(state.home)

    with pytest.raises(VerificationError, match="component-mismatch"):
        restore_backup(state.settings, PARTITION, "mlflow")

    assert (state.home / "mlflow").is_dir() and _tree(state.home) == before


def test_restored_folders_keep_their_restrictive_modes(state: State, tmp_path: Path) -> None:
    (state.home / "incidents").chmod(0o700)
    (state.home / "warehouse" / "customers").chmod(0o700)
    (state.home / "dagster").chmod(0o750)
    _backup(state)

    restore_backup(state.settings, PARTITION, target_dir=tmp_path / "restored")

    for rel in ("incidents", "warehouse/customers", "dagster", "logs"):
        original = (state.home / rel).stat().st_mode & 0o777
        assert (tmp_path / "restored" / rel).stat().st_mode & 0o777 == original, rel
    # `config/` has no folder of its own in the state root: service group only, not 0755.
    assert (tmp_path / "restored" / "config").stat().st_mode & 0o777 == 0o750


def test_restore_target_that_is_a_file_is_a_usage_error(
    state: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _backup(state)
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("precious")
    for name, value in (("CHURN_HOME", state.home), ("CHURN_PSEUDONYM_KEY", SECRET)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("CHURN_BACKUP_TARGET", state.settings.backup_target)

    code = cli.main(["restore", "--partition", PARTITION, "--target", str(a_file)])

    assert code == EXIT_USAGE
    assert "is not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "precious"


def test_an_archive_may_not_expand_past_the_cap(state: State, tmp_path: Path) -> None:
    result = _backup(state)
    capped = state.settings.model_copy(update={"backup_max_expanded_bytes": result.bytes - 1})
    assert "too-large" in {p.kind for p in verify_backup(PARTITION, capped).problems}
    with pytest.raises(VerificationError, match="too-large"):
        restore_backup(capped, PARTITION, target_dir=tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_a_member_larger_than_listed_is_refused_unread(state: State, tmp_path: Path) -> None:
    offsite = tmp_path / "offsite"
    _forge(offsite / PARTITION, [(_info(GOOD[0]), b"\0" * 1_000_000)], [GOOD])
    _sign_forgery(offsite / PARTITION)
    problems = verify_backup(PARTITION, state.settings).problems
    assert [(p.path, p.kind, p.actual) for p in problems] == [(GOOD[0], "size-mismatch", "1000000")]


def test_a_killed_backup_or_restore_leaves_no_temporary_folder_behind(
    state: State, tmp_path: Path
) -> None:
    offsite, restored = tmp_path / "offsite", tmp_path / "restored"
    killed_backup = offsite / f".tmp-{PARTITION}-killed"
    killed_restore = restored / ".restore-killed"
    for folder in (killed_backup, killed_restore):
        _write(folder / OWNER, b"")  # its creator died, so nobody holds the lock
        _write(folder / "out" / "half.tar.gz", b"half")
    with owned_tempdir(offsite, f".tmp-{PARTITION}-") as running:
        _backup(state)
        restore_backup(state.settings, PARTITION, "config", target_dir=restored)
        assert running.is_dir()  # a live backup's folder is left alone
    assert not killed_backup.exists() and not killed_restore.exists()
    assert [p.name for p in offsite.iterdir()] == [PARTITION]


def test_logs_verify_reports_deleted_logs_from_the_backup_anchor(
    state: State, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _backup(state, components=("logs",))
    shutil.rmtree(state.home / "logs")
    shutil.rmtree(state.home / "anchors")
    shutil.rmtree(state.home / "incidents")  # the template's stub is no incident record
    for name, value in (("CHURN_HOME", state.home), ("CHURN_PSEUDONYM_KEY", SECRET)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("CHURN_BACKUP_TARGET", state.settings.backup_target)

    code = cli.main(["logs", "verify"])

    assert code == 3
    assert "chain anchor missing" in capsys.readouterr().out


def test_restoring_the_logs_re_anchors_them(state: State) -> None:
    _backup(state, components=("logs",))
    OpsLog(state.settings).event("training.completed", "after the backup")
    restore_backup(state.settings, PARTITION, "logs")
    assert verify_logs(state.settings.logs, anchor_path(state.settings)).ok
