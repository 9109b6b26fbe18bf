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
Retry-After like a failed write and their idempotency keys are forgotten; the release is a no-op for
their units (``already``), which the reconciler gave back.
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

from stampede import errors
from stampede.ledger import PendingReservation, RecordedBatch
from stampede.stock import StockEngine
from stampede.vocabulary import Dependency
from stampede_api import metrics
from stampede_api.flusher import SingleFlusher, fail

log = logging.getLogger("stampede_api.batcher")


class BatchWriter(Protocol):
    """What the batcher needs of the ledger (``Ledger``, or a test's wrapper of it)."""

    async def record_batch(self, reservations: Sequence[PendingReservation]) -> RecordedBatch: ...


@dataclass(slots=True)
class _Item:
    reservation: PendingReservation
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
            raise errors.DependencyUnavailable(Dependency.API, "shutting down")
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

    def _abandon(self, batch: list[_Item], exc: BaseException) -> None:
        for item in batch:
            self.inflight.pop(getattr(item.reservation, "reservation_id", ""), None)
        super()._abandon(batch, exc)

    async def _flush(self, batch: list[_Item]) -> None:
        if self._fault_exit_after and self._submitted >= self._fault_exit_after:
            log.error("fault injection: exiting between reserve and ledger write", extra={"batch": len(batch)})
            os._exit(70)
        t0 = time.perf_counter()
        failure = await self._write(batch)
        metrics.API_BATCH_SIZE.observe(len(batch))
        metrics.API_BATCH_SECONDS.observe(time.perf_counter() - t0)
        if not isinstance(failure, BaseException):
            await self._acknowledge(batch, failure)
            return
        if not isinstance(failure, errors.DependencyUnavailable) and len(batch) > 1:
            # Not the database's fault but something in the batch (a row PostgreSQL refuses, a value that
            # cannot be encoded): write the halves apart, so only the entry at fault fails, alone.
            log.warning(
                "ledger refused a batch; writing its halves apart",
                extra={"batch": len(batch), "error": str(failure), "request_id": batch[0].request_id},
            )
            await self._bisect(batch)
            return
        await self._fail(batch, failure)

    async def _bisect(self, batch: list[_Item]) -> None:
        for half in (batch[: len(batch) // 2], batch[len(batch) // 2 :]):
            failure = await self._write(half)
            if not isinstance(failure, BaseException):
                await self._acknowledge(half, failure)
            elif isinstance(failure, errors.DependencyUnavailable) or len(half) == 1:
                await self._fail(half, failure)
            else:
                await self._bisect(half)

    async def _write(self, batch: list[_Item]) -> frozenset[str] | BaseException:
        """One ledger transaction for the batch: the ids it inserted, or the failure (then nothing was
        committed)."""
        try:
            written = await self._ledger.record_batch([i.reservation for i in batch])
        except asyncio.CancelledError:
            return errors.DependencyUnavailable(Dependency.POSTGRESQL, "write cancelled")
        except Exception as exc:
            return exc
        inserted: frozenset[str] = written.inserted
        return inserted

    async def _acknowledge(self, batch: list[_Item], inserted: frozenset[str]) -> None:
        """202 for the ids this write inserted; 503 for the ones the reconciler recorded lost first."""
        lost = [i for i in batch if i.reservation.reservation_id not in inserted]
        if not lost:
            self._answer(batch, None)
            return
        self._answer([i for i in batch if i.reservation.reservation_id in inserted], None)
        for item in lost:
            log.warning(
                "reservation recorded lost before this write committed; not acknowledged",
                extra={
                    "sale": item.reservation.sale,
                    "reservation_id": item.reservation.reservation_id,
                    "request_id": item.request_id,
                },
            )
        try:
            await self._release(lost)  # forgets the keys; the units are already back ("already")
        except Exception:
            log.exception("forgetting the keys of lost reservations broke", extra={"batch": len(lost)})
        self._answer(
            lost, errors.DependencyUnavailable(Dependency.POSTGRESQL, "the ledger write came after the reconciler")
        )

    def _answer(self, batch: list[_Item], exc: BaseException | None) -> None:
        for item in batch:
            self.inflight.pop(getattr(item.reservation, "reservation_id", ""), None)
            if item.future.done():
                continue
            if exc is None:
                item.future.set_result(None)
            else:
                fail(item.future, exc)

    async def _fail(self, batch: list[_Item], failure: BaseException) -> None:
        log.error(
            "ledger batch write failed; releasing the batch",
            exc_info=failure if not isinstance(failure, errors.DependencyUnavailable) else None,
            extra={"batch": len(batch), "error": str(failure), "request_id": batch[0].request_id},
        )
        try:
            await self._release(batch)
            for item in batch:
                metrics.API_DEFER_FAILURES.labels(item.reservation.sale).inc()
        except Exception:
            # A malformed entry (a bug) must not keep its buyer, or the rest of the batch, waiting.
            log.exception(
                "releasing a failed batch broke; its waiters are answered anyway", extra={"batch": len(batch)}
            )
        if isinstance(failure, errors.DependencyUnavailable):
            answer: errors.StampedeError = errors.DependencyUnavailable(Dependency.POSTGRESQL, str(failure))
        elif isinstance(failure, errors.InvalidArgument):
            # One reservation the ledger refuses on its own: its buyer hears why, without internals.
            answer = errors.InvalidArgument("reservation", "refused by the ledger")
        else:
            answer = errors.DependencyUnavailable(Dependency.POSTGRESQL, f"{type(failure).__name__} writing the batch")
        self._answer(batch, answer)

    async def _release(self, batch: Sequence[_Item]) -> None:
        """Gives the units back and forgets the idempotency keys (so a retry is a fresh attempt)."""
        by_sale: dict[str, list[_Item]] = defaultdict(list)
        for item in batch:
            by_sale[item.reservation.sale].append(item)
        for sale, items in by_sale.items():
            ids = [i.reservation.reservation_id for i in items]
            forget = {
                i.reservation.reservation_id: (i.reservation.user, i.idempotency_key)
                for i in items
                if i.idempotency_key
            }
            try:
                # One script: the units back and the keys forgotten together, or neither.
                await self._stock.release(sale, ids, forget=forget)
            except Exception as exc:
                # The reconciler releases reservations that have no ledger row after its grace period.
                log.error(
                    "release after a failed write failed; left to the reconciler",
                    extra={"sale": sale, "reservation_id": ids[0], "count": len(ids), "error": str(exc)},
                )
            else:
                for rid in ids:
                    log.warning("released after failed write", extra={"sale": sale, "reservation_id": rid})
