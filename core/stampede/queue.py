"""The procrastinate App every process shares: the job queue lives in the ledger's PostgreSQL.

Built from settings with procrastinate's psycopg 3 connector over an async pool. The API never defers
through it (``Ledger.record_batch`` defers inside its own statement); the worker runs it, and the
operator's reconciler reads it (jobs by status, stalled jobs). Tasks are registered by the worker package,
never here, so importing the core never imports a component; anyone else refers to a task by its name
(``stampede.names.TASK_SETTLE_BATCH``) on queue ``QUEUE_SETTLE``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import procrastinate
import psycopg
import psycopg_pool
from procrastinate import exceptions as pexc
from procrastinate.jobs import Job

from . import pgerrors, sqlfiles
from .names import QUEUE_SETTLE, TASK_SETTLE_BATCH
from .settings import Common
from .vocabulary import JobStatus

log = logging.getLogger(__name__)

# What opening the App raises when PostgreSQL cannot be reached.
_OPEN_ERRORS: tuple[type[Exception], ...] = (*pgerrors.UNAVAILABLE, pexc.ConnectorException)


async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    # Set here rather than as a connect kwarg: procrastinate opens its LISTEN connection with the pool's
    # kwargs plus its own autocommit=True, and a duplicate keyword would break it.
    await conn.set_autocommit(True)


def make_pool(settings: Common, *, max_size: int | None = None) -> psycopg_pool.AsyncConnectionPool:
    """An unopened pool of autocommit connections. Every statement the queue and the ledger send is atomic
    on its own. No check on checkout (it cost a round trip per statement, 18% of a busy worker): a
    connection PostgreSQL closed fails its statement, which the caller treats as transient, and the pool
    drops it when it comes back broken."""
    return psycopg_pool.AsyncConnectionPool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=max(settings.db_pool_max, max_size or 0),
        timeout=settings.db_timeout_s,
        configure=_autocommit,
        open=False,
    )


def build_app(settings: Common, **worker_defaults: Any) -> procrastinate.App:
    """The App with a psycopg connector configured from settings (opened with ``open_app``)."""
    connector = procrastinate.PsycopgConnector(
        conninfo=settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        timeout=settings.db_timeout_s,
        configure=_autocommit,
    )
    return procrastinate.App(connector=connector, worker_defaults=worker_defaults or None)  # type: ignore[arg-type]


async def open_app(app: procrastinate.App, pool: psycopg_pool.AsyncConnectionPool | None = None) -> None:
    """Opens the App, on ``pool`` when given (a pool shared with the Ledger, opened by the caller)."""
    try:
        await app.open_async(pool)
    except _OPEN_ERRORS as exc:
        raise pgerrors.unavailable(exc) from exc


async def queue_depth(pool: psycopg_pool.AsyncConnectionPool, queue: str = QUEUE_SETTLE) -> dict[str, int]:
    """{'todo': n, 'doing': m}: jobs waiting and running on ``queue``."""
    out = {JobStatus.TODO.value: 0, JobStatus.DOING.value: 0}
    async with pool.connection() as conn:
        cur = await conn.execute(sqlfiles.queries("queue.sql")["depth"], {"queue": queue})
        for status, jobs in await cur.fetchall():
            out[str(status)] = int(jobs)
    return out


async def list_jobs(app: procrastinate.App, status: str | None = None, queue: str = QUEUE_SETTLE) -> list[Job]:
    """The settle jobs in ``status`` (all when None): the reconciler's view of the queue."""
    return list(await app.job_manager.list_jobs_async(queue=queue, task=TASK_SETTLE_BATCH, status=status))


async def recover_stalled(app: procrastinate.App, *, seconds_since_heartbeat: float) -> list[int]:
    """Puts back to ``todo`` every settle job left ``doing`` by a worker whose heartbeat stopped
    (SIGKILL, OOM, node lost). Settling is idempotent, so a job that did part of its work is simply run
    again. Several workers may race here: a job another one already recovered is skipped."""
    recovered: list[int] = []
    stalled: Iterable[Job] = await app.job_manager.get_stalled_jobs(
        queue=QUEUE_SETTLE, task_name=TASK_SETTLE_BATCH, seconds_since_heartbeat=seconds_since_heartbeat
    )
    for job in stalled:
        try:
            await app.job_manager.retry_job(job)
        except pexc.ConnectorException as exc:
            log.info("stalled job already recovered elsewhere", extra={"job_id": job.id, "detail": str(exc)})
            continue
        assert job.id is not None
        recovered.append(job.id)
        log.warning("stalled job put back to todo", extra={"job_id": job.id, "worker_id": job.worker_id})
    if recovered:
        await app.job_manager.prune_stalled_workers(seconds_since_heartbeat)
    return recovered


__all__ = [
    "build_app",
    "list_jobs",
    "make_pool",
    "open_app",
    "queue_depth",
    "recover_stalled",
]
