"""A crowd of buyers for the stock engine's concurrency tests: one process sends its share of the plan at once,
through its own engine (so several processes race on the real Redis, as API workers do)."""

from __future__ import annotations

import asyncio

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
