"""Paying for a checkout hold: ``POST /v1/reservations/{id}/checkout`` (docs/architecture.md, "Checkout holds").

In a sale with ``spec.checkout.holdSeconds`` a settled reservation is ``held`` until its buyer checks out with
an ``Idempotency-Key`` and a payment reference, or until the hold expires. The ledger decides between the two
(``Ledger.checkout``: one conditional UPDATE out of ``held``), so a checkout and the expiry sweep racing for
one hold never both win; this resource only says which did:

- ``200``: paid by this call; the same key with the same payment reference again answers ``200`` with
  ``Idempotent-Replayed: true`` (the same key with another reference is ``409 idempotency_conflict``);
- ``409 hold_expired`` (the hold ended unpaid, or its time passed by the ledger's clock), ``409
  already_paid`` (another checkout paid it), ``409 not_held`` (a sale without holds, or compensated),
  ``409 reservation_pending`` + ``Retry-After`` (not settled yet);
- ``404`` unknown reservation (or another namespace's), ``403`` another buyer's reservation.

Nothing is written to Redis: a held reservation already holds its units there as an order, and paying for it
changes nothing about stock.
"""

from __future__ import annotations

import logging
import uuid

import falcon
import falcon.asgi

from stampede import errors
from stampede.identifiers import IDEMPOTENCY_KEY_RULE, is_idempotency_key
from stampede.ledger import LedgerRow
from stampede.names import split_sale_id
from stampede.vocabulary import Status
from stampede_api import metrics
from stampede_api.body import read_object, str_member
from stampede_api.errors import ApiError, bad_request
from stampede_api.resources.reservations import record_body
from stampede_api.services import Services

log = logging.getLogger(__name__)

_CHECKOUT_MEMBERS = frozenset({"payment_reference"})
PAYMENT_REFERENCE_MAX = 256

# Metric outcomes besides the refusals' own codes.
OUTCOME_PAID = "paid"
OUTCOME_REPLAYED = "replayed"


def _refusal(row: LedgerRow, key: str, payment_ref: str) -> errors.StampedeError | None:
    """Why a checkout that did not pay the reservation is refused; None: it is this key's own earlier
    checkout with the same payment (a replay)."""
    rid = row.reservation_id
    if row.status == Status.PAID:
        if row.checkout_key != key:
            return errors.AlreadyPaid(rid)
        if row.payment_ref != payment_ref:
            return errors.IdempotencyConflict(rid)
        return None
    if row.status in (Status.EXPIRED, Status.HELD):
        # Still held after a checkout that did not move it: its time passed by the ledger's clock and the
        # sweep has not got to it yet. Either way it can no longer be paid.
        return errors.HoldExpired(rid)
    if row.status == Status.PENDING:
        return errors.ReservationPending(rid)
    return errors.NotHeld(rid, row.status)


class ReservationCheckout:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, reservation_id: str) -> None:
        settings = self.s.settings
        buyer = self.s.auth.buyer(req)
        self.s.read_limiter.check(buyer.id)
        try:
            rid = str(uuid.UUID(reservation_id))
        except ValueError:
            raise errors.ReservationNotFound(reservation_id[:64]) from None
        key = req.get_header("Idempotency-Key")
        if key is None:
            raise bad_request("Idempotency-Key", "is required: a checkout must be safe to retry")
        if not is_idempotency_key(key):
            raise bad_request("Idempotency-Key", f"must be {IDEMPOTENCY_KEY_RULE}")
        body = await read_object(req, settings.max_body_bytes, _CHECKOUT_MEMBERS)
        payment_ref = str_member(body, "payment_reference", max_len=PAYMENT_REFERENCE_MAX)
        _, ledger, _ = self.s.require()
        row = await ledger.get_reservation(rid)
        if row is None:
            raise errors.ReservationNotFound(rid)
        try:
            namespace, sale = split_sale_id(row.sale)
        except ValueError:  # a row no sale of this API wrote
            raise errors.ReservationNotFound(rid) from None
        if namespace != settings.sale_namespace:
            raise errors.ReservationNotFound(rid)  # a sale of another namespace: not this API's to touch
        if row.user != buyer.id:
            raise errors.NotYourReservation(rid)
        paid = False
        if row.status == Status.HELD:
            paid = await ledger.checkout(rid, user=buyer.id, key=key, payment_ref=payment_ref)
            fresh = await ledger.get_reservation(rid)  # what the ledger decided, whoever decided it
            if fresh is None:  # rows are never deleted (migration 0001)
                raise ApiError(500, "internal", "internal error")
            row = fresh
        refusal = None if paid else _refusal(row, key, payment_ref)
        if refusal is not None:
            metrics.API_CHECKOUTS.labels(row.sale, refusal.code).inc()
            raise refusal
        metrics.API_CHECKOUTS.labels(row.sale, OUTCOME_PAID if paid else OUTCOME_REPLAYED).inc()
        if paid:
            log.info(
                "hold paid",
                extra={"sale": row.sale, "reservation_id": rid, "request_id": req.context.request_id},
            )
        resp.media = record_body(row, sale)
        resp.location = f"/v1/reservations/{rid}"
        resp.status = falcon.HTTP_200
        if not paid:
            resp.set_header("Idempotent-Replayed", "true")
