"""The stock engine on the local 6-node Redis Cluster (3 masters, 3 replicas), whatever Redis the rest of the
run uses: sales spread over every master, each sale's scripts stay in its slot, concurrent buyers of many
sales on several masters never oversell, and a reserve is answered only once a replica holds it."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis

from stampede import errors
from stampede.audit import Row, audit, counts_from
from stampede.names import sale_keys
from stampede.stock import SaleConfig, StockEngine

pytestmark = [pytest.mark.redis]


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[StockEngine]:
    engine = StockEngine.from_url(redis_cluster_url)
    yield engine
    await engine.close()


def _masters(engine_url: str) -> dict[str, redis.Redis]:
    """A plain client on each master, by ``host:port`` (one node only: a key it does not own is MOVED)."""
    port = int(engine_url.rsplit(":", 1)[1].split("/")[0])
    with redis.Redis(port=port) as seed:
        nodes = seed.execute_command("CLUSTER", "NODES").decode().splitlines()
    out = {}
    for line in nodes:
        fields = line.split()
        if "master" in fields[2] and "fail" not in fields[2]:
            addr = fields[1].split("@")[0]
            host, p = addr.rsplit(":", 1)
            out[addr] = redis.Redis(host=host, port=int(p))
    return out


async def test_a_few_dozen_sales_land_on_every_master(cluster: StockEngine, redis_cluster_url: str) -> None:
    ns = f"spread-{uuid.uuid4().hex[:6]}"
    sales = [f"{ns}/s{i}" for i in range(36)]
    for sale in sales:
        await cluster.seed(sale, SaleConfig(total=5), open=True)
        await cluster.reserve(sale, "u1", 1)
    masters = _masters(redis_cluster_url)
    assert len(masters) == 3
    # Where the keys really are: each master's own keyspace, scanned on that node alone.
    where: dict[str, list[str]] = {}
    for addr, client in masters.items():
        with client:
            found = [k.decode() for k in client.scan_iter(match=f"stampede:{{{ns}/*}}:meta", count=1000)]
        where[addr] = found
        # Every key of a sale lives where its meta lives: one slot, one master.
        for key in found:
            base = key.removesuffix(":meta")
            with masters[addr] as c:
                assert c.exists(f"{base}:res", f"{base}:holds", f"{base}:pending") == 3
    assert sum(len(v) for v in where.values()) == len(sales)
    assert all(len(v) >= 3 for v in where.values()), {a: len(v) for a, v in where.items()}
    for sale in sales:
        assert f"stampede:{{{sale}}}:meta" in where[await cluster.master_of(sale) or ""]
    for sale in sales:
        await cluster.delete(sale)


async def test_many_sales_on_every_master_never_oversell(cluster: StockEngine, redis_cluster_url: str) -> None:
    """Six sales (over the three masters), 200 buyers in flight through four engines, every reserve through
    the batch path (a pipeline per master, WAIT for the replica); then the audit of each sale."""
    ns = f"race-{uuid.uuid4().hex[:6]}"
    sales = [f"{ns}/s{i}" for i in range(6)]
    for sale in sales:
        await cluster.seed(sale, SaleConfig(total=40, per_user_limit=2), open=True)
    assert len({await cluster.master_of(s) for s in sales}) >= 2
    engines = [StockEngine.from_url(redis_cluster_url, max_connections=64) for _ in range(4)]
    rng = random.Random(7)
    plan = [(rng.choice(sales), f"u{rng.randrange(120)}", rng.choice((1, 1, 2))) for _ in range(900)]
    sem = asyncio.Semaphore(200)

    async def one(n: int, sale: str, user: str, qty: int) -> tuple[str, str, int, str]:
        async with sem:
            try:
                r = await engines[n % 4].reserve(sale, user, qty, idempotency_key=f"k{n}")
                return sale, user, qty, r.reservation_id
            except errors.StampedeError as exc:
                return sale, user, qty, f"!{exc.code}"

    try:
        results = await asyncio.gather(*(one(n, *p) for n, p in enumerate(plan)))
    finally:
        for e in engines:
            await e.close()
    codes = Counter(r[3] if r[3].startswith("!") else "ok" for r in results)
    assert set(codes) <= {"ok", "!sold_out", "!limit_reached"}, codes
    for sale in sales:
        accepted = {r[3] for r in results if r[0] == sale and not r[3].startswith("!")}
        records = await cluster.reservations(sale)
        snap = await cluster.snapshot(sale)
        assert snap.balanced and snap.remaining == 0
        assert {r.reservation_id for r in records} == accepted
        held: Counter[str] = Counter()
        for r in records:
            held[r.user] += r.quantity
        assert max(held.values()) <= 2
        rows = [Row(r.reservation_id, r.user, r.quantity, "pending") for r in records]
        report = audit(
            sale, stock=40, per_user_limit=2, accepted=accepted, rows=rows, redis=counts_from(snap), settled=False
        )
        assert report.oversold == 0 and report.drift == 0, report.render()
        await cluster.delete(sale)


async def test_a_reserve_is_answered_after_its_replica_holds_it(cluster: StockEngine, redis_cluster_url: str) -> None:
    """With ``ack_replicas`` 1 (a cluster's default) the replica of the sale's master holds the reservation
    by the time the buyer hears of it; asking for more replicas than exist gives the units back and answers
    503, and the buyer's key reserves afresh when retried."""
    sale = f"ack-{uuid.uuid4().hex[:6]}/s"
    await cluster.seed(sale, SaleConfig(total=3, per_user_limit=3, ip_rate=100, ip_burst=100), open=True)
    r = await cluster.reserve(sale, "alice", 1)  # no client IP although the sale limits per IP
    master = await cluster.master_of(sale)
    port = int(redis_cluster_url.rsplit(":", 1)[1])
    with redis.Redis(port=port) as seed:
        lines = seed.execute_command("CLUSTER", "NODES").decode().splitlines()
    master_id = next(line.split()[0] for line in lines if line.split()[1].split("@")[0] == master)
    replica = next(line.split()[1].split("@")[0] for line in lines if line.split()[3] == master_id)
    host, p = replica.rsplit(":", 1)
    with redis.Redis(host=host, port=int(p)) as rep:
        rep.execute_command("READONLY")
        assert rep.hget(sale_keys(sale).reservations, r.reservation_id) is not None

    greedy = StockEngine.from_url(redis_cluster_url, ack_replicas=2, ack_timeout_ms=50)
    try:
        with pytest.raises(errors.DependencyUnavailable):
            await greedy.reserve(sale, "bob", 2, idempotency_key="k1")
    finally:
        await greedy.close()
    snap = await cluster.snapshot(sale)
    assert (snap.remaining, snap.pending) == (2, 1)  # bob's units were given back
    again = await cluster.reserve(sale, "bob", 2, idempotency_key="k1")
    assert not again.replay
    await cluster.delete(sale)


async def test_a_new_client_serves_a_burst_at_once(cluster: StockEngine, redis_cluster_url: str) -> None:
    """Commands started together on a client that has not read the slot map yet all succeed: redis-py picks a
    command's node before it reads the map and then recycles those connections under it (``Connection closed by
    server``, ``'NoneType' object has no attribute 'writelines'``) unless the engine reads the map first."""
    sale = f"burst-{uuid.uuid4().hex[:6]}"
    await cluster.seed(sale, SaleConfig(total=1000, per_user_limit=1), open=True)
    for round_no in range(5):
        fresh = StockEngine.from_url(redis_cluster_url)
        try:
            got = await asyncio.gather(
                *(fresh.snapshot(sale) for _ in range(30)),
                *(fresh.reserve(sale, f"r{round_no}-{i}") for i in range(30)),
                *(fresh.room.status(sale) for _ in range(30)),
                return_exceptions=True,
            )
        finally:
            await fresh.close()
        failed = [repr(g) for g in got if isinstance(g, BaseException)]
        assert not failed, failed[:3]
    assert (await cluster.snapshot(sale)).pending == 150


async def test_one_sale_in_six_buckets_spreads_over_every_master(cluster: StockEngine) -> None:
    sale = f"hot-{uuid.uuid4().hex[:6]}"
    await cluster.seed(sale, SaleConfig(total=600, per_user_limit=1, buckets=6), open=True)
    masters = await cluster.masters_of(sale)
    assert sorted(Counter(masters).values()) == [2, 2, 2]  # two buckets on each of the 3 masters
    await asyncio.gather(*(cluster.reserve(sale, f"b{i}") for i in range(120)))
    snap = await cluster.snapshot(sale)
    assert (snap.total, snap.pending, snap.remaining) == (600, 120, 480) and snap.balanced
