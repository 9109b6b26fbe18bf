"""Restoring a sale's Redis counters from the ledger after Redis lost them, at once, by whoever notices.

Redis restarted without persistence, restarted having lost an AOF tail, or failed over: the ledger still
holds every accepted reservation, so the sale is not gone and no order is cancelled for it. The first
process to notice restores it — the API (a buy or a read finds no sale key while the ledger has the
sale), the worker (a batch names a sale Redis does not know) or the operator (the same, or Redis's
``run_id`` differs from the one the sale was last restored under) — instead of waiting for a reconcile
tick, and everyone else answers "retry in a second" meanwhile.

One restore at a time per sale: within a process, callers join the restore already running
(``restore_sale``); across processes, a Redis lock (``SET NX PX`` with a token) is taken before the
ledger is read, and ``restore.lua`` writes only while that token still holds it. The script sets the
counters absolutely from the ledger's rows merged with what Redis still has, so two restores in a row
recount and never count twice, and a restore on a Redis that lost nothing changes nothing. Every
``pending`` ledger row is restored as reserved, so its settle job then confirms it.

The Redis side is ``StockEngine``'s, the SQL side ``Ledger``'s; this module only orders them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from . import errors
from .domain import ReservationRecord
from .healing import redis_state
from .ledger import Ledger, RestoreSource
from .stock import SaleConfig, StockEngine
from .vocabulary import TAKEN, Status

log = logging.getLogger(__name__)

# Outcomes of a restore.
RESTORED = "restored"  # this call wrote the sale's counters
CURRENT = "current"  # already restored under this Redis run: nothing to do
BUSY = "busy"  # another process holds the sale's restore lock: it is restoring right now
GONE = "gone"  # the ledger does not know the sale, or it was deleted: nothing to restore

# Why a sale needs restoring (``lost``).
MISSING = "missing"  # Redis has no key of the sale
RESTARTED = "restarted"  # the sale was last restored (or seeded) under another Redis run

LOCK_TTL_MS = 15_000  # a restorer that dies holding the lock blocks others this long at most


@dataclass(frozen=True, slots=True)
class Restore:
    """What one restore did; the counts are Redis's after it (0 unless ``outcome`` is ``restored``)."""

    outcome: str
    total: int = 0
    remaining: int = 0
    pending: int = 0
    confirmed: int = 0
    seconds: float = 0.0


def gate_open(now: datetime, source: RestoreSource, *, remaining: int, pending: int) -> bool:
    """Whether a sale restored from the ledger takes reservations: inside its window (an open end when the
    ledger has none), unless every unit is sold and confirmed — the operator's phase rule (SoldOut closes
    the gate; units only reserved keep the sale Live, since a compensation gives them back)."""
    if source.window_start is not None and now < source.window_start:
        return False
    if source.window_end is not None and now >= source.window_end:
        return False
    return not (remaining <= 0 and pending == 0)


def _records(source: RestoreSource) -> list[ReservationRecord]:
    return [ReservationRecord(rid, redis_state(status), qty, ts, user) for rid, user, qty, status, ts in source.rows]


async def _restore(ledger: Ledger, stock: StockEngine, sale: str, reason: str) -> Restore:
    started = time.monotonic()
    run_id = await stock.run_id(sale)
    token = uuid.uuid4().hex
    if not await stock.lock_restore(sale, token, LOCK_TTL_MS):
        return Restore(BUSY)
    done = False
    try:
        source = await ledger.restore_source(sale)
        ledger_s = time.monotonic() - started
        if source is None or source.deleted:
            return Restore(GONE)
        pending = sum(q for _, _, q, status, _ in source.rows if status == Status.PENDING)
        confirmed = sum(q for _, _, q, status, _ in source.rows if status in TAKEN)
        config = SaleConfig(
            total=source.stock,
            per_user_limit=source.per_user_limit,
            buyer_rate=source.buyer_rate,
            buyer_burst=source.buyer_burst,
            ip_rate=source.ip_rate,
            ip_burst=source.ip_burst,
            buckets=source.buckets,
        )
        remaining = source.stock - pending - confirmed
        open_ = gate_open(datetime.now(UTC), source, remaining=remaining, pending=pending)
        records = _records(source)
        try:
            result = await stock.restore(sale, token, run_id, config, open_, records)
        except errors.RestockBelowSold as refused:
            # The ledger holds more than its stock (a stock lowered below what was sold): restore at what
            # is sold, closed, so nothing more is sold. Only applies when Redis lost the meta; a live meta
            # that holds more than its total is a fault the reconciler reports.
            log.error(
                "the ledger holds more than the sale's stock; restoring at what is sold, closed",
                extra={"sale": sale, "stock": source.stock, "sold": refused.sold},
            )
            config = SaleConfig(total=refused.sold, per_user_limit=config.per_user_limit, buckets=config.buckets)
            result = await stock.restore(sale, token, run_id, config, False, records)
        done = result.outcome in (RESTORED, CURRENT)
        seconds = time.monotonic() - started
        if result.outcome == RESTORED:
            log.warning(
                "restored the sale in Redis from the ledger",
                extra={
                    "sale": sale,
                    "reason": reason,
                    "run_id": run_id,
                    "remaining": result.remaining,
                    "pending": result.pending,
                    "confirmed": result.confirmed,
                    "rows": len(records),
                    "seconds": round(seconds, 4),
                    "ledger_seconds": round(ledger_s, 4),
                },
            )
        outcome = BUSY if result.outcome == "lost_lock" else result.outcome
        return Restore(outcome, result.total, result.remaining, result.pending, result.confirmed, seconds)
    finally:
        if not done:
            with contextlib.suppress(errors.StampedeError):  # else it expires on its own
                await stock.unlock_restore(sale, token)


# In-process single flight: one running restore per (stock engine, sale); later callers join it.
_running: weakref.WeakKeyDictionary[StockEngine, dict[str, asyncio.Task[Restore]]] = weakref.WeakKeyDictionary()


def _task(ledger: Ledger, stock: StockEngine, sale: str, reason: str) -> asyncio.Task[Restore]:
    tasks = _running.setdefault(stock, {})
    task = tasks.get(sale)
    if task is None:
        task = asyncio.get_running_loop().create_task(_restore(ledger, stock, sale, reason), name=f"restore-{sale}")
        tasks[sale] = task

        def forget(t: asyncio.Task[Restore]) -> None:
            if tasks.get(sale) is t:
                del tasks[sale]
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.warning("restore failed", extra={"sale": sale, "error": f"{type(exc).__name__}: {exc}"})

        task.add_done_callback(forget)
    return task


async def restore_sale(ledger: Ledger, stock: StockEngine, sale: str, *, reason: str = MISSING) -> Restore:
    """Restores the sale in Redis from the ledger, or joins the restore this process already runs for it.
    Raises DependencyUnavailable if Redis or PostgreSQL cannot be reached."""
    return await asyncio.shield(_task(ledger, stock, sale, reason))


def restoring(stock: StockEngine, sale: str) -> bool:
    """Whether this process is restoring the sale right now."""
    return sale in _running.get(stock, {})


async def sale_lost(ledger: Ledger, stock: StockEngine, sale: str) -> NoReturn:
    """For a caller that found no sale key in Redis and must answer now (the API): raises SaleRestoring
    (retry in a second) after starting a restore in the background if the ledger knows the sale, and
    SaleNotFound if it does not."""
    if not restoring(stock, sale):
        if not await ledger.sale_exists(sale):
            raise errors.SaleNotFound(sale)
        _task(ledger, stock, sale, MISSING)
    raise errors.SaleRestoring(sale)


async def lost(stock: StockEngine, sale: str) -> str | None:
    """Why the sale must be restored (``MISSING`` / ``RESTARTED``), or None if Redis holds it under its
    current run: every stock bucket of the sale, each on the server that holds it now."""
    runs = await stock.runs(sale)
    if any(have is None for have, _ in runs):
        return MISSING
    return RESTARTED if any(have != now for have, now in runs) else None


__all__ = [
    "BUSY",
    "CURRENT",
    "GONE",
    "MISSING",
    "RESTARTED",
    "RESTORED",
    "Restore",
    "gate_open",
    "lost",
    "restore_sale",
    "restoring",
    "sale_lost",
]
