"""Coalesced reserves: every ``reserve.lua`` call waiting in this process goes to Redis in one pipeline.

Measured on the 2-core box, one ``StockEngine.reserve`` through redis-py's asyncio client costs about
85 µs of client CPU (pool checkout, timeout contexts, retry wrapper, one socket write and read), while
the same EVALSHA sent 32 at a time in a pipeline costs about 22 µs each. Under a spike the API process
is the bottleneck, so it batches the way the ledger writer does: a single flusher task takes whatever
is waiting, hands it to ``StockEngine.reserve_batch`` (one pipeline per Redis master, no MULTI: each
script is atomic on its own, and the scripts of different buyers need not be atomic together; on a
cluster with replicas acknowledging, one ``WAIT`` per pipeline), and resolves each waiter with its own
typed result. There is no linger timer: a lone request goes at once, and under load a batch is whatever
arrived during the previous round trip. The engine writes each pipeline as one buffer it encodes itself
(redis-py's generic command packing was the largest single cost in a profile of the request path),
skipping the per-call pool checkout and retry wrapper of redis-py's pipeline object; a connection that
fails (or a round trip that is cancelled half way) is dropped.

Once Redis has answered that a sale has no unit left, the process answers ``sold_out`` for that sale
on its own for ``sold_out_cache_ms`` (100 ms by default) instead of asking again: after a sell-out
nearly every request is a refusal, and this spares each its Redis round trip. A request carrying an
Idempotency-Key always asks Redis (it may be the replay of an accepted reservation). A unit that comes
back (a compensation, a restock) is offered again at most that long after; the answer "sold out" was
true a moment before, which is all a refusal ever promises.

The script, its keys, its answer codes and the connections are the stock engine's (``stampede.stock``,
``StockEngine.reserve_batch``: one connection per master per batch); the answer is mapped to the same
``Reservation`` or domain error that ``StockEngine.reserve`` returns.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from stampede import errors
from stampede.stock import Reservation, ReserveCall, StockEngine, reserve_call
from stampede.vocabulary import Dependency
from stampede_api.flusher import SingleFlusher, fail


@dataclass(slots=True)
class _Call:
    call: ReserveCall
    future: asyncio.Future[Any]


class ReserveCoalescer(SingleFlusher[_Call]):
    """One per worker process, created inside its event loop."""

    def __init__(self, stock: StockEngine, *, max_batch: int = 256, sold_out_cache_ms: int = 0) -> None:
        super().__init__(max_batch, "stampede-reserve-flusher")
        self._stock = stock
        self._sold_out_ttl = sold_out_cache_ms / 1000
        self._sold_out: dict[str, float] = {}  # sale -> monotonic time until which it is known sold out

    async def reserve(
        self,
        sale: str,
        user: str,
        quantity: int,
        *,
        idempotency_key: str | None = None,
        client_ip: str | None = None,
        admission_expires_ms: int | None = None,
    ) -> Reservation:
        rc = reserve_call(
            sale,
            user,
            quantity,
            idempotency_key=idempotency_key,
            client_ip=client_ip,
            admission_expires_ms=admission_expires_ms,
        )
        if idempotency_key is None and self._sold_out:
            until = self._sold_out.get(sale)
            if until is not None:
                if time.monotonic() < until:
                    raise errors.SoldOut(sale, 0)
                del self._sold_out[sale]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Call(rc, fut))
        # Shielded: a client that goes away must not cancel the round trip of its neighbours.
        raw = await asyncio.shield(fut)
        try:
            return rc.answer(raw)
        except errors.SoldOut as exc:
            if exc.remaining == 0 and self._sold_out_ttl > 0:
                self._sold_out[sale] = time.monotonic() + self._sold_out_ttl
            raise

    async def _flush(self, batch: list[_Call]) -> None:
        # Each call is checked on its own: one that cannot be encoded (a bug let a bad string through) is
        # answered alone, and its neighbours still go to Redis. ASCII always encodes, so only the rest is tried.
        good: list[_Call] = []
        for call in batch:
            try:
                for part in (*call.call.keys, *call.call.args):
                    if isinstance(part, str) and not part.isascii():
                        part.encode()
                good.append(call)
            except (UnicodeError, TypeError, ValueError):
                fail(call.future, errors.InvalidArgument("request", "cannot be sent to the stock engine"))
        if not good:
            return
        try:
            results = await self._stock.reserve_batch([c.call for c in good])
        except asyncio.CancelledError:
            for call in good:
                fail(call.future, errors.DependencyUnavailable(Dependency.REDIS, "cancelled"))
            raise
        for call, result in zip(good, results, strict=True):
            if call.future.done():
                continue
            if isinstance(result, BaseException):
                fail(call.future, result)
            else:
                call.future.set_result(result)

    async def close(self) -> None:
        """Nothing of its own to close: connections are the stock engine's, taken per batch."""
