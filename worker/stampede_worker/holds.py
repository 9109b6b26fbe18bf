"""Expiring checkout holds: the sweep every worker process runs beside its settle jobs.

A sale with ``spec.checkout.holdSeconds`` settles an accepted reservation as ``held`` (docs/architecture.md,
"Checkout holds"). A hold nobody paid for in time goes back on sale, exactly once, in two steps that follow
the project's order of truth:

1. the ledger decides: one statement moves the due rows ``held -> expired`` (through the partial index of
   held rows by expiry time, so a sweep costs what is due, not the sale), skipping rows a checkout or another
   sweeper holds locked; a checkout that commits first leaves the row ``paid`` and the sweep never sees it;
2. Redis follows: ``StockEngine.expire`` gives the units of exactly the rows this sweep moved back to
   ``remaining`` (idempotent), then the ledger records them returned.

A sweeper killed between the two steps leaves expired rows Redis has not heard of. Every sweep first gives
back those older than ``worker_hold_return_after_s`` (the partial index of unreturned rows), and the
reconciler does the same for its sale, so any surviving worker or the operator heals it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from stampede.domain import Outcome
from stampede.ledger import Expired, Ledger
from stampede.stock import StockEngine
from stampede.vocabulary import Status
from stampede_worker import metrics

log = logging.getLogger(__name__)

RETURNED = "returned"  # metric outcome: units given back in Redis
# Full sweep statements one tick runs at most, so a backlog is worked off over ticks, never in one long loop.
MAX_ROUNDS = 10


@dataclass
class SweepReport:
    expired: int = 0  # holds this sweep moved held -> expired in the ledger
    returned: int = 0  # expired holds whose units this sweep gave back in Redis (now)
    healed: int = 0  # of those, expired by an earlier sweeper that died before telling Redis


async def give_back(stock: StockEngine, ledger: Ledger, rows: Sequence[Expired]) -> int:
    """Redis takes back the units of expired holds (one script call per sale), then the ledger records them
    returned. Returns the reservations whose units went back by this call (a repeat counts none)."""
    by_sale: dict[str, dict[str, str]] = {}
    for r in rows:
        by_sale.setdefault(r.sale, {})[r.reservation_id] = r.user
    returned = 0
    for sale, buyers in sorted(by_sale.items()):
        ids = list(buyers)
        outcomes = await stock.expire(sale, buyers)
        for rid, outcome in outcomes.items():
            if outcome is Outcome.RELEASED:
                returned += 1
                log.info("hold expired; units back on sale", extra={"sale": sale, "reservation_id": rid})
            elif outcome is Outcome.UNKNOWN:
                # Nothing to give back here: Redis lost or deleted the sale (a restore from the ledger counts an
                # expired hold as returned stock), or never heard of it (the reconciler reports that as drift).
                log.error(
                    "the ledger expired a hold Redis does not know; left for the reconciler",
                    extra={"sale": sale, "reservation_id": rid},
                )
        await ledger.mark_returned(ids)
    metrics.WORKER_HOLDS.labels(RETURNED).inc(returned)
    return returned


async def sweep(
    ledger: Ledger,
    stock: StockEngine,
    *,
    limit: int,
    return_after_s: float,
    fault_sleep_ms: int = 0,
) -> SweepReport:
    """One tick: gives back what a dead sweeper left, then expires the holds that are due, ``limit`` per
    statement, repeating while a statement comes back full (at most ``MAX_ROUNDS``). It asks the ledger first
    whether either has anything to do (``Ledger.hold_work``, one read): sales without holds cost every worker
    that one statement a tick, not the sweep's."""
    started = time.perf_counter()
    report = SweepReport()
    work = await ledger.hold_work(older_s=return_after_s)
    stale = await ledger.expired_unreturned(older_s=return_after_s, limit=limit) if work.unreturned else []
    if stale:
        report.healed = await give_back(stock, ledger, stale)
        report.returned += report.healed
        log.warning(
            "gave back the units of expired holds a sweeper left unreturned",
            extra={"reservations": len(stale), "returned": report.healed},
        )
    for _ in range(MAX_ROUNDS if work.due else 0):
        due = await ledger.expire_due(limit)
        report.expired += len(due)
        metrics.WORKER_HOLDS.labels(Status.EXPIRED).inc(len(due))
        if due and fault_sleep_ms:
            await asyncio.sleep(fault_sleep_ms / 1000)
        if due:
            report.returned += await give_back(stock, ledger, due)
        if len(due) < limit:
            break
    metrics.WORKER_HOLD_SWEEP_SECONDS.observe(time.perf_counter() - started)
    return report


__all__ = ["RETURNED", "SweepReport", "give_back", "sweep"]
