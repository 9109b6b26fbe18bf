"""The one compensation step of the project: the ledger first, Redis only where the ledger move won.

Each listed reservation still ``pending`` moves to ``compensated`` with its reason in one ledger
statement; only the rows this call moved have their units released in Redis (a row already final keeps
its outcome, and its stock stays where the writer that decided it put it). The reconciler, the operator
(a deleted sale's pending rows) and the settle worker (a job that gives up) all compensate through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .domain import Outcome, Settled, Settlement
from .names import sale_keys
from .vocabulary import Reason, Status


class SettlesRows(Protocol):
    async def settle(self, settlements: Sequence[Settlement], *, attempt: int) -> list[Settled]: ...


class ReleasesStock(Protocol):
    async def release(self, sale: str, reservation_ids: Iterable[str]) -> dict[str, Outcome]: ...


@dataclass(frozen=True, slots=True)
class Compensation:
    """What one compensation did: every listed row the ledger holds (``moved``: this call compensated it)
    and Redis's answer for each row it released, by sale."""

    rows: list[Settled]
    released: dict[str, dict[str, Outcome]]

    @property
    def won(self) -> list[str]:
        """The ids this call compensated."""
        return [r.reservation_id for r in self.rows if r.moved]


async def compensate(
    ledger: SettlesRows,
    stock: ReleasesStock,
    reservation_ids: Sequence[str],
    reason: Reason,
    *,
    sale: str | None,
    attempt: int = 0,
) -> Compensation:
    """Compensates the listed reservations of ``sale`` (None: whatever their sale, by id) with ``reason``
    and releases in Redis the units of the rows this call moved, one script call per sale."""
    if not reservation_ids:
        return Compensation([], {})
    rows = await ledger.settle(
        [Settlement(rid, sale, Status.COMPENSATED, reason) for rid in reservation_ids], attempt=attempt
    )
    by_sale: dict[str, list[str]] = {}
    for r in rows:
        if r.moved:
            by_sale.setdefault(r.sale, []).append(r.reservation_id)
    released: dict[str, dict[str, Outcome]] = {}
    for s, ids in by_sale.items():
        try:
            sale_keys(s)
        except ValueError:
            continue  # a sale Redis cannot hold: nothing to release there
        released[s] = await stock.release(s, ids)
    return Compensation(rows, released)


__all__ = ["Compensation", "ReleasesStock", "SettlesRows", "compensate"]
