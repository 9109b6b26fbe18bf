"""Coalesced settling against the real Redis and PostgreSQL: many writers recording micro-batches at once
while workers settle, the queue never holds more than one waiting job per shard of the sale, jobs carry
many batches each, and the audit of the invariants (docs/architecture.md) holds at the end."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import pytest

from stampede.ledger import Ledger, PendingReservation
from stampede.vocabulary import JobStatus, Status
from stampede_worker import settle

if TYPE_CHECKING:
    from tests.worker.conftest import Harness

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


async def _sale_jobs(harness: Harness, sale: str) -> dict[str, int]:
    async with harness.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status::text, count(*) FROM procrastinate_jobs WHERE args->>'sale' = %s GROUP BY 1", (sale,)
        )
        return {str(s): int(n) for s, n in await cur.fetchall()}


async def test_concurrent_writers_share_a_bounded_set_of_jobs(harness: Harness, sale: str) -> None:
    n = 3000
    res = await harness.reservations(sale, n)
    # Two "API processes" (separate pools are not needed: each writer has its own connection per call),
    # eight writers each, micro-batches of 1-20 reservations, all while a worker settles.
    ledgers = [Ledger(harness.pool, settle_shards=4), Ledger(harness.pool, settle_shards=4)]
    chunks: list[list[PendingReservation]] = []
    i = 0
    rng = random.Random(7)
    while i < n:
        size = rng.randint(1, 20)
        chunks.append(res[i : i + size])
        i += size
    todo_seen: list[int] = []
    writing = True

    async def writer(k: int) -> None:
        lg = ledgers[k % 2]
        for chunk in chunks[k::16]:
            await lg.record_batch(chunk)
            await asyncio.sleep(rng.random() / 200)

    async def watch() -> None:
        while writing:
            todo_seen.append((await _sale_jobs(harness, sale)).get(JobStatus.TODO, 0))
            await asyncio.sleep(0.005)

    async def settled() -> bool:
        if writing or (await harness.ledger.counts(sale))["pending"]:
            return False
        # Rows and jobs both: a running job also claims the rows that joined its shard's waiting job, so the
        # rows can all be settled while that job still waits (or runs) in the queue.
        jobs = await _sale_jobs(harness, sale)
        return not jobs.get(JobStatus.TODO) and not jobs.get(JobStatus.DOING)

    async def write_all() -> None:
        nonlocal writing
        try:
            await asyncio.gather(*(writer(k) for k in range(16)))
        finally:
            writing = False

    watcher = asyncio.create_task(watch())
    await asyncio.gather(write_all(), harness.drain(until=settled, within=120))
    await watcher

    assert max(todo_seen) <= 4, f"more than one job waiting per shard: {max(todo_seen)}"
    jobs = await _sale_jobs(harness, sale)
    assert set(jobs) == {"succeeded"}, jobs
    assert jobs["succeeded"] < len(chunks) / 3, f"{jobs['succeeded']} jobs for {len(chunks)} batches"
    rows = await harness.ledger.rows(sale)
    assert len(rows) == n and {r.status for r in rows} == {Status.CONFIRMED}
    await harness.audit(sale, total=n, accepted=[r.reservation_id for r in res])


async def test_a_claim_takes_at_most_its_limit_and_the_job_drains_the_shard(harness: Harness, sale: str) -> None:
    """A backlog larger than one claim is settled by one job in several chunks, oldest first."""
    n = 250
    res = await harness.reservations(sale, n)
    lg = Ledger(harness.pool, settle_shards=1)
    jobs = {(await lg.record_batch(res[i : i + 25])).job for i in range(0, n, 25)}
    assert len(jobs) == 1  # every batch joined the one waiting job of the only shard
    [job] = jobs
    report = await settle.settle_shard(
        settle.Shard(sale, 0), ledger=harness.ledger, stock=harness.stock, claim_max=60, job_id=job
    )
    assert (report.confirmed, report.compensated) == (n, 0)
    rows = await harness.ledger.rows(sale)
    assert {r.status for r in rows} == {Status.CONFIRMED}
    # The job that decided them stamped its id on them; the job itself then finds nothing left.
    assert {(await harness.row(r.reservation_id)).job_id for r in res[:3]} == {job}
    await harness.drain()
    await harness.audit(sale, total=n, accepted=[r.reservation_id for r in res])


async def test_racing_jobs_of_one_shard_split_its_rows(harness: Harness, sale: str) -> None:
    """Jobs of one shard running at once (a recovered job beside the waiting one) never take a row
    twice: each claim skips the rows another holds."""
    n = 600
    res = await harness.reservations(sale, n)
    lg = Ledger(harness.pool, settle_shards=1)
    for i in range(0, n, 50):
        await lg.record_batch(res[i : i + 50])
    reports = await asyncio.gather(
        *(
            settle.settle_shard(settle.Shard(sale, 0), ledger=harness.ledger, stock=harness.stock, claim_max=40)
            for _ in range(4)
        )
    )
    assert sum(r.confirmed for r in reports) == n
    assert sum(1 for r in reports if r.confirmed) >= 2, "the claims did not run side by side"
    snap = await harness.stock.snapshot(sale)
    assert (snap.confirmed, snap.pending, snap.released) == (n, 0, 0)
    await harness.drain()
    await harness.audit(sale, total=n, accepted=[r.reservation_id for r in res])
