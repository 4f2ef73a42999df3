"""The dataset spec: a YAML file that tells the platform how to read any customer table.

A pydantic schema validates it: unknown keys (a misspelt `categorial:`) and wrong types
(`folds: 2.9`, `folds: five`) are errors naming the file and the key, never silently ignored
or coerced. An unquoted `positive: Yes` is YAML's boolean true, not the label the user wrote,
so a boolean label is refused with a request to quote it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from churn_platform.core.ops.privacy import redact_url
from churn_platform.settings import Settings

_SCHEMA = ConfigDict(extra="forbid", frozen=True)
Names = tuple[StrictStr, ...]


class SpecError(ValueError):
    """The dataset spec is invalid; the message names the file and the offending key."""


@dataclass(config=_SCHEMA)
class SourceSpec:
    """One input table; every source is joined on the spec's id column."""

    name: StrictStr
    format: Literal["csv", "parquet", "jdbc"]
    path: StrictStr | None = None
    url: StrictStr | None = None
    table: StrictStr | None = None
    user: StrictStr | None = None
    password_env: StrictStr | None = None
    delimiter: StrictStr = ","
    # The value of the variable `password_env` names, set by `load_spec`, never by the file.
    password_value: SecretStr | None = dataclasses.field(default=None, repr=False, compare=False)

    @model_validator(mode="before")
    @classmethod
    def _password_from_environ(cls, data: Any, info: ValidationInfo) -> Any:
        """No password in the file; `password_env`'s value from the environment `load_spec` got."""
        if not isinstance(data, dict):
            return data
        if {"password", "password_value"} & data.keys():
            raise ValueError(
                f"source {data.get('name')!r} holds a password; "
                "name an environment variable with 'password_env' instead"
            )
        name, environ = data.get("password_env"), (info.context or {}).get("environ", {})
        if isinstance(name, str) and name in environ:
            return {**data, "password_value": environ[name]}
        return data

    @field_validator("path")
    @classmethod
    def _expand_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Relative to the spec file, `${CHURN_HOME}` to the state root (when loaded from one)."""
        if value is None or not info.context:
            return value
        context = info.context
        return _expand(value, context["base_dir"], context["home"], context["environ"])

    @model_validator(mode="after")
    def _location_given(self) -> SourceSpec:
        needed = ("url", "table") if self.format == "jdbc" else ("path",)
        for key in needed:
            if not getattr(self, key):
                raise ValueError(f"{self.format} source {self.name!r} needs '{key}'")
        return self

    def password(self) -> str | None:
        """The JDBC password, from the environment only (never from the spec file)."""
        if not self.password_env:
            return None
        if self.password_value is None:
            raise SpecError(
                f"source {self.name!r}: environment variable {self.password_env} is not set"
            )
        return self.password_value.get_secret_value()

    @property
    def location(self) -> str:
        """Where the data comes from, safe to record anywhere (credentials masked)."""
        if self.format == "jdbc":
            return f"{redact_url(self.url or '')}#{self.table}"
        return str(self.path)


@dataclass(config=_SCHEMA)
class TargetSpec:
    column: StrictStr
    positive: str
    negative: str | None = None

    @field_validator("positive", "negative", mode="before")
    @classmethod
    def _label_as_written(cls, value: Any) -> Any:
        return _as_written(value)


def _as_written(value: Any) -> Any:
    """Integer labels (`positive: 1`) read as written; booleans are YAML guessing."""
    if isinstance(value, bool):
        raise ValueError(
            f"YAML reads an unquoted {value} (Yes/No/true/false/on/off) as a boolean; "
            "quote the label as it appears in the data, e.g. positive: 'Yes'"
        )
    return str(value) if isinstance(value, int) else value


@dataclass(config=_SCHEMA)
class ScorePopulationSpec:
    """Who is scored: the customers whose `column` holds one of `values` (say, status: active).

    Without it the scored customers are those whose target is the negative class or absent.
    """

    column: StrictStr
    values: Annotated[tuple[StrictStr, ...], Field(min_length=1)]

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_written(cls, value: Any) -> Any:
        """Numbers read as written (`values: [1]`); booleans are YAML guessing, as for labels."""
        if isinstance(value, list | tuple):
            return tuple(_as_written(v) for v in value)
        return value


@dataclass(config=_SCHEMA)
class DatasetSpec:
    """A customer table described as data, so a new dataset needs a YAML file and no code."""

    name: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_\-]+$")]
    sources: tuple[SourceSpec, ...]
    id_column: StrictStr
    target: TargetSpec
    categorical: Names = ()
    numeric: Names = ()
    drop: Names = ()
    engineered: Names = ()
    test_fraction: Annotated[float, Field(strict=True, gt=0, lt=1)] = 0.2
    folds: Annotated[int, Field(strict=True, ge=2)] = 5
    seed: StrictInt = 42
    score_population: ScorePopulationSpec | None = None
    # Plausible values of numeric columns, `{column: [low, high]}` (either may be null): a value
    # outside is quarantined as `out_of_range`, like a non-finite number.
    ranges: dict[StrictStr, tuple[float | None, float | None]] = dataclasses.field(
        default_factory=dict
    )
    spec_file: str = ""
    spec_sha256: str = dataclasses.field(default="", compare=False)

    @model_validator(mode="after")
    def _roles_consistent(self) -> DatasetSpec:
        if not self.sources:
            raise ValueError("'sources' must list at least one source")
        overlap = set(self.categorical) & set(self.numeric)
        if overlap:
            raise ValueError(f"columns both categorical and numeric: {sorted(overlap)}")
        for role in ("categorical", "numeric"):
            for column, what in ((self.target.column, "target"), (self.id_column, "id column")):
                if column in getattr(self, role):
                    raise ValueError(
                        f"'{role}' lists {column!r}, the {what}: a model trained on it scores "
                        "perfectly in tests and cannot score new customers (target leakage)"
                    )
        if self.score_population is not None:
            self._check_population(self.score_population)
        for column, (low, high) in self.ranges.items():
            if self.roles_declared and column not in self.numeric:
                raise ValueError(f"'ranges' names {column!r}, which is not a 'numeric' column")
            if low is not None and high is not None and low > high:
                raise ValueError(f"'ranges' of {column!r}: low {low} is above high {high}")
        return self

    def _check_population(self, rule: ScorePopulationSpec) -> None:
        """The rule's column must reach the cleaned layer: a feature column or the target."""
        column = rule.column
        if column == self.id_column or column in self.drop:
            where = "the id column" if column == self.id_column else "dropped ('drop')"
            raise ValueError(f"'score_population' column {column!r} is {where}")
        if column == self.target.column:
            labels = {self.target.positive, self.target.negative} - {None}
            unknown = [v for v in rule.values if v not in labels]
            if unknown and self.target.negative is not None:
                raise ValueError(
                    f"'score_population' values {unknown} are not target labels {sorted(labels)}"
                )
        elif self.roles_declared and column not in (*self.categorical, *self.numeric):
            raise ValueError(
                f"'score_population' column {column!r} is not in 'categorical' or 'numeric' "
                "(only those and the target reach the cleaned layer)"
            )

    @property
    def model_name(self) -> str:
        return f"churn-{self.name}"

    @property
    def declared_columns(self) -> tuple[str, ...]:
        """Every column the spec names; all are required in the input."""
        names = [self.id_column, self.target.column, *self.categorical, *self.numeric, *self.drop]
        return tuple(dict.fromkeys(names))

    @property
    def scoring_columns(self) -> tuple[str, ...]:
        """The columns a file to score must have: the declared ones but the target and drops."""
        return tuple(c for c in self.declared_columns if c not in (self.target.column, *self.drop))

    @property
    def roles_declared(self) -> bool:
        return bool(self.categorical or self.numeric)


_KEYS = sorted(
    {
        f.name
        for cls in (DatasetSpec, SourceSpec, TargetSpec, ScorePopulationSpec)
        for f in dataclasses.fields(cls)
    }
    - {"spec_file", "spec_sha256", "password_value"}
)


def _expand(value: str, base_dir: Path, home: Path, environ: Mapping[str, str]) -> str:
    """`${CHURN_HOME}` is the state root; other `$VAR`s come from `environ`, unknown ones stay."""
    expanded = Template(value.replace("${CHURN_HOME}", str(home))).safe_substitute(environ)
    if "://" in expanded or expanded.startswith("jdbc:"):
        return expanded
    path = Path(expanded).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def _describe(error: Any) -> str:
    """One pydantic error as `key 'sources[0].delimeter': unknown key; did you mean ...`."""
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        close = difflib.get_close_matches(str(error["loc"][-1]), _KEYS, n=1)
        message = "unknown key" + (f"; did you mean '{close[0]}'?" if close else "")
    elif error["type"] == "missing":
        message = "missing required key"
    else:
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] != "value_error":
            message += f" (got {error['input']!r})"
    return f"key '{key}': {message}" if key else message


def load_spec(spec_file: Path, home: Path, environ: Mapping[str, str] | None = None) -> DatasetSpec:
    """Read and validate a dataset spec; relative paths are relative to the spec file.

    `environ` holds the variables the spec may name (a JDBC source's `password_env`, `$VAR` in
    paths): the settings' environment (`platform_spec`), none by default.
    """
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
    for key in ("spec_file", "spec_sha256"):
        if key in raw:
            raise SpecError(f"{spec_file}: key '{key}': unknown key (the platform sets it)")
    raw |= {"spec_file": str(spec_file.resolve()), "spec_sha256": hashlib.sha256(text).hexdigest()}
    try:
        return TypeAdapter(DatasetSpec).validate_python(
            raw, context={"base_dir": spec_file.parent, "home": home, "environ": environ or {}}
        )
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise SpecError(f"{spec_file}: {problems}") from None


def platform_spec(settings: Settings) -> DatasetSpec:
    """The dataset spec the settings name, read with the settings' environment."""
    return load_spec(settings.spec_path, settings.home, settings.environ)
