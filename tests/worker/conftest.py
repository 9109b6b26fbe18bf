"""Fixtures for the settle worker against the project's real Redis and PostgreSQL: one pool, Ledger and
procrastinate App per test session, a way to run an in-process worker until the queue is drained, the real
worker process on a database of a test's own, and helpers to make reservations and judge a sale with the
audit of the invariants (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
import psycopg_pool
import pytest

from stampede import queue
from stampede.audit import AuditReport, audit, counts_from
from stampede.ledger import Ledger, LedgerRow, PendingReservation
from stampede.migrate import migrate
from stampede.names import QUEUE_SETTLE
from stampede.settings import Common, load
from stampede.stock import SaleConfig, StockEngine
from stampede.vocabulary import JobStatus
from stampede_worker import tasks
from stampede_worker.settings import WorkerSettings


@pytest.fixture(scope="session")
def worker_database_url(database_url: str) -> Iterator[str]:
    """A migrated database named for this session alone: the per-worker database of ``database_url`` is
    shared by name with any other pytest session on the same services, which recreates it when it starts."""
    base, _, _ = database_url.rpartition("/")
    name = f"stampede_w_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    asyncio.run(migrate(f"{base}/{name}"))
    yield f"{base}/{name}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def own_ledger(fresh_database_url: str) -> AsyncIterator[Ledger]:
    """A Ledger on a migrated database of this test's own."""
    await migrate(fresh_database_url)
    lg = await Ledger.open(load(Common, env={}, database_url=fresh_database_url))
    yield lg
    await lg.close()


def start_worker(redis_url: str, database_url: str, port: int, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """The real worker process (``python -m stampede_worker``, health on ``port``), appending to ``log``, with a
    short heartbeat, stall threshold and poll so a kill and a restart play out within seconds; ``extra``
    overrides any variable."""
    env = {
        **os.environ,
        "STAMPEDE_REDIS_URL": redis_url,
        "STAMPEDE_DATABASE_URL": database_url,
        "STAMPEDE_WORKER_CONCURRENCY": "4",
        "STAMPEDE_WORKER_METRICS_HOST": "127.0.0.1",
        "STAMPEDE_WORKER_METRICS_PORT": str(port),
        "STAMPEDE_WORKER_HEARTBEAT_S": "0.5",
        "STAMPEDE_WORKER_STALLED_S": "2",
        "STAMPEDE_WORKER_POLL_S": "0.2",
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "stampede_worker"], cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


@pytest.fixture(scope="session")
def worker_settings(redis_url: str, worker_database_url: str) -> WorkerSettings:
    return load(
        WorkerSettings,
        env={},
        redis_url=redis_url,
        database_url=worker_database_url,
        worker_concurrency=4,
        worker_max_retries=2,
        worker_retry_base_s=0.05,
        worker_retry_max_s=0.2,
        worker_metrics_port=0,
        log_json=False,
    )


@pytest.fixture(scope="session")
async def pool(worker_settings: WorkerSettings) -> AsyncIterator[psycopg_pool.AsyncConnectionPool]:
    p = queue.make_pool(worker_settings, max_size=12)
    await p.open(wait=True)
    yield p
    await p.close()


@pytest.fixture(scope="session")
def ledger(pool: psycopg_pool.AsyncConnectionPool) -> Ledger:
    return Ledger(pool)


@pytest.fixture(scope="session")
async def app(
    worker_settings: WorkerSettings, pool: psycopg_pool.AsyncConnectionPool
) -> AsyncIterator[procrastinate.App]:
    a = queue.build_app(worker_settings)
    tasks.register(a, worker_settings)
    await queue.open_app(a, pool)
    yield a
    await a.close_async()


@dataclass
class Harness:
    app: procrastinate.App
    pool: psycopg_pool.AsyncConnectionPool
    ledger: Ledger
    stock: StockEngine
    settings: WorkerSettings

    async def reservations(self, sale: str, n: int, *, total: int | None = None) -> list[PendingReservation]:
        """Opens ``sale`` with ``total`` units (default n) and reserves n units for n buyers in Redis."""
        await self.stock.seed(sale, SaleConfig(total=total if total is not None else n, per_user_limit=1), open=True)
        out: list[PendingReservation] = []
        for start in range(0, n, 200):
            got = await asyncio.gather(
                *(self.stock.reserve(sale, f"buyer-{i}") for i in range(start, min(n, start + 200)))
            )
            now = await self.stock.now_ms()
            out += [PendingReservation(r.reservation_id, sale, r.user, r.quantity, now) for r in got]
        return out

    async def record(self, reservations: Sequence[PendingReservation], batch: int = 100) -> list[int]:
        chunks = [reservations[i : i + batch] for i in range(0, len(reservations), batch)]
        return [(await self.ledger.record_batch(chunk)).job for chunk in chunks]

    async def idle(self) -> bool:
        depth = await queue.queue_depth(self.pool)
        return depth[JobStatus.TODO] + depth[JobStatus.DOING] == 0

    async def drain(
        self,
        *,
        ledger: Ledger | None = None,
        stock: StockEngine | None = None,
        until: Callable[[], Awaitable[bool]] | None = None,
        within: float = 30.0,
    ) -> None:
        """Runs an in-process worker (optionally over fault-injecting collaborators) until the settle queue
        holds no todo/doing job (or ``until`` holds), then stops it gracefully."""
        worker = asyncio.create_task(
            self.app.run_worker_async(
                queues=[QUEUE_SETTLE],
                concurrency=self.settings.worker_concurrency,
                install_signal_handlers=False,
                fetch_job_polling_interval=0.05,
                additional_context={
                    tasks.CTX_LEDGER: ledger or self.ledger,
                    tasks.CTX_STOCK: stock or self.stock,
                    tasks.CTX_SETTINGS: self.settings,
                },
            )
        )
        check = until or self.idle
        deadline = time.monotonic() + within
        try:
            await asyncio.sleep(0.05)
            while not await check():
                assert not worker.done(), "the worker stopped on its own"
                assert time.monotonic() < deadline, "the queue did not drain in time"
                await asyncio.sleep(0.05)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def audit(self, sale: str, *, total: int, accepted: Sequence[str], limit: int = 1) -> AuditReport:
        rows = await self.ledger.rows(sale)
        snap = await self.stock.snapshot(sale)
        report = audit(sale, stock=total, per_user_limit=limit, accepted=accepted, rows=rows, redis=counts_from(snap))
        assert report.ok, report.render()
        assert snap.remaining + snap.confirmed == total, "stock not whole after the sale settled"
        return report

    async def row(self, reservation_id: str) -> LedgerRow:
        """The ledger row of a reservation the test recorded (it has one)."""
        row = await self.ledger.get_reservation(reservation_id)
        assert row is not None, reservation_id
        return row

    async def job_statuses(self, job_ids: Sequence[int]) -> list[str]:
        return [str((await self.app.job_manager.get_job_status_async(j)).value) for j in job_ids]

    async def defer_raw(self, **payload: Any) -> int:
        """Defers a settle_batch job with arbitrary arguments, as a buggy or hostile producer would."""
        from stampede.names import TASK_SETTLE_BATCH

        return await self.app.configure_task(TASK_SETTLE_BATCH, queue=QUEUE_SETTLE).defer_async(**payload)


@pytest.fixture
async def harness(
    app: procrastinate.App,
    pool: psycopg_pool.AsyncConnectionPool,
    ledger: Ledger,
    stock: StockEngine,
    worker_settings: WorkerSettings,
) -> Harness:
    return Harness(app, pool, ledger, stock, worker_settings)
