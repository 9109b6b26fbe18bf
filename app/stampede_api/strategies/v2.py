"""v2, the guarded UPDATE: ``UPDATE … SET stock = stock - 1 WHERE stock >= 1`` and the order insert in
one transaction. PostgreSQL's row lock serialises buyers, so it never oversells, at the price of every
buy waiting on the same hot row."""

from __future__ import annotations

from typing import Any

from stampede import errors

from .base import BuyResult, Strategy, q


class GuardedUpdate(Strategy):
    name = "v2"

    async def buy(self, product: str, user: str, *, client_ip: str | None, request_id: str | None) -> BuyResult:
        async with self.connection() as conn, conn.transaction():
            cur = await conn.execute(q("take_one"), {"product_id": product})
            if await cur.fetchone() is None:
                cur = await conn.execute(q("product_exists"), {"product_id": product})
                if await cur.fetchone() is None:
                    raise errors.SaleNotFound(product)
                raise errors.SoldOut(product, 0)
            body = await self._insert_order(conn, product, user, None)
        return self._accepted(body)

    async def stats(self, product: str) -> dict[str, Any]:
        return await self._pg_stats(product)
