"""Request metrics counted in plain integers and folded into Prometheus a few times a second.

Under gunicorn the API uses prometheus-client's multiprocess mode, where every ``inc``/``observe``/``set``
takes a global lock, checks the process id and writes to a memory-mapped file: five of them per buy
request measured about 6% of an API worker under load. The hot path now only bumps entries of a dict
(``inc``, ``observe`` into the histogram's own buckets, ``set``); ``flush`` writes the accumulated amounts
to the real metric children, once per child, every ``FLUSH_S`` (a task of the process) and before a scrape
this process answers. A scrape answered by another worker sees this one's counts at most ``FLUSH_S`` late.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

FLUSH_S = 0.25


class Tally:
    """Pending amounts per metric child (a labelled Counter, Histogram or Gauge child)."""

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._hists: dict[Any, tuple[list[int], list[float]]] = {}  # child -> (bucket counts, [sum])
        self._bounds: dict[Any, list[float] | None] = {}
        self._gauges: dict[Any, float] = {}
        self._task: asyncio.Task[None] | None = None

    def inc(self, child: Any, amount: float = 1) -> None:
        self._counts[child] = self._counts.get(child, 0) + amount

    def set(self, child: Any, value: float) -> None:
        self._gauges[child] = value

    def observe(self, child: Any, amount: float) -> None:
        pending = self._hists.get(child)
        if pending is None:
            bounds = getattr(child, "_upper_bounds", None)
            buckets = getattr(child, "_buckets", None)
            # prometheus-client's Histogram child keeps its bounds and bucket values there; should a
            # release ever change that, fall back to observing each value at flush time.
            ok = isinstance(bounds, list) and isinstance(buckets, list) and len(bounds) == len(buckets)
            self._bounds[child] = bounds if ok else None
            pending = self._hists[child] = ([0] * len(buckets) if ok and buckets else [], [0.0])
        bounds = self._bounds[child]
        if bounds is None:
            pending[1].append(amount)
            return
        pending[0][bisect.bisect_left(bounds, amount)] += 1
        pending[1][0] += amount

    def flush(self) -> None:
        """Writes every pending amount to its metric child."""
        counts, self._counts = self._counts, {}
        hists, self._hists = self._hists, {}
        gauges, self._gauges = self._gauges, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, value in gauges.items():
            child.set(value)
        for child, (buckets, sums) in hists.items():
            if self._bounds.get(child) is None:
                for amount in sums[1:]:
                    child.observe(amount)
                continue
            if any(buckets):
                child._sum.inc(sums[0])
                for i, n in enumerate(buckets):
                    if n:
                        child._buckets[i].inc(n)

    def start(self) -> None:
        """Flushes every ``FLUSH_S`` on the running loop until ``stop``."""
        if self._task is None:
            self._task = asyncio.create_task(self._every(), name="metrics tally")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.flush()

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                self.flush()
            except Exception:
                log.exception("metrics flush failed")


# One per process: the middleware and the buy path count into it, /metrics flushes it before answering.
TALLY = Tally()
