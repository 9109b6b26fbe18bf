"""Real concurrency against the stock engine: several OS processes, each with many requests in flight,
race for 100 units; concurrent replays of one idempotency key must still make one reservation."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from stampede.audit import Row, audit, counts_from
from stampede.stock import SaleConfig, StockEngine
from stampede.vocabulary import RedisState
from tests.core.crowd import accepted_ids, race

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PROCESSES = 4
ATTEMPTS = 800  # reserve attempts in all, well past 500
STOCK = 100


@pytest.mark.parametrize("limit", [1, 2])
async def test_concurrent_reserves_never_oversell(stock: StockEngine, redis_url: str, sale: str, limit: int) -> None:
    await stock.seed(sale, SaleConfig(total=STOCK, per_user_limit=limit), open=True)
    rng = random.Random(limit)
    users = [f"u{i}" for i in range(150)]
    plan: list[tuple[str, str, int]] = []
    for n in range(ATTEMPTS):
        user = rng.choice(users)
        # One attempt in four reuses an earlier key of the same buyer: a client retrying.
        mine = [p for p in plan[-200:] if p[0] == user]
        if mine and rng.random() < 0.25:
            plan.append(rng.choice(mine))
        else:
            plan.append((user, f"k{n}", rng.choice((1, 1, 2)) if limit == 2 else 1))
    rng.shuffle(plan)
    results = await race(redis_url, sale, plan, PROCESSES)
    # Every key maps to exactly one reservation id, however many times it was sent concurrently.
    accepted = accepted_ids(results)

    records = await stock.reservations(sale)
    snap = await stock.snapshot(sale)
    assert snap.remaining == 0
    assert sum(r.quantity for r in records) == STOCK  # exactly 100 units reserved
    assert len(records) == len(accepted)
    held: Counter[str] = Counter()
    for r in records:
        held[r.user] += r.quantity
    assert max(held.values()) <= limit
    codes = Counter(out for *_, out in results if out.startswith("!"))
    assert set(codes) <= {"!sold_out", "!limit_reached", "!idempotency_conflict"}

    report = audit(
        sale,
        stock=STOCK,
        per_user_limit=limit,
        accepted=accepted,
        rows=[Row(r.reservation_id, r.user, r.quantity, r.state) for r in records],
        redis=counts_from(snap),
        settled=False,
    )
    assert report.ok, report.render()
    assert report.pending_units == STOCK


async def test_concurrent_confirm_and_release_race(stock: StockEngine, sale: str) -> None:
    """Confirm and release of the same reservations race; each ends in exactly one state and the
    counters balance."""
    await stock.seed(sale, SaleConfig(total=200, per_user_limit=1), open=True)
    ids = [(await stock.reserve(sale, f"u{i}")).reservation_id for i in range(200)]
    halves = [ids[i : i + 10] for i in range(0, 200, 10)]
    await asyncio.gather(*(op(sale, h) for h in halves for op in (stock.confirm, stock.release)))
    records = await stock.reservations(sale)
    states = Counter(r.state for r in records)
    assert states[RedisState.PENDING] == 0
    assert states[RedisState.CONFIRMED] + states[RedisState.RELEASED] == 200
    snap = await stock.snapshot(sale)
    assert snap.balanced
    assert (snap.confirmed, snap.remaining) == (states[RedisState.CONFIRMED], states[RedisState.RELEASED])
