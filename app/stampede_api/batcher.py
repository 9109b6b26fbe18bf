"""The per-process micro-batch flusher that makes "202" mean "durable".

Every accepted reservation joins the batch of its process. A single flusher task takes everything that
is waiting, writes it in one ledger transaction (pending rows and one settle job), and only then
resolves every waiting request. There is no linger timer: a flush starts as soon as the previous one
ends, so under load batches grow by themselves to whatever arrived during the last commit, and at low
load a lone request is written at once. One transaction per batch instead of one per request is what
lets a 2-core box commit thousands of reservations a second.

If the write fails, the batch's units go back to Redis at once (``release.lua``), their idempotency
keys are forgotten so a retry with the same key reserves afresh, and every waiter gets
``DependencyUnavailable`` (503 with Retry-After). If even the release fails, the reconciler heals it.

A write that waited on PostgreSQL longer than the reconciler's grace period can lose a race: the
reconciler saw some of the batch's reservations in Redis with no ledger row, recorded them
``lost_before_ack`` and gave their stock back. The write then commits around those rows (it keeps the
first row of an id) and reports which ids it inserted; only those get their 202. The others get 503 with
Retry-After like a failed write, their idempotency keys forgotten, their stock not released again (the
reconciler did that).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stampede import errors, metrics
from stampede.names import sale_keys
from stampede.stock import StockEngine
from stampede_api.flusher import SingleFlusher

log = logging.getLogger("stampede_api.batcher")


class BatchWriter(Protocol):
    async def record_batch(self, reservations: Sequence[Any]) -> Any: ...  # stampede.ledger.RecordedBatch


@dataclass(slots=True)
class _Item:
    reservation: Any  # stampede.ledger.PendingReservation
    idempotency_key: str | None
    request_id: str | None
    future: asyncio.Future[None]


class Batcher(SingleFlusher[_Item]):
    """One per worker process, created inside its event loop (ASGI lifespan startup)."""

    def __init__(
        self, ledger: BatchWriter, stock: StockEngine, *, max_batch: int = 2000, fault_exit_after: int = 0
    ) -> None:
        super().__init__(max_batch, "stampede-batch-flusher")
        self._ledger = ledger
        self._stock = stock
        # Fault injection (tests only): die after this many reserves, with a batch reserved in Redis but
        # not yet written — the crash the reconciler's `lost_before_ack` healing exists for.
        self._fault_exit_after = fault_exit_after
        self._submitted = 0
        self._closing = False
        # reservation id -> the future of its write, so an idempotent replay arriving while the first
        # attempt is still in this process's batch waits for it instead of answering early.
        self.inflight: dict[str, asyncio.Future[None]] = {}

    async def submit(
        self, reservation: Any, *, idempotency_key: str | None = None, request_id: str | None = None
    ) -> None:
        """Returns once the reservation is committed in the ledger; raises DependencyUnavailable if
        the write failed (its stock is already released then)."""
        if self._closing:
            await self._release([_Item(reservation, idempotency_key, request_id, asyncio.Future())])
            raise errors.DependencyUnavailable("api", "shutting down")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submitted += 1
        self.inflight[reservation.reservation_id] = fut
        self._enqueue(_Item(reservation, idempotency_key, request_id, fut))
        # The write goes on even if the client goes away: the shield keeps the future alive, and the
        # answer (commit or release) is decided for the batch, never for one cancelled request.
        await asyncio.shield(fut)

    async def wait_for(self, reservation_id: str) -> bool | None:
        """For a replay: waits for the id's write if it is in flight here. None: not in flight here;
        True: committed; False: the write failed (released)."""
        fut = self.inflight.get(reservation_id)
        if fut is None:
            return None
        try:
            await asyncio.shield(fut)
        except errors.DependencyUnavailable:
            return False
        return True

    async def close(self) -> None:
        """Stops taking new reservations and waits for the batch being written."""
        self._closing = True
        task = self._task
        if task is not None:
            await asyncio.wait({task}, timeout=30)

    async def _flush(self, batch: list[_Item]) -> None:
        if self._fault_exit_after and self._submitted >= self._fault_exit_after:
            log.error("fault injection: exiting between reserve and ledger write", extra={"batch": len(batch)})
            os._exit(70)
        t0 = time.perf_counter()
        failure: BaseException | None = None
        inserted: frozenset[str] = frozenset()
        try:
            inserted = (await self._ledger.record_batch([i.reservation for i in batch])).inserted
        except asyncio.CancelledError:
            failure = errors.DependencyUnavailable("postgresql", "write cancelled")
        except Exception as exc:  # any failure means nothing of the batch was committed
            failure = exc
        metrics.API_BATCH_SIZE.observe(len(batch))
        metrics.API_BATCH_SECONDS.observe(time.perf_counter() - t0)
        if failure is None:
            lost = [i for i in batch if i.reservation.reservation_id not in inserted]
            if lost:
                await self._release(lost, give_back=False)
            for item in batch:
                rid = item.reservation.reservation_id
                self.inflight.pop(rid, None)
                if item.future.done():
                    continue
                if rid in inserted:
                    item.future.set_result(None)
                else:
                    log.warning(
                        "reservation recorded lost before this write committed; not acknowledged",
                        extra={"sale": item.reservation.sale, "reservation_id": rid, "request_id": item.request_id},
                    )
                    item.future.set_exception(
                        errors.DependencyUnavailable("postgresql", "the ledger write came after the reconciler")
                    )
                    item.future.exception()
            return
        log.error(
            "ledger batch write failed; releasing the batch",
            exc_info=failure if not isinstance(failure, errors.DependencyUnavailable) else None,
            extra={"batch": len(batch), "error": str(failure), "request_id": batch[0].request_id},
        )
        await self._release(batch)
        for item in batch:
            metrics.API_DEFER_FAILURES.labels(item.reservation.sale).inc()
            self.inflight.pop(item.reservation.reservation_id, None)
            if not item.future.done():
                item.future.set_exception(errors.DependencyUnavailable("postgresql", str(failure)))
                # Retrieved here so an abandoned future (client gone) never logs "never retrieved".
                item.future.exception()

    async def _release(self, batch: Sequence[_Item], *, give_back: bool = True) -> None:
        """Gives the units back and forgets the idempotency keys (so a retry is a fresh attempt). With
        ``give_back=False`` only the keys are forgotten: the reconciler already released the units."""
        by_sale: dict[str, list[_Item]] = defaultdict(list)
        for item in batch:
            by_sale[item.reservation.sale].append(item)
        for sale, items in by_sale.items():
            ids = [i.reservation.reservation_id for i in items]
            try:
                if give_back:
                    await self._stock.release(sale, ids)
                keyed = [f"{i.reservation.user}\0{i.idempotency_key}" for i in items if i.idempotency_key]
                if keyed:
                    await self._stock.client.hdel(sale_keys(sale).idempotency, *keyed)
            except Exception as exc:
                # The reconciler releases reservations that have no ledger row after its grace period.
                log.error(
                    "release after a failed write failed; left to the reconciler",
                    extra={"sale": sale, "reservation_id": ids[0], "count": len(ids), "error": str(exc)},
                )
            else:
                for rid in ids if give_back else ():
                    log.warning("released after failed write", extra={"sale": sale, "reservation_id": rid})
