"""Paced fetching (``STAMPEDE_WORKER_FETCH_PACE_S``) with a real worker process: buyers reserve and writers record
micro-batches at once for a few seconds while the worker settles; the worker fetches at most once per pace, so a
job gathers every batch of its shard written in between, and the audit holds at the end."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from stampede.audit import audit, counts_from
from stampede.ledger import Ledger, PendingReservation
from stampede.stock import SaleConfig, StockEngine
from stampede.vocabulary import Status
from stampede_dev.devstack import free_port
from tests.stores import ledger_pool

from .conftest import start_worker

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

PACE_S = 0.25
WRITERS = 12
SHARDS = 4


def _ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the worker answers /healthz: it is fetching before the first batch is written."""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the worker did not become healthy within 120 s"
        time.sleep(0.1)


async def test_a_paced_worker_takes_at_most_one_job_per_shard_per_fetch(
    redis_url: str, fresh_database_url: str, own_ledger: Ledger, stock: StockEngine, sale: str, tmp_path: Path
) -> None:
    n = 1200
    await stock.seed(sale, SaleConfig(total=n, per_user_limit=1), open=True)
    port = free_port()
    proc = start_worker(
        redis_url, fresh_database_url, port, tmp_path / "worker.log", STAMPEDE_WORKER_FETCH_PACE_S=str(PACE_S)
    )
    await asyncio.to_thread(_ready, port, proc, tmp_path / "worker.log")
    accepted: list[str] = []
    batches = 0

    async def writer(k: int) -> None:
        # One API process's flusher: reserve a small batch of buyers at once, record it durably, again.
        nonlocal batches
        for step in range(n // WRITERS // 5):
            got = await asyncio.gather(*(stock.reserve(sale, f"w{k}-{step}-{j}") for j in range(5)))
            now = await stock.now_ms()
            await own_ledger.record_batch([PendingReservation(r.reservation_id, sale, r.user, 1, now) for r in got])
            accepted.extend(r.reservation_id for r in got)
            batches += 1
            await asyncio.sleep(0.15)  # the writers' batches spread over about 3 s, as a steady stream

    try:
        started = time.monotonic()
        await asyncio.gather(*(writer(k) for k in range(WRITERS)))
        deadline = time.monotonic() + 120
        while (await own_ledger.counts(sale))[Status.PENDING]:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the backlog did not settle within 120 s"
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(30)

    async with ledger_pool(own_ledger).connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE args->>'sale' = %s", (sale,))
        row = await cur.fetchone()
    assert row is not None
    jobs = int(row[0])
    # At most one job waits per shard, and the worker wakes once per pace and fetches until nothing waits: a
    # batch written while that round runs may defer a second job of a shard, so no more than two jobs per shard
    # per wake (+2 wakes for the ends of the window). Fetching at every notification took 172–229 jobs here.
    bound = 2 * SHARDS * (elapsed / PACE_S + 2)
    assert jobs <= bound, f"{jobs} jobs for {batches} batches in {elapsed:.1f} s; paced bound {bound:.0f}"
    assert batches == n // 5 and len(accepted) == n
    rows = await own_ledger.rows(sale)
    assert {r.status for r in rows} == {Status.CONFIRMED} and len(rows) == n
    report = audit(
        sale, stock=n, per_user_limit=1, accepted=accepted, rows=rows, redis=counts_from(await stock.snapshot(sale))
    )
    assert report.ok, report.render()
