"""``GET /v1/sales/{sale}``: the sale's phase and live counts, read atomically from Redis.

The phase uses the FlashSale's vocabulary, read from Redis alone: ``Live`` (open, units left),
``SoldOut``, ``Scheduled`` (not open, nothing reserved yet) or ``Ended`` (closed after taking
reservations). The operator's FlashSale status stays the authority on the lifecycle (windows, drift).
A sale Redis lost but the ledger knows answers 503 with Retry-After while it is restored, never 404.

Anyone may read it, without a token, so each client address has a token bucket of reads in the process
(429 with Retry-After past it): a flood from one address costs no Redis round trip beyond its bucket.
"""

from __future__ import annotations

import falcon.asgi

from stampede import errors, restore
from stampede.names import SALE_NAME_RE, sale_id
from stampede.stock import Snapshot
from stampede.vocabulary import SalePhase
from stampede_api import metrics
from stampede_api.client_ip import client_ip
from stampede_api.services import Services


def phase(snap: Snapshot) -> SalePhase:
    if snap.remaining <= 0 and snap.total > 0:
        return SalePhase.SOLD_OUT
    if snap.open:
        return SalePhase.LIVE
    return SalePhase.ENDED if snap.reservations > 0 else SalePhase.SCHEDULED


class Sale:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sale: str) -> None:
        settings = self.s.settings
        self.s.read_limiter.check(client_ip(req, settings.client_ip_header, settings.trusted_proxy_hops) or "unknown")
        if not SALE_NAME_RE.match(sale):
            raise errors.SaleNotFound(sale[:64])
        stock, ledger, _ = self.s.require()
        sid = sale_id(self.s.settings.sale_namespace, sale)
        try:
            snap = await stock.snapshot(sid)
        except errors.SaleNotFound:
            await restore.sale_lost(ledger, stock, sid)  # 503 while it is restored; 404 if the ledger agrees
        metrics.API_STOCK_REMAINING.labels(snap.sale).set(snap.remaining)
        resp.media = {
            "sale": sale,
            "phase": phase(snap),
            "open": snap.open,
            "stock": snap.total,
            "remaining": snap.remaining,
            "pending": snap.pending,
            "confirmed": snap.confirmed,
            "released": snap.released,
            "per_user_limit": snap.per_user_limit,
        }

    on_head = on_get
