"""v3, Redis then a synchronous insert: the stock Lua script takes the unit atomically, then the request
waits for its own order INSERT. It never oversells; unlike the case study's version it gives the unit
back when the insert fails, so a failed write is not a ghost reservation. Its cost is one PostgreSQL
round trip and commit per buy."""

from __future__ import annotations

from typing import Any

from stampede import errors, metrics

from .base import BuyResult, Strategy, _stats, q


class RedisThenSyncInsert(Strategy):
    name = "v3"

    async def buy(self, product: str, user: str, *, client_ip: str | None, request_id: str | None) -> BuyResult:
        r = await self.b.stock.reserve(product, user, 1, client_ip=client_ip)
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    q("insert_order"),
                    {"strategy": self.name, "product_id": product, "user_id": user, "ref": r.reservation_id},
                )
                order = await cur.fetchone()
        except Exception as exc:
            await self.b.stock.release(product, [r.reservation_id])
            raise errors.DependencyUnavailable("postgresql", str(exc)) from exc
        await self.b.stock.confirm(product, [r.reservation_id])
        metrics.API_STRATEGY_ACCEPTED.labels(self.name).inc()
        return BuyResult(201, {"orderId": str(order[0]) if order else None, "productId": product, "userId": user})

    async def stats(self, product: str) -> dict[str, Any]:
        snap = await self.b.stock.snapshot(product)
        async with self.connection() as conn:
            cur = await conn.execute(q("order_count"), {"product_id": product, "strategy": self.name})
            row = await cur.fetchone()
        return _stats(self.name, product, snap.total, snap.remaining, int(row[0]) if row else 0)
