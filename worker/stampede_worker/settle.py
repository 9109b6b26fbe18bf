"""Settling reservations: the logic of the ``settle_batch`` job, free of procrastinate.

A job names either one shard of one sale (payload v2, what the API's writes defer: ``settle_shard`` claims
the shard's pending rows in chunks until a chunk comes back short) or a list of reservation ids (payload
v1, what the reconciler re-defers: ``settle_batch``). Either way each chunk is settled the same way.

The ledger decides, Redis follows (docs/architecture.md, "Order of truth"). For a batch this means:

1. read each reservation's state in Redis (one pipeline for the batch): a reservation Redis released or
   does not know cannot be honoured, so it is compensated on its own, never taking its neighbours along;
2. move every row still ``pending`` to its outcome in ONE ledger statement; rows already final keep the
   outcome their first writer gave them (a redelivered or recovered job decides nothing twice);
3. make Redis agree with the ledger for every reservation of the batch: confirm the confirmed ones and
   release the compensated ones (both scripts are idempotent, so replaying after a crash between step 2
   and 3 is exactly what heals it, and stock is never returned twice).

A reservation Redis released or does not hold is compensated and the job succeeds (all decided); a
payload that names no real reservations, a sale that is not a sale name or a sale neither Redis nor the
ledger knows is bad input: what it holds is settled (compensated), then the job fails with a clear log
line. A sale the ledger knows but Redis lost is restored first (``stampede.restore``), never compensated.

Errors are sorted into transient (Redis or PostgreSQL unreachable, serialization failure: raise
``Transient`` so procrastinate retries with backoff) and everything else (a refused script, a bug:
compensate what is still pending, then ``SettleFailed``). On the last attempt a transient error also
compensates.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from stampede import compensation, errors, restore
from stampede.domain import Outcome, Settled, Settlement
from stampede.ledger import PAYLOAD_VERSION, Claim, Ledger
from stampede.names import sale_keys
from stampede.redis_errors import UNAVAILABLE
from stampede.stock import StockEngine
from stampede.vocabulary import TAKEN, Reason, RedisState, Status
from stampede_worker import metrics

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    errors.DependencyUnavailable,
    psycopg.OperationalError,
    *UNAVAILABLE,
    ConnectionError,
    TimeoutError,
)


class Transient(Exception):
    """A failure worth retrying: the job is retried later, nothing was decided wrongly."""


class SaleLost(Exception):
    """Redis does not know a sale the ledger knows: it lost it (restart, failover). The claim is rolled back,
    the sale restored from the ledger, and the rows claimed again: never compensated for that."""


class SettleFailed(Exception):
    """The job failed for good; whatever it held that was still pending has been compensated (or, if even
    that failed, is left pending for the reconciler)."""


@dataclass
class Batch:
    """A parsed payload: ids by sale, ids whose sale is unusable, and what was wrong with it."""

    by_sale: dict[str, list[str]] = field(default_factory=dict)
    bad_sale: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def all_ids(self) -> list[str]:
        return [i for ids in self.by_sale.values() for i in ids] + self.bad_sale


@dataclass
class Report:
    confirmed: int = 0  # rows this run moved to confirmed
    held: int = 0  # rows this run moved to held (a sale with checkout holds)
    compensated: int = 0  # rows this run moved to compensated
    replayed: int = 0  # rows already final, outcome replayed to Redis
    disagreements: int = 0  # ledger outcomes Redis refused (left for the reconciler)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "confirmed": self.confirmed,
            "held": self.held,
            "compensated": self.compensated,
            "replayed": self.replayed,
            "disagreements": self.disagreements,
            "problems": self.problems[:5],
        }


def _uuid(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Shard:
    """A v2 payload: the shard of a sale whose pending rows the job claims."""

    sale: str
    shard: int


def parse_shard(payload: Mapping[str, Any]) -> Shard | str:
    """The shard a v2 payload names, or what is wrong with it."""
    sale, shard = payload.get("sale"), payload.get("shard")
    if not isinstance(sale, str):
        return f"sale {sale!r} is not a sale name"
    try:
        sale_keys(sale)
    except ValueError:
        return f"{sale!r} is not a sale name"
    if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < 32768:
        return f"shard {shard!r} is not a shard number"
    return Shard(sale, shard)


def parse_payload(payload: Mapping[str, Any]) -> Batch:
    """Validates the job arguments entry by entry: a bad entry is a problem of its own, never a reason
    to drop the good ones. Duplicate ids are settled once."""
    batch = Batch()
    if payload.get("v") != PAYLOAD_VERSION:
        batch.problems.append(f"payload version {payload.get('v')!r} is not {PAYLOAD_VERSION}")
    sales = payload.get("sales")
    if not isinstance(sales, dict):
        batch.problems.append("payload has no 'sales' object")
        return batch
    seen: set[str] = set()
    for sale, ids in sales.items():
        if not isinstance(ids, list):
            batch.problems.append(f"sale {sale!r}: ids are not a list")
            continue
        good: list[str] = []
        for raw in ids:
            rid = _uuid(raw)
            if rid is None:
                batch.problems.append(f"sale {sale!r}: {raw!r} is not a reservation id")
            elif rid not in seen:
                seen.add(rid)
                good.append(rid)
        try:
            sale_keys(sale)
        except ValueError:
            batch.problems.append(f"{sale!r} is not a sale name")
            batch.bad_sale.extend(good)
            continue
        if good:
            batch.by_sale.setdefault(sale, []).extend(good)
    return batch


async def redis_states(stock: StockEngine, by_sale: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, str | None]]:
    """{sale: ...} -> {reservation_id: (sale, Redis state or None)}; a sale Redis does not know maps
    every id to (sale, 'unknown_sale'). One pipelined round trip for the whole batch."""
    out: dict[str, tuple[str, str | None]] = {}
    for sale, states in (await stock.states(by_sale)).items():
        for rid in by_sale[sale]:
            out[rid] = (sale, Reason.UNKNOWN_SALE if states is None else states[rid])
    return out


async def restore_lost_sales(
    by_sale: Mapping[str, Sequence[str]],
    states: dict[str, tuple[str, str | None]],
    *,
    ledger: Ledger,
    stock: StockEngine,
) -> dict[str, tuple[str, str | None]]:
    """A sale Redis does not know but the ledger does was lost by Redis (restart, failover), not removed:
    it is restored from the ledger (or the restore this process runs is joined) and its reservations are
    read again, so its pending rows are confirmed. While another process restores it the batch is retried
    later (``SaleRestoring`` is transient). Only a sale the ledger does not know, or that was deleted,
    stays ``unknown_sale`` and is compensated."""
    unknown = sorted({sale for sale, state in states.values() if state == Reason.UNKNOWN_SALE})
    again: dict[str, Sequence[str]] = {}
    for sale in unknown:
        result = await restore.restore_sale(ledger, stock, sale)
        if result.outcome == restore.BUSY:
            raise errors.SaleRestoring(sale)
        if result.outcome != restore.GONE:
            again[sale] = by_sale[sale]
    if not again:
        return states
    fresh = await redis_states(stock, again)
    if any(state == Reason.UNKNOWN_SALE for _, state in fresh.values()):
        raise errors.SaleRestoring(next(sale for sale, state in fresh.values() if state == Reason.UNKNOWN_SALE))
    return {**states, **fresh}


def decide(batch: Batch, states: Mapping[str, tuple[str, str | None]]) -> list[Settlement]:
    """The wanted outcome of every reservation of the batch from what Redis holds."""
    wanted: list[Settlement] = []
    for rid, (sale, state) in states.items():
        if state == Reason.UNKNOWN_SALE:
            wanted.append(Settlement(rid, sale, Status.COMPENSATED, Reason.UNKNOWN_SALE))
        elif state is None:
            wanted.append(Settlement(rid, sale, Status.COMPENSATED, Reason.NOT_IN_REDIS))
        elif state == RedisState.RELEASED:
            wanted.append(Settlement(rid, sale, Status.COMPENSATED, Reason.RELEASED_IN_REDIS))
        else:  # pending, or confirmed by an earlier run whose ledger write is what we are redoing
            wanted.append(Settlement(rid, sale, Status.CONFIRMED))
    wanted += [Settlement(rid, None, Status.COMPENSATED, Reason.INVALID_SALE) for rid in batch.bad_sale]
    return wanted


async def follow_in_redis(
    stock: StockEngine, rows: Iterable[Settled], report: Report, job_id: int | None, *, ledger: Ledger
) -> None:
    """Makes Redis agree with the ledger for ``rows`` (confirm / release / expire, one script call per sale
    and outcome, sales in parallel). A hold, paid or not, is an order for Redis; an expired one gives its units
    back (a replay of a job whose rows expired since), with its buyer read from the ledger (Redis may keep the
    reservation only as a compact settled entry, without the buyer)."""
    confirm: dict[str, list[str]] = {}
    release: dict[str, list[str]] = {}
    expire: dict[str, list[str]] = {}
    for r in rows:
        if r.status in TAKEN:
            confirm.setdefault(r.sale, []).append(r.reservation_id)
        elif r.status == Status.COMPENSATED:
            release.setdefault(r.sale, []).append(r.reservation_id)
        elif r.status == Status.EXPIRED:
            expire.setdefault(r.sale, []).append(r.reservation_id)

    async def one(sale: str) -> None:
        try:
            sale_keys(sale)
        except ValueError:
            return  # a sale Redis cannot hold: nothing to follow there
        if sale in confirm:
            for rid, outcome in (await stock.confirm(sale, confirm[sale])).items():
                if outcome in (Outcome.RELEASED, Outcome.UNKNOWN):
                    report.disagreements += 1
                    metrics.WORKER_DISAGREEMENTS.labels(outcome.value).inc()
                    log.error(
                        "ledger confirmed a reservation Redis cannot confirm; left for the reconciler",
                        extra={"sale": sale, "reservation_id": rid, "redis": outcome.value, "job_id": job_id},
                    )
        if sale in release:
            _check_released(sale, await stock.release(sale, release[sale]), report, job_id)
        if sale in expire:
            await stock.expire(sale, {e.reservation_id: e.user for e in await ledger.expired_of(expire[sale])})

    await asyncio.gather(*(one(s) for s in {*confirm, *release, *expire}))


def _check_released(sale: str, outcomes: Mapping[str, Outcome], report: Report, job_id: int | None) -> None:
    """Counts and logs each release Redis refused: the ledger compensated what Redis holds confirmed."""
    for rid, outcome in outcomes.items():
        if outcome is Outcome.REFUSED_CONFIRMED:
            report.disagreements += 1
            metrics.WORKER_DISAGREEMENTS.labels(outcome.value).inc()
            log.error(
                "ledger compensated a reservation Redis holds confirmed; left for the reconciler",
                extra={"sale": sale, "reservation_id": rid, "job_id": job_id},
            )


def _count_compensated(rows: Sequence[Settled], wanted: Sequence[Settlement], job_id: int | None) -> None:
    """Counts and logs each reservation this step moved to compensated, with the reason it was given."""
    reasons = {w.reservation_id: w.reason for w in wanted}
    for r in rows:
        if r.moved and r.status == Status.COMPENSATED:
            reason = reasons.get(r.reservation_id) or Reason.SETTLE_ERROR
            metrics.WORKER_COMPENSATED.labels(reason).inc()
            log.warning(
                "reservation compensated",
                extra={"sale": r.sale, "reservation_id": r.reservation_id, "reason": reason, "job_id": job_id},
            )


def _account(rows: Sequence[Settled], report: Report) -> None:
    """Adds one claim's rows to the job's report and to the metrics; the metrics get this claim's counts
    only, since a job settles several claims and its report runs on across them."""
    part = Report()
    for r in rows:
        if not r.moved:
            if r.status != Status.PENDING:
                part.replayed += 1
            continue
        if r.lag_s is not None:
            metrics.WORKER_SETTLE_LAG.observe(r.lag_s)
        if r.status == Status.CONFIRMED:
            part.confirmed += 1
        elif r.status == Status.HELD:
            part.held += 1
        else:
            part.compensated += 1
    report.confirmed += part.confirmed
    report.held += part.held
    report.compensated += part.compensated
    report.replayed += part.replayed
    metrics.WORKER_RESERVATIONS.labels(Status.CONFIRMED).inc(part.confirmed)
    metrics.WORKER_RESERVATIONS.labels(Status.HELD).inc(part.held)
    metrics.WORKER_HOLDS.labels(Status.HELD).inc(part.held)
    metrics.WORKER_RESERVATIONS.labels(Status.COMPENSATED).inc(part.compensated)
    metrics.WORKER_REPLAYED.inc(part.replayed)


async def _settle(
    batch: Batch, *, ledger: Ledger, stock: StockEngine, attempt: int, job_id: int | None, fault_sleep_ms: int
) -> Report:
    report = Report(problems=list(batch.problems))
    states = await redis_states(stock, batch.by_sale) if batch.by_sale else {}
    states = await restore_lost_sales(batch.by_sale, states, ledger=ledger, stock=stock)
    wanted = decide(batch, states)
    rows = await ledger.settle(wanted, attempt=attempt)
    unmoved = [r.reservation_id for r in rows if r.status == Status.PENDING]
    if unmoved:
        # Seen pending in the statement's snapshot but not moved: either another writer (a duplicate job,
        # the reconciler) moved them first, or the payload's sale is not theirs. A fresh read tells which.
        fresh = {r.reservation_id: r for r in await ledger.current(unmoved)}
        rows = [fresh.get(r.reservation_id, r) if r.status == Status.PENDING else r for r in rows]
    _account(rows, report)
    _count_compensated(rows, wanted, job_id)
    report.problems.extend(
        f"{r.reservation_id}: payload sale does not match the ledger's {r.sale!r}"
        for r in rows
        if r.status == Status.PENDING
    )
    # A sale Redis does not know is bad input, not a buyer's bad luck: its reservations were compensated
    # above, each on its own, and the job is then failed so the bad producer shows up (settle_batch).
    unknown = sorted({sale for sale, state in states.values() if state == Reason.UNKNOWN_SALE})
    if unknown:
        report.problems.append(f"sales unknown to Redis: {', '.join(unknown[:5])}")
    known = {r.reservation_id for r in rows}
    missing = [w.reservation_id for w in wanted if w.reservation_id not in known]
    if missing:
        report.problems.append(f"{len(missing)} ids are not in the ledger (e.g. {missing[0]})")
    if fault_sleep_ms:
        await asyncio.sleep(fault_sleep_ms / 1000)
    await follow_in_redis(stock, rows, report, job_id, ledger=ledger)
    return report


async def _settle_chunk(
    claim: Claim, sale: str, report: Report, *, ledger: Ledger, stock: StockEngine, attempt: int, job_id: int | None
) -> list[Settled]:
    """Decides the claimed rows from their Redis state and moves them on the claim's transaction."""
    batch = Batch(by_sale={sale: [r.reservation_id for r in claim.rows]})
    states = await redis_states(stock, batch.by_sale)
    if any(state == Reason.UNKNOWN_SALE for _, state in states.values()) and await ledger.sale_exists(sale):
        raise SaleLost(sale)  # restored outside this claim's transaction, which this rolls back
    wanted = decide(batch, states)
    rows = await ledger.settle(wanted, attempt=attempt, job_id=job_id, claim=claim)
    _account(rows, report)
    _count_compensated(rows, wanted, job_id)
    if any(state == Reason.UNKNOWN_SALE for _, state in states.values()):
        problem = f"sales unknown to Redis: {sale}"
        if problem not in report.problems:
            report.problems.append(problem)
    return rows


async def settle_shard(
    shard: Shard,
    *,
    ledger: Ledger,
    stock: StockEngine,
    claim_max: int,
    attempt: int = 1,
    final: bool = False,
    job_id: int | None = None,
    fault_sleep_ms: int = 0,
    fault_claim_sleep_ms: int = 0,
) -> Report:
    """Settles the pending rows of one shard of a sale, ``claim_max`` at a time, until a claim comes back
    short: every row that joined this job is then settled (rows joining later join the next waiting job).

    Each chunk is one transaction: claim (rows locked), read Redis, move the rows (stamped with this job's
    id), commit; then Redis follows. A process killed inside a chunk leaves its rows pending and unlocked
    for the next claim; one killed after the commit leaves outcomes Redis has not heard of, which the
    job's re-run (stalled recovery) replays first. A transient error rolls the chunk back and the job is
    retried; on the last attempt, or on any other error, the chunk's rows are compensated."""
    report = Report()
    sale = shard.sale
    try:
        if attempt > 1 and job_id is not None:
            replay = await ledger.settled_of_job(job_id)
            report.replayed += len(replay)
            await follow_in_redis(stock, replay, report, job_id, ledger=ledger)
        await ledger.settle_barrier(sale, shard.shard)
    except TRANSIENT_ERRORS as exc:
        # Nothing decided yet: whatever the attempt, the job is worth running again (the reconciler
        # replays outcomes and re-defers rows if it never does).
        raise Transient(f"{type(exc).__name__}: {exc}") from exc
    restored = False
    while True:
        claimed: list[str] = []
        try:
            async with ledger.claim(sale, shard.shard, claim_max) as claim:
                claimed = [r.reservation_id for r in claim.rows]
                if not claimed:
                    break
                if fault_claim_sleep_ms:
                    await asyncio.sleep(fault_claim_sleep_ms / 1000)
                rows = await _settle_chunk(
                    claim, sale, report, ledger=ledger, stock=stock, attempt=attempt, job_id=job_id
                )
        except SaleLost:
            try:
                result = await restore.restore_sale(ledger, stock, sale)
            except TRANSIENT_ERRORS as exc:
                raise Transient(f"{type(exc).__name__}: {exc}") from exc
            if restored or result.outcome == restore.BUSY:
                raise Transient(f"sale {sale!r} is being restored") from None  # retried with backoff
            restored = True
            continue
        except TRANSIENT_ERRORS as exc:
            if not final:
                raise Transient(f"{type(exc).__name__}: {exc}") from exc
            log.error("settle_batch retries exhausted: compensating", extra={"job_id": job_id, "error": str(exc)})
            await _give_up(
                Batch(by_sale={sale: claimed}),
                Reason.RETRIES_EXHAUSTED,
                ledger=ledger,
                stock=stock,
                attempt=attempt,
                job_id=job_id,
            )
            raise SettleFailed(f"retries exhausted: {exc}") from exc
        except Exception as exc:
            log.exception("settle_batch failed for good: compensating", extra={"job_id": job_id, "sale": sale})
            await _give_up(
                Batch(by_sale={sale: claimed}),
                Reason.SETTLE_ERROR,
                ledger=ledger,
                stock=stock,
                attempt=attempt,
                job_id=job_id,
            )
            raise SettleFailed(f"{type(exc).__name__}: {exc}") from exc
        metrics.WORKER_CLAIM_SIZE.observe(len(claimed))
        if fault_sleep_ms:
            await asyncio.sleep(fault_sleep_ms / 1000)
        try:
            await follow_in_redis(stock, rows, report, job_id, ledger=ledger)
        except TRANSIENT_ERRORS as exc:
            # The ledger decided; only Redis is behind. A re-run replays this job's rows first.
            raise Transient(f"{type(exc).__name__}: {exc}") from exc
        if len(claimed) < claim_max or not any(r.moved for r in rows):
            # A short claim took every row that joined this job. A chunk that moved nothing would come
            # back identical: rows left pending on purpose are not this job's to spin on.
            break
    if report.problems:
        log.error(
            "settle_batch had bad input: settled what it could, failing the job",
            extra={"job_id": job_id, "sale": sale, "problems": report.problems[:10], "settled": report.as_dict()},
        )
        raise SettleFailed(f"bad input: {'; '.join(report.problems[:3])}")
    return report


async def compensate_all(
    batch: Batch, reason: Reason, *, ledger: Ledger, stock: StockEngine, attempt: int, job_id: int | None
) -> Report:
    """Gives up on the batch: every reservation still pending becomes ``compensated`` with ``reason``
    (``stampede.compensation``: released in Redis only where this move won); outcomes decided earlier
    are replayed to Redis."""
    report = Report(problems=list(batch.problems))
    done = await compensation.compensate(ledger, stock, batch.all_ids(), reason, sale=None, attempt=attempt)
    _account(done.rows, report)
    for r in done.rows:
        if r.moved:
            metrics.WORKER_COMPENSATED.labels(reason).inc()
            log.warning(
                "reservation compensated",
                extra={"sale": r.sale, "reservation_id": r.reservation_id, "reason": reason, "job_id": job_id},
            )
    for sale, outcomes in done.released.items():
        _check_released(sale, outcomes, report, job_id)
    await follow_in_redis(stock, [r for r in done.rows if not r.moved], report, job_id, ledger=ledger)
    return report


async def settle_batch(
    payload: Mapping[str, Any],
    *,
    ledger: Ledger,
    stock: StockEngine,
    attempt: int = 1,
    final: bool = False,
    job_id: int | None = None,
    fault_sleep_ms: int = 0,
) -> Report:
    """Settles every reservation of one job. ``attempt`` counts from 1; ``final`` says no retry follows
    (a transient error then compensates instead of raising ``Transient``)."""
    batch = parse_payload(payload)
    for problem in batch.problems:
        log.error("malformed settle_batch payload", extra={"job_id": job_id, "problem": problem})
    try:
        report = await _settle(
            batch, ledger=ledger, stock=stock, attempt=attempt, job_id=job_id, fault_sleep_ms=fault_sleep_ms
        )
    except TRANSIENT_ERRORS as exc:
        if not final:
            raise Transient(f"{type(exc).__name__}: {exc}") from exc
        log.error("settle_batch retries exhausted: compensating", extra={"job_id": job_id, "error": str(exc)})
        await _give_up(batch, Reason.RETRIES_EXHAUSTED, ledger=ledger, stock=stock, attempt=attempt, job_id=job_id)
        raise SettleFailed(f"retries exhausted: {exc}") from exc
    except Exception as exc:
        log.exception("settle_batch failed for good: compensating", extra={"job_id": job_id})
        await _give_up(batch, Reason.SETTLE_ERROR, ledger=ledger, stock=stock, attempt=attempt, job_id=job_id)
        raise SettleFailed(f"{type(exc).__name__}: {exc}") from exc
    if report.problems:
        log.error(
            "settle_batch had bad input: settled what it could, failing the job",
            extra={"job_id": job_id, "problems": report.problems[:10], "settled": report.as_dict()},
        )
        raise SettleFailed(f"bad input: {'; '.join(report.problems[:3])}")
    return report


async def _give_up(
    batch: Batch, reason: Reason, *, ledger: Ledger, stock: StockEngine, attempt: int, job_id: int | None
) -> None:
    try:
        await compensate_all(batch, reason, ledger=ledger, stock=stock, attempt=attempt, job_id=job_id)
    except Exception:
        # Left pending (or not followed in Redis): the reconciler sweeps failed jobs and replays outcomes.
        log.exception("compensation failed; the reconciler will finish it", extra={"job_id": job_id})
