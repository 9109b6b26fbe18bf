"""Buying and polling: ``POST /v1/sales/{sale}/reservations`` and ``GET /v1/reservations/{id}``.

A new reservation is answered 202 only after its ledger row is committed. An idempotent replay (same
buyer, same ``Idempotency-Key``, same quantity) answers 200 with the original reservation and its
current status, and the header ``Idempotent-Replayed: true``. A reservation is visible only to its own
buyer: another buyer gets 404, as for an id that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Any

import falcon
import falcon.asgi

from stampede import admission, errors
from stampede.identifiers import IDEMPOTENCY_KEY_RULE, is_idempotency_key
from stampede.ledger import LedgerRow
from stampede.names import SALE_NAME_RE, sale_id, split_sale_id
from stampede.vocabulary import Status
from stampede_api.body import int_member, read_object
from stampede_api.client_ip import client_ip
from stampede_api.errors import bad_request
from stampede_api.purchase import Purchase, buy
from stampede_api.services import Services

_BUY_MEMBERS = frozenset({"quantity"})


def purchase_body(p: Purchase) -> dict[str, Any]:
    out: dict[str, Any] = {
        "reservation_id": p.reservation_id,
        "status": p.status,
        "sale": split_sale_id(p.sale)[1],  # the name the buyer used; the namespace is this API's own
        "quantity": p.quantity,
    }
    if p.reason:
        out["reason"] = p.reason
    return out


class SaleReservations:
    def __init__(self, services: Services) -> None:
        self.s = services
        self._admission_key = admission.derive_key(services.settings.jwt_secret)

    def _admission(self, req: falcon.asgi.Request, sale: str, buyer: str) -> int | None:
        """The expiry of the buyer's admission token (``Admission-Token``), if one is shown; a token that is
        not this buyer's for this sale, or not signed by this API, is refused at once. Whether the sale asks
        for one at all, and whether it has expired, ``reserve.lua`` decides in the step that takes the stock."""
        token = req.get_header("Admission-Token")
        if token is None:
            return None
        try:
            return admission.verify(self._admission_key, token.strip(), sale=sale, buyer=buyer).expires_ms
        except admission.InvalidAdmission as exc:
            raise errors.AdmissionRequired(sale, str(exc)) from None

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sale: str) -> None:
        settings = self.s.settings
        buyer = self.s.auth.buyer(req)
        if not SALE_NAME_RE.match(sale):
            raise errors.SaleNotFound(sale[:64])
        sale = sale_id(settings.sale_namespace, sale)
        key = req.get_header("Idempotency-Key")
        if key is not None and not is_idempotency_key(key):
            raise bad_request("Idempotency-Key", f"must be {IDEMPOTENCY_KEY_RULE}")
        body = await read_object(req, settings.max_body_bytes, _BUY_MEMBERS)
        quantity = int_member(body, "quantity", default=1, lo=1, hi=settings.max_quantity)
        admitted = self._admission(req, sale, buyer.id)
        stock, ledger, batcher = self.s.require()
        p = await buy(
            self.s.reserver or stock,
            batcher,
            ledger,
            sale=sale,
            user=buyer.id,
            quantity=quantity,
            idempotency_key=key,
            client_ip=client_ip(req, settings.client_ip_header, settings.trusted_proxy_hops),
            request_id=req.context.request_id,
            replay_wait_ms=settings.replay_wait_ms,
            retry_after_s=settings.retry_after_s,
            engine=stock,
            admission_expires_ms=admitted,
        )
        resp.media = purchase_body(p)
        resp.location = f"/v1/reservations/{p.reservation_id}"
        if p.replay:
            resp.status = falcon.HTTP_200
            resp.set_header("Idempotent-Replayed", "true")
        else:
            resp.status = falcon.HTTP_202


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def record_body(row: LedgerRow, sale: str) -> dict[str, Any]:
    """A reservation as its buyer sees it (``sale``: the name the buyer used); a checkout hold adds when it
    ends and, once ended, when it was paid (with the payment reference) or expired."""
    out: dict[str, Any] = {
        "reservation_id": str(row.reservation_id),
        "sale": sale,
        "quantity": row.quantity,
        "status": row.status,
        "created_at": _iso(row.created_at),
        "settled_at": _iso(row.settled_at),
    }
    if row.reason:
        out["reason"] = row.reason
    if row.hold_expires_at is not None:
        out["hold_expires_at"] = _iso(row.hold_expires_at)
    if row.status == Status.PAID:
        out["paid_at"] = _iso(row.closed_at)
        out["payment_reference"] = row.payment_ref
    elif row.status == Status.EXPIRED:
        out["expired_at"] = _iso(row.closed_at)
    return out


class ReservationItem:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, reservation_id: str) -> None:
        buyer = self.s.auth.buyer(req)
        self.s.read_limiter.check(buyer.id)
        try:
            rid = str(uuid.UUID(reservation_id))
        except ValueError:
            raise errors.ReservationNotFound(reservation_id[:64]) from None
        _, ledger, _ = self.s.require()
        row = await ledger.get_reservation(rid)
        if row is None or row.user != buyer.id:
            raise errors.ReservationNotFound(rid)
        try:
            namespace, sale = split_sale_id(row.sale)
        except ValueError:  # a row no sale of this API wrote
            raise errors.ReservationNotFound(rid) from None
        if namespace != self.s.settings.sale_namespace:
            raise errors.ReservationNotFound(rid)  # a sale of another namespace: not this API's to show
        resp.media = record_body(row, sale)

    on_head = on_get
