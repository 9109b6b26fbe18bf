"""Restoring a sale Redis lost from the ledger (stampede.restore, restore.lua) against the real Redis and
PostgreSQL: pending rows come back reserved, a sold-out sale comes back closed, a deleted or unknown sale is
never brought back, two restores at once count once, a restore over a Redis that lost nothing changes
nothing and one over a Redis that lost its tail adds what the ledger holds; and buyers racing a Redis loss
and its restore end with a clean audit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from stampede import errors, restore
from stampede.audit import Row, audit, counts_from
from stampede.domain import Settlement
from stampede.ledger import Ledger, PendingReservation
from stampede.names import sale_keys
from stampede.settings import Common, load
from stampede.stock import Outcome, ReservationRecord, SaleConfig, StockEngine
from stampede.vocabulary import Reason, RedisState, Status
from tests.stores import redis_bytes, redis_client

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture(scope="module")
async def ledger(migrated_database_url: str) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(load(Common, env={}, database_url=migrated_database_url))
    yield lg
    await lg.close()


async def mirror(
    ledger: Ledger, sale: str, stock: int, limit: int = 1, rate: float = 2.0, **window: datetime | None
) -> None:
    await ledger.ensure_sale(
        sale,
        sku="SKU",
        stock=stock,
        per_user_limit=limit,
        window_start=window.get("start"),
        window_end=window.get("end"),
        buyer_rate=rate,
        buyer_burst=3 if rate else 0,
    )


def pending(sale: str, user: str, qty: int = 1) -> PendingReservation:
    return PendingReservation(str(uuid.uuid4()), sale, user, qty, 1_700_000_000_000)


async def test_pending_rows_come_back_reserved_and_then_confirm(ledger: Ledger, stock: StockEngine, sale: str) -> None:
    await mirror(ledger, sale, stock=10, limit=2)
    a, b, c = pending(sale, "x", 2), pending(sale, "y"), pending(sale, "z")
    await ledger.record_batch([a, b, c])
    await ledger.settle(
        [
            Settlement(b.reservation_id, sale, Status.CONFIRMED),
            Settlement(c.reservation_id, sale, Status.COMPENSATED, Reason.RELEASED_IN_REDIS),
        ],
        attempt=1,
    )
    assert await restore.lost(stock, sale) == restore.MISSING

    result = await restore.restore_sale(ledger, stock, sale)

    assert (result.outcome, result.total, result.remaining, result.pending, result.confirmed) == (
        restore.RESTORED, 10, 7, 2, 1,
    )  # fmt: skip
    snap = await stock.snapshot(sale)
    assert (snap.total, snap.remaining, snap.pending, snap.confirmed, snap.released, snap.open) == (
        10, 7, 2, 1, 1, True,
    )  # fmt: skip
    assert snap.balanced and snap.per_user_limit == 2
    assert await restore.lost(stock, sale) is None
    raw = await redis_client(stock).hmget(sale_keys(sale).meta, ["buyer_rate", "buyer_burst"])
    assert [float(redis_bytes(v)) for v in raw] == [2.0, 3.0]  # the rate limits came back from the ledger too
    with pytest.raises(errors.LimitReached):
        await stock.reserve(sale, "x")  # the holds came back: x holds 2 of 2
    assert (await stock.confirm(sale, [a.reservation_id]))[a.reservation_id] == Outcome.CONFIRMED
    assert await redis_client(stock).exists(sale_keys(sale).restore_lock) == 0
    # Restoring again under the same Redis run does nothing.
    assert (await restore.restore_sale(ledger, stock, sale)).outcome == restore.CURRENT
    assert (await stock.snapshot(sale)).confirmed == 3


async def test_a_sold_out_sale_comes_back_closed_and_a_window_is_kept(
    ledger: Ledger, stock: StockEngine, sale: str
) -> None:
    await mirror(ledger, sale, stock=2)
    rows = [pending(sale, "a"), pending(sale, "b")]
    await ledger.record_batch(rows)
    await ledger.settle([Settlement(r.reservation_id, sale, Status.CONFIRMED) for r in rows], attempt=1)
    assert (await restore.restore_sale(ledger, stock, sale)).remaining == 0
    assert not (await stock.snapshot(sale)).open  # SoldOut keeps its gate closed: no flapping to Live

    later = f"{sale}-w"
    now = datetime.now(UTC)
    await mirror(ledger, later, stock=5, start=now + timedelta(hours=1), end=now + timedelta(hours=2))
    await restore.restore_sale(ledger, stock, later)
    assert not (await stock.snapshot(later)).open  # Scheduled: not open before its window


async def test_unknown_or_deleted_sale_is_never_brought_back(ledger: Ledger, stock: StockEngine, sale: str) -> None:
    assert (await restore.restore_sale(ledger, stock, sale)).outcome == restore.GONE
    await mirror(ledger, sale, stock=3)
    await ledger.mark_sale_deleted(sale)
    assert (await restore.restore_sale(ledger, stock, sale)).outcome == restore.GONE
    assert await redis_client(stock).exists(*sale_keys(sale).all_static()) == 0  # not even its lock is left
    with pytest.raises(errors.SaleNotFound):
        await restore.sale_lost(ledger, stock, sale)
    await mirror(ledger, sale, stock=3)  # created again under the same name: a live sale again
    with pytest.raises(errors.SaleRestoring):
        await restore.sale_lost(ledger, stock, sale)  # answers at once; the restore runs in the background
    for _ in range(200):
        if await restore.lost(stock, sale) is None:
            break
        await asyncio.sleep(0.01)
    assert (await stock.snapshot(sale)).remaining == 3


async def test_restores_started_together_count_once(
    ledger: Ledger, stock: StockEngine, redis_url: str, sale: str
) -> None:
    await mirror(ledger, sale, stock=20, limit=5)
    await ledger.record_batch([pending(sale, f"u{i}", 2) for i in range(4)])
    # Separate engines are separate processes as far as the in-process single flight goes: only the Redis
    # lock keeps them apart.
    engines = [StockEngine.from_url(redis_url) for _ in range(6)]
    try:
        results = await asyncio.gather(*(restore.restore_sale(ledger, e, sale) for e in engines))
    finally:
        for e in engines:
            await e.close()
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count(restore.RESTORED) >= 1
    assert set(outcomes) <= {restore.RESTORED, restore.BUSY, restore.CURRENT}
    snap = await stock.snapshot(sale)
    assert (snap.total, snap.remaining, snap.pending, snap.confirmed) == (20, 12, 8, 0)
    # In one process, callers join the restore already running.
    await stock.delete(sale)
    joined = await asyncio.gather(*(restore.restore_sale(ledger, stock, sale) for _ in range(5)))
    assert {r.outcome for r in joined} == {restore.RESTORED}
    assert (await stock.snapshot(sale)).pending == 8


async def test_a_redis_that_lost_nothing_is_left_as_it_was(ledger: Ledger, stock: StockEngine, sale: str) -> None:
    await mirror(ledger, sale, stock=10, limit=3)
    await stock.seed(sale, SaleConfig(total=10, per_user_limit=3), open=True)
    taken = [await stock.reserve(sale, f"u{i % 3}") for i in range(6)]
    await ledger.record_batch([PendingReservation(r.reservation_id, sale, r.user, 1, 0) for r in taken[:5]])
    await ledger.settle([Settlement(taken[0].reservation_id, sale, Status.CONFIRMED)], attempt=1)
    await stock.confirm(sale, [taken[0].reservation_id])
    await ledger.settle(
        [Settlement(taken[1].reservation_id, sale, Status.COMPENSATED, Reason.RELEASED_IN_REDIS)], attempt=1
    )
    await stock.release(sale, [taken[1].reservation_id])
    before = await stock.snapshot(sale)
    records = {r.reservation_id: r.state for r in await stock.reservations(sale)}
    holds = await redis_client(stock).hgetall(sale_keys(sale).holds)
    await redis_client(stock).hset(sale_keys(sale).meta, "run", "an-earlier-run")  # a restart that kept everything
    assert await restore.lost(stock, sale) == restore.RESTARTED

    assert (await restore.restore_sale(ledger, stock, sale, reason=restore.RESTARTED)).outcome == restore.RESTORED

    after = await stock.snapshot(sale)
    assert (after.total, after.remaining, after.pending, after.confirmed, after.released, after.open) == (
        before.total, before.remaining, before.pending, before.confirmed, before.released, before.open,
    )  # fmt: skip
    # The reservation whose ledger write is still in flight (taken[5]) is kept, so is every state.
    assert {r.reservation_id: r.state for r in await stock.reservations(sale)} == records
    assert await redis_client(stock).hgetall(sale_keys(sale).holds) == holds


async def test_a_redis_that_lost_its_tail_gets_it_back_from_the_ledger(
    ledger: Ledger, stock: StockEngine, sale: str
) -> None:
    """An AOF that lost its last writes: Redis has the sale but not the latest reservations, which the
    ledger holds (202 was sent): they come back reserved and the remaining stock shrinks by them."""
    await mirror(ledger, sale, stock=10, limit=2)
    await stock.seed(sale, SaleConfig(total=10, per_user_limit=2), open=True)
    kept = await stock.reserve(sale, "a")
    lost_rows = [pending(sale, "b", 2), pending(sale, "a")]
    await ledger.record_batch([PendingReservation(kept.reservation_id, sale, "a", 1, 0), *lost_rows])
    await redis_client(stock).hset(sale_keys(sale).meta, "run", "an-earlier-run")

    await restore.restore_sale(ledger, stock, sale, reason=restore.RESTARTED)

    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.pending_count) == (6, 4, 3)
    with pytest.raises(errors.LimitReached):
        await stock.reserve(sale, "a")


async def test_settled_reservations_are_restored_into_the_compact_store(
    ledger: Ledger, stock: StockEngine, sale: str
) -> None:
    """Settled reservations live in the compact settled store (id -> signed quantity, no buyer): a restore
    keeps its entries, moves a full settled record an older version left there, writes the ledger's settled
    rows into it (never as full records), and recounts the holdings from the ledger's buyers."""
    await mirror(ledger, sale, stock=10, limit=3)
    await stock.seed(sale, SaleConfig(total=10, per_user_limit=3), open=True)
    t = [await stock.reserve(sale, f"u{i % 3}") for i in range(7)]
    await ledger.record_batch([PendingReservation(r.reservation_id, sale, r.user, 1, 0) for r in t[:5]])
    ids = [r.reservation_id for r in t]
    await ledger.settle([Settlement(ids[0], sale, Status.CONFIRMED)], attempt=1)
    await stock.confirm(sale, [ids[0]])  # settled in both: an entry of the store
    await ledger.settle([Settlement(ids[1], sale, Status.COMPENSATED, Reason.RELEASED_IN_REDIS)], attempt=1)
    await stock.release(sale, [ids[1]])
    await ledger.settle([Settlement(ids[2], sale, Status.CONFIRMED)], attempt=1)  # Redis lost the confirm: pending
    await ledger.settle([Settlement(ids[3], sale, Status.CONFIRMED)], attempt=1)
    k = sale_keys(sale)
    rec = await stock.reservation(sale, ids[3])
    assert rec is not None
    await redis_client(stock).hset(k.reservations, ids[3], f"confirmed|1|{rec.reserved_at_ms}|{rec.user}")  # older form
    await redis_client(stock).zrem(k.pending, ids[3])
    await stock.release(sale, [ids[6]])  # a failed ledger write: released in Redis, never in the ledger
    # ids[4] is pending in both; ids[5] is pending in Redis, its ledger write still in flight.
    await redis_client(stock).hset(k.meta, "run", "an-earlier-run")

    assert (await restore.restore_sale(ledger, stock, sale, reason=restore.RESTARTED)).outcome == restore.RESTORED

    assert sorted(redis_bytes(v).decode() for v in await redis_client(stock).hkeys(k.reservations)) == sorted(ids[4:6])
    assert int(redis_bytes(await redis_client(stock).hget(k.settled, "count"))) == 5
    found = await stock.records(sale, ids)
    states = {rid: (r.state, r.user) for rid, r in found.items()}
    assert states == {
        ids[0]: ("confirmed", ""),
        ids[1]: ("released", ""),
        ids[2]: ("confirmed", ""),
        ids[3]: ("confirmed", ""),
        ids[4]: ("pending", "u1"),
        ids[5]: ("pending", "u2"),
        ids[6]: ("released", ""),
    }
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.confirmed, snap.released, snap.pending_count, snap.reservations) == (
        5, 2, 3, 2, 2, 7,
    )  # fmt: skip
    assert await stock.holdings(sale) == {"u0": 2, "u1": 1, "u2": 2}
    assert await stock.confirm(sale, ids[:4]) == {
        ids[0]: Outcome.ALREADY, ids[1]: Outcome.RELEASED, ids[2]: Outcome.ALREADY, ids[3]: Outcome.ALREADY,
    }  # fmt: skip

    # Redis lost everything: the ledger's rows alone come back, the settled ones compact.
    await stock.delete(sale)
    assert (await restore.restore_sale(ledger, stock, sale)).outcome == restore.RESTORED
    assert [redis_bytes(v).decode() for v in await redis_client(stock).hkeys(k.reservations)] == [ids[4]]
    assert int(redis_bytes(await redis_client(stock).hget(k.settled, "count"))) == 4
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.confirmed, snap.released) == (6, 1, 3, 1)
    assert await stock.holdings(sale) == {"u0": 2, "u1": 1, "u2": 1}
    with pytest.raises(errors.LimitReached):
        await stock.reserve(sale, "u0", 2)


async def test_restore_refuses_a_stale_lock_and_more_sold_than_stock(
    ledger: Ledger, stock: StockEngine, sale: str
) -> None:
    config = SaleConfig(total=1)
    recs = [ReservationRecord(str(uuid.uuid4()), RedisState.PENDING, 2, 0, "u")]
    assert (await stock.restore(sale, "not-the-holder", "run", config, True, recs)).outcome == "lost_lock"
    assert await stock.lock_restore(sale, "tok", 5_000)
    assert not await stock.lock_restore(sale, "other", 5_000)
    with pytest.raises(errors.RestockBelowSold):
        await stock.restore(sale, "tok", "run", config, True, recs)
    with pytest.raises(errors.SaleNotFound):
        await stock.snapshot(sale)
    assert await stock.unlock_restore(sale, "tok")
    # The ledger holding more than its stock (a stock lowered below what was sold) restores at what is
    # sold, closed: nothing more is sold.
    await mirror(ledger, sale, stock=1)
    await ledger.record_batch([pending(sale, "u", 2)])
    assert (await restore.restore_sale(ledger, stock, sale)).outcome == restore.RESTORED
    snap = await stock.snapshot(sale)
    assert (snap.total, snap.remaining, snap.pending, snap.open) == (2, 0, 2, False)


@pytest.mark.slow
async def test_buyers_racing_a_redis_loss_and_its_restore_never_oversell(
    migrated_database_url: str, stock: StockEngine, redis_url: str, sale: str
) -> None:
    """200 buyers (limit 2) race for 120 units through four engines (four processes' worth of clients).
    Redis loses the sale twice mid-sale; every buyer that finds it gone starts a restore, as the API does,
    and tries again. Every accepted reservation is recorded in the ledger before it counts, as a 202 is.
    The audit at the end: nothing oversold, nothing lost, Redis and the ledger agree."""
    units, limit = 120, 2
    ledger = await Ledger.open(load(Common, env={}, database_url=migrated_database_url, db_pool_max=40))
    await mirror(ledger, sale, stock=units, limit=limit, rate=0)
    await stock.seed(sale, SaleConfig(total=units, per_user_limit=limit), open=True)
    engines = [StockEngine.from_url(redis_url, max_connections=32) for _ in range(4)]
    accepted: list[str] = []
    restoring = 0
    in_flight = asyncio.Semaphore(32)  # as many as the ledger pool has connections: a write starts at once

    async def buyer(i: int) -> None:
        async with in_flight:
            await buy(i)

    async def buy(i: int) -> None:
        nonlocal restoring
        engine = engines[i % len(engines)]
        for _ in range(40):
            try:
                r = await engine.reserve(sale, f"b{i % 200}")
            except (errors.SoldOut, errors.LimitReached):
                return
            except errors.SaleNotFound:
                try:
                    await restore.sale_lost(ledger, engine, sale)
                except errors.SaleRestoring:
                    restoring += 1
                await asyncio.sleep(0.02)
                continue
            await ledger.record_batch([PendingReservation(r.reservation_id, sale, r.user, 1, 0)])
            accepted.append(r.reservation_id)
            await asyncio.sleep(0.005)

    async def lose_redis() -> None:
        for _ in range(2):
            await asyncio.sleep(0.05)
            await stock.delete(sale)

    try:
        await asyncio.gather(lose_redis(), *(buyer(i) for i in range(400)))
    finally:
        for e in engines:
            await e.close()
        await ledger.close()
    assert restoring > 0  # the loss landed mid-sale
    check = await Ledger.open(load(Common, env={}, database_url=migrated_database_url))
    try:
        if await restore.lost(stock, sale) == restore.MISSING:
            await restore.restore_sale(check, stock, sale)
        rows = [Row(r.reservation_id, r.user, r.quantity, r.status) for r in await check.rows(sale)]
    finally:
        await check.close()
    report = audit(
        sale,
        stock=units,
        per_user_limit=limit,
        accepted=accepted,
        rows=rows,
        redis=counts_from(await stock.snapshot(sale)),
        settled=False,
    )
    assert report.ok, report.render()
    assert len(accepted) == units
