"""Test-only reach into the stores behind ``Ledger`` and ``StockEngine``.

Production code never touches a Ledger's pool or a StockEngine's client (tests/core/test_owners.py fails
if it does); a test that must look at, or break, the store underneath goes through here, so every such
reach is named and found in one place.
"""

from __future__ import annotations

from typing import Any

import psycopg_pool

from stampede.ledger import Ledger
from stampede.stock import Client, StockEngine


def ledger_pool(ledger: Ledger) -> psycopg_pool.AsyncConnectionPool:
    """The ledger's own connection pool."""
    pool: psycopg_pool.AsyncConnectionPool = ledger._pool
    return pool


def redis_client(stock: StockEngine) -> Client:
    """The stock engine's own Redis client."""
    return stock._client


def redis_bytes(value: bytes | str | None) -> bytes:
    """A value read through ``redis_client``: bytes, as the engine's client does not decode responses
    (redis-py types every reply ``bytes | str`` whatever the client's setting)."""
    assert isinstance(value, bytes), value
    return value


def set_redis_client(stock: StockEngine, client: Any) -> None:
    """Puts ``client`` (a wrapper that breaks some command) under the engine."""
    stock._client = client
