"""Benchmark of the settle worker (``make bench-worker``), reported as ratios within one run.

On the same PostgreSQL and Redis, back to back:
  1. the ceiling: a plain batched ``INSERT … SELECT FROM unnest(…)`` of the same rows (100 a statement) into
     a bare table, at 1, 4 and 16 connections;
  2. the durable write behind a 202: ``Ledger.record_batch`` (one statement: pending rows + one job), and
     the two-step alternative (procrastinate's JobDeferrer on our connection, then the INSERT, in one
     transaction), to justify the one-statement form;
  3. the drain: N reservations reserved in Redis and recorded pending in batches of 100, then ONE worker
     process (``python -m stampede_worker``) at concurrency 1, 4, 16 settles them all; rate = rows settled
     over the span between the first and the last settlement; reported against (1) as a ratio;
  4. the lag: batches recorded at a steady rate while a worker settles them; ledger write (the 202) to
     ``confirmed`` percentiles.
Not a test: nothing is asserted beyond "every reservation settled and Redis agrees"; the figures go to
stdout and are appended to bench/results/worker-<date>.md. The machine is shared: figures move with its load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from stampede import sqlfiles
from stampede.ledger import Ledger, PendingReservation, RecordedBatch, batch_payload
from stampede.migrate import migrate
from stampede.names import QUEUE_SETTLE, TASK_SETTLE_BATCH
from stampede.queue import build_app
from stampede.settings import Common, load
from stampede.stock import SaleConfig, StockEngine

ROOT = Path(__file__).resolve().parents[1]
Q = sqlfiles.parse((ROOT / "bench" / "worker.sql").read_text(encoding="utf-8"))
BATCH = 100


def rows_for(sale: str, n: int) -> list[PendingReservation]:
    return [PendingReservation(str(uuid.uuid4()), sale, f"b{i}", 1, 1_700_000_000_000 + i) for i in range(n)]


def params(batch: list[PendingReservation]) -> dict[str, object]:
    return {
        "ids": [r.reservation_id for r in batch],
        "sales": [r.sale for r in batch],
        "users": [r.user for r in batch],
        "quantities": [r.quantity for r in batch],
        "reserved_at_ms": [r.reserved_at_ms for r in batch],
    }


async def parallel(
    batches: list[list[PendingReservation]], workers: int, fn: Callable[[list[PendingReservation]], Awaitable[object]]
) -> float:
    """Runs fn(batch) over every batch with ``workers`` concurrent callers; returns seconds."""
    it = iter(batches)

    async def one() -> None:
        for b in it:
            await fn(b)

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(workers)))
    return time.perf_counter() - t


async def plain_insert(url: str, n: int, conns: int) -> float:
    """Rows/s of the plain batched INSERT with ``conns`` connections."""
    cs = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(conns)]
    await cs[0].execute(Q["create_plain"])
    await cs[0].execute(Q["truncate_plain"])
    free = list(cs)

    async def ins(b: list[PendingReservation]) -> None:
        c = free.pop()
        try:
            await c.execute(Q["insert_plain"], params(b))
        finally:
            free.append(c)

    rows = rows_for("plain", n)
    secs = await parallel([rows[i : i + BATCH] for i in range(0, n, BATCH)], conns, ins)
    for c in cs:
        await c.close()
    return n / secs


async def record_forms(settings: Common, n: int, conns: int) -> tuple[float, float]:
    """Reservations/s of record_batch (one statement) and of the two-step deferral, ``conns`` callers."""
    ledger = await Ledger.open(load(Common, env={}, database_url=settings.database_url, db_pool_max=conns))
    one_rows = rows_for("bench-rec-one", n)
    t_one = await parallel([one_rows[i : i + BATCH] for i in range(0, n, BATCH)], conns, ledger.record_batch)
    app = build_app(settings)
    await ledger.open_queue(app)

    async def two_step(b: list[PendingReservation]) -> None:
        async def defer(conn: psycopg.AsyncConnection[Any]) -> int:
            task = app.configure_task(TASK_SETTLE_BATCH, queue=QUEUE_SETTLE, connection=conn)
            return await task.defer_async(**batch_payload(b))

        await ledger.record_pending_deferred(b, defer)

    two_rows = rows_for("bench-rec-two", n)
    t_two = await parallel([two_rows[i : i + BATCH] for i in range(0, n, BATCH)], conns, two_step)
    await ledger.close()
    # These rows have no Redis reservations: take their jobs out of the way of the drains.
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as c:
        await c.execute(Q["cancel_todo"])
    return n / t_one, n / t_two


async def reserve_all(stock: StockEngine, sale: str, n: int) -> list[PendingReservation]:
    await stock.seed(sale, SaleConfig(total=n, per_user_limit=1), open=True)
    out: list[PendingReservation] = []
    for start in range(0, n, 1000):
        got = await asyncio.gather(*(stock.reserve(sale, f"b{i}") for i in range(start, min(n, start + 1000))))
        now = await stock.now_ms()
        out += [PendingReservation(r.reservation_id, sale, r.user, 1, now) for r in got]
    return out


def start_worker(settings: Common, concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "STAMPEDE_REDIS_URL": settings.redis_url,
        "STAMPEDE_DATABASE_URL": settings.database_url,
        "STAMPEDE_WORKER_CONCURRENCY": str(concurrency),
        "STAMPEDE_WORKER_METRICS_PORT": "0",
        "STAMPEDE_LOG_LEVEL": "WARNING",
        "STAMPEDE_WORKER_DELETE_JOBS": "never",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "stampede_worker"], cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


async def fetch_row(url: str, query: str, **kw: object) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        cur = await c.execute(query, kw)
        row = await cur.fetchone()
        assert row is not None
        return row


async def count(url: str, query: str, **kw: object) -> int:
    return int((await fetch_row(url, query, **kw))[0])


async def wait_settled(url: str, sale: str, proc: subprocess.Popen[bytes], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while await count(url, Q["pending"], sale=sale):
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"sale {sale} not settled in {limit_s}s")
        await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def drain(settings: Common, stock: StockEngine, n: int, concurrency: int, log: Path) -> dict[str, float]:
    sale = f"bench-drain-{concurrency}-{uuid.uuid4().hex[:6]}"
    res = await reserve_all(stock, sale, n)
    ledger = await Ledger.open(load(Common, env={}, database_url=settings.database_url, db_pool_max=4))
    t = await parallel([res[i : i + BATCH] for i in range(0, n, BATCH)], 4, ledger.record_batch)
    await ledger.close()
    proc = start_worker(settings, concurrency, log)
    t0 = time.perf_counter()
    try:
        await wait_settled(settings.database_url, sale, proc, 600)
    finally:
        wall = time.perf_counter() - t0
        stop(proc)
    settled, span, _ = await fetch_row(settings.database_url, Q["settled_span"], sale=sale)
    snap = await stock.snapshot(sale)
    assert snap.confirmed == n and snap.pending == 0, snap
    await stock.delete(sale)
    return {"record_rate": n / t, "rate": float(settled) / float(span), "wall_rate": n / wall}


async def lag(
    settings: Common, stock: StockEngine, rate: int, seconds: int, concurrency: int, log: Path
) -> dict[str, float]:
    sale = f"bench-lag-{uuid.uuid4().hex[:6]}"
    res = await reserve_all(stock, sale, rate * seconds)
    ledger = await Ledger.open(load(Common, env={}, database_url=settings.database_url, db_pool_max=4))
    proc = start_worker(settings, concurrency, log)
    await asyncio.sleep(1.5)  # the worker is up and idle
    batches = [res[i : i + BATCH] for i in range(0, len(res), BATCH)]
    interval = BATCH / rate
    t0 = time.perf_counter()
    pending: set[asyncio.Task[RecordedBatch]] = set()
    for k, b in enumerate(batches):
        delay = t0 + k * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(ledger.record_batch(b))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    offered = len(res) / (time.perf_counter() - t0)
    try:
        await wait_settled(settings.database_url, sale, proc, 300)
    finally:
        stop(proc)
        await ledger.close()
    (quantiles,) = await fetch_row(settings.database_url, Q["lag"], sale=sale)
    p50, p90, p99, pmax = quantiles
    await stock.delete(sale)
    return {"offered": offered, "p50": p50, "p90": p90, "p99": p99, "max": pmax}


async def main() -> None:
    global BATCH
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reservations", type=int, default=100_000)
    ap.add_argument("--concurrency", default="1,4,16", help="worker concurrencies to drain with")
    ap.add_argument("--lag-rates", default="5000,10000", help="reservations/s offered in the lag runs")
    ap.add_argument("--lag-seconds", type=int, default=10)
    ap.add_argument("--lag-concurrency", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100, help="reservations per ledger write / job")
    ap.add_argument("--no-write", action="store_true", help="do not append to bench/results/worker-<date>.md")
    ns = ap.parse_args()
    BATCH = ns.batch
    base = load(Common)
    server, _, _ = base.database_url.rpartition("/")
    db = "stampede_bench_worker"
    async with await psycopg.AsyncConnection.connect(f"{server}/postgres", autocommit=True) as admin:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{db}"')
    settings = load(Common, database_url=f"{server}/{db}")
    await migrate(settings.database_url)
    stock = StockEngine.from_url(settings.redis_url)
    log = ROOT / ".run" / "bench" / f"worker-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    n = ns.reservations
    levels = [int(x) for x in ns.concurrency.split(",")]
    load1 = os.getloadavg()[0]
    print(
        f"==> bench-worker: {n} reservations, batches of {BATCH}; "
        f"load average {load1:.2f} on {os.cpu_count()} cores (shared)"
    )

    lines: list[str] = []
    plain: dict[int, float] = {}
    for c in sorted({1, *levels, 4}):
        plain[c] = await plain_insert(settings.database_url, n, c)
        print(f"  plain INSERT (unnest, {BATCH}/statement), {c:>2} connections: {plain[c]:>9,.0f} rows/s", flush=True)
    one, two = await record_forms(settings, 20_000, 4)
    print(f"  record_batch, one statement (rows + job), 4 callers: {one:>9,.0f} reservations/s", flush=True)
    print(f"  two-step (JobDeferrer on our connection + INSERT), 4 callers: {two:>9,.0f} reservations/s", flush=True)

    drains: dict[int, dict[str, float]] = {}
    for c in levels:
        d = await drain(settings, stock, n, c, log)
        drains[c] = d
        print(
            f"  drain, 1 worker process at concurrency {c:>2}: {d['rate']:>9,.0f} reservations/s "
            f"(ratio to plain INSERT at {c} connections: {d['rate'] / plain[c]:.2f}; wall incl. start-up "
            f"{d['wall_rate']:,.0f}/s); recorded at {d['record_rate']:,.0f}/s",
            flush=True,
        )
    lags: list[dict[str, float]] = []
    for rate in (int(x) for x in ns.lag_rates.split(",") if x):
        lg = await lag(settings, stock, rate, ns.lag_seconds, ns.lag_concurrency, log)
        lags.append(lg)
        print(
            f"  lag at {lg['offered']:,.0f} reservations/s offered for {ns.lag_seconds}s, worker concurrency "
            f"{ns.lag_concurrency}: 202 -> confirmed p50 {lg['p50'] * 1000:.0f} ms, p90 {lg['p90'] * 1000:.0f} ms, "
            f"p99 {lg['p99'] * 1000:.0f} ms, max {lg['max'] * 1000:.0f} ms",
            flush=True,
        )
    await stock.close()

    lines += [
        f"# bench-worker {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"`make bench-worker` — {n:,} reservations in batches of {BATCH}, one worker process; 2 cores shared with "
        f"other work (load average {load1:.2f} at start), PostgreSQL with synchronous commit.",
        "",
        "| figure | value | ratio |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| plain batched INSERT, {c} connections | {plain[c]:,.0f} rows/s | 1.00 |" for c in sorted(plain)]
    lines += [
        f"| record_batch (one statement), 4 callers | {one:,.0f} res/s | {one / plain[4]:.2f} of plain @4 |",
        f"| two-step deferral + INSERT, 4 callers | {two:,.0f} res/s | {two / plain[4]:.2f} of plain @4 |",
    ]
    lines += [
        f"| drain at worker concurrency {c} | {d['rate']:,.0f} res/s | {d['rate'] / plain[c]:.2f} of plain @{c} |"
        for c, d in drains.items()
    ]
    lines += [
        f"| lag p50 / p90 / p99 / max at {lg['offered']:,.0f} res/s for {ns.lag_seconds}s, concurrency "
        f"{ns.lag_concurrency} | {lg['p50'] * 1000:.0f} / {lg['p90'] * 1000:.0f} / {lg['p99'] * 1000:.0f} / "
        f"{lg['max'] * 1000:.0f} ms | |"
        for lg in lags
    ]
    lines += [
        "",
        "Drain rate = rows settled / (last settled_at - first settled_at) in the ledger; lag = ledger write "
        "(created_at, the moment before the 202) to settled_at (confirmed visible in the ledger).",
        "",
    ]
    if not ns.no_write:
        out = ROOT / "bench" / "results" / f"worker-{dt.date.today().isoformat()}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        # Appended: on a shared machine one day's runs differ with the load, and each run says its own.
        gap = "\n" if out.exists() and out.stat().st_size else ""
        with out.open("a", encoding="utf-8") as f:
            f.write(gap + "\n".join(lines) + "\n")
        print(f"==> appended to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
