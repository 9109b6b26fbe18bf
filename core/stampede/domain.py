"""The domain's own types, shared by the adapters (``stock``, ``ledger``) and the pure logic (``healing``,
``audit``): what a reservation is in Redis, what a settle step asks of the ledger and what it answers. Plain
values, no I/O, so the pure modules depend on these and never on the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .vocabulary import Reason, RedisState, Status


class Outcome(StrEnum):
    """Per-reservation answer of confirm/release."""

    CONFIRMED = "confirmed"  # moved pending -> confirmed by this call
    RELEASED = "released"  # moved pending -> released by this call (confirm: already released)
    ALREADY = "already"  # already in the requested state: an idempotent repeat
    REFUSED_CONFIRMED = "refused_confirmed"  # release of a confirmed reservation: never
    UNKNOWN = "unknown"  # Redis has no such reservation


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    """A reservation as Redis holds it."""

    reservation_id: str
    state: RedisState
    quantity: int
    reserved_at_ms: int
    user: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """The wanted outcome of one reservation, handed to ``Ledger.settle``."""

    reservation_id: str
    sale: str | None  # None: match the row whatever its sale (compensation by id)
    outcome: Status  # confirmed | compensated
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """A reservation's status after ``Ledger.settle``: ``moved`` says whether this call decided it."""

    reservation_id: str
    sale: str
    quantity: int
    status: Status
    moved: bool
    lag_s: float | None  # ledger write -> settled, for the rows this call moved


__all__ = ["Outcome", "ReservationRecord", "Settled", "Settlement"]
