"""``python -m stampede_worker``: the worker process.

Opens one PostgreSQL pool shared by the procrastinate App and the Ledger, one Redis client, serves
``/metrics`` and ``/healthz``, and runs the procrastinate worker on the settle queue with the concurrency
from settings. Beside it three small loops run: the queue depth gauge, the recovery of jobs left
``doing`` by workers that died without a word (their heartbeat stopped), and the expiry of checkout holds
(``holds.sweep``). SIGTERM/SIGINT stop fetching,
let in-flight jobs finish for ``worker_shutdown_timeout_s``, then put the rest back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable

import procrastinate
import procrastinate.exceptions
import psycopg

from stampede import logs, pgerrors, queue
from stampede.errors import DependencyUnavailable
from stampede.ledger import Ledger
from stampede.names import QUEUE_SETTLE
from stampede.settings import SettingsError, load
from stampede.stock import StockEngine
from stampede_worker import metrics
from stampede_worker.settings import WorkerSettings

from . import holds, http, tasks

log = logging.getLogger("stampede_worker")


async def _every(seconds: float, what: str, fn: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await fn()
        except Exception:
            log.exception(f"{what} failed; trying again in {seconds}s")
        await asyncio.sleep(seconds)


async def run(settings: WorkerSettings) -> None:
    pool = queue.make_pool(settings, max_size=settings.worker_concurrency + 4)
    try:
        await pool.open(wait=True, timeout=settings.db_timeout_s)
    except pgerrors.UNAVAILABLE as exc:
        await pool.close()
        raise pgerrors.unavailable(exc) from exc
    ledger = Ledger(pool, settle_shards=settings.settle_shards)
    stock = StockEngine.from_url(
        settings.redis_url,
        settings.redis_max_connections,
        ack_replicas=settings.ack_replicas,
        ack_timeout_ms=settings.redis_ack_timeout_ms,
    )
    app = queue.build_app(settings)
    tasks.register(app, settings)
    await queue.open_app(app, pool)

    async def depth() -> None:
        for status, jobs in (await queue.queue_depth(pool)).items():
            metrics.WORKER_QUEUE_DEPTH.labels(status).set(jobs)

    async def recover() -> None:
        ids = await queue.recover_stalled(app, seconds_since_heartbeat=settings.worker_stalled_s)
        metrics.WORKER_STALLED_RECOVERED.inc(len(ids))

    async def expire_holds() -> None:
        await holds.sweep(
            ledger,
            stock,
            limit=settings.worker_hold_sweep_max,
            return_after_s=settings.worker_hold_return_after_s,
            fault_sleep_ms=settings.worker_fault_expire_sleep_ms,
        )

    async def healthy() -> bool:
        try:
            await asyncio.wait_for(ledger.ping(), 2)
            return True
        except (DependencyUnavailable, TimeoutError):
            return False

    # Every labelled series exists from the start, so dashboards and rate() see zeros, not gaps.
    for outcome in ("succeeded", "retried", "failed"):
        metrics.WORKER_JOBS.labels(outcome)
    for outcome in ("confirmed", "held", "compensated"):
        metrics.WORKER_RESERVATIONS.labels(outcome)
    for outcome in ("held", "expired", holds.RETURNED):
        metrics.WORKER_HOLDS.labels(outcome)
    server = None
    if settings.worker_metrics_port:
        server = await http.serve(settings.worker_metrics_host, settings.worker_metrics_port, healthy)
    side = [
        asyncio.create_task(_every(settings.worker_depth_interval_s, "queue depth", depth)),
        asyncio.create_task(_every(max(1.0, settings.worker_stalled_s / 3), "stalled-job recovery", recover)),
        asyncio.create_task(_every(settings.worker_hold_sweep_s, "hold expiry", expire_holds)),
    ]
    name = f"{socket.gethostname()}-{os.getpid()}"
    log.info("worker starting", extra={"worker": name, "concurrency": settings.worker_concurrency})
    try:
        await _run_until_stopped(app, name, settings, ledger, stock)
    finally:
        for t in side:
            t.cancel()
        for t in side:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if server is not None:
            server.close()
        await app.close_async()
        await stock.close()
        await pool.close()
        log.info("worker stopped", extra={"worker": name})


async def _run_until_stopped(
    app: procrastinate.App, name: str, settings: WorkerSettings, ledger: Ledger, stock: StockEngine
) -> None:
    """Runs the procrastinate worker until a signal stops it. procrastinate ends its worker when the
    database goes away (its LISTEN connection fails); a settle worker must outlive a PostgreSQL restart
    instead, so it starts again with backoff and its unfinished jobs come back through stalled recovery."""
    backoff = 1.0
    while True:
        try:
            await app.run_worker_async(
                queues=[QUEUE_SETTLE],
                name=name,
                concurrency=settings.worker_concurrency,
                # Paced (the default): no LISTEN/NOTIFY, a fetch every pace. Every notification would make each
                # idle worker fetch at once, so a job would be taken the moment it is deferred and hold only the
                # batch that deferred it; paced, the batches written in between join the waiting job of their
                # shard, and one job settles them all (docs/architecture.md, "Settling").
                fetch_job_polling_interval=settings.worker_fetch_pace_s or settings.worker_poll_s,
                listen_notify=not settings.worker_fetch_pace_s,
                shutdown_graceful_timeout=settings.worker_shutdown_timeout_s,
                delete_jobs=settings.worker_delete_jobs,
                additional_context={
                    tasks.CTX_LEDGER: ledger,
                    tasks.CTX_STOCK: stock,
                    tasks.CTX_SETTINGS: settings,
                },
                update_heartbeat_interval=settings.worker_heartbeat_s,
                stalled_worker_timeout=settings.worker_stalled_s,
                install_signal_handlers=True,
            )
            return  # a clean return: SIGTERM/SIGINT asked procrastinate to stop
        except (procrastinate.exceptions.ConnectorException, psycopg.OperationalError, OSError) as exc:
            log.warning(
                "worker lost PostgreSQL; starting again",
                extra={"worker": name, "in_s": backoff, "error": repr(exc)},
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 15.0)


def main() -> int:
    try:
        settings = load(WorkerSettings)
    except SettingsError as exc:
        print(f"stampede_worker: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    # procrastinate logs every job start and end with its full arguments at INFO: far too much at
    # thousands of reservations a second. Its warnings and errors still come through.
    logging.getLogger("procrastinate").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        asyncio.run(run(settings))
    except DependencyUnavailable as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
