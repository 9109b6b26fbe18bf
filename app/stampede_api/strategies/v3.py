"""v3, Redis then a synchronous insert: the stock Lua script takes the unit atomically, then the request
waits for its own order INSERT. It never oversells; unlike the case study's version it gives the unit
back when the insert fails, so a failed write is not a ghost reservation. Its cost is one PostgreSQL
round trip and commit per buy."""

from __future__ import annotations

from typing import Any

from stampede import errors
from stampede.vocabulary import Dependency

from .base import BuyResult, Strategy, _stats, q


class RedisThenSyncInsert(Strategy):
    name = "v3"

    async def buy(self, product: str, user: str, *, client_ip: str | None, request_id: str | None) -> BuyResult:
        r = await self.b.stock.reserve(product, user, 1, client_ip=client_ip)
        try:
            async with self.pool.connection() as conn:
                body = await self._insert_order(conn, product, user, r.reservation_id)
        except Exception as exc:
            await self.b.stock.release(product, [r.reservation_id])
            raise errors.DependencyUnavailable(Dependency.POSTGRESQL, str(exc)) from exc
        await self.b.stock.confirm(product, [r.reservation_id])
        return self._accepted(body)

    async def stats(self, product: str) -> dict[str, Any]:
        snap = await self.b.stock.snapshot(product)
        async with self.connection() as conn:
            cur = await conn.execute(q("order_count"), {"product_id": product, "strategy": self.name})
            row = await cur.fetchone()
        return _stats(self.name, product, snap.total, snap.remaining, int(row[0]) if row else 0)
