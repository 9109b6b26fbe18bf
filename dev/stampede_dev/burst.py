"""A concurrent burst of buyers straight against the stock engine, then the audit.

This is the smallest whole flash sale: many buyers (several OS processes, each with many concurrent
requests in flight) race for a few units, some reservations are confirmed and some released as the
worker would, and the audit proves nothing was oversold and the counters balance.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from stampede import errors
from stampede.audit import AuditReport, Row, audit, counts_from
from stampede.stock import SaleConfig, StockEngine


@dataclass(frozen=True)
class BurstResult:
    attempts: int
    accepted: list[str]
    refusals: dict[str, int]
    seconds: float
    report: AuditReport


async def _buy(
    url: str, sale: str, users: Sequence[str], quantity: int, concurrency: int
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    engine = StockEngine.from_url(url, max_connections=concurrency)
    accepted: list[tuple[str, str]] = []  # (reservation id, buyer)
    refusals: dict[str, int] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(user: str) -> None:
        async with sem:
            try:
                r = await engine.reserve(sale, user, quantity)
                accepted.append((r.reservation_id, user))
            except errors.StampedeError as exc:
                refusals[exc.code] = refusals.get(exc.code, 0) + 1

    try:
        await asyncio.gather(*(one(u) for u in users))
    finally:
        await engine.close()
    return accepted, refusals


def _buy_in_process(
    url: str, sale: str, users: Sequence[str], quantity: int, concurrency: int
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    return asyncio.run(_buy(url, sale, users, quantity, concurrency))


async def run_burst(
    url: str,
    sale: str,
    *,
    stock: int = 100,
    buyers: int = 300,
    attempts: int = 1000,
    per_user_limit: int = 1,
    processes: int = 4,
    concurrency: int = 64,
    release_ratio: float = 0.1,
    seed: int = 7,
) -> BurstResult:
    """Seeds ``sale``, fires ``attempts`` reserves from ``buyers`` distinct users across ``processes``
    processes, settles every reservation (confirm, or release a share of them as a failed job would),
    and audits the result."""
    engine = StockEngine.from_url(url)
    try:
        await engine.delete(sale)
        await engine.seed(sale, SaleConfig(total=stock, per_user_limit=per_user_limit), open=True)
        rng = random.Random(seed)
        users = [f"buyer-{rng.randrange(buyers)}" for _ in range(attempts)]
        chunks = [users[i::processes] for i in range(processes)]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=processes) as pool:
            parts = await asyncio.gather(
                *(loop.run_in_executor(pool, _buy_in_process, url, sale, chunk, 1, concurrency) for chunk in chunks)
            )
        seconds = time.perf_counter() - started
        buyer_of = {rid: user for part, _ in parts for rid, user in part}
        accepted = list(buyer_of)
        refusals: dict[str, int] = {}
        for _, ref in parts:
            for code, n in ref.items():
                refusals[code] = refusals.get(code, 0) + n

        released = set(rng.sample(accepted, int(len(accepted) * release_ratio)))
        await engine.release(sale, released)
        await engine.confirm(sale, [r for r in accepted if r not in released])

        records = await engine.reservations(sale)
        snap = await engine.snapshot(sale)
        report = audit(
            sale,
            stock=stock,
            per_user_limit=per_user_limit,
            accepted=accepted,
            # Settled records in Redis keep no buyer (the ledger does): the burst knows whose each one is.
            rows=[Row(r.reservation_id, buyer_of.get(r.reservation_id, r.user), r.quantity, r.state) for r in records],
            redis=counts_from(snap),
        )
        return BurstResult(attempts, accepted, refusals, seconds, report)
    finally:
        await engine.close()
