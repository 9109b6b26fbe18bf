"""The buy itself, as a plain async function shared by ``POST /v1/sales/{sale}/reservations`` and the v4
demonstration strategy: one Lua round trip to reserve, then the durable micro-batch write.

Idempotent replays are decided here. A replay answers with the original reservation, and only once
that reservation is in the ledger: if the first attempt is still in this process's batch the replay
waits for it; if it is in another process's batch the replay polls the ledger for a short while and
then answers 409 ``idempotency_in_flight`` (retry later); if the first attempt's write failed its units
were released and its key forgotten, so the buyer is told to retry (503) and the retry reserves afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from stampede import errors, restore
from stampede.ledger import Ledger, PendingReservation
from stampede.stock import Reservation, StockEngine
from stampede.vocabulary import Dependency, RedisState, Status
from stampede_api import metrics

from .batcher import Batcher
from .errors import ApiError
from .tally import TALLY

log = logging.getLogger("stampede_api.purchase")

# Label children cached per (sale, outcome): ``labels()`` costs several times an ``inc()``. Both label
# values are bounded (existing sales, fixed outcomes), so the maps stay small.
_outcomes: dict[tuple[str, str], Any] = {}
_remaining: dict[str, Any] = {}


def _count(sale: str, outcome: str) -> None:
    child = _outcomes.get((sale, outcome))
    if child is None:
        child = _outcomes[(sale, outcome)] = metrics.API_RESERVATIONS.labels(sale, outcome)
    TALLY.inc(child)


def _set_remaining(sale: str, remaining: int) -> None:
    child = _remaining.get(sale)
    if child is None:
        child = _remaining[sale] = metrics.API_STOCK_REMAINING.labels(sale)
    TALLY.set(child, remaining)


class Reserver(Protocol):
    """``StockEngine`` or the process's ``ReserveCoalescer``: the same call, the same answers."""

    async def reserve(
        self,
        sale: str,
        user: str,
        quantity: int,
        *,
        idempotency_key: str | None = ...,
        client_ip: str | None = ...,
        admission_expires_ms: int | None = ...,
    ) -> Reservation: ...


@dataclass(frozen=True, slots=True)
class Purchase:
    reservation_id: str
    sale: str
    quantity: int
    status: str  # pending | confirmed | compensated
    replay: bool
    reason: str | None = None


def _pending_reservation(r: Reservation) -> PendingReservation:
    """The ledger row of a fresh reservation, stamped with the Redis time ``reserve.lua`` recorded (the
    pending set's score), never this host's clock: after a rebuild that stamp orders Redis's pending set."""
    if r.reserved_at_ms is None:
        raise errors.ScriptError("reserve.lua answered ok without its reserve time")
    return PendingReservation(
        reservation_id=r.reservation_id,
        sale=r.sale,
        user=r.user,
        quantity=r.quantity,
        reserved_at_ms=r.reserved_at_ms,
    )


async def buy(
    stock: Reserver,
    batcher: Batcher,
    ledger: Ledger,
    *,
    sale: str,
    user: str,
    quantity: int,
    idempotency_key: str | None,
    client_ip: str | None,
    request_id: str | None,
    replay_wait_ms: int,
    retry_after_s: int,
    engine: StockEngine,
    admission_expires_ms: int | None = None,
) -> Purchase:
    """Reserves and records durably, or raises a domain error / ApiError that says why not. ``engine`` is
    the process's stock engine (``stock`` may be its reserve coalescer), used to restore a lost sale.
    ``admission_expires_ms``: the expiry of the buyer's verified admission token, if one was shown."""
    try:
        r = await stock.reserve(
            sale,
            user,
            quantity,
            idempotency_key=idempotency_key,
            client_ip=client_ip,
            admission_expires_ms=admission_expires_ms,
        )
    except errors.SaleNotFound:
        # Redis restarted or failed over: if the ledger still knows the sale, this request starts its
        # restore (or finds it running) and the buyer retries in a second; otherwise it is a 404.
        try:
            await restore.sale_lost(ledger, engine, sale)
        except errors.SaleRestoring:
            _count(sale, "unavailable")
            raise
        # no sale label for a sale that does not exist (bounded metric cardinality)
    except errors.StampedeError as exc:
        _count(sale, _outcome(exc))
        raise
    if r.replay:
        _count(sale, "replayed")
        return await _replay(
            batcher,
            ledger,
            sale=sale,
            reservation_id=r.reservation_id,
            quantity=r.quantity,
            state=r.state,
            replay_wait_ms=replay_wait_ms,
            retry_after_s=retry_after_s,
        )
    try:
        await batcher.submit(
            _pending_reservation(r),
            idempotency_key=idempotency_key,
            request_id=request_id,
        )
    except errors.DependencyUnavailable:
        _count(sale, "unavailable")
        raise
    _count(sale, "accepted")
    if r.remaining is not None:
        _set_remaining(sale, r.remaining)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("reserved", extra={"sale": sale, "reservation_id": r.reservation_id, "request_id": request_id})
    return Purchase(r.reservation_id, sale, quantity, Status.PENDING, replay=False)


def _outcome(exc: errors.StampedeError) -> str:
    return {
        "sold_out": "sold_out",
        "limit_reached": "limit_reached",
        "sale_closed": "sale_closed",
        "rate_limited": "rate_limited",
        "idempotency_conflict": "idempotency_conflict",
        "dependency_unavailable": "unavailable",
        "admission_required": "not_admitted",
        "admission_expired": "not_admitted",
    }.get(exc.code, "invalid")


async def _replay(
    batcher: Batcher,
    ledger: Ledger,
    *,
    sale: str,
    reservation_id: str,
    quantity: int,
    state: str,
    replay_wait_ms: int,
    retry_after_s: int,
) -> Purchase:
    written = await batcher.wait_for(reservation_id)
    if written is False:
        raise errors.DependencyUnavailable(Dependency.POSTGRESQL, "the first attempt was not recorded")
    deadline = time.monotonic() + replay_wait_ms / 1000
    while True:
        row = await ledger.get_reservation(reservation_id)
        if row is not None:
            return Purchase(reservation_id, sale, row.quantity, row.status, replay=True, reason=row.reason)
        if state == RedisState.RELEASED:
            # Released with no ledger row: the first write failed and its key is being forgotten.
            raise errors.DependencyUnavailable(Dependency.POSTGRESQL, "the first attempt was not recorded")
        if time.monotonic() >= deadline:
            raise ApiError(
                409,
                "idempotency_in_flight",
                "a request with this Idempotency-Key is still being recorded; retry later",
                headers={"Retry-After": str(retry_after_s)},
            )
        await asyncio.sleep(0.02)
