"""Settling at real batch sizes: N reservations reserved in Redis and recorded pending by the measured
code's own ``Ledger.record_batch`` in micro-batches of B (default 11, the API's batch size at full load
per the 2026-11-25 bench-api run), then W settle worker processes of that code drain them. Prints and
appends to ``bench/results/pipeline-<date>.md``: reservations/s from the first to the last settlement,
wall time, jobs, rows per job, and the load average.

``--code DIR`` measures another checkout (its packages ahead of this venv's, its own migrations, a database
of its own) for A/B runs on the same machine state.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api as apibench
import pipeline

ROOT = apibench.ROOT
DB_NAME = "stampede_drain"
SALE = "bench-drain"

# Runs under the measured code: migrate, seed, reserve and record pending in micro-batches.
RECORD = """
import asyncio, sys
from stampede.ledger import Ledger, PendingReservation
from stampede.migrate import migrate
from stampede.settings import Common, load
from stampede.stock import SaleConfig, StockEngine

async def main(db, redis, sale, n, batch):
    await migrate(db)
    stock = StockEngine.from_url(redis)
    await stock.flush_database()
    await stock.seed(sale, SaleConfig(total=n, per_user_limit=1), open=True)
    ledger = await Ledger.open(load(Common, env={}, database_url=db, redis_url=redis, db_pool_max=4))
    for start in range(0, n, 500):
        got = await asyncio.gather(*(stock.reserve(sale, f"b{i}") for i in range(start, min(n, start + 500))))
        now = await stock.now_ms()
        rows = [PendingReservation(r.reservation_id, sale, r.user, 1, now) for r in got]
        chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
        for k in range(0, len(chunks), 4):  # four writers at a time, as two API processes and more would
            await asyncio.gather(*(ledger.record_batch(c) for c in chunks[k : k + 4]))
    await ledger.close()
    await stock.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reservations", type=int, default=30_000)
    p.add_argument("--batch", type=int, default=11, help="reservations per ledger write (API micro-batch)")
    p.add_argument("--settle-workers", type=int, default=2)
    p.add_argument("--code", type=Path, default=ROOT)
    p.add_argument("--label", default="")
    p.add_argument(
        "--markdown",
        type=Path,
        default=ROOT / "bench" / "results" / f"pipeline-{time.strftime('%Y-%m-%d', time.gmtime())}.md",
    )
    ns = p.parse_args()
    code = ns.code.resolve()
    env = apibench.services_env()
    admin = apibench.with_db(env["STAMPEDE_DATABASE_URL"], "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    db = apibench.with_db(env["STAMPEDE_DATABASE_URL"], DB_NAME)
    redis = env["STAMPEDE_REDIS_URL"].rsplit("/", 1)[0] + "/11"
    label = ns.label or ("this checkout" if code == ROOT else code.name)
    print(f"==> {label}: recording {ns.reservations:,} pending in batches of {ns.batch}", flush=True)
    subprocess.run(
        [sys.executable, "-c", RECORD, db, redis, SALE, str(ns.reservations), str(ns.batch)],
        env={**os.environ, **pipeline.code_env(code)},
        cwd=code,
        check=True,
    )
    workdir = ROOT / ".run" / "bench" / "drain"
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    run_env = {**env, "STAMPEDE_DATABASE_URL": db, "STAMPEDE_REDIS_URL": redis, "STAMPEDE_LOG_LEVEL": "WARNING"}
    t0 = time.monotonic()
    workers = pipeline.Workers(ns.settle_workers, run_env, code, workdir)
    try:
        while pipeline.pending(db):
            workers.check()
            if time.monotonic() - t0 > 600:
                raise SystemExit("not drained in 600 s")
            time.sleep(0.05)
        wall = time.monotonic() - t0
    finally:
        workers.stop()
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(settled_at) - min(settled_at)), "
            "count(*) FILTER (WHERE status = 'confirmed') FROM stampede_ledger"
        ).fetchone()
        jobs = conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
    assert row is not None and jobs is not None
    n, span, confirmed = int(row[0]), float(row[1] or 0), int(row[2])
    rate = n / span if span else 0.0
    line = (
        f"drain {label} ({pipeline.git_describe(code)}): {n:,} reservations in batches of {ns.batch}, "
        f"{ns.settle_workers} worker processes: {rate:,.0f} reservations/s (first to last settlement), "
        f"{wall:.1f} s wall from worker start, {int(jobs[0]):,} jobs ({n / max(1, int(jobs[0])):,.1f} rows/job), "
        f"confirmed {confirmed:,}; load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print("==> " + line)
    with ns.markdown.open("a") as f:
        f.write(f"\n- {time.strftime('%H:%M', time.gmtime())} UTC `bench/drain.py` {line}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
