"""Token buckets for the reads anyone can send (``GET /v1/sales/{sale}`` per client address, polls of a
reservation per buyer), kept in the process's memory.

Buys are limited in Redis, in the same Lua step as the reserve, because a buy must be counted exactly
across every API process. A read changes nothing, so an approximate per-process limit is enough, and it
must cost no round trip: the point is to keep a flood of reads from reaching Redis or PostgreSQL at all.
The map is bounded; when it is full the oldest half is forgotten (those clients start again full).
"""

from __future__ import annotations

import math
import time

from .errors import ApiError

_MAX_CLIENTS = 50_000


class ReadLimiter:
    def __init__(self, rate: float, burst: int, *, max_clients: int = _MAX_CLIENTS) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, monotonic time)

    def check(self, client: str) -> None:
        """Spends one token of ``client`` or raises 429 with the seconds until one is back."""
        now = time.monotonic()
        tokens, ts = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - ts) * self._rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            retry = max(1, math.ceil((1 - tokens) / self._rate))
            raise ApiError(429, "rate_limited", "too many reads; retry later", headers={"Retry-After": str(retry)})
        if len(self._buckets) >= self._max:
            for key in list(self._buckets)[: self._max // 2]:  # insertion order: least recently seen first
                del self._buckets[key]
        self._buckets[client] = (tokens - 1, now)
