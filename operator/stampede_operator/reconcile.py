"""One reconcile pass of one sale: observe the ledger, the queue and Redis where something can be wrong, run
the healing plan that ``stampede.healing.decide`` makes of it, observe again and measure what is still
unexplained.

A pass costs what changed, not the sale's size (docs/architecture.md, "Incremental reconciler"). It reads:

- the counts, as aggregates: the ledger's units by status (``Ledger.tally``: the pending rows through
  their partial index, the settled totals kept by the settling statements) and Redis's counters;
- the single reservations where something can be wrong: pending ledger rows older than the grace period
  whose job will not settle them, and the pending Redis reservations older than the grace period (the
  time-ordered set of pending ids, read a window at a time from a cursor kept between passes, so a long
  backlog is walked through rather than re-read) — each seen on both sides, its ledger row and its Redis
  record;
- only when the counts of a quiet sale disagree, the sale's settled rows and Redis reservations, streamed
  in chunks, to name the reservations behind the difference; once per distinct disagreement.

A sale whose keys Redis lost is rebuilt from the ledger (``rebuild_pass``, the one path that reads every
row). This module holds the I/O around the pure decisions; it knows nothing of kopf. Errors from Redis or
PostgreSQL propagate as ``DependencyUnavailable`` for the caller to retry later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from stampede import compensation, domain, errors, healing, restore
from stampede.healing import Observation, Plan
from stampede.ledger import Ledger, entries
from stampede.stock import Snapshot, StockEngine
from stampede.vocabulary import TAKEN, Reason, Status
from stampede_operator import metrics

from .builders import SaleSpec

log = logging.getLogger(__name__)

# Reservations one pass looks at on each side (the oldest first); the rest wait for the next pass.
SCAN_MAX = 5000
# Rows per chunk when the reconciler streams a sale to name the reservations behind a disagreement.
EXPLAIN_CHUNK = 5000
# Reservations named per disagreement (the drift counts them all; the report shows a sample).
EXPLAIN_KEEP = 100


@dataclass
class Outcome:
    """What one pass found and did."""

    snapshot: Snapshot | None
    tally: healing.Tally
    drift: int
    healed: dict[str, int] = field(default_factory=dict)  # action kind -> reservations (or 1 for rebuild)
    unexplained: list[healing.Unexplained] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class PassState:
    """What a sale's passes carry from one to the next (kept in the sale's memo by the caller).

    ``redis_after``: the (reserved_at_ms, id) of the pending-set entry the next pass resumes after (None:
    from the oldest). A pass reads at most ``scan_max`` old pending reservations; when it read fewer, the
    next one starts over.
    ``explained``: the counts of the last disagreement the reconciler streamed the sale for, and the
    reservations it named, reused while those counts stay the same."""

    redis_after: tuple[int, str] | None = None
    explained: tuple[tuple[int, ...], int, list[healing.Unexplained]] | None = None


@dataclass(frozen=True, slots=True)
class View:
    """One partial observation and what came with it."""

    obs: Observation
    snapshot: Snapshot | None
    next_after: tuple[int, str] | None  # where the next pass resumes the pending set


async def observe(
    ledger: Ledger,
    stock: StockEngine,
    sale: str,
    grace_s: int,
    *,
    after: tuple[int, str] | None = None,
    scan_max: int = SCAN_MAX,
) -> View:
    """The sale where something can be wrong, in two round trips when it is quiet: Redis (clock, counters,
    the young pending count, a window of the old pending set: one script), then the ledger (its counts and
    its suspect pending rows with their jobs' statuses: one statement); then, only if there
    are suspects, each on its other side. The cutoff comes from Redis's clock, the one reservations are
    stamped with. Each suspect is seen on both sides whatever the order: a Redis reservation whose ledger
    row appears after Redis was read is older than the grace period, so its writer is gone; a row settled in
    between is fresh and left to its writer (``healing.decide``)."""
    grace_ms = grace_s * 1000
    red = await stock.suspects(sale, grace_ms, after, scan_max)
    cutoff = red.now_ms - grace_ms
    jobs: dict[int, str] = {}
    tally, suspects = await ledger.suspects(sale, cutoff_ms=cutoff, limit=scan_max)
    rows = entries(suspects, jobs)
    if red.snapshot is None:
        return View(Observation(sale, red.now_ms, grace_ms, False, {}, rows, jobs, tally, 0), None, None)
    window = red.window
    next_after = (window[-1][1], window[-1][0]) if len(window) >= scan_max else None
    unseen = [rid for rid, _ in window if rid not in rows]
    if unseen:
        found, found_jobs = await ledger.entries_by_id(sale, unseen)
        rows.update(found)
        jobs.update(found_jobs)
    ids = rows.keys() | {rid for rid, _ in window}
    redis = await stock.records(sale, sorted(ids)) if ids else {}
    # An old Redis reservation its settler has just moved in the ledger is in flight too: Redis follows.
    fresh = sum(
        1
        for rid, _ in window
        if (row := rows.get(rid)) is not None
        and row.status != Status.PENDING
        and row.settled_age_ms is not None
        and row.settled_age_ms < grace_ms
    )
    obs = Observation(sale, red.now_ms, grace_ms, True, redis, rows, jobs, tally, red.young + fresh)
    return View(obs, red.snapshot, next_after)


async def observe_lost(ledger: Ledger, stock: StockEngine, sale: str, grace_s: int) -> Observation:
    """A sale whose keys Redis lost: every row of the ledger (what the rebuild writes back) and its jobs."""
    rows, jobs = await ledger.sale_entries(sale)
    return Observation(sale, await stock.now_ms(), grace_s * 1000, False, {}, rows, jobs)


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
            won = await ledger.record_lost(sale, [obs.redis[i] for i in ids], action.reason or Reason.LOST_BEFORE_ACK)
            if won:
                await stock.release(sale, won)
            for rid in won:
                log.warning(
                    "released a reservation the ledger never recorded",
                    extra={"sale": sale, "reservation_id": rid, "reason": action.reason},
                )
            metrics.OPERATOR_COMPENSATIONS.labels(sale, action.reason or Reason.LOST_BEFORE_ACK).inc(len(won))
            count(action.kind, len(won))
        elif action.kind == "compensate":
            reason = action.reason or Reason.JOB_FAILED
            won = (await compensation.compensate(ledger, stock, ids, reason, sale=sale)).won
            for rid in won:
                log.warning("compensated a reservation", extra={"sale": sale, "reservation_id": rid, "reason": reason})
            metrics.OPERATOR_COMPENSATIONS.labels(sale, reason).inc(len(won))
            count(action.kind, len(won))
        elif action.kind == "redefer":
            job_id, n = await ledger.redefer(sale, ids)
            log.warning("deferred a new settle job for pending rows", extra={**extra, "job_id": job_id})
            count(action.kind, n)
        elif action.kind == "replay_confirm":
            outcomes = await stock.confirm(sale, ids)
            count(action.kind, sum(1 for o in outcomes.values() if o is domain.Outcome.CONFIRMED))
        elif action.kind == "replay_release":
            outcomes = await stock.release(sale, ids)
            count(action.kind, sum(1 for o in outcomes.values() if o is domain.Outcome.RELEASED))
        elif action.kind == "replay_expire":
            count(action.kind, await _give_back(ledger, stock, sale, ids))
    return healed


async def _give_back(ledger: Ledger, stock: StockEngine, sale: str, ids: Sequence[str]) -> int:
    """Redis takes back the units of holds the ledger expired (each with its buyer from the ledger row), then
    the ledger records them returned. Returns the reservations whose units went back now (a repeat counts
    none)."""
    outcomes = await stock.expire(sale, {e.reservation_id: e.user for e in await ledger.expired_of(ids)})
    await ledger.mark_returned(ids)  # one Redis does not know has nothing to give back (see worker holds.py)
    returned = [rid for rid, o in outcomes.items() if o is domain.Outcome.RELEASED]
    for rid in returned:
        log.warning("gave back the units of an expired hold", extra={"sale": sale, "reservation_id": rid})
    return len(returned)


async def return_expired(ledger: Ledger, stock: StockEngine, sale: str, grace_s: int, limit: int) -> int:
    """Gives back the units of the sale's holds the ledger expired a grace period ago or more that Redis has
    not taken back (their sweeper died between the ledger and Redis): found through the partial index of
    such rows, so the cost is what is stuck. Returns the reservations whose units went back now."""
    stuck = await ledger.expired_unreturned(sale=sale, older_s=grace_s, limit=limit)
    if not stuck:
        return 0
    return await _give_back(ledger, stock, sale, [e.reservation_id for e in stuck])


async def explain(ledger: Ledger, stock: StockEngine, sale: str, grace_s: int) -> tuple[int, list[healing.Unexplained]]:
    """Names the reservations behind a disagreement of a quiet sale's counts: streams the settled rows
    (server-side cursor) against their Redis records, then the Redis reservations against the ledger, one
    chunk at a time, with the same rules as every pass (``healing.decide`` on each chunk). Returns the units
    it could not explain and up to ``EXPLAIN_KEEP`` of the reservations. Memory stays one chunk."""
    now_ms = await stock.now_ms()
    units, kept = 0, list[healing.Unexplained]()

    def take(plan: Plan) -> None:
        nonlocal units
        for u in plan.unexplained:
            units += u.units
            if len(kept) < EXPLAIN_KEEP:
                kept.append(u)

    async with ledger.settled_entries(sale, EXPLAIN_CHUNK) as chunks:
        async for chunk in chunks:
            records = await stock.records(sale, list(chunk))
            take(healing.decide(Observation(sale, now_ms, grace_s * 1000, True, records, chunk, {})))
    async for recs in stock.scan_reservations(sale, EXPLAIN_CHUNK):
        ids = [r.reservation_id for r in recs]
        known = await ledger.recorded_ids(ids)
        unrecorded = {r.reservation_id: r for r in recs if r.reservation_id not in known}
        if unrecorded:
            take(healing.decide(Observation(sale, now_ms, grace_s * 1000, True, unrecorded, {}, {})))
    kept.sort(key=lambda u: u.reservation_id)
    return units, kept


async def rebuild_pass(
    ledger: Ledger, stock: StockEngine, spec: SaleSpec, *, open_: bool, batch_max: int = 1000
) -> dict[str, int]:
    """Redis lost the sale: rebuild it from the ledger, with the ledger-driven healing of its pending rows
    (the one path that reads every row of the sale). Returns what it healed."""
    obs = await observe_lost(ledger, stock, spec.id, spec.grace_s)
    plan = healing.decide(obs, batch_max=batch_max)
    return await apply(ledger, stock, spec, obs, plan, open_=open_)


async def reconcile_once(
    ledger: Ledger,
    stock: StockEngine,
    spec: SaleSpec,
    *,
    open_: bool,
    batch_max: int = 1000,
    state: PassState | None = None,
    scan_max: int = SCAN_MAX,
    record: bool = True,
) -> Outcome:
    """Observe where something can be wrong, heal, observe again; the second observation gives the counts
    and the drift. ``state`` carries the pending-set cursor and the last explained disagreement from one
    pass of the sale to the next (a fresh one: start from the oldest, explain anew). ``record`` False
    leaves the sale's gauges and timings alone (an ended, settled sale whose series were dropped)."""
    started = time.monotonic()
    state = state if state is not None else PassState()
    sale = spec.id
    healed: dict[str, int] = {}
    why = await restore.lost(stock, sale)  # no key, or another Redis run_id: a restart may have lost its tail
    if why is not None:
        restored = await restore.restore_sale(ledger, stock, sale, reason=why)
        if restored.outcome == restore.RESTORED:
            healed["rebuild"] = 1
            metrics.OPERATOR_HEALED.labels(sale, "rebuild").inc()
    returned = await return_expired(ledger, stock, sale, spec.grace_s, batch_max)
    if returned:
        healed["replay_expire"] = returned
        metrics.OPERATOR_HEALED.labels(sale, "replay_expire").inc(returned)
    view = await observe(ledger, stock, sale, spec.grace_s, after=state.redis_after, scan_max=scan_max)
    if view.snapshot is None:  # Redis lost the sale
        for kind, n in (await rebuild_pass(ledger, stock, spec, open_=open_, batch_max=batch_max)).items():
            healed[kind] = healed.get(kind, 0) + n
        state.redis_after = None
        view = await observe(ledger, stock, sale, spec.grace_s, scan_max=scan_max)
    plan = healing.decide(view.obs, batch_max=batch_max)
    next_after = view.next_after
    if plan.actions:
        for kind, n in (await apply(ledger, stock, spec, view.obs, plan, open_=open_)).items():
            healed[kind] = healed.get(kind, 0) + n
        view = await observe(ledger, stock, sale, spec.grace_s, after=state.redis_after, scan_max=scan_max)
        plan = healing.decide(view.obs, batch_max=batch_max)
    state.redis_after = next_after
    obs, snap = view.obs, view.snapshot
    tally = obs.tally if obs.tally is not None else healing.tally(obs.ledger.values())
    unexplained = list(plan.unexplained)
    if snap is None:
        drift = healing.measure_drift(obs, plan, 0, 0)
    else:
        drift = healing.measure_drift(obs, plan, snap.pending, snap.confirmed)
        if not snap.balanced:
            drift += abs(snap.total - (snap.remaining + snap.pending + snap.confirmed))
        if drift > sum(u.units for u in plan.unexplained):
            # The counts disagree beyond what the suspects say: name the reservations behind it, once per
            # distinct disagreement (the sale's counts are its key).
            key = (
                tally.pending,
                tally.confirmed,
                tally.compensated,
                tally.held,
                tally.paid,
                tally.expired,
                snap.pending,
                snap.confirmed,
                snap.remaining,
            )
            if state.explained is None or state.explained[0] != key:
                units, named = await explain(ledger, stock, sale, spec.grace_s)
                state.explained = (key, units, named)
            _, units, named = state.explained
            seen = {u.reservation_id for u in unexplained}
            unexplained += [u for u in named if u.reservation_id not in seen]
            drift = max(drift, units)
    seconds = time.monotonic() - started
    if not record:
        return Outcome(snap, tally, drift, healed, unexplained, seconds)
    metrics.OPERATOR_RECONCILE_SECONDS.labels(sale).observe(seconds)
    metrics.OPERATOR_DRIFT.labels(sale).set(drift)
    if snap is not None:
        for state_, units in (
            ("remaining", snap.remaining),
            ("reserved", snap.pending),
            ("confirmed", snap.confirmed),
            ("compensated", tally.compensated),
            ("held", tally.held),
            ("paid", tally.paid),
            ("expired", tally.expired),
        ):
            metrics.OPERATOR_STOCK.labels(sale, state_).set(units)
    return Outcome(snap, tally, drift, healed, unexplained, seconds)


async def phase_counts(ledger: Ledger, stock: StockEngine, spec: SaleSpec) -> tuple[Snapshot | None, int, int]:
    """The sale's snapshot, and the remaining and reserved units its phase is decided on: Redis's, or while
    Redis lost the sale, the ledger's (so a sold-out sale stays SoldOut while it is restored, no flapping)."""
    try:
        snap = await stock.snapshot(spec.id)
    except errors.SaleNotFound:
        counts = await ledger.counts(spec.id)
        reserved = counts[Status.PENDING]
        taken = sum(counts[s] for s in TAKEN)
        return None, spec.stock - reserved - taken, reserved
    return snap, snap.remaining, snap.pending
