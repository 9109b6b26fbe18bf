"""Typed settings from ``STAMPEDE_*`` environment variables, the ``Common`` dataclass every process kind extends
(each component defines its own beside its code: ``stampede_api.settings``, ``stampede_worker.settings``,
``stampede_operator.settings``).

Each field documents itself through ``setting(...)``; ``load(cls)`` reads the environment once at
start-up and fails with an error that names the variable, so a bad deploy stops at boot, not at the
first buyer.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

from .redact import redact_url, scrub
from .redis_url import SCHEMES as REDIS_SCHEMES
from .redis_url import is_cluster

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
        raise SettingsError(f"{name}={scrub(raw)!r}: {scrub(str(exc))}") from None


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


def _url_problem(var: str, url: str) -> str | None:
    """What the client library would refuse in ``url`` when it first connects, found at start-up instead
    (its own message may quote the whole URL: the caller scrubs it)."""
    try:
        if var == "STAMPEDE_DATABASE_URL":
            from psycopg.conninfo import conninfo_to_dict

            conninfo_to_dict(url)
        else:
            from redis.connection import parse_url

            from .redis_url import client_url, cluster_problem, is_cluster

            if is_cluster(url) and (problem := cluster_problem(url)):
                return problem
            parse_url(client_url(url))  # type: ignore[no-untyped-call]
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


def positive(name: str, value: float) -> None:
    """SettingsError naming ``STAMPEDE_<NAME>`` unless ``value`` is above zero (every component's check)."""
    if value <= 0:
        raise SettingsError(f"{PREFIX}{name.upper()} must be > 0, got {value}")


@dataclass(frozen=True)
class Common:
    """What every process needs to reach the shared state."""

    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis holding the hot counters; redis+cluster://host:port (rediss+cluster:// with TLS) for a Redis Cluster",
    )
    database_url: str = setting("postgresql://stampede@127.0.0.1:5432/stampede", "PostgreSQL ledger and queue")
    redis_max_connections: int = setting(64, "Redis connection pool size per process")
    redis_ack_replicas: int = setting(
        -1,
        "replicas that must hold a reservation (Redis WAIT) before it is written to the ledger and answered 202; "
        "-1: 1 on a Redis Cluster, 0 on a single Redis",
    )
    redis_ack_timeout_ms: int = setting(1000, "how long a reserve waits for those replicas before answering 503")
    db_pool_min: int = setting(1, "smallest PostgreSQL pool per process")
    db_pool_max: int = setting(8, "largest PostgreSQL pool per process")
    db_timeout_s: float = setting(5.0, "seconds to wait for a PostgreSQL connection before answering 'unavailable'")
    settle_shards: int = setting(4, "shards of a sale's pending rows: at most this many settle jobs wait per sale")
    log_level: str = setting("INFO", "root log level")
    log_json: bool = setting(True, "structured JSON logs (false: plain text for a terminal)")

    @property
    def ack_replicas(self) -> int:
        """``redis_ack_replicas`` resolved: -1 means 1 on a Redis Cluster (whose failover promotes a replica,
        which must then hold every reservation a buyer was told about) and 0 on a single Redis."""
        if self.redis_ack_replicas >= 0:
            return self.redis_ack_replicas
        return 1 if is_cluster(self.redis_url) else 0

    def validate(self) -> None:
        positive("redis_max_connections", self.redis_max_connections)
        positive("redis_ack_timeout_ms", self.redis_ack_timeout_ms)
        if self.redis_ack_replicas < -1:
            raise SettingsError(f"STAMPEDE_REDIS_ACK_REPLICAS must be >= -1, got {self.redis_ack_replicas}")
        positive("db_pool_max", self.db_pool_max)
        positive("db_timeout_s", self.db_timeout_s)
        positive("settle_shards", self.settle_shards)
        if self.settle_shards > 1000:
            raise SettingsError(f"STAMPEDE_SETTLE_SHARDS must be <= 1000, got {self.settle_shards}")
        if self.db_pool_min > self.db_pool_max:
            raise SettingsError("STAMPEDE_DB_POOL_MIN must not exceed STAMPEDE_DB_POOL_MAX")
        for var, url, schemes in (
            ("STAMPEDE_REDIS_URL", self.redis_url, REDIS_SCHEMES),
            ("STAMPEDE_DATABASE_URL", self.database_url, ("postgresql://", "postgres://")),
        ):
            # Every message about a URL shows it without its password.
            if not url.startswith(schemes):
                raise SettingsError(f"{var}={redact_url(url)!r}: expected a URL starting with {' or '.join(schemes)}")
            problem = _url_problem(var, url)
            if problem:
                raise SettingsError(f"{var}={redact_url(url)!r}: {scrub(problem)}")
