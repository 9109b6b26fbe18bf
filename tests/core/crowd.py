"""A crowd of buyers for the stock engine's concurrency tests: one process sends its share of the plan at once,
through its own engine (so several processes race on the real Redis, as API workers do)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ProcessPoolExecutor

from stampede import errors
from stampede.stock import StockEngine

Plan = list[tuple[str, str, int]]  # (user, idempotency key, quantity)


async def fire(url: str, sale: str, plan: Plan) -> list[tuple[str, str, str]]:
    """Sends every (user, idempotency key, quantity) of ``plan`` at once; returns (user, key, id or !code)."""
    # A correctness race, not a latency test: on a busy machine 200 requests may wait longer than the
    # production pool's 5 s for one of 64 connections, so callers here wait as long as the test may run.
    engine = StockEngine.from_url(url, max_connections=64, pool_timeout=120)

    async def one(user: str, key: str, qty: int) -> tuple[str, str, str]:
        try:
            return user, key, (await engine.reserve(sale, user, qty, idempotency_key=key)).reservation_id
        except errors.StampedeError as exc:
            return user, key, f"!{exc.code}"

    try:
        return list(await asyncio.gather(*(one(*p) for p in plan)))
    finally:
        await engine.close()


def fire_in_process(url: str, sale: str, plan: Plan) -> list[tuple[str, str, str]]:
    """``fire`` in a process of its own (a ProcessPoolExecutor's worker)."""
    return asyncio.run(fire(url, sale, plan))


async def race(url: str, sale: str, plan: Plan, processes: int) -> list[tuple[str, str, str]]:
    """``plan`` split over ``processes`` processes that fire their shares at once; every (user, key, outcome)."""
    chunks = [plan[i::processes] for i in range(processes)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes) as pool:
        parts = await asyncio.gather(*(loop.run_in_executor(pool, fire_in_process, url, sale, c) for c in chunks))
    return [r for part in parts for r in part]


def accepted_ids(results: list[tuple[str, str, str]]) -> list[str]:
    """The reservation ids the race accepted, after checking that every key maps to exactly one id however many
    times it was sent concurrently."""
    ids_by_key: dict[tuple[str, str], set[str]] = {}
    for user, key, out in results:
        if not out.startswith("!"):
            ids_by_key.setdefault((user, key), set()).add(out)
    assert all(len(ids) == 1 for ids in ids_by_key.values())
    return sorted({next(iter(ids)) for ids in ids_by_key.values()})
