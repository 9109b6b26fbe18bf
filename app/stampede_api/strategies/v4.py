"""v4, the production path: the same buy as ``POST /v1/sales/{sale}/reservations`` (Redis Lua, then the
durable micro-batch with its settle job), with the product as the sale and the body's user as the
buyer. What it accepted is what the ledger holds."""

from __future__ import annotations

from typing import Any

from stampede_api import metrics
from stampede_api.purchase import buy

from .base import BuyResult, Strategy, _stats


class RedisDurableBatch(Strategy):
    name = "v4"

    async def buy(self, product: str, user: str, *, client_ip: str | None, request_id: str | None) -> BuyResult:
        p = await buy(
            self.b.reserver or self.b.stock,
            self.b.batcher,
            self.b.ledger,
            sale=product,
            user=user,
            quantity=1,
            idempotency_key=None,
            client_ip=client_ip,
            request_id=request_id,
            replay_wait_ms=self.b.replay_wait_ms,
            retry_after_s=self.b.retry_after_s,
            engine=self.b.stock,
        )
        metrics.API_STRATEGY_ACCEPTED.labels(self.name).inc()
        return BuyResult(202, {"reservation_id": p.reservation_id, "status": p.status, "productId": product})

    async def stats(self, product: str) -> dict[str, Any]:
        snap = await self.b.stock.snapshot(product)
        counts = await self.b.ledger.counts(product)
        accepted = sum(int(v) for v in counts.values())
        out = _stats(self.name, product, snap.total, snap.remaining, accepted)
        out["ledger"] = dict(counts)
        return out
