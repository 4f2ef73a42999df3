"""Backups survive the trip through their storage: encrypted at rest, and to S3 and back."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.fernet import Fernet
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from churn_platform.core.backup import storage
from churn_platform.core.backup.archive import create_backup
from churn_platform.core.backup.errors import EXIT_VERIFICATION_FAILED, DecryptionError, UsageError
from churn_platform.core.backup.members import PSEUDONYM_KEY_FILE
from churn_platform.core.backup.restore import restore_backup
from churn_platform.core.backup.retention import apply_retention, list_backups
from churn_platform.core.backup.storage import KEY_ENV
from churn_platform.core.backup.verify import verify_backup
from churn_platform.settings import Settings

# The state-root fixtures (a copied template with a real MLflow registry) are shared with
# test_backup.py; pytest finds them by name.
from churn_platform_tests.test_backup import (
    PARTITION,
    State,
    _backup,
    _registry,
    _sha,
    state_fixture,  # noqa: F401  (fixture "state")
    template_fixture,  # noqa: F401  (fixture "template")
)


def _keyed(state: State, key: bytes | None) -> Settings:
    """The state's settings with CHURN_BACKUP_KEY set to `key` (None: unset)."""
    value = SecretStr(key.decode()) if key else None
    return state.settings.model_copy(update={"backup_key": value})


def test_encrypted_round_trip_and_wrong_key_refused(state: State, tmp_path: Path) -> None:
    keyed = _keyed(state, Fernet.generate_key())
    result = _backup(dataclasses.replace(state, settings=keyed))
    archive = Path(result.archive)

    assert archive.name == f"churn-backup-{PARTITION}.tar.gz.enc"
    assert not archive.read_bytes().startswith(b"\x1f\x8b")
    restored = restore_backup(keyed, PARTITION, target_dir=tmp_path / "a")
    assert restored.files == len(result.manifest["files"])
    key = tmp_path / "a" / PSEUDONYM_KEY_FILE
    assert key.read_bytes() == (state.home / PSEUDONYM_KEY_FILE).read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    for entry in result.manifest["files"]:
        assert _sha((tmp_path / "a" / entry["path"]).read_bytes()) == entry["sha256"]

    with pytest.raises(DecryptionError) as wrong:
        restore_backup(_keyed(state, Fernet.generate_key()), PARTITION, target_dir=tmp_path / "b")
    assert wrong.value.exit_code == EXIT_VERIFICATION_FAILED
    assert "wrong key" in str(wrong.value)
    assert not (tmp_path / "b").exists()
    with pytest.raises(UsageError, match=KEY_ENV):
        verify_backup(PARTITION, _keyed(state, None))


def test_chunked_encryption_detects_truncation_and_reordering(tmp_path: Path) -> None:
    fernet = Fernet(Fernet.generate_key())
    plain, sealed, out = tmp_path / "plain", tmp_path / "sealed", tmp_path / "out"
    plain.write_bytes(os.urandom(2 * (1 << 20) + 123))
    storage.encrypt_file(plain, sealed, fernet)
    storage.decrypt_file(sealed, out, fernet)
    assert out.read_bytes() == plain.read_bytes()

    data = sealed.read_bytes()
    header = len(storage._MAGIC) + storage._STREAM_ID
    chunks, offset = [], header
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        chunks.append(data[offset : offset + 4 + length])
        offset += 4 + length
    assert len(chunks) == 3
    for forged in (data[:header] + b"".join(chunks[:2]), data[:header] + chunks[1] + chunks[0]):
        sealed.write_bytes(forged)
        with pytest.raises(DecryptionError):
            storage.decrypt_file(sealed, out, fernet)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A moto S3 server: its client and its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ]:
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="churn-backups")
    try:
        yield client, endpoint
    finally:
        server.stop()


def test_s3_target_round_trip(state: State, tmp_path: Path, s3: tuple[Any, str]) -> None:
    client, endpoint = s3
    settings = state.settings.model_copy(
        update={"backup_target": "s3://churn-backups/prod", "backup_s3_endpoint": endpoint}
    )
    registry = _registry(state.home / "mlflow" / "mlflow.db")

    result = create_backup(settings, PARTITION, None, dagster_yaml=state.dagster_yaml)

    prefix = f"s3://churn-backups/prod/{PARTITION}/"
    assert result.archive == f"{prefix}churn-backup-{PARTITION}.tar.gz"
    listed = client.list_objects_v2(Bucket="churn-backups", Prefix="prod/")
    names = sorted(item["Key"].rsplit("/", 1)[1] for item in listed["Contents"])
    archive = f"churn-backup-{PARTITION}.tar.gz"
    assert names == [
        archive,
        f"{archive}.manifest.json",
        f"{archive}.manifest.sig",
        f"{archive}.sha256",
    ]
    assert not settings.backups.exists() or not list(settings.backups.iterdir())
    assert verify_backup(PARTITION, settings).ok
    assert list_backups(settings) == [date.fromisoformat(PARTITION)]

    shutil.rmtree(state.home)
    restore_backup(settings, PARTITION, target_dir=tmp_path / "restored")
    assert _registry(tmp_path / "restored" / "mlflow" / "mlflow.db") == registry
    assert apply_retention(settings, dry_run=True) == []
