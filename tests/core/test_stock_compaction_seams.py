"""Settled reservations leave the full-record hash for the compact store; every read by id or by scan, the
idempotent replay (checked after the rate buckets) and the release that forgets its idempotency key must
see them there, or a reservation settled in Redis would look missing to the reconciler."""

from __future__ import annotations

import uuid

import pytest

from stampede import errors
from stampede.names import sale_keys
from stampede.stock import Outcome, ReservationRecord, SaleConfig, StockEngine
from stampede.vocabulary import RedisState
from tests.stores import redis_client

pytestmark = pytest.mark.redis


async def test_replay_of_a_settled_key_returns_the_same_reservation(stock: StockEngine, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=10, per_user_limit=5, buyer_rate=100, buyer_burst=100), open=True)
    kept = await stock.reserve(sale, "alice", 2, idempotency_key="k-confirm")
    gone = await stock.reserve(sale, "alice", 1, idempotency_key="k-release")
    assert kept.reserved_at_ms is not None
    assert await stock.confirm(sale, [kept.reservation_id]) == {kept.reservation_id: Outcome.CONFIRMED}
    assert await stock.release(sale, [gone.reservation_id]) == {gone.reservation_id: Outcome.RELEASED}

    again = await stock.reserve(sale, "alice", 2, idempotency_key="k-confirm")
    assert (again.reservation_id, again.state, again.replay) == (kept.reservation_id, RedisState.CONFIRMED, True)
    again = await stock.reserve(sale, "alice", 1, idempotency_key="k-release")
    assert (again.reservation_id, again.state, again.replay) == (gone.reservation_id, RedisState.RELEASED, True)
    with pytest.raises(errors.IdempotencyConflict):
        await stock.reserve(sale, "alice", 3, idempotency_key="k-confirm")
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.confirmed, snap.released, snap.pending) == (8, 2, 1, 0)


async def test_release_that_forgets_the_key_works_on_compacted_records(stock: StockEngine, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=10, per_user_limit=5), open=True)
    first = await stock.reserve(sale, "bob", 1, idempotency_key="retry-me")
    sold = await stock.reserve(sale, "bob", 1, idempotency_key="keep-me")
    await stock.confirm(sale, [sold.reservation_id])
    out = await stock.release(
        sale,
        [first.reservation_id, sold.reservation_id],
        forget={first.reservation_id: ("bob", "retry-me"), sold.reservation_id: ("bob", "keep-me")},
    )
    assert out == {first.reservation_id: Outcome.RELEASED, sold.reservation_id: Outcome.REFUSED_CONFIRMED}
    # Released twice (now from the compact store): still 'already', and the forgotten key stays forgotten.
    again = await stock.release(sale, [first.reservation_id], forget={first.reservation_id: ("bob", "retry-me")})
    assert again == {first.reservation_id: Outcome.ALREADY}
    fresh = await stock.reserve(sale, "bob", 1, idempotency_key="retry-me")
    assert not fresh.replay and fresh.reservation_id != first.reservation_id
    kept = await stock.reserve(sale, "bob", 1, idempotency_key="keep-me")
    assert kept.replay and kept.reservation_id == sold.reservation_id


async def test_reads_by_id_scan_and_suspects_see_the_compact_store(stock: StockEngine, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=100, per_user_limit=100), open=True)
    made = [(await stock.reserve(sale, f"u{i}", 1)).reservation_id for i in range(90)]
    await stock.confirm(sale, made[:40])
    await stock.release(sale, made[40:70])
    found = await stock.records(sale, [*made, "not-a-reservation"])
    assert "not-a-reservation" not in found
    states = [found[rid].state for rid in made]
    assert states == [RedisState.CONFIRMED] * 40 + [RedisState.RELEASED] * 30 + [RedisState.PENDING] * 20

    scanned = [r for chunk in [c async for c in stock.scan_reservations(sale, count=16)] for r in chunk]
    assert sorted(r.reservation_id for r in scanned) == sorted(made)
    assert {r.reservation_id: r.state for r in scanned} == {rid: found[rid].state for rid in made}

    view = await stock.suspects(sale, grace_ms=0, after=None, limit=1000)
    assert view.snapshot is not None and view.snapshot.reservations == 90
    assert sorted(rid for rid, _ in view.window) == sorted(made[70:])


async def test_imported_settled_reservations_land_in_the_compact_store(stock: StockEngine, sale: str) -> None:
    """The benchmark import writes what the settling scripts would: compact entries, counters, holdings;
    importing the same reservations again counts nothing twice."""
    await stock.seed(sale, SaleConfig(total=10_000, per_user_limit=10), open=True)
    records = [
        ReservationRecord(
            str(uuid.uuid4()), RedisState.CONFIRMED if i % 5 else RedisState.RELEASED, 1 + i % 2, 1, f"b{i % 7}"
        )
        for i in range(4500)  # more than one script call, and many bucket splits
    ]
    await stock.import_settled(sale, records)
    await stock.import_settled(sale, records[:100])
    confirmed = sum(r.quantity for r in records if r.state == RedisState.CONFIRMED)
    released = sum(r.quantity for r in records if r.state == RedisState.RELEASED)
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.confirmed, snap.released, snap.pending, snap.reservations) == (
        10_000 - confirmed, confirmed, released, 0, 4500,
    )  # fmt: skip
    k = sale_keys(sale)
    assert await redis_client(stock).hlen(k.reservations) == 0
    held: dict[str, int] = {}
    for r in records:
        if r.state == RedisState.CONFIRMED:
            held[r.user] = held.get(r.user, 0) + r.quantity
    assert await stock.holdings(sale) == held
    sample = [r.reservation_id for r in records[:50]]
    assert await stock.confirm(sale, sample) == {
        r.reservation_id: Outcome.ALREADY if r.state == RedisState.CONFIRMED else Outcome.RELEASED for r in records[:50]
    }
    with pytest.raises(errors.InvalidArgument):
        await stock.import_settled(sale, [ReservationRecord(str(uuid.uuid4()), RedisState.PENDING, 1, 1, "b")])


async def test_states_of_several_sales_in_one_pipeline_survive_a_flushed_script_cache(
    stock: StockEngine, sale: str
) -> None:
    """The worker's read of its claim (``StockEngine.states``): records.lua per sale sent as plain EVALSHA in
    one pipeline; after Redis lost its scripts (restart, SCRIPT FLUSH) the read loads it and still answers
    every id of every sale, an unknown sale as None."""
    other = f"{sale}-b"
    for s in (sale, other):
        await stock.seed(s, SaleConfig(total=10, per_user_limit=10), open=True)
    a = [(await stock.reserve(sale, f"u{i}", 1)).reservation_id for i in range(3)]
    b = [(await stock.reserve(other, f"u{i}", 1)).reservation_id for i in range(2)]
    await stock.confirm(sale, a[:1])
    await stock.release(other, b[:1])
    await redis_client(stock).script_flush()
    got = await stock.states({sale: [*a, "unknown-id"], other: b, f"{sale}-never": ["x"]})
    assert got[sale] == {
        a[0]: RedisState.CONFIRMED,
        a[1]: RedisState.PENDING,
        a[2]: RedisState.PENDING,
        "unknown-id": None,
    }
    assert got[other] == {b[0]: RedisState.RELEASED, b[1]: RedisState.PENDING}
    assert got[f"{sale}-never"] is None
