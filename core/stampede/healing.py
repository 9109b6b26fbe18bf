"""What the reconciler must do to make Redis agree with the ledger (docs/architecture.md, "The reconciler"),
decided as a pure function of what it observed, so every rule is tested by value without Redis, PostgreSQL or a
cluster.

The ledger decides. From one ``Observation`` of a sale (the Redis reservations, the ledger rows with their
job ids, the statuses of those jobs, the time and the grace period), ``decide`` returns the healing actions
in the order they must run; ``measure_drift`` says by how many units Redis and the ledger still disagree
beyond what in-flight work explains. The rules:

- Redis keys gone → ``Rebuild`` from the ledger (then the rest is decided on the ledger alone).
- A Redis reservation ``pending`` with no ledger row, older than the grace period: the API died between
  reserve and its durable write, so no 202 was sent → ``CompensateLost`` (record it ``compensated`` with
  reason ``lost_before_ack``, and only where that insert won, release it in Redis).
- A ledger row ``pending`` whose job vanished (row deleted, never enqueued) or finished without settling
  it → ``Redefer`` (settling is idempotent); whose job failed, was cancelled or aborted → ``Compensate``
  (reason ``job_failed``).
- A ledger outcome Redis has not caught up with a grace period after it was written →
  ``ReplayConfirm`` / ``ReplayRelease`` (sooner, its writer is still on its way to Redis).
- A hold the ledger expired whose units Redis still holds a grace period after the expiry (its sweeper died
  between the ledger and Redis) → ``ReplayExpire``. ``held`` and ``paid`` rows are orders for Redis
  (``confirmed``), ``expired`` ones returned stock (``released``).
- Anything else that disagrees (an order Redis released, a confirmed reservation with no ledger row, a
  ledger row Redis never heard of) → ``Unexplained``: reported as drift, never "fixed" by guessing.

It imports only the domain's types and vocabulary, never an adapter; the compensation step the
``compensate`` actions run is ``stampede.compensation``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .domain import ReservationRecord
from .vocabulary import TAKEN, JobStatus, Reason, RedisState, Status

# procrastinate job statuses, grouped by what they mean for a pending row.
JOB_ALIVE = frozenset({JobStatus.TODO, JobStatus.DOING, JobStatus.ABORTING})  # will still settle it: wait
JOB_DEAD = frozenset({JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.ABORTED})  # never will: compensate
JOB_DONE = frozenset({JobStatus.SUCCEEDED})  # ran and left it pending: run it again


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row as the reconciler needs it."""

    reservation_id: str
    user: str
    quantity: int
    status: Status
    job_id: int | None
    reserved_at_ms: int
    reason: str | None = None
    settled_age_ms: int | None = None  # how long ago the row left pending (ledger clock); None: unknown


@dataclass(frozen=True, slots=True)
class Observation:
    """One sale as seen by one reconcile pass. Read the ledger (rows, then jobs) before Redis: a reservation
    made in between then shows as a young Redis reservation without a row, which the grace period covers.

    An observation is either complete (every row and every Redis reservation of the sale: only when Redis
    lost the sale and must be rebuilt) or partial: only the reservations where something can be wrong,
    each seen on both sides (its ledger row and its Redis record, either absent when it really is), with the
    sale's counts as aggregates in ``tally`` and ``in_flight``. ``decide`` treats both alike; ``measure_drift``
    takes the counts from the aggregates when they are given."""

    sale: str
    now_ms: int  # Redis clock, the one reservations are stamped with
    grace_ms: int
    redis_present: bool
    redis: Mapping[str, ReservationRecord]
    ledger: Mapping[str, LedgerEntry]
    jobs: Mapping[int, str]  # job id -> status; a job id absent here has vanished
    tally: Tally | None = None  # the ledger's units by status; None: count ``ledger`` (a complete observation)
    in_flight: int | None = None  # young pending reservations in Redis; None: count them in ``redis``


@dataclass(frozen=True, slots=True)
class Action:
    """One healing step over a set of reservations. ``kind`` names it in logs, Events and metrics."""

    kind: Literal[
        "rebuild", "compensate_lost", "compensate", "redefer", "replay_confirm", "replay_release", "replay_expire"
    ]
    reservation_ids: tuple[str, ...] = ()
    reason: Reason | None = None

    def __len__(self) -> int:
        return len(self.reservation_ids)


@dataclass(frozen=True, slots=True)
class Unexplained:
    """A disagreement the reconciler cannot explain; it only reports it."""

    reservation_id: str
    units: int
    detail: str


@dataclass(frozen=True, slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    unexplained: list[Unexplained] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.actions and not self.unexplained


def _chunks(ids: Sequence[str], size: int) -> Iterable[tuple[str, ...]]:
    for i in range(0, len(ids), size):
        yield tuple(ids[i : i + size])


def decide(obs: Observation, *, batch_max: int = 1000) -> Plan:
    """The healing plan for one observation, in execution order: rebuild, then compensations and
    re-defers driven by the ledger and the queue, then replays of ledger outcomes into Redis. Every id list
    is sorted (a stable plan for a stable observation) and cut into chunks of at most ``batch_max``."""
    lost: list[str] = []
    failed: list[str] = []
    redefer: list[str] = []
    confirm: list[str] = []
    release: list[str] = []
    expire: list[str] = []
    unexplained: list[Unexplained] = []
    cutoff = obs.now_ms - obs.grace_ms

    def settled_long_ago(row: LedgerEntry) -> bool:
        # Whoever settled it follows in Redis right after; only a row settled a grace period ago is stuck.
        return row.settled_age_ms is None or row.settled_age_ms >= obs.grace_ms

    for rid, row in obs.ledger.items():
        rec = obs.redis.get(rid) if obs.redis_present else _as_rebuilt(row)
        if row.status == Status.PENDING:
            job = obs.jobs.get(row.job_id) if row.job_id is not None else None
            if rec is None:
                unexplained.append(Unexplained(rid, row.quantity, "pending in the ledger, unknown to Redis"))
            elif job in JOB_ALIVE:
                pass  # its job will settle it
            elif job is None or job in JOB_DONE:
                redefer.append(rid)  # settling again is idempotent, whatever Redis says
            elif rec.state == RedisState.CONFIRMED:
                # Its job died after Redis confirmed: compensating would give back sold stock.
                unexplained.append(Unexplained(rid, row.quantity, "pending in the ledger, confirmed in Redis"))
            else:
                failed.append(rid)
        elif row.status in TAKEN:
            if rec is None:
                unexplained.append(Unexplained(rid, row.quantity, "an order Redis never heard of"))
            elif rec.state == RedisState.PENDING:
                if settled_long_ago(row):
                    confirm.append(rid)
            elif rec.state == RedisState.RELEASED:
                unexplained.append(Unexplained(rid, row.quantity, "an order whose stock Redis gave back"))
        elif row.status == Status.COMPENSATED:
            if rec is not None and rec.state == RedisState.PENDING:
                if settled_long_ago(row):
                    release.append(rid)
            elif rec is not None and rec.state == RedisState.CONFIRMED:
                unexplained.append(Unexplained(rid, row.quantity, "compensated in the ledger, confirmed in Redis"))
        elif row.status == Status.EXPIRED:
            if rec is not None and rec.state != RedisState.RELEASED and settled_long_ago(row):
                expire.append(rid)
        else:
            unexplained.append(Unexplained(rid, row.quantity, f"ledger status '{row.status}'"))

    if obs.redis_present:
        for rid, rec in obs.redis.items():
            if rid in obs.ledger:
                continue
            if rec.state == RedisState.PENDING and rec.reserved_at_ms <= cutoff:
                lost.append(rid)
            elif rec.state == RedisState.CONFIRMED:
                unexplained.append(Unexplained(rid, rec.quantity, "confirmed in Redis with no ledger row"))

    actions: list[Action] = []
    if not obs.redis_present:
        actions.append(Action("rebuild"))
    for kind, ids, reason in (
        ("compensate_lost", lost, Reason.LOST_BEFORE_ACK),
        ("compensate", failed, Reason.JOB_FAILED),
        ("redefer", redefer, None),
        ("replay_confirm", confirm, None),
        ("replay_release", release, None),
        ("replay_expire", expire, None),
    ):
        for chunk in _chunks(sorted(ids), batch_max):
            actions.append(Action(kind, chunk, reason))  # type: ignore[arg-type]
    unexplained.sort(key=lambda u: u.reservation_id)
    return Plan(actions, unexplained)


def _as_rebuilt(row: LedgerEntry) -> ReservationRecord:
    """How a rebuild from the ledger records a row in Redis."""
    return ReservationRecord(row.reservation_id, redis_state(row.status), row.quantity, row.reserved_at_ms, row.user)


def redis_state(ledger_status: str) -> RedisState:
    """The Redis state a ledger status corresponds to (compensated stock is released stock; a hold, paid or
    not, is an order; an expired hold is stock given back)."""
    return _REDIS_STATE[Status(ledger_status)]


_REDIS_STATE = {
    Status.PENDING: RedisState.PENDING,
    Status.CONFIRMED: RedisState.CONFIRMED,
    Status.COMPENSATED: RedisState.RELEASED,
    Status.HELD: RedisState.CONFIRMED,
    Status.PAID: RedisState.CONFIRMED,
    Status.EXPIRED: RedisState.RELEASED,
}


def rebuild_records(rows: Iterable[LedgerEntry]) -> list[ReservationRecord]:
    """The Redis reservations a rebuild writes: every ledger row, compensated ones as released."""
    return [_as_rebuilt(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Tally:
    """Units of a sale by ledger status."""

    pending: int = 0
    confirmed: int = 0
    compensated: int = 0
    held: int = 0
    paid: int = 0
    expired: int = 0

    @property
    def taken(self) -> int:
        """Units Redis must hold confirmed: orders, held or not, paid or not."""
        return self.confirmed + self.held + self.paid


def tally(rows: Iterable[LedgerEntry]) -> Tally:
    units: dict[str, int] = dict.fromkeys(Status, 0)
    for r in rows:
        if r.status in units:
            units[r.status] += r.quantity
    return Tally(
        units[Status.PENDING],
        units[Status.CONFIRMED],
        units[Status.COMPENSATED],
        units[Status.HELD],
        units[Status.PAID],
        units[Status.EXPIRED],
    )


def measure_drift(obs: Observation, plan: Plan, redis_pending: int, redis_confirmed: int) -> int:
    """Units by which Redis and the ledger disagree in a way in-flight work does not explain (0 when
    healthy); ``plan`` is ``decide(obs)``, ``redis_pending`` / ``redis_confirmed`` the snapshot's counters.

    Reservations the plan cannot explain always count. The counters are compared with the ledger only when
    the sale is quiet (nothing pending in the ledger, no young Redis reservation awaiting its ledger write;
    from the observation's aggregates when it has them):
    while reservations are being settled, the ledger and Redis are read at two instants and differ by
    whatever was settled in between, which is not drift."""
    t = obs.tally if obs.tally is not None else tally(obs.ledger.values())
    if not obs.redis_present:
        return t.pending + t.taken
    unexplained = sum(u.units for u in plan.unexplained)
    cutoff = obs.now_ms - obs.grace_ms
    in_flight = obs.in_flight
    if in_flight is None:
        in_flight = sum(
            rec.quantity
            for rid, rec in obs.redis.items()
            if rid not in obs.ledger and rec.state == RedisState.PENDING and rec.reserved_at_ms > cutoff
        )
    if t.pending or in_flight:
        return unexplained
    return max(unexplained, abs(redis_confirmed - t.taken) + abs(redis_pending - t.pending))


__all__ = [
    "JOB_ALIVE",
    "JOB_DEAD",
    "JOB_DONE",
    "Action",
    "LedgerEntry",
    "Observation",
    "Plan",
    "Tally",
    "Unexplained",
    "decide",
    "measure_drift",
    "rebuild_records",
    "redis_state",
    "tally",
]
