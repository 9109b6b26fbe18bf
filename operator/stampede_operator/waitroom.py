"""The operator's side of a sale's waiting room: it sets the room from ``spec.admission`` and the window
(``StockEngine.room.configure``), turns it off when the spec drops it, and reads its counts for
``status.queue`` and the queue gauge. Plain functions, called from ``ensure`` and each tick (so a Redis
that lost the room gets it back within one reconcile interval)."""

from __future__ import annotations

from typing import Any

from stampede.stock import StockEngine
from stampede_operator import metrics

from .builders import SaleSpec


def _ms(sale: SaleSpec) -> tuple[int, int]:
    return int(sale.window_start.timestamp() * 1000), int(sale.window_end.timestamp() * 1000)


async def apply(stock: StockEngine, sale: SaleSpec) -> None:
    """The room as the spec asks: on with its window and rate, or off (its tickets kept for the report)."""
    if sale.admission is None:
        await stock.room.disable(sale.id)
        return
    start_ms, end_ms = _ms(sale)
    await stock.room.configure(
        sale.id,
        on=True,
        open_ms=start_ms - sale.admission.open_queue_s * 1000,
        start_ms=start_ms,
        end_ms=end_ms,
        rate_per_s=sale.admission.rate_per_s,
    )


async def report(stock: StockEngine, sale: SaleSpec) -> dict[str, Any] | None:
    """``status.queue`` of the sale (None: it never had a room), and the gauge of its tickets."""
    room = await stock.room.status(sale.id)
    if room is None:
        return None
    counts = {
        "tickets": room.tickets,
        "early": room.early,
        "admitted": room.admitted,
        "served": room.served,
        "waiting": room.waiting,
    }
    for state, value in counts.items():
        metrics.OPERATOR_QUEUE.labels(sale.id, state).set(value)
    return {"enabled": room.on and sale.admission is not None, **counts}
