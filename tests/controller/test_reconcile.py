"""One reconcile pass (stampede_operator.reconcile) on real Redis and PostgreSQL, without kopf or a cluster:
the replays of ledger outcomes into Redis, a disagreement the reconciler must report, not fix, and the pass
that reads only where something can be wrong (each healing case, found by the pass after the one that saw it
young; a pending backlog walked a window at a time; the settled totals under concurrent settling)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from stampede import audit
from stampede.domain import Settlement
from stampede.ledger import Ledger, PendingReservation
from stampede.settings import Common, load
from stampede.stock import ReservationRecord, StockEngine
from stampede.vocabulary import Reason, RedisState, Status
from stampede_operator import builders, reconcile
from tests.stores import ledger_pool

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture(scope="module")
async def ledger(migrated_database_url: str) -> AsyncIterator[Ledger]:
    led = await Ledger.open(load(Common, env={}, database_url=migrated_database_url, db_pool_max=2))
    yield led
    await led.close()


def sale_spec(sale: str, stock: int = 10) -> builders.SaleSpec:
    now = datetime.now(UTC)
    # grace 0: a settlement Redis has not followed is replayed at once (the default waits for its writer).
    return builders.SaleSpec(sale, "SKU-1", stock, 1, now - timedelta(minutes=1), now + timedelta(hours=1), grace_s=0)


async def reserve(stock: StockEngine, sale: str, n: int) -> list[PendingReservation]:
    out = []
    for i in range(n):
        r = await stock.reserve(sale, f"u{i}")
        rec = await stock.reservation(sale, r.reservation_id)
        assert rec is not None
        out.append(PendingReservation(r.reservation_id, sale, r.user, 1, rec.reserved_at_ms))
    return out


async def test_ledger_outcomes_are_replayed_into_redis(stock: StockEngine, ledger: Ledger, sale: str) -> None:
    spec = sale_spec(sale)
    await stock.seed(sale, spec.sale_config, open=True)
    batch = await reserve(stock, sale, 3)
    await ledger.record_batch(batch)
    # The worker moved the ledger, then died before Redis heard of it.
    a, b, c = (r.reservation_id for r in batch)
    await ledger.settle(
        [Settlement(a, sale, Status.CONFIRMED), Settlement(b, sale, Status.COMPENSATED, Reason.JOB_FAILED)], attempt=1
    )
    outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert outcome.healed == {"replay_confirm": 1, "replay_release": 1}
    assert outcome.drift == 0
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.confirmed) == (8, 1, 1)
    # A second pass finds nothing to do.
    again = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert (again.healed, again.drift) == ({}, 0)
    await ledger.settle([Settlement(c, sale, Status.CONFIRMED)], attempt=1)
    await stock.confirm(sale, [c])
    report = audit.audit(
        sale, stock=10, per_user_limit=1, accepted=[a, b, c], rows=await ledger.rows(sale),
        redis=audit.counts_from(await stock.snapshot(sale)),
    )  # fmt: skip
    assert report.ok, report.render()


async def test_an_order_whose_stock_redis_gave_back_is_reported_as_drift(
    stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    spec = sale_spec(sale)
    await stock.seed(sale, spec.sale_config, open=True)
    (r,) = await reserve(stock, sale, 1)
    await ledger.record_batch([r])
    await ledger.settle([Settlement(r.reservation_id, sale, Status.CONFIRMED)], attempt=1)
    await stock.release(sale, [r.reservation_id])  # Redis sold it again: nothing may "fix" this silently
    outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert outcome.healed == {}
    assert outcome.drift == 1
    assert [u.reservation_id for u in outcome.unexplained] == [r.reservation_id]


# --- the pass that costs what changed ----------------------------------------------------------------------


async def sql(ledger: Ledger, query: str, *args: object) -> None:
    async with ledger_pool(ledger).connection() as conn:
        await conn.execute(query, args)


async def import_confirmed(ledger: Ledger, stock: StockEngine, sale: str, n: int) -> list[str]:
    """``n`` reservations already confirmed on both sides, through the seeding helpers."""
    rows = [PendingReservation(str(uuid.uuid4()), sale, f"imported-{i}", 1, 1_700_000_000_000 + i) for i in range(n)]
    assert await ledger.import_settled(sale, rows, Status.CONFIRMED) == n
    await stock.import_settled(
        sale, [ReservationRecord(r.reservation_id, RedisState.CONFIRMED, 1, r.reserved_at_ms, r.user) for r in rows]
    )
    return [r.reservation_id for r in rows]


async def make_every_healing_case(
    ledger: Ledger, stock: StockEngine, sale: str
) -> tuple[dict[str, list[str]], list[str]]:
    """One sale holding each case the reconciler heals (kind -> reservation ids), and the ids of every
    reservation that was answered 202 (has a ledger row)."""
    cases: dict[str, list[str]] = {}
    lost = await reserve(stock, sale, 2)  # Redis took them; the API died before the ledger write
    cases["compensate_lost"] = [r.reservation_id for r in lost]
    failed = await reserve_as(stock, sale, "failed", 2)
    job = (await ledger.record_batch(failed)).job
    await sql(ledger, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", job)
    await sql(ledger, "UPDATE procrastinate_jobs SET status = 'failed' WHERE id = %s", job)
    cases["compensate"] = [r.reservation_id for r in failed]
    vanished = await reserve_as(stock, sale, "vanished", 1)
    job = (await ledger.record_batch(vanished)).job
    await sql(ledger, "DELETE FROM procrastinate_jobs WHERE id = %s", job)
    done = await reserve_as(stock, sale, "done", 1)
    job = (await ledger.record_batch(done)).job
    await sql(ledger, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", job)
    await sql(ledger, "UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id = %s", job)
    cases["redefer"] = [r.reservation_id for r in vanished + done]
    settled = await reserve_as(stock, sale, "settled", 2)
    await ledger.record_batch(settled)
    a, b = (r.reservation_id for r in settled)
    # The worker moved the ledger, then died before Redis heard of it.
    await ledger.settle(
        [Settlement(a, sale, Status.CONFIRMED), Settlement(b, sale, Status.COMPENSATED, Reason.JOB_FAILED)], attempt=1
    )
    cases["replay_confirm"], cases["replay_release"] = [a], [b]
    acked = [r.reservation_id for r in failed + vanished + done + settled]
    return cases, acked


async def reserve_as(stock: StockEngine, sale: str, prefix: str, n: int) -> list[PendingReservation]:
    out = []
    for i in range(n):
        r = await stock.reserve(sale, f"{prefix}-{i}")
        rec = await stock.reservation(sale, r.reservation_id)
        assert rec is not None
        out.append(PendingReservation(r.reservation_id, sale, r.user, 1, rec.reserved_at_ms))
    return out


async def settle_the_rest_and_audit(ledger: Ledger, stock: StockEngine, sale: str, acked: list[str]) -> None:
    """What a worker would do with the re-deferred rows, then the audit of the whole sale."""
    pending = await ledger.pending_ids(sale)
    await ledger.settle([Settlement(rid, sale, Status.CONFIRMED) for rid in pending], attempt=1)
    await stock.confirm(sale, pending)
    report = audit.audit(
        sale, stock=100, per_user_limit=1, accepted=acked, rows=await ledger.rows(sale),
        redis=audit.counts_from(await stock.snapshot(sale)),
    )  # fmt: skip
    assert report.ok, report.render()
    # The settled totals the settling statements kept agree with the rows themselves.
    tally, counts = await ledger.tally(sale), await ledger.counts(sale)
    assert (tally.pending, tally.confirmed, tally.compensated) == (
        counts["pending"], counts["confirmed"], counts["compensated"],
    )  # fmt: skip


async def test_a_pass_reads_only_the_suspects_and_heals_each_case(
    stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    spec = dataclasses.replace(sale_spec(sale, stock=100), grace_s=1)
    await stock.seed(sale, spec.sale_config, open=True)
    healthy = await import_confirmed(ledger, stock, sale, 50)
    cases, acked = await make_every_healing_case(ledger, stock, sale)
    await asyncio.sleep(1.2)  # every case is now older than the grace period
    suspects = {rid for ids in cases.values() for rid in ids}
    view = await reconcile.observe(ledger, stock, sale, spec.grace_s)
    # The settled reservations are counted, not read: the observation holds the suspects only.
    assert set(view.obs.ledger) | set(view.obs.redis) == suspects
    assert view.obs.tally is not None and view.obs.tally.confirmed == 51  # 50 imported + one settled above
    outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert outcome.healed == {kind: len(ids) for kind, ids in cases.items()}
    assert (outcome.drift, outcome.unexplained) == (0, [])
    for rid in cases["compensate_lost"]:
        row = await ledger.get_reservation(rid)
        assert row is not None and (row.status, row.reason) == ("compensated", "lost_before_ack")
    again = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert (again.healed, again.drift) == ({}, 0)
    await settle_the_rest_and_audit(ledger, stock, sale, acked + healthy)


async def test_the_next_pass_finds_cases_older_than_the_last_one(stock: StockEngine, ledger: Ledger, sale: str) -> None:
    spec = dataclasses.replace(sale_spec(sale, stock=100), grace_s=1)
    await stock.seed(sale, spec.sale_config, open=True)
    state = reconcile.PassState()
    cases, acked = await make_every_healing_case(ledger, stock, sale)
    # The first pass runs while every case is younger than the grace period: nothing to do yet.
    first = await reconcile.reconcile_once(ledger, stock, spec, open_=True, state=state)
    assert first.healed == {}
    await asyncio.sleep(1.2)
    # Nothing changed since the first pass; the cases it saw young are old now, and the next pass heals them.
    second = await reconcile.reconcile_once(ledger, stock, spec, open_=True, state=state)
    assert second.healed == {kind: len(ids) for kind, ids in cases.items()}
    assert second.drift == 0
    await settle_the_rest_and_audit(ledger, stock, sale, acked)


async def test_passes_walk_a_long_pending_backlog_a_window_at_a_time(
    stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    spec = dataclasses.replace(sale_spec(sale, stock=100), grace_s=1)
    await stock.seed(sale, spec.sale_config, open=True)
    # Seven old reservations whose jobs are waiting (a worker backlog), then two lost ones behind them.
    waiting = await reserve_as(stock, sale, "waiting", 7)
    await ledger.record_batch(waiting)
    lost = [r.reservation_id for r in await reserve_as(stock, sale, "lost", 2)]
    await asyncio.sleep(1.2)
    state = reconcile.PassState()
    healed: list[int] = []
    for _ in range(4):  # windows of 3: [w w w] [w w w] [w l l], then from the oldest again
        outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True, state=state, scan_max=3)
        healed.append(outcome.healed.get("compensate_lost", 0))
    assert healed == [0, 0, 2, 0]
    for rid in lost:
        rec = await stock.reservation(sale, rid)
        assert rec is not None and rec.state == "released"
    await settle_the_rest_and_audit(ledger, stock, sale, [r.reservation_id for r in waiting])


async def test_settled_totals_follow_concurrent_settling(stock: StockEngine, ledger: Ledger, sale: str) -> None:
    """Many settle statements of one sale at once (as several workers run them), racing confirmations
    against compensations of the same rows: the totals kept by the statements equal the rows' own count."""
    spec = sale_spec(sale, stock=400)
    await stock.seed(sale, spec.sale_config, open=True)
    batch = await reserve_as(stock, sale, "b", 400)
    for i in range(0, 400, 50):
        await ledger.record_batch(batch[i : i + 50])
    ids = [r.reservation_id for r in batch]

    async def settle(chunk: list[str], outcome: Status) -> None:
        reason = None if outcome == Status.CONFIRMED else Reason.JOB_FAILED
        settled = await ledger.settle([Settlement(rid, sale, outcome, reason) for rid in chunk], attempt=1)
        won = [s.reservation_id for s in settled if s.moved]
        await (stock.confirm if outcome == Status.CONFIRMED else stock.release)(sale, won)

    chunks = [ids[i : i + 10] for i in range(0, 400, 10)]
    await asyncio.gather(
        *(settle(c, Status.CONFIRMED) for c in chunks), *(settle(c, Status.COMPENSATED) for c in reversed(chunks))
    )
    tally, counts = await ledger.tally(sale), await ledger.counts(sale)
    assert tally.pending == 0
    assert (tally.confirmed, tally.compensated) == (counts["confirmed"], counts["compensated"])
    assert tally.confirmed + tally.compensated == 400
    outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert (outcome.healed, outcome.drift) == ({}, 0)
    report = audit.audit(
        sale, stock=400, per_user_limit=1, accepted=ids, rows=await ledger.rows(sale),
        redis=audit.counts_from(await stock.snapshot(sale)),
    )  # fmt: skip
    assert report.ok, report.render()


async def test_a_fresh_settlement_of_an_old_reservation_is_in_flight_not_drift(
    stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    """A slow settle: the reservation is older than the grace period, its worker has just moved the ledger and
    has not reached Redis yet. The counts differ for that instant; that is not drift, and nothing is replayed."""
    spec = dataclasses.replace(sale_spec(sale), grace_s=1)
    await stock.seed(sale, spec.sale_config, open=True)
    (r,) = await reserve(stock, sale, 1)
    await ledger.record_batch([r])
    await asyncio.sleep(1.2)
    await ledger.settle([Settlement(r.reservation_id, sale, Status.CONFIRMED)], attempt=1)
    outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert (outcome.healed, outcome.drift, outcome.unexplained) == ({}, 0, [])
    await stock.confirm(sale, [r.reservation_id])  # the worker arrives
    again = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert (again.healed, again.drift) == ({}, 0)
