"""``make bench-pipeline``: the whole sale at full speed, as it runs — the buy API under gunicorn answering
wrk while settle worker processes confirm in the same seconds — beside a Falcon hello route measured in the
same run under the same gunicorn settings.

One run: the hello route (warm-up, then measured), then the API on a stock of 10,000,000 with the settle
workers already running (warm-up, then measured with ``wrk -t1 -c64``). Measured:

  rps, p50_ms, p99_ms   wrk's figures for the durable 202s (every answer waits for its ledger commit)
  lag_p50/p99_ms        202 -> confirmed (ledger write to settled) of the reservations written during the
                        measured load, whenever they settled
  drain_s               end of the load to an empty pending backlog
  hello_rps             the hello route, same wrk settings
  oversold, lost        the audit of the invariants (docs/architecture.md) after the drain (202s counted by the
                        API's own metrics; every one must have its ledger row, settled)

``--code DIR`` runs the API and the workers from another checkout of the project (its ``core``, ``app`` and
``worker`` folders, its own migrations, on a database of its own) with this venv, for A/B runs against an
earlier commit on the same machine state. ``--profile`` records py-spy on one API worker and one settle
worker during the measured load. Machinery (gunicorn server, wrk, metrics, py-spy) is bench/api.py's.

Figures go to ``.run/bench/pipeline.json`` and one line is appended to ``bench/results/pipeline-<date>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api as apibench
import cpu

from stampede import tokens
from stampede.audit import Row, audit, counts_from
from stampede.stock import StockEngine

ROOT = apibench.ROOT
SALE = "bench-pipe"
STOCK = 10_000_000
DB_NAME = "stampede_pipeline"
REDIS_DB = "12"
TARGETS = {"rps": 5000.0, "p99_ms": 30.0, "lag_p99_ms": 250.0, "drain_s": 1.0}

# Runs under the code being measured (--code): its own migrations and seed.
PREPARE = """
import asyncio, sys
from stampede.ledger import Ledger
from stampede.migrate import migrate
from stampede.settings import Common, load
from stampede.stock import SaleConfig, StockEngine

async def main(db, redis, sale, stock):
    await migrate(db)
    engine = StockEngine.from_url(redis)
    if hasattr(engine, "flush_database"):
        await engine.flush_database()
    else:  # a checkout from before the engine's client was private
        await engine.client.flushdb()
    await engine.seed(sale, SaleConfig(total=stock, per_user_limit=stock), open=True)
    await engine.close()
    ledger = await Ledger.open(load(Common, env={}, database_url=db, redis_url=redis))
    await ledger.ensure_sale(sale, sku=sale, stock=stock, per_user_limit=stock, window_start=None, window_end=None)
    await ledger.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def code_env(code: Path) -> dict[str, str]:
    """PYTHONPATH putting ``code``'s packages ahead of the venv's (editable) ones."""
    return {"PYTHONPATH": os.pathsep.join(str(code / d) for d in ("core", "app", "worker"))}


def git_describe(code: Path) -> str:
    mark = code / "COMMIT"
    if mark.exists():
        return mark.read_text().strip()[:10]
    out = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=code, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "core", "app", "worker"], cwd=code, capture_output=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def prepare(env: dict[str, str], code: Path, workdir: Path, buyers: int) -> dict[str, Any]:
    admin = apibench.with_db(env["STAMPEDE_DATABASE_URL"], "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    db = apibench.with_db(env["STAMPEDE_DATABASE_URL"], DB_NAME)
    redis = env["STAMPEDE_REDIS_URL"].rsplit("/", 1)[0] + "/" + REDIS_DB
    subprocess.run(
        [sys.executable, "-c", PREPARE, db, redis, SALE, str(STOCK)],
        env={**os.environ, **code_env(code)},
        cwd=code,
        check=True,
    )
    path = workdir / "tokens.txt"
    with path.open("w") as f:
        for _, tok in tokens.mint_many(apibench.SECRET, (f"pipe-buyer-{i}" for i in range(buyers)), ttl_s=3600):
            f.write(tok + "\n")
    return {"db": db, "redis": redis, "tokens": path}


class Workers:
    """``n`` settle worker processes (``python -m stampede_worker``) of the measured code."""

    def __init__(self, n: int, env: dict[str, str], code: Path, logdir: Path) -> None:
        self.log = open(logdir / "workers.log", "wb")  # noqa: SIM115
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "stampede_worker"],
                env={**os.environ, **env, **code_env(code), "STAMPEDE_WORKER_METRICS_PORT": "0"},
                stdout=self.log,
                stderr=subprocess.STDOUT,
                cwd=code,
            )
            for _ in range(n)
        ]

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise SystemExit(f"a settle worker exited ({p.returncode}): see {self.log.name}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


def db_now(db: str) -> Any:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def pending(db: str) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM stampede_ledger WHERE status = 'pending'").fetchone()
    return int(row[0]) if row else 0


def lag_and_jobs(db: str, start: Any, end: Any) -> dict[str, Any]:
    """202 -> confirmed of the rows written during the measured load, and how many jobs carried them."""
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
            "(ORDER BY extract(epoch FROM settled_at - created_at)), count(DISTINCT job_id) "
            "FROM stampede_ledger WHERE created_at BETWEEN %s AND %s AND settled_at IS NOT NULL",
            (start, end),
        ).fetchone()
        jobs = conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
        rows = conn.execute("SELECT count(*) FROM stampede_ledger").fetchone()
    assert row is not None and jobs is not None and rows is not None
    n, pct, _ = row
    p50, p99 = (pct or [0.0, 0.0])[:2]
    return {
        "measured_rows": int(n),
        "lag_p50_ms": round(1000 * float(p50 or 0), 1),
        "lag_p99_ms": round(1000 * float(p99 or 0), 1),
        "jobs": int(jobs[0]),
        "rows": int(rows[0]),
        "rows_per_job": round(int(rows[0]) / max(1, int(jobs[0])), 1),
    }


async def final_audit(db: str, redis: str, acknowledged: int) -> dict[str, Any]:
    stock = StockEngine.from_url(redis)
    try:
        snap = await stock.snapshot(SALE)
    finally:
        await stock.close()
    with psycopg.connect(db, autocommit=True) as conn:
        rows = [
            Row(rid, user, int(qty), status)
            for rid, user, qty, status in conn.execute(
                "SELECT reservation_id::text, user_id, quantity, status FROM stampede_ledger WHERE sale = %s", (SALE,)
            ).fetchall()
        ]
    report = audit(
        SALE,
        stock=STOCK,
        per_user_limit=STOCK,
        accepted=[],
        rows=rows,
        redis=counts_from(snap),
        acknowledged=acknowledged,
    )
    return report.as_dict()


def markdown_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['when']} | {r['label']} | {r['code']} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
        f"{r['lag_p50_ms']:.0f} | {r['lag_p99_ms']:.0f} | {r['drain_s']:.2f} | {r['hello_rps']:,.0f} | "
        f"{r['rps'] / max(1.0, r['hello_rps']):.3f} | {r['oversold']} | {r['lost']} | {r['rows_per_job']:,.1f} | "
        f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |"
    )


CPU_PARTS = ("api", "worker", "redis", "postgresql", "other", "machine")
CPU_HEADER = (
    "| UTC | run | code | 202/s | " + " | ".join(f"{p} µs" for p in CPU_PARTS) + " | load 1m before / after |\n"
    "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in CPU_PARTS) + " | --- |\n"
)


def cpu_line(r: dict[str, Any]) -> str:
    per = r["cpu_us_per_202"]
    cells = " | ".join("" if per.get(p) is None else f"{per[p]:,}" for p in CPU_PARTS)
    return (
        f"| {r['when']} | {r['label']} | {r['code']} | {r['rps']:,.0f} | {cells} | "
        f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |"
    )


HEADER = (
    "| UTC | run | code | 202/s | p50 ms | p99 ms | lag p50 ms | lag p99 ms | drain s | hello req/s | of hello | "
    "oversold | lost | rows/job | load 1m before / after |\n"
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=15.0, help="seconds of measured load")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before it")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--settle-workers", type=int, default=2, help="settle worker processes (a FlashSale's default)")
    p.add_argument("--buyers", type=int, default=2_000, help="distinct buyer tokens wrk rotates through")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose API and workers are measured")
    p.add_argument("--label", default="", help="name of the run in the results line")
    p.add_argument("--profile", action="store_true", help="py-spy one API worker and one settle worker")
    p.add_argument("--json", type=Path, default=ROOT / ".run" / "bench" / "pipeline.json")
    p.add_argument(
        "--markdown",
        type=Path,
        default=ROOT / "bench" / "results" / f"pipeline-{time.strftime('%Y-%m-%d', time.gmtime())}.md",
    )
    ns = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    code = ns.code.resolve()
    env = apibench.services_env()
    workdir = ROOT / ".run" / "bench" / "pipeline"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    label = ns.label or ("this checkout" if code == ROOT else code.name)
    print(f"==> preparing {DB_NAME} and Redis db {REDIS_DB} with the code of {code} ({git_describe(code)})", flush=True)
    prep = prepare(env, code, workdir, ns.buyers)
    run_env = {
        **env,
        **code_env(code),
        "STAMPEDE_REDIS_URL": prep["redis"],
        "STAMPEDE_DATABASE_URL": prep["db"],
        "STAMPEDE_JWT_SECRET": apibench.SECRET,
        "STAMPEDE_WORKERS": str(ns.workers),
        "STAMPEDE_LOG_LEVEL": "WARNING",
    }
    path = f"/v1/sales/{SALE}/reservations"
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "label": label,
        "code": git_describe(code),
        "cores": os.cpu_count(),
        "load_before": os.getloadavg(),
        "settings": {k: getattr(ns, k) for k in ("duration", "connections", "threads", "workers", "settle_workers")},
    }

    hello = apibench.Server("hello:app", run_env, workdir, "hello")
    try:
        hello.wait("/hello")
        print(f"==> hello: Falcon ASGI under the same gunicorn settings ({ns.workers} workers)", flush=True)
        apibench.wrk(hello.base, path, prep["tokens"], ns, ns.warmup)
        h = apibench.wrk(hello.base, path, prep["tokens"], ns, ns.duration)
    finally:
        hello.stop()
    result["hello_rps"] = h["rps"]
    result["hello"] = h

    workers = Workers(ns.settle_workers, run_env, code, workdir)
    api = apibench.Server("stampede_api.asgi:app", run_env, workdir, "api")
    try:
        api.wait("/readyz")
        workers.check()
        print(f"==> pipeline: POST {path}, {ns.settle_workers} settle workers running", flush=True)
        apibench.wrk(api.base, path, prep["tokens"], ns, ns.warmup)
        before = apibench.status_counts(api.metrics, "/v1/sales/{sale}/reservations")
        spies: dict[str, tuple[subprocess.Popen[bytes] | None, Path]] = {}
        if ns.profile:
            for name, pid in (("api", (api.workers() or [0])[0]), ("worker", workers.procs[0].pid)):
                out = workdir / f"profile-{name}.txt"
                spies[name] = (apibench.profile(pid, int(ns.duration) - 1, out) if pid else None, out)
        meter = cpu.CpuMeter({"api": [api.proc.pid], "worker": [w.pid for w in workers.procs], **cpu.services_pids()})
        start = db_now(prep["db"])
        meter.start()
        r = apibench.wrk(api.base, path, prep["tokens"], ns, ns.duration)
        spent = meter.stop()
        end = db_now(prep["db"])
        t_end = time.monotonic()
        while pending(prep["db"]):
            workers.check()
            if time.monotonic() - t_end > 300:
                raise SystemExit("the backlog did not drain in 300 s")
            time.sleep(0.02)
        result["drain_s"] = round(time.monotonic() - t_end, 2)
        after = apibench.status_counts(api.metrics, "/v1/sales/{sale}/reservations")
        for name, (spy, out) in spies.items():
            if spy is not None:
                spy.wait(60)
                result[f"profile_{name}"] = apibench.top_of_profile(out)
    finally:
        api.stop()
        workers.stop()
    result["load_after"] = os.getloadavg()
    statuses = {s: after[s] - before.get(s, 0) for s in after if after[s] - before.get(s, 0)}
    result.update({k: r[k] for k in ("rps", "p50_ms", "p99_ms", "requests", "non2xx", "ok")})
    # wrk's rate counts every answer; the figure is durable 202s, so anything else comes off it (on stock 10M
    # every buy should be a 202: a refusal here means the run measured something other than the buy path).
    result["rps"] = round(r["ok"] / r["duration_s"], 1) if r["duration_s"] else 0.0
    result["cpu_s"] = {k: round(v, 3) for k, v in spent.items()}
    result["cpu_us_per_202"] = {k: round(v * 1e6 / r["ok"]) if r["ok"] else None for k, v in spent.items()}
    result["socket_errors"] = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    result["statuses"] = statuses
    result.update(lag_and_jobs(prep["db"], start, end))
    acknowledged = sum(n for s, n in after.items() if s == "202")
    report = asyncio.run(final_audit(prep["db"], prep["redis"], acknowledged))
    result["oversold"], result["lost"] = report["oversold"], report["lost"]
    result["audit"] = report
    result["targets"] = {
        "rps": result["rps"] >= TARGETS["rps"],
        "p99_ms": result["p99_ms"] <= TARGETS["p99_ms"],
        "lag_p99_ms": result["lag_p99_ms"] <= TARGETS["lag_p99_ms"],
        "drain_s": result["drain_s"] <= TARGETS["drain_s"],
        "audit": not report["violations"],
        "every_answer_202": r["non2xx"] == 0 and r["ok"] > 0,
    }

    print(
        f"\n==> {label} ({result['code']}): {result['rps']:,.0f} 202/s  p50 {result['p50_ms']:.1f} ms  "
        f"p99 {result['p99_ms']:.1f} ms  lag p50 {result['lag_p50_ms']:.0f} ms  p99 {result['lag_p99_ms']:.0f} ms  "
        f"drain {result['drain_s']:.2f} s  hello {result['hello_rps']:,.0f} req/s "
        f"({result['rps'] / max(1.0, result['hello_rps']):.3f} of hello)"
    )
    print(
        f"    non-2xx {result['non2xx']}  socket errors {result['socket_errors']}  oversold {result['oversold']}  "
        f"lost {result['lost']}  jobs {result['jobs']:,} for {result['rows']:,} rows ({result['rows_per_job']:,} "
        f"per job)  load {result['load_before'][0]:.2f} -> {result['load_after'][0]:.2f}"
    )
    per = result["cpu_us_per_202"]
    print("    CPU per 202 (µs): " + "  ".join(f"{k} {per[k]:,}" for k in CPU_PARTS if per.get(k) is not None))
    missed = [k for k, ok in result["targets"].items() if not ok]
    print(f"    targets {TARGETS}: {'all met' if not missed else 'NOT met: ' + ', '.join(missed)}")
    for name in ("api", "worker"):
        top = result.get(f"profile_{name}")
        if top:
            print(f"==> py-spy, one {name} process, leaf frames (share of samples)")
            for frame, pct in top["self"][:15]:
                print(f"  {pct:5.1f}%  {frame[:140]}")
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(result, indent=2, default=str))
    ns.markdown.parent.mkdir(parents=True, exist_ok=True)
    new = not ns.markdown.exists()
    with ns.markdown.open("a") as f:
        if new:
            f.write(
                f"# bench-pipeline {time.strftime('%Y-%m-%d', time.gmtime())}\n\n"
                f"`make bench-pipeline`: wrk -t{ns.threads} -c{ns.connections} -d{ns.duration:g}s on stock 10M, "
                f"{ns.workers} gunicorn workers and {ns.settle_workers} settle worker processes running during "
                "the load, the Falcon hello route in the same run; wrk, Redis and PostgreSQL on the same "
                f"{os.cpu_count()} cores. Lag is ledger write (the 202) to settled for the rows written during "
                "the measured load; drain is end of load to no pending row.\n\n" + HEADER
            )
        f.write(markdown_line(result) + "\n")
    cpu_md = ns.markdown.with_name(ns.markdown.name.replace("pipeline-", "pipeline-cpu-", 1))
    new = not cpu_md.exists()
    with cpu_md.open("a") as f:
        if new:
            f.write(
                f"# bench-pipeline {time.strftime('%Y-%m-%d', time.gmtime())}: CPU per durable 202\n\n"
                "CPU time (bench/cpu.py, from /proc) each part spent during the measured load, divided by the 202s "
                "of that load: the API's gunicorn processes, the settle workers, the project's Redis and "
                "PostgreSQL, the rest of the machine (wrk and anything else), and the machine's whole busy time. "
                f"The runs' other figures are the lines of the same label in {ns.markdown.name}.\n\n" + CPU_HEADER
            )
        f.write(cpu_line(result) + "\n")
    print(f"==> saved {ns.json}, appended to {ns.markdown} and {cpu_md.name}; logs in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
