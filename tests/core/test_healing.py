"""The reconciler's decisions (stampede.healing), by value: every rule of the reconciler (docs/architecture.md) from
an observation built in memory."""

from __future__ import annotations

from stampede import healing
from stampede.healing import Action, LedgerEntry, Observation
from stampede.stock import ReservationRecord
from stampede.vocabulary import Reason, RedisState, Status

NOW = 1_000_000
GRACE = 30_000
OLD = NOW - GRACE - 1
YOUNG = NOW - 10


def rec(rid: str, state: str, ts: int = OLD, qty: int = 1, user: str = "u") -> ReservationRecord:
    return ReservationRecord(rid, RedisState(state), qty, ts, user)


def row(rid: str, status: str, job: int | None = 1, qty: int = 1, user: str = "u") -> LedgerEntry:
    return LedgerEntry(rid, user, qty, Status(status), job, OLD)


def obs(redis: list[ReservationRecord], ledger: list[LedgerEntry], jobs: dict[int, str] | None = None,
        present: bool = True) -> Observation:  # fmt: skip
    return Observation(
        sale="s",
        now_ms=NOW,
        grace_ms=GRACE,
        redis_present=present,
        redis={r.reservation_id: r for r in redis},
        ledger={r.reservation_id: r for r in ledger},
        jobs=jobs if jobs is not None else {1: "todo"},
    )


def kinds(plan: healing.Plan) -> list[tuple[str, tuple[str, ...]]]:
    return [(a.kind, a.reservation_ids) for a in plan.actions]


def test_agreeing_sale_needs_nothing() -> None:
    o = obs([rec("a", "pending"), rec("b", "confirmed"), rec("c", "released")],
            [row("a", "pending"), row("b", "confirmed"), row("c", "compensated")])  # fmt: skip
    plan = healing.decide(o)
    assert plan.empty
    # Something is pending: only what the plan cannot explain counts, not the counters.
    assert healing.measure_drift(o, plan, redis_pending=1, redis_confirmed=1) == 0
    assert healing.measure_drift(o, plan, redis_pending=0, redis_confirmed=2) == 0


def test_old_reservation_without_row_is_compensated_as_lost_young_one_waits() -> None:
    o = obs([rec("old", "pending"), rec("young", "pending", ts=YOUNG), rec("gone", "released")], [])
    plan = healing.decide(o)
    assert plan.actions == [Action("compensate_lost", ("old",), Reason.LOST_BEFORE_ACK)]
    # The young one is in flight: while it is, the counters are not compared.
    assert healing.measure_drift(o, plan, redis_pending=2, redis_confirmed=0) == 0


def test_pending_row_whose_job_vanished_is_redeferred() -> None:
    o = obs([rec("a", "pending"), rec("b", "pending")], [row("a", "pending", job=7), row("b", "pending", job=None)],
            jobs={})  # fmt: skip
    assert kinds(healing.decide(o)) == [("redefer", ("a", "b"))]


def test_pending_row_of_a_succeeded_job_is_redeferred() -> None:
    o = obs([rec("a", "pending")], [row("a", "pending")], jobs={1: "succeeded"})
    assert kinds(healing.decide(o)) == [("redefer", ("a",))]


def test_pending_row_of_a_failed_job_is_compensated() -> None:
    for status in ("failed", "cancelled", "aborted"):
        o = obs([rec("a", "pending")], [row("a", "pending")], jobs={1: status})
        assert healing.decide(o).actions == [Action("compensate", ("a",), Reason.JOB_FAILED)]


def test_pending_row_of_a_live_job_waits() -> None:
    for status in ("todo", "doing"):
        assert healing.decide(obs([rec("a", "pending")], [row("a", "pending")], jobs={1: status})).empty


def test_dead_job_whose_reservation_redis_confirmed_is_not_compensated() -> None:
    plan = healing.decide(obs([rec("a", "confirmed")], [row("a", "pending")], jobs={1: "failed"}))
    assert plan.actions == []
    assert [u.reservation_id for u in plan.unexplained] == ["a"]


def test_ledger_outcomes_are_replayed_into_redis() -> None:
    o = obs([rec("a", "pending"), rec("b", "pending")], [row("a", "confirmed"), row("b", "compensated")])
    plan = healing.decide(o)
    assert kinds(plan) == [("replay_confirm", ("a",)), ("replay_release", ("b",))]
    # Quiet sale (nothing pending in the ledger): the counters must match; 1 confirmed + 2 pending off.
    assert healing.measure_drift(o, plan, redis_pending=2, redis_confirmed=0) == 3
    assert healing.measure_drift(o, plan, redis_pending=0, redis_confirmed=1) == 0


def test_a_fresh_settlement_is_left_to_its_writer() -> None:
    fresh = [
        LedgerEntry("a", "u", 1, Status.CONFIRMED, 1, OLD, settled_age_ms=GRACE - 1),
        LedgerEntry("b", "u", 1, Status.COMPENSATED, 1, OLD, Reason.JOB_FAILED, settled_age_ms=5),
    ]
    assert healing.decide(obs([rec("a", "pending"), rec("b", "pending")], fresh)).empty
    stale = [LedgerEntry("a", "u", 1, Status.CONFIRMED, 1, OLD, settled_age_ms=GRACE)]
    assert kinds(healing.decide(obs([rec("a", "pending")], stale))) == [("replay_confirm", ("a",))]


def test_what_cannot_be_explained_is_reported_not_fixed() -> None:
    o = obs([rec("a", "released"), rec("b", "confirmed"), rec("c", "confirmed")],
            [row("a", "confirmed"), row("c", "compensated"), row("d", "pending")])  # fmt: skip
    plan = healing.decide(o)
    assert plan.actions == []
    assert [u.reservation_id for u in plan.unexplained] == ["a", "b", "c", "d"]
    assert healing.measure_drift(o, plan, redis_pending=0, redis_confirmed=2) == 4


def test_lost_redis_is_rebuilt_then_ledger_driven_healing_runs() -> None:
    o = obs([], [row("a", "pending", job=1), row("b", "pending", job=2), row("c", "confirmed")],
            jobs={1: "failed"}, present=False)  # fmt: skip
    plan = healing.decide(o)
    assert kinds(plan) == [("rebuild", ()), ("compensate", ("a",)), ("redefer", ("b",))]
    assert healing.measure_drift(o, plan, 0, 0) == 3


def test_rebuild_records_map_compensated_to_released() -> None:
    recs = healing.rebuild_records([row("a", "pending"), row("b", "confirmed", qty=2), row("c", "compensated")])
    assert [(r.reservation_id, r.state, r.quantity) for r in recs] == [
        ("a", "pending", 1), ("b", "confirmed", 2), ("c", "released", 1),
    ]  # fmt: skip


def test_actions_are_chunked() -> None:
    o = obs([rec(f"r{i}", "pending") for i in range(5)], [])
    plan = healing.decide(o, batch_max=2)
    assert [len(a) for a in plan.actions] == [2, 2, 1]


def test_tally_counts_units() -> None:
    t = healing.tally([row("a", "pending", qty=2), row("b", "confirmed", qty=3), row("c", "compensated")])
    assert (t.pending, t.confirmed, t.compensated) == (2, 3, 1)
