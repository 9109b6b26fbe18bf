"""One reconcile pass of one sale: observe the ledger, the queue and Redis, run the healing plan that
``stampede.healing.decide`` makes of them, observe again and measure what is still unexplained.

This module holds the I/O around the pure decisions; it knows nothing of kopf. It reads the ledger before
Redis (see ``healing.Observation``), applies actions in the plan's order, and counts every unit it heals
in the metrics. Errors from Redis or PostgreSQL propagate as ``DependencyUnavailable`` for the caller to
retry later.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg_pool

from stampede import errors, healing, metrics, restore, sqlfiles
from stampede.healing import LedgerEntry, Observation, Plan
from stampede.ledger import Ledger, batch_payload
from stampede.names import QUEUE_SETTLE, REASON_LOST_BEFORE_ACK, TASK_SETTLE_BATCH
from stampede.stock import Snapshot, StockEngine

from .builders import SaleSpec

log = logging.getLogger(__name__)


def _q() -> dict[str, str]:
    queries: dict[str, str] = sqlfiles.queries("healing.sql")
    return queries


@dataclass
class Outcome:
    """What one pass found and did."""

    snapshot: Snapshot | None
    tally: healing.Tally
    drift: int
    healed: dict[str, int] = field(default_factory=dict)  # action kind -> reservations (or 1 for rebuild)
    unexplained: list[healing.Unexplained] = field(default_factory=list)
    seconds: float = 0.0


async def _fetch(pool: psycopg_pool.AsyncConnectionPool, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(query, params)
            return list(await cur.fetchall())
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
        raise errors.DependencyUnavailable("postgres", str(exc)) from exc


async def ledger_rows_and_jobs(
    pool: psycopg_pool.AsyncConnectionPool, sale: str
) -> tuple[dict[str, LedgerEntry], dict[int, str]]:
    """The sale's ledger rows, and the status of every job they point at (a vanished job is absent),
    read in one snapshot."""
    rows: dict[str, LedgerEntry] = {}
    jobs: dict[int, str] = {}
    for rid, user, qty, status, job, ts, reason, job_status, age in await _fetch(
        pool, _q()["sale_rows"], {"sale": sale}
    ):
        job_id = None if job is None else int(job)
        rows[rid] = LedgerEntry(rid, user, int(qty), status, job_id, int(ts), reason, None if age is None else int(age))
        if job is not None and job_status is not None:
            jobs[int(job)] = str(job_status)
    return rows, jobs


async def ledger_rows(pool: psycopg_pool.AsyncConnectionPool, sale: str) -> dict[str, LedgerEntry]:
    return (await ledger_rows_and_jobs(pool, sale))[0]


async def observe(ledger: Ledger, stock: StockEngine, sale: str, grace_s: int) -> tuple[Observation, Snapshot | None]:
    """The ledger (rows, then their jobs), then Redis (snapshot, reservations, clock)."""
    rows, jobs = await ledger_rows_and_jobs(ledger.pool, sale)
    try:
        snap: Snapshot | None = await stock.snapshot(sale)
    except errors.SaleNotFound:
        snap = None
    redis = {r.reservation_id: r for r in await stock.reservations(sale)} if snap is not None else {}
    now_ms = await stock.now_ms()
    obs = Observation(sale, now_ms, grace_s * 1000, snap is not None, redis, rows, jobs)
    return obs, snap


async def apply(
    ledger: Ledger, stock: StockEngine, spec: SaleSpec, obs: Observation, plan: Plan, *, open_: bool
) -> dict[str, int]:
    """Runs the plan's actions in order; returns reservations healed per action kind."""
    sale = spec.id
    healed: dict[str, int] = {}

    def count(kind: str, n: int) -> None:
        if n:
            healed[kind] = healed.get(kind, 0) + n
            metrics.OPERATOR_HEALED.labels(sale, kind).inc(n)

    for action in plan.actions:
        ids = list(action.reservation_ids)
        extra = {"sale": sale, "action": action.kind, "reservations": len(ids)}
        if action.kind == "rebuild":
            result = await restore.restore_sale(ledger, stock, sale)
            count("rebuild", 1 if result.outcome == restore.RESTORED else 0)
        elif action.kind == "compensate_lost":
            recs = [obs.redis[i] for i in ids]
            won_rows = await _fetch(
                ledger.pool,
                _q()["record_lost"],
                {
                    "sale": sale,
                    "reason": action.reason or REASON_LOST_BEFORE_ACK,
                    "ids": ids,
                    "users": [r.user for r in recs],
                    "quantities": [r.quantity for r in recs],
                    "reserved_at_ms": [r.reserved_at_ms for r in recs],
                },
            )
            won = [str(r[0]) for r in won_rows]
            if won:
                await stock.release(sale, won)
            for rid in won:
                log.warning(
                    "released a reservation the ledger never recorded",
                    extra={"sale": sale, "reservation_id": rid, "reason": action.reason},
                )
            metrics.OPERATOR_COMPENSATIONS.labels(sale, action.reason or REASON_LOST_BEFORE_ACK).inc(len(won))
            count(action.kind, len(won))
        elif action.kind == "compensate":
            reason = action.reason or healing.COMPENSATED
            won = await healing.compensate(ledger, stock, sale, ids, reason)
            for rid in won:
                log.warning("compensated a reservation", extra={"sale": sale, "reservation_id": rid, "reason": reason})
            metrics.OPERATOR_COMPENSATIONS.labels(sale, reason).inc(len(won))
            count(action.kind, len(won))
        elif action.kind == "redefer":
            args = json.dumps(batch_payload_for(sale, ids), separators=(",", ":"))
            ((job_id, n),) = await _fetch(
                ledger.pool,
                _q()["redefer"],
                {"queue": QUEUE_SETTLE, "task": TASK_SETTLE_BATCH, "args": args, "ids": ids},
            )
            log.warning("deferred a new settle job for pending rows", extra={**extra, "job_id": job_id})
            count(action.kind, int(n))
        elif action.kind == "replay_confirm":
            outcomes = await stock.confirm(sale, ids)
            count(action.kind, sum(1 for o in outcomes.values() if o.value == "confirmed"))
        elif action.kind == "replay_release":
            outcomes = await stock.release(sale, ids)
            count(action.kind, sum(1 for o in outcomes.values() if o.value == "released"))
    return healed


def batch_payload_for(sale: str, ids: list[str]) -> dict[str, Any]:
    """The settle_batch payload for ids of one sale (the ledger's own format)."""
    from stampede.ledger import PendingReservation

    payload: dict[str, Any] = batch_payload([PendingReservation(rid, sale, "", 1, 0) for rid in ids])
    return payload


async def reconcile_once(
    ledger: Ledger, stock: StockEngine, spec: SaleSpec, *, open_: bool, batch_max: int = 1000
) -> Outcome:
    """Restore the sale first if Redis lost it (no key, or another Redis run_id than it was restored under:
    a restart or failover may have lost its tail), then observe, heal, observe again; the second
    observation gives the counts and the drift."""
    started = time.monotonic()
    healed: dict[str, int] = {}
    why = await restore.lost(stock, spec.id)
    if why is not None:
        restored = await restore.restore_sale(ledger, stock, spec.id, reason=why)
        if restored.outcome == restore.RESTORED:
            healed["rebuild"] = 1
            metrics.OPERATOR_HEALED.labels(spec.id, "rebuild").inc()
    obs, _ = await observe(ledger, stock, spec.id, spec.grace_s)
    plan = healing.decide(obs, batch_max=batch_max)
    if plan.actions:
        for kind, n in (await apply(ledger, stock, spec, obs, plan, open_=open_)).items():
            healed[kind] = healed.get(kind, 0) + n
        obs, snap = await observe(ledger, stock, spec.id, spec.grace_s)
        plan = healing.decide(obs, batch_max=batch_max)
    else:
        try:
            snap = await stock.snapshot(spec.id)
        except errors.SaleNotFound:
            snap = None
    if snap is None:
        drift = healing.measure_drift(obs, plan, 0, 0)
    else:
        drift = healing.measure_drift(obs, plan, snap.pending, snap.confirmed)
        if not snap.balanced:
            drift += abs(snap.total - (snap.remaining + snap.pending + snap.confirmed))
    seconds = time.monotonic() - started
    metrics.OPERATOR_RECONCILE_SECONDS.labels(spec.id).observe(seconds)
    metrics.OPERATOR_DRIFT.labels(spec.id).set(drift)
    tally = healing.tally(obs.ledger.values())
    if snap is not None:
        for state, units in (
            ("remaining", snap.remaining),
            ("reserved", snap.pending),
            ("confirmed", snap.confirmed),
            ("compensated", tally.compensated),
        ):
            metrics.OPERATOR_STOCK.labels(spec.id, state).set(units)
    return Outcome(snap, tally, drift, healed, plan.unexplained, seconds)


async def phase_counts(ledger: Ledger, stock: StockEngine, spec: SaleSpec) -> tuple[Snapshot | None, int, int]:
    """The sale's snapshot, and the remaining and reserved units its phase is decided on: Redis's, or while
    Redis lost the sale, the ledger's (so a sold-out sale stays SoldOut while it is restored, no flapping)."""
    try:
        snap = await stock.snapshot(spec.id)
    except errors.SaleNotFound:
        counts = await ledger.counts(spec.id)
        reserved = counts[healing.PENDING]
        return None, spec.stock - reserved - counts[healing.CONFIRMED], reserved
    return snap, snap.remaining, snap.pending


async def unfinished_jobs(ledger: Ledger, sale: str) -> int:
    """Jobs still waiting or running for the sale's pending rows."""
    ((n,),) = await _fetch(ledger.pool, _q()["sale_jobs_unfinished"], {"sale": sale})
    return int(n)


async def pending_ids(ledger: Ledger, sale: str) -> list[str]:
    return [r.reservation_id for r in (await ledger_rows(ledger.pool, sale)).values() if r.status == healing.PENDING]
