"""The audit of a live sale: waits for the queue to settle, then reads the ledger and Redis and judges
them with ``stampede.audit`` — what `stampede audit`, the demo, the k6 runs and the benchmark print.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stampede.audit import AuditReport, audit, counts_from
from stampede.ledger import Ledger
from stampede.stock import StockEngine


@dataclass(frozen=True)
class Lag:
    """202 -> confirmed lag of the sale's confirmed reservations, seconds."""

    n: int
    p50: float
    p95: float
    p99: float
    max: float

    def render(self) -> str:
        return (
            f"  202->confirmed lag over {self.n}: p50 {self.p50 * 1000:.0f} ms  p95 {self.p95 * 1000:.0f} ms  "
            f"p99 {self.p99 * 1000:.0f} ms  max {self.max * 1000:.0f} ms"
        )


def k6_accepted(summary_path: Path) -> int:
    """The count of 202s a k6 run recorded (metric ``reservations_accepted`` of its summary JSON)."""
    data: dict[str, Any] = json.loads(summary_path.read_text())
    metric = data.get("metrics", {}).get("reservations_accepted")
    return int(metric["values"]["count"]) if metric else 0


async def lag(ledger: Ledger, sale: str) -> Lag:
    return Lag(*await ledger.settle_lag(sale))


async def sale_limits(ledger: Ledger, sale: str) -> tuple[int, int] | None:
    """(stock, per-user limit) as the ledger's sales table mirrors the FlashSale."""
    return await ledger.sale_limits(sale)


async def wait_settled(ledger: Ledger, sale: str, limit_s: float) -> float:
    """Waits until no reservation of the sale is pending; returns the seconds it took."""
    started = time.monotonic()
    while (await ledger.counts(sale)).get("pending", 0) > 0:
        if time.monotonic() - started > limit_s:
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def audit_sale(
    ledger: Ledger,
    stock: StockEngine,
    sale: str,
    *,
    accepted: list[str] | None = None,
    acknowledged: int | None = None,
    settle_timeout: float = 60.0,
) -> tuple[AuditReport, Lag, float]:
    """Waits for the sale to settle (bounded), then audits it. Returns (report, lag, settle seconds)."""
    limits = await sale_limits(ledger, sale)
    snap = await stock.snapshot(sale)
    total, limit = limits if limits is not None else (snap.total, snap.per_user_limit)
    waited = await wait_settled(ledger, sale, settle_timeout)
    rows = await ledger.rows(sale)
    snap = await stock.snapshot(sale)
    report = audit(
        sale,
        stock=total,
        per_user_limit=limit,
        accepted=accepted or (),
        acknowledged=acknowledged,
        rows=rows,
        redis=counts_from(snap),
    )
    return report, await lag(ledger, sale), waited
