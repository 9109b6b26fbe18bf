"""The waiting room: ``POST /v1/sales/{sale}/queue`` (a ticket) and ``GET /v1/sales/{sale}/queue/{ticket}``
(its place, the estimated wait and, once admitted, the admission token the buy endpoint asks for).

A buyer holds one ticket per sale: joining again answers the same ticket (and counts as a poll). A ticket
is its buyer's alone (another buyer's ticket is a 404). Polling sooner than ``STAMPEDE_QUEUE_POLL_INTERVAL_MS``
after the last poll answers 429 with Retry-After and changes nothing: the place depends on the arrival (shuffled
among the early ones) and on Redis's clock, never on how often anyone asks. ``Retry-After`` (whole seconds) and
``retry_after_ms`` say when asking again is worth it.
"""

from __future__ import annotations

import math
import re
from typing import Any

import falcon
import falcon.asgi

from stampede import admission, errors
from stampede.names import SALE_NAME_RE, sale_id, split_sale_id
from stampede.waitroom import QueueView, TicketStatus
from stampede_api.services import Services

TICKET_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _retry_after_ms(view: QueueView, poll_interval_ms: int) -> int:
    """When polling again is worth it: at the start, or when the cursor should reach this place, never
    sooner than the poll interval; a queued buyer far back asks again at most every 30 s."""
    if view.status in (TicketStatus.ADMITTED, TicketStatus.EXPIRED):
        return 0
    return max(poll_interval_ms, min(view.wait_ms, 30_000))


class Queue:
    """Shared by both routes: the sale id, the buyer, the answer's body and headers."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self._key = admission.derive_key(services.settings.jwt_secret)

    def _sale(self, sale: str) -> str:
        if not SALE_NAME_RE.match(sale):
            raise errors.SaleNotFound(sale[:64])
        return sale_id(self.s.settings.sale_namespace, sale)

    def _answer(self, resp: falcon.asgi.Response, sale: str, buyer: str, view: QueueView) -> None:
        settings = self.s.settings
        body: dict[str, Any] = {
            "ticket": view.ticket,
            "sale": split_sale_id(sale)[1],
            "status": str(view.status),
            "position": None if view.position is None else view.position + 1,
            "ahead": view.ahead,
            "tickets": view.tickets,
            "estimated_wait_seconds": round(view.wait_ms / 1000, 3),
        }
        retry_ms = _retry_after_ms(view, settings.queue_poll_interval_ms)
        if retry_ms:
            body["retry_after_ms"] = retry_ms
            resp.set_header("Retry-After", str(max(1, math.ceil(retry_ms / 1000))))
        if view.status == TicketStatus.ADMITTED and view.admitted_ms is not None:
            expires_ms = view.admitted_ms + settings.admission_token_ttl_s * 1000
            body["admission_token"] = admission.mint(
                self._key, admission.Admission(sale, buyer, view.ticket, expires_ms)
            )
            body["admission_expires_ms"] = expires_ms
        resp.media = body

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sale: str) -> None:
        buyer = self.s.auth.buyer(req)
        sid = self._sale(sale)
        stock, _, _ = self.s.require()
        settings = self.s.settings
        view = await stock.room.join(
            sid,
            buyer.id,
            token_ttl_ms=settings.admission_token_ttl_s * 1000,
            min_interval_ms=settings.queue_poll_interval_ms,
        )
        self._answer(resp, sid, buyer.id, view)
        resp.status = falcon.HTTP_201 if view.new else falcon.HTTP_200
        resp.location = f"/v1/sales/{sale}/queue/{view.ticket}"

    async def on_get_ticket(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sale: str, ticket: str) -> None:
        buyer = self.s.auth.buyer(req)
        sid = self._sale(sale)
        if not TICKET_RE.fullmatch(ticket):
            raise errors.TicketNotFound(ticket[:64])
        stock, _, _ = self.s.require()
        settings = self.s.settings
        view = await stock.room.poll(
            sid,
            buyer.id,
            ticket,
            min_interval_ms=settings.queue_poll_interval_ms,
            token_ttl_ms=settings.admission_token_ttl_s * 1000,
        )
        self._answer(resp, sid, buyer.id, view)
