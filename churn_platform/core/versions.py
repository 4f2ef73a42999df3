"""Versioned warehouse folders: each holds `v-...` versions and a `CURRENT` file naming the
published one. Readers that need no Spark and no Dagster (`score`, `top`, backups) find the
current version here; the IO manager (io_managers.py) writes them."""

from __future__ import annotations

from pathlib import Path

POINTER = "CURRENT"


def current_version(folder: Path) -> Path | None:
    """The version folder the pointer names, or None if nothing was published yet."""
    pointer = folder / POINTER
    if not pointer.is_file():
        return None
    version = folder / pointer.read_text().strip()
    return version if version.is_dir() else None
