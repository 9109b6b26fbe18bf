"""A FlashSale's ``status`` as pure functions: the phase its window and stock put it in, and conditions
in the CloudNativePG/Strimzi shape (type, status, CamelCase reason, message, lastTransitionTime,
observedGeneration). ``lastTransitionTime`` moves only when a condition's status changes, so a reconcile
that finds nothing new writes the same status again.

Phases: ``Scheduled`` before ``window.start`` (gate closed), ``Live`` in the window (gate open),
``SoldOut`` when every unit is confirmed (gate closed: nothing can come back), ``Ended`` after
``window.end`` (gate closed). While units are only reserved, the sale stays Live: a reservation that is
compensated gives its unit back to the buyers still trying.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stampede.vocabulary import SalePhase

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Phase:
    phase: SalePhase
    reason: str  # a sentence for status.phaseReason
    open: bool  # whether reservations are taken
    next_change: datetime | None  # when the window alone would move the phase next


def phase_for(now: datetime, start: datetime, end: datetime, *, remaining: int | None, reserved: int | None) -> Phase:
    """The phase of a sale at ``now``; ``remaining``/``reserved`` from Redis (None: unknown)."""
    if now >= end:
        return Phase(SalePhase.ENDED, f"The window ended at {rfc3339(end)}.", False, None)
    if now < start:
        return Phase(SalePhase.SCHEDULED, f"Opens at {rfc3339(start)}.", False, start)
    if remaining == 0 and reserved == 0:
        return Phase(SalePhase.SOLD_OUT, "Every unit is sold and confirmed.", False, end)
    return Phase(SalePhase.LIVE, f"Open until {rfc3339(end)}.", True, end)


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """``conditions`` with condition ``type_`` set (added, or updated in place); the transition time moves
    only when the status does. Returns a new list, ordered by type."""
    now = now or datetime.now(UTC)
    out: dict[str, dict[str, Any]] = {str(c["type"]): dict(c) for c in conditions or () if "type" in c}
    prev = out.get(type_)
    changed = prev is None or prev.get("status") != status
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now) if changed or prev is None else prev["lastTransitionTime"],
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out[type_] = cond
    return [out[k] for k in sorted(out)]


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)


def set_phase(status: Mapping[str, Any], phase: Phase) -> dict[str, Any]:
    """The status fields of ``phase``."""
    return {**status, "phase": phase.phase, "phaseReason": phase.reason}
