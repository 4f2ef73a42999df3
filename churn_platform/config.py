"""The dataset spec: a YAML file that tells the platform how to read any customer table."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FORMATS = ("csv", "parquet", "jdbc")


class SpecError(ValueError):
    """The dataset spec is invalid; the message names the file and the offending key."""


@dataclass(frozen=True)
class SourceSpec:
    """One input table; every source is joined on the spec's id column."""

    name: str
    format: str
    path: str | None = None
    url: str | None = None
    table: str | None = None
    user: str | None = None
    password_env: str | None = None
    delimiter: str = ","

    def password(self) -> str | None:
        """The JDBC password, read from the environment only (never from the spec file)."""
        if not self.password_env:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise SpecError(
                f"source {self.name!r}: environment variable {self.password_env} is not set"
            )
        return value

    @property
    def location(self) -> str:
        """Where the data comes from, safe to log (no credentials)."""
        if self.format == "jdbc":
            return f"{_strip_credentials(self.url or '')}#{self.table}"
        return str(self.path)


@dataclass(frozen=True)
class TargetSpec:
    column: str
    positive: str
    negative: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A customer table described as data, so a new dataset needs a YAML file and no code."""

    name: str
    sources: tuple[SourceSpec, ...]
    id_column: str
    target: TargetSpec
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    engineered: tuple[str, ...] = ()
    test_fraction: float = 0.2
    folds: int = 5
    seed: int = 42
    spec_file: str = ""
    spec_sha256: str = field(default="", compare=False)

    @property
    def model_name(self) -> str:
        return f"churn-{self.name}"

    @property
    def declared_columns(self) -> tuple[str, ...]:
        """Every column the spec names; all are required in the input."""
        names = [self.id_column, self.target.column, *self.categorical, *self.numeric, *self.drop]
        return tuple(dict.fromkeys(names))

    @property
    def roles_declared(self) -> bool:
        return bool(self.categorical or self.numeric)


def _strip_credentials(url: str) -> str:
    return re.sub(r"(password|user)=[^&;]*", r"\1=***", url, flags=re.IGNORECASE)


def _expand(value: str, base_dir: Path, home: Path) -> str:
    expanded = os.path.expandvars(value.replace("${CHURN_HOME}", str(home)))
    if "://" in expanded or expanded.startswith("jdbc:"):
        return expanded
    path = Path(expanded).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def _names(raw: dict[str, Any], key: str, spec_file: Path) -> tuple[str, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{spec_file}: '{key}' must be a list of column names")
    return tuple(value)


def load_spec(spec_file: Path, home: Path) -> DatasetSpec:
    """Read and validate a dataset spec; relative paths are relative to the spec file."""
    spec_file = Path(spec_file)
    if not spec_file.is_file():
        raise SpecError(f"dataset spec not found: {spec_file}")
    text = spec_file.read_bytes()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{spec_file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{spec_file}: the spec must be a mapping")
    for key in ("name", "sources", "id_column", "target"):
        if key not in raw:
            raise SpecError(f"{spec_file}: missing required key '{key}'")
    name = str(raw["name"])
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise SpecError(f"{spec_file}: name {name!r} may hold only letters, digits, '-' and '_'")

    sources = []
    for i, src in enumerate(raw["sources"] or []):
        if not isinstance(src, dict) or "name" not in src or "format" not in src:
            raise SpecError(f"{spec_file}: sources[{i}] needs 'name' and 'format'")
        fmt = src["format"]
        if fmt not in FORMATS:
            raise SpecError(f"{spec_file}: sources[{i}].format {fmt!r} is not one of {FORMATS}")
        if fmt == "jdbc":
            for key in ("url", "table"):
                if not src.get(key):
                    raise SpecError(f"{spec_file}: jdbc source {src['name']!r} needs '{key}'")
            if "password" in src:
                raise SpecError(
                    f"{spec_file}: source {src['name']!r} holds a password; "
                    "name an environment variable with 'password_env' instead"
                )
        elif not src.get("path"):
            raise SpecError(f"{spec_file}: {fmt} source {src['name']!r} needs 'path'")
        path = _expand(str(src["path"]), spec_file.parent, home) if src.get("path") else None
        sources.append(
            SourceSpec(
                name=str(src["name"]),
                format=fmt,
                path=path,
                url=src.get("url"),
                table=src.get("table"),
                user=src.get("user"),
                password_env=src.get("password_env"),
                delimiter=str(src.get("delimiter", ",")),
            )
        )
    if not sources:
        raise SpecError(f"{spec_file}: 'sources' must list at least one source")

    target = raw["target"]
    if not isinstance(target, dict) or "column" not in target or "positive" not in target:
        raise SpecError(f"{spec_file}: 'target' needs 'column' and 'positive'")
    spec = DatasetSpec(
        name=name,
        sources=tuple(sources),
        id_column=str(raw["id_column"]),
        target=TargetSpec(
            column=str(target["column"]),
            positive=str(target["positive"]),
            negative=None if target.get("negative") is None else str(target["negative"]),
        ),
        categorical=_names(raw, "categorical", spec_file),
        numeric=_names(raw, "numeric", spec_file),
        drop=_names(raw, "drop", spec_file),
        engineered=_names(raw, "engineered", spec_file),
        test_fraction=float(raw.get("test_fraction", 0.2)),
        folds=int(raw.get("folds", 5)),
        seed=int(raw.get("seed", 42)),
        spec_file=str(spec_file.resolve()),
        spec_sha256=hashlib.sha256(text).hexdigest(),
    )
    overlap = set(spec.categorical) & set(spec.numeric)
    if overlap:
        raise SpecError(f"{spec_file}: columns both categorical and numeric: {sorted(overlap)}")
    if not 0 < spec.test_fraction < 1:
        raise SpecError(f"{spec_file}: test_fraction must be between 0 and 1")
    if spec.folds < 2:
        raise SpecError(f"{spec_file}: folds must be at least 2")
    return spec
