"""v1, the naive read-modify-write: read the stock, check it in Python, write back the number computed,
insert the order, each its own autocommit statement. Two buyers who read the same stock both succeed;
under load this oversells, which is the point of having it."""

from __future__ import annotations

from typing import Any

from stampede import errors

from .base import BuyResult, Strategy, q


class NaiveReadModifyWrite(Strategy):
    name = "v1"

    async def buy(self, product: str, user: str, *, client_ip: str | None, request_id: str | None) -> BuyResult:
        async with self.connection() as conn:
            cur = await conn.execute(q("read_stock"), {"product_id": product})
            row = await cur.fetchone()
            if row is None:
                raise errors.SaleNotFound(product)
            stock = int(row[0])
            if stock < 1:
                raise errors.SoldOut(product, stock)
            await conn.execute(q("write_stock"), {"product_id": product, "stock": stock - 1})
            body = await self._insert_order(conn, product, user, None)
        return self._accepted(body)

    async def stats(self, product: str) -> dict[str, Any]:
        return await self._pg_stats(product)
