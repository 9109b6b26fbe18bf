"""Typed settings from ``STAMPEDE_*`` environment variables, one frozen dataclass per process kind.

Each field documents itself through ``setting(...)``; ``load(cls)`` reads the environment once at
start-up and fails with an error that names the variable, so a bad deploy stops at boot, not at the
first buyer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

PREFIX = "STAMPEDE_"

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable is set to something its setting cannot take."""


def setting(default: Any, doc: str) -> Any:
    """A settings field with its documentation; the variable is ``STAMPEDE_<FIELD NAME>``."""
    return field(default=default, metadata={"doc": doc})


def _parse(name: str, raw: str, typ: Any) -> Any:
    try:
        if typ is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true/false")
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is tuple[str, ...]:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: {exc}") from None


def load(cls: type[T], env: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Builds ``cls`` from the environment (or ``env``); ``overrides`` win over both."""
    source = os.environ if env is None else env
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        var = PREFIX + f.name.upper()
        if var in source:
            values[f.name] = _parse(var, source[var], hints[f.name])
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def describe(cls: type[Any]) -> list[tuple[str, Any, str]]:
    """(variable, default, doc) for every setting of ``cls``: the source of the documented tables."""
    return [(PREFIX + f.name.upper(), f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise SettingsError(f"{PREFIX}{name.upper()} must be > 0, got {value}")


@dataclass(frozen=True)
class Common:
    """What every process needs to reach the shared state."""

    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis holding the hot counters")
    database_url: str = setting("postgresql://stampede@127.0.0.1:5432/stampede", "PostgreSQL ledger and queue")
    redis_max_connections: int = setting(64, "Redis connection pool size per process")
    db_pool_min: int = setting(1, "smallest PostgreSQL pool per process")
    db_pool_max: int = setting(8, "largest PostgreSQL pool per process")
    log_level: str = setting("INFO", "root log level")
    log_json: bool = setting(True, "structured JSON logs (false: plain text for a terminal)")

    def validate(self) -> None:
        _positive("redis_max_connections", self.redis_max_connections)
        _positive("db_pool_max", self.db_pool_max)
        if self.db_pool_min > self.db_pool_max:
            raise SettingsError("STAMPEDE_DB_POOL_MIN must not exceed STAMPEDE_DB_POOL_MAX")
        for var, url, schemes in (
            ("STAMPEDE_REDIS_URL", self.redis_url, ("redis://", "rediss://", "unix://")),
            ("STAMPEDE_DATABASE_URL", self.database_url, ("postgresql://", "postgres://")),
        ):
            if not url.startswith(schemes):
                raise SettingsError(f"{var}={url!r}: expected a URL starting with {' or '.join(schemes)}")


@dataclass(frozen=True)
class StockSettings(Common):
    """The stock engine on its own (the burst command, benchmarks)."""


@dataclass(frozen=True)
class WorkerSettings(Common):
    """The procrastinate worker that settles batches (filled in by the worker's needs)."""


@dataclass(frozen=True)
class ApiSettings(Common):
    """The Falcon buy API under gunicorn (filled in by the API's needs)."""


@dataclass(frozen=True)
class OperatorSettings(Common):
    """The kopf operator (filled in by the operator's needs)."""
