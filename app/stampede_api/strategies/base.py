"""What every demonstration strategy is: a buy and a count of what it accepted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from stampede import errors, pgerrors
from stampede.ledger import Ledger
from stampede.stock import StockEngine
from stampede_api import metrics
from stampede_api.batcher import Batcher
from stampede_api.purchase import Reserver
from stampede_api.strategies.schema import queries


def q(name: str) -> str:
    return queries()[name]


@dataclass
class Backends:
    pool: AsyncConnectionPool | None
    stock: StockEngine
    ledger: Ledger
    batcher: Batcher
    replay_wait_ms: int = 1000
    retry_after_s: int = 1
    reserver: Reserver | None = None  # the process's ReserveCoalescer (v4); the StockEngine when None


@dataclass(frozen=True, slots=True)
class BuyResult:
    status: int  # 201 order written, 202 reservation durable (v4)
    body: dict[str, Any]


class Strategy:
    name = "v0"

    def __init__(self, backends: Backends) -> None:
        self.b = backends

    @property
    def pool(self) -> AsyncConnectionPool:
        if self.b.pool is None:
            raise RuntimeError("this strategy needs the PostgreSQL pool")
        return self.b.pool

    async def buy(self, product: str, user: str, *, client_ip: str | None, request_id: str | None) -> BuyResult:
        raise NotImplementedError

    async def stats(self, product: str) -> dict[str, Any]:
        raise NotImplementedError

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; losing PostgreSQL is DependencyUnavailable (503), as on the real path."""
        with pgerrors.mapped():
            async with self.pool.connection() as conn:
                yield conn

    async def _insert_order(
        self, conn: psycopg.AsyncConnection[Any], product: str, user: str, ref: str | None
    ) -> dict[str, Any]:
        """Writes the order row every strategy ends with; returns the 201 body."""
        cur = await conn.execute(
            q("insert_order"), {"strategy": self.name, "product_id": product, "user_id": user, "ref": ref}
        )
        order = await cur.fetchone()
        return {"orderId": str(order[0]) if order else None, "productId": product, "userId": user}

    def _accepted(self, body: dict[str, Any]) -> BuyResult:
        metrics.API_STRATEGY_ACCEPTED.labels(self.name).inc()
        return BuyResult(201, body)

    async def _pg_stats(self, product: str) -> dict[str, Any]:
        async with self.connection() as conn:
            cur = await conn.execute(q("stats"), {"product_id": product, "strategy": self.name})
            row = await cur.fetchone()
        if row is None:
            raise errors.SaleNotFound(product)
        initial, stock, accepted = int(row[0]), int(row[1]), int(row[2])
        return _stats(self.name, product, initial, stock, accepted)


def _stats(strategy: str, product: str, initial: int, stock: int, accepted: int) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "productId": product,
        "initial": initial,
        "stock": stock,
        "accepted": accepted,
        "oversold": max(0, accepted - initial),
    }
