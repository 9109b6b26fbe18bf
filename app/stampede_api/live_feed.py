"""The live sale page's figures: one sampler per sale and process, shared by every open event stream.

A stream never reads Redis or PostgreSQL itself. While a sale has at least one stream open in this process,
one task samples it every ``STAMPEDE_LIVE_INTERVAL_MS`` — the counters the audit reads (``StockEngine.counters``:
the Redis snapshot; ``Ledger.live``: units by status as the reconciler counts them, without reading settled
rows) — and wakes the streams with the newest sample; with no stream left, the task ends. So a hundred viewers
cost what one costs, and nothing at all runs while nobody watches.

A sample lists every counter Redis and the ledger keep of the sale by name (``redis``, ``ledger``), so
counters of features this module does not know (holds, a waiting room) appear on the page as they are added;
the headline figures (remaining, reservations per second, outcomes, lag, drift, phase and countdown) are
computed from the counters every sale has.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from stampede import errors
from stampede.ledger import Ledger, LiveLedger
from stampede.stock import Snapshot, StockEngine
from stampede.vocabulary import SalePhase, Status

log = logging.getLogger("stampede_api.live")

Sample = dict[str, Any]


def phase(snap: Snapshot, start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime) -> SalePhase:
    """The FlashSale phase from Redis and the window the ledger mirrors (the operator's status stays the
    authority; this is what it will say): Scheduled before the window, SoldOut once nothing is left, Ended
    after the window, else Live while Redis is open."""
    if start is not None and now < start:
        return SalePhase.SCHEDULED
    if snap.remaining <= 0 and snap.total > 0:
        return SalePhase.SOLD_OUT
    if end is not None and now >= end:
        return SalePhase.ENDED
    if snap.open:
        return SalePhase.LIVE
    return SalePhase.ENDED if snap.reservations > 0 else SalePhase.SCHEDULED


def countdown(phase_: str, start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime) -> Sample | None:
    """Seconds to the window's next edge: its start while Scheduled, its end while Live; None otherwise."""
    if phase_ == SalePhase.SCHEDULED and start is not None:
        return {"to": "start", "seconds": max(0.0, (start - now).total_seconds())}
    if phase_ == SalePhase.LIVE and end is not None:
        return {"to": "end", "seconds": max(0.0, (end - now).total_seconds())}
    return None


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Previous:
    """What the next sample of a sale needs from the last: the rate's base, and the final lag figures
    (read once per change of the confirmed count after the sale settled: they read every confirmed row)."""

    reservations: int = -1
    at: float = 0.0
    lag_for: int = -1
    lag: Sample | None = None


def sale_sample(name: str, snap: Snapshot, redis: dict[str, int], led: LiveLedger, prev: _Previous) -> Sample:
    """One sample of a sale, from one read of Redis and one of the ledger (pure: tested by value)."""
    now_mono = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    rate = 0.0
    if prev.reservations >= 0 and now_mono > prev.at:
        rate = max(0, snap.reservations - prev.reservations) / (now_mono - prev.at)
    prev.reservations, prev.at = snap.reservations, now_mono
    p = phase(snap, led.window_start, led.window_end, now)
    ledger = {k: v for k, v in dataclasses.asdict(led).items() if isinstance(v, int) and not isinstance(v, bool)}
    ledger.pop("stock", None)
    return {
        "sale": name,
        "at": now.timestamp(),
        "phase": p,
        "window": {"start": _iso(led.window_start), "end": _iso(led.window_end)},
        "countdown": countdown(p, led.window_start, led.window_end, now),
        "stock": snap.total,
        "remaining": snap.remaining,
        "rate": round(rate, 1),
        "outcomes": {
            Status.CONFIRMED.value: led.confirmed,
            Status.PENDING.value: led.pending,
            Status.COMPENSATED.value: led.compensated,
        },
        # The audit's drift: Redis's confirmed and pending units against the ledger's. In flight during a
        # spike (a settle moves the ledger first), 0 once the sale has settled.
        "drift": abs(snap.confirmed - led.confirmed) + abs(snap.pending - led.pending),
        "settled": led.pending == 0 and snap.pending == 0,
        "lag": {"oldest_pending_s": led.oldest_pending_s, "confirmed": prev.lag},
        "redis": redis,
        "ledger": ledger,
    }


class Feed:
    """The newest sample of one subject (a sale, or the overview), produced by one task while anyone reads."""

    def __init__(self, sample: Callable[[], Awaitable[Sample]], interval_s: float) -> None:
        self._sample = sample
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.latest: Sample | None = None
        self.version = 0
        self.readers = 0

    async def stream(self, until: float) -> AsyncIterator[Sample]:
        """Every new sample until ``until`` (monotonic clock); a reader that falls behind skips to the newest."""
        self.readers += 1
        if self._task is None or self._task.done():
            self.latest = None  # from before the feed went idle: stale, never shown
            self._task = asyncio.create_task(self._run(), name="live feed")
        seen = -1
        try:
            while True:
                if self.latest is not None and self.version != seen:
                    seen = self.version
                    yield self.latest
                    continue
                left = until - time.monotonic()
                if left <= 0:
                    return
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=left)
        finally:
            self.readers -= 1

    async def _run(self) -> None:
        while self.readers > 0:
            try:
                self.latest = await self._sample()
            except errors.SaleNotFound:
                self.latest = {"error": "sale_not_found", "message": "Redis does not hold the sale (now)"}
            except errors.DependencyUnavailable as exc:
                self.latest = {"error": "unavailable", "message": f"{exc.dependency} unavailable"}
            except Exception:
                log.exception("live sample failed")
                self.latest = {"error": "internal", "message": "sampling failed (logged)"}
            self.version += 1
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class LiveFeeds:
    """The process's feeds: one per sale being watched, one for the overview, and the count of open streams."""

    def __init__(self, stock: StockEngine, ledger: Ledger, namespace: str, interval_s: float) -> None:
        self._stock = stock
        self._ledger = ledger
        self._namespace = namespace
        self._interval = interval_s
        self._feeds: dict[str, Feed] = {}
        self.streams = 0

    def sale(self, sid: str, name: str) -> Feed:
        feed = self._feeds.get(sid)
        if feed is None:
            prev = _Previous()

            async def sample() -> Sample:
                snap, redis = await self._stock.counters(sid)
                led = await self._ledger.live(sid)
                out = sale_sample(name, snap, redis, led, prev)
                if out["settled"] and led.confirmed != prev.lag_for:
                    n, p50, p95, p99, most = await self._ledger.settle_lag(sid)
                    prev.lag_for = led.confirmed
                    prev.lag = {"n": n, "p50": p50, "p95": p95, "p99": p99, "max": most}
                    out["lag"]["confirmed"] = prev.lag
                return out

            feed = self._feeds[sid] = Feed(sample, self._interval)
            self._forget_idle()
        return feed

    def overview(self) -> Feed:
        feed = self._feeds.get("")
        if feed is None:
            feed = self._feeds[""] = Feed(self._overview_sample, self._interval * 2)
        return feed

    async def _overview_sample(self) -> Sample:
        now = dt.datetime.now(dt.UTC)
        prefix = f"{self._namespace}/" if self._namespace else ""
        rows = []
        for s in await self._ledger.live_sales(self._namespace):
            row: Sample = {
                "sale": s.sale.removeprefix(prefix),
                "sku": s.sku,
                "stock": s.stock,
                "window": {"start": _iso(s.window_start), "end": _iso(s.window_end)},
            }
            try:
                snap = await self._stock.snapshot(s.sale)
            except errors.SaleNotFound:
                row["phase"] = "Unknown"  # the ledger knows it, Redis not (yet, or restoring)
            else:
                p = phase(snap, s.window_start, s.window_end, now)
                row.update(
                    phase=p,
                    countdown=countdown(p, s.window_start, s.window_end, now),
                    remaining=snap.remaining,
                    pending=snap.pending,
                    confirmed=snap.confirmed,
                    reservations=snap.reservations,
                )
            rows.append(row)
        return {"at": now.timestamp(), "namespace": self._namespace, "sales": rows}

    def _forget_idle(self) -> None:
        """Drops feeds nobody reads once there are many (a sale watched once must not stay forever)."""
        if len(self._feeds) > 256:
            for key in [k for k, f in self._feeds.items() if f.readers == 0]:
                del self._feeds[key]

    async def close(self) -> None:
        for feed in self._feeds.values():
            await feed.close()
        self._feeds.clear()
