"""Settled reservations are compacted in Redis (lua/smallhash.lua) without weakening anything later steps need:
thousands of reservations made and settled by racing OS processes (enough to split the settled store's
buckets many times while confirms and releases are in flight) keep exact counters, idempotent replays,
confirm/release idempotence, per-buyer holdings and a clean audit; the store stays in Redis's compact
encoding; a restore from the ledger's view gives the same records."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import pytest

from stampede import errors
from stampede.audit import Row, audit, counts_from
from stampede.names import sale_keys
from stampede.stock import Outcome, ReservationRecord, SaleConfig, StockEngine
from tests.stores import redis_bytes, redis_client

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PROCESSES = 4
STOCK = 3000
LIMIT = 3
BUYERS = 1500


async def _reserve(url: str, sale: str, plan: list[tuple[str, str, int]]) -> list[tuple[str, str, int, str]]:
    """Every (buyer, idempotency key, quantity) of ``plan`` at once; returns (buyer, key, qty, id or !code)."""
    engine = StockEngine.from_url(url, max_connections=16, pool_timeout=120)  # the machine may be slow

    async def one(user: str, key: str, qty: int) -> tuple[str, str, int, str]:
        for attempt in range(10):
            try:
                return user, key, qty, (await engine.reserve(sale, user, qty, idempotency_key=key)).reservation_id
            except errors.DependencyUnavailable:
                # A slow shared machine can drop a connection; the client retries with the same key, which
                # is what idempotency keys are for (a reservation made before the drop is replayed).
                await asyncio.sleep(0.2 * (attempt + 1))
            except errors.StampedeError as exc:
                return user, key, qty, f"!{exc.code}"
        return user, key, qty, "!dependency_unavailable"

    try:
        return list(await asyncio.gather(*(one(*p) for p in plan)))
    finally:
        await engine.close()


async def _settle(url: str, sale: str, ops: list[tuple[str, list[str]]]) -> list[tuple[str, dict[str, str], bool]]:
    """Runs every (confirm|release, ids) of ``ops`` at once; returns each call's kind, outcomes and whether it
    was retried after a dropped connection (its first attempt may have moved some ids unseen)."""
    engine = StockEngine.from_url(url, max_connections=16, pool_timeout=120)  # the machine may be slow

    async def one(kind: str, ids: list[str]) -> tuple[str, dict[str, str], bool]:
        for attempt in range(10):
            try:
                out = await (engine.confirm if kind == "confirm" else engine.release)(sale, ids)
                return kind, {rid: o.value for rid, o in out.items()}, attempt > 0
            except errors.DependencyUnavailable:
                await asyncio.sleep(0.2 * (attempt + 1))  # both scripts are idempotent: retrying is safe
        raise AssertionError("Redis unreachable for 10 attempts")

    try:
        return list(await asyncio.gather(*(one(*op) for op in ops)))
    finally:
        await engine.close()


def _reserve_in_process(url: str, sale: str, plan: list[tuple[str, str, int]]) -> list[tuple[str, str, int, str]]:
    return asyncio.run(_reserve(url, sale, plan))


def _settle_in_process(url: str, sale: str, ops: list[tuple[str, list[str]]]) -> list[tuple[str, dict[str, str], bool]]:
    return asyncio.run(_settle(url, sale, ops))


async def test_racing_settles_compact_and_keep_every_invariant(stock: StockEngine, redis_url: str, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=STOCK, per_user_limit=LIMIT), open=True)
    rng = random.Random(18)
    plan = [(f"b{rng.randrange(BUYERS)}", f"k{n}", rng.choice((1, 1, 1, 2))) for n in range(2600)]
    plan += rng.sample(plan, 300)  # clients retrying with the same key, concurrently
    rng.shuffle(plan)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(PROCESSES) as pool:
        parts = await asyncio.gather(
            *(loop.run_in_executor(pool, _reserve_in_process, redis_url, sale, plan[i::PROCESSES]) for i in range(4))
        )
    results = [r for part in parts for r in part]
    made: dict[str, tuple[str, str, int]] = {}  # id -> (buyer, key, qty)
    for user, key, qty, out in results:
        if not out.startswith("!"):
            assert made.setdefault(out, (user, key, qty)) == (user, key, qty)
    refusals = Counter(out for *_, out in results if out.startswith("!"))
    assert set(refusals) <= {"!limit_reached"}, refusals
    assert len(made) > 2000

    # Settle them while more reserves arrive: each id is confirmed or released (sometimes both race, and
    # sometimes one is repeated), from several processes, in small batches.
    ids = sorted(made)
    rng.shuffle(ids)
    ops: list[tuple[str, list[str]]] = []
    for i in range(0, len(ids), 7):
        chunk = ids[i : i + 7]
        ops.append(("confirm" if rng.random() < 0.8 else "release", chunk))
        if rng.random() < 0.3:
            ops.append((rng.choice(("confirm", "release")), chunk))
    rng.shuffle(ops)
    late = [(f"late{n}", f"l{n}", 1) for n in range(200)]
    with ProcessPoolExecutor(PROCESSES) as pool:
        settles = [loop.run_in_executor(pool, _settle_in_process, redis_url, sale, ops[i::3]) for i in range(3)]
        more = loop.run_in_executor(pool, _reserve_in_process, redis_url, sale, late)
        settled_parts, late_results = await asyncio.gather(asyncio.gather(*settles), more)
    for user, key, qty, out in late_results:
        if not out.startswith("!"):
            made[out] = (user, key, qty)
    # What each racing call saw of an id is the one state it ended in: never both, never unknown.
    seen: dict[str, set[str]] = {}
    moves: Counter[str] = Counter()
    retried: set[str] = set()
    for kind, outcomes, again in (o for part in settled_parts for o in part):
        if again:
            retried |= set(outcomes)
        for rid, o in outcomes.items():
            state = {
                ("confirm", "confirmed"): "confirmed",
                ("confirm", "already"): "confirmed",
                ("confirm", "released"): "released",
                ("release", "released"): "released",
                ("release", "already"): "released",
                ("release", "refused_confirmed"): "confirmed",
            }[(kind, o)]
            seen.setdefault(rid, set()).add(state)
            moves[rid] += (kind, o) in (("confirm", "confirmed"), ("release", "released"))
    assert set(seen) == set(ids)
    assert all(len(states) == 1 for states in seen.values())
    # Exactly one call moved each out of pending (a retried call's first attempt may have done it unseen).
    assert all(moves[rid] == 1 or (moves[rid] == 0 and rid in retried) for rid in ids)
    records = {r.reservation_id: r for r in await stock.reservations(sale)}
    assert set(records) == set(made)
    for rid, states in seen.items():
        assert (records[rid].state, records[rid].quantity) == (next(iter(states)), made[rid][2])

    # Settle the late ones too, then the sale is wholly compact: no full record left, small listpack buckets.
    await stock.confirm(sale, [rid for rid, r in records.items() if r.state == "pending"])
    k = sale_keys(sale)
    snap = await stock.snapshot(sale)
    assert snap.balanced and snap.pending == 0 and snap.pending_count == 0
    assert snap.reservations == len(made)
    assert await redis_client(stock).hlen(k.reservations) == 0
    buckets = int(redis_bytes(await redis_client(stock).hget(k.settled, "buckets")))
    assert buckets >= len(made) // 64  # split as it grew
    sizes = [await redis_client(stock).hlen(k.bucket(k.settled, i)) for i in range(buckets)]
    assert sum(sizes) == len(made)
    encodings = {await redis_client(stock).object("encoding", k.bucket(k.settled, i)) for i in range(buckets)}
    assert encodings == {b"listpack"}

    # What later steps need, for every settled reservation.
    records = {r.reservation_id: r for r in await stock.reservations(sale)}
    held: Counter[str] = Counter()
    for rid, (user, key, qty) in made.items():
        rec = records[rid]
        assert rec.state in ("confirmed", "released") and rec.quantity == qty
        if rec.state == "confirmed":
            held[user] += qty
        replay = await stock.reserve(sale, user, qty, idempotency_key=key)
        assert (replay.replay, replay.reservation_id, replay.state) == (True, rid, rec.state)
        with pytest.raises(errors.IdempotencyConflict):
            await stock.reserve(sale, user, qty + 1, idempotency_key=key)
        with pytest.raises(errors.InvalidArgument):
            await stock.reserve(sale, "someone-else", 1, reservation_id=rid)
    sample = rng.sample(sorted(made), 300)
    again_c = await stock.confirm(sale, sample)
    again_r = await stock.release(sale, sample)
    for rid in sample:
        confirmed = records[rid].state == "confirmed"
        assert again_c[rid] == (Outcome.ALREADY if confirmed else Outcome.RELEASED)
        assert again_r[rid] == (Outcome.REFUSED_CONFIRMED if confirmed else Outcome.ALREADY)
    assert await stock.holdings(sale) == dict(held)
    assert max(held.values()) <= LIMIT

    snap = await stock.snapshot(sale)
    report = audit(
        sale,
        stock=STOCK,
        per_user_limit=LIMIT,
        accepted=sorted(made),
        rows=[Row(rid, made[rid][0], r.quantity, r.state) for rid, r in records.items()],
        redis=counts_from(snap),
    )
    assert report.ok, report.render()

    # A restore from the ledger's view (every row, with its buyer and time) after Redis lost the sale
    # writes the same sale back, settled rows into the compact store.
    ledger_view = [ReservationRecord(rid, r.state, r.quantity, 1, made[rid][0]) for rid, r in records.items()]
    await stock.delete(sale)
    assert await redis_client(stock).exists(k.settled, k.bucket(k.settled, 0), k.holds) == 0
    assert await stock.lock_restore(sale, "token", 60_000)
    config = SaleConfig(total=STOCK, per_user_limit=LIMIT)
    restored = await stock.restore(sale, "token", "run", config, True, ledger_view)
    assert restored.outcome == "restored"
    assert await redis_client(stock).hlen(k.reservations) == 0
    after = {r.reservation_id: (r.state, r.quantity) for r in await stock.reservations(sale)}
    assert after == {rid: (r.state, r.quantity) for rid, r in records.items()}
    assert await stock.holdings(sale) == dict(held)
    snap2 = await stock.snapshot(sale)
    assert (snap2.remaining, snap2.confirmed, snap2.pending, snap2.reservations) == (
        snap.remaining,
        snap.confirmed,
        0,
        len(made),
    )
    repeated = await stock.confirm(sale, sample)
    assert all(o in (Outcome.ALREADY, Outcome.RELEASED) for o in repeated.values())
    await stock.delete(sale)
