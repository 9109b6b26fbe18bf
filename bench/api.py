"""``make bench-api``: the buy API under gunicorn, measured with wrk against a Falcon ASGI "hello" app
served under the same gunicorn settings in the same run, so every figure is also a fraction of what the
framework, server and machine give before any Redis or PostgreSQL work.

Scenarios (one run, side by side):
  hello      POST to a Falcon ASGI route that only answers 202 (bench/hello.py; same path, headers and body)
  stock-10m  stock 10,000,000: every request is accepted, so every answer waits for a durable ledger commit
  sell-out   stock 5,000 and 100k+ distinct buyers: most requests are refused (sold out) after the first 5,000

Each wrk run rotates through pre-minted buyer tokens (bench/reserve.lua). After the load, 2xx answers
are checked against the ledger rows, a settle worker settles the sell-out sale and the audit runs.
The bench uses its own PostgreSQL database (``stampede_bench``, recreated each run) and Redis db 13.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg

from stampede import tokens
from stampede.audit import audit, counts_from
from stampede.ledger import Ledger
from stampede.migrate import migrate
from stampede.settings import load
from stampede.stock import SaleConfig, StockEngine
from stampede_api.settings import ApiSettings
from stampede_dev.devstack import free_port

HERE = Path(__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = "bench-secret-" + "b" * 32
LUA = ROOT / "bench" / "reserve.lua"
TARGETS = {"stock-10m": (7500.0, 30.0), "sell-out": (9000.0, 20.0)}


def services_env() -> dict[str, str]:
    if "STAMPEDE_DATABASE_URL" in os.environ and "STAMPEDE_REDIS_URL" in os.environ:
        return {k: v for k, v in os.environ.items() if k.startswith("STAMPEDE_")}
    out = subprocess.run([str(ROOT / "hack" / "services.sh"), "env"], capture_output=True, text=True, check=True)
    env = {}
    for line in out.stdout.splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        env[k] = v
    return env


def with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


class Server:
    """gunicorn with the project's config module serving ``app`` (the API or the hello app)."""

    def __init__(self, app: str, env: dict[str, str], logdir: Path, name: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.metrics = f"http://127.0.0.1:{self.metrics_port}"
        metrics_dir = logdir / f"metrics-{name}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(logdir / f"{name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            # The hello app is bench/hello.py, found through --pythonpath; the API is the installed package.
            [str(BIN / "gunicorn"), "-c", "python:stampede_api.gunicorn_conf", "--pythonpath", str(HERE), app],
            env={
                **os.environ,
                **env,
                "STAMPEDE_BIND": f"127.0.0.1:{self.port}",
                # Benchmark sales are seeded under bare ids (single-tenant), not <namespace>/<name>.
                "STAMPEDE_SALE_NAMESPACE": "",
                "STAMPEDE_METRICS_HOST": "127.0.0.1",
                "STAMPEDE_METRICS_PORT": str(self.metrics_port),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + 90  # a loaded shared machine can take long to import and fork
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited: see {self.log.name}")
            try:
                if httpx.get(self.base + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"gunicorn not ready on {self.base}{path}")

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def wrk(base: str, path: str, token_file: Path, ns: argparse.Namespace, duration: float) -> dict[str, Any]:
    cmd = [
        "wrk",
        f"-t{ns.threads}",
        f"-c{ns.connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        base,
        "--",
        str(token_file),
        path,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"^WRK_JSON (.*)$", out, re.MULTILINE)
    if not m:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    result: dict[str, Any] = json.loads(m.group(1))
    result["ok"] = result["requests"] - result["non2xx"]
    return result


def status_counts(metrics: str, route: str) -> Counter[str]:
    """Answers by status of ``POST route`` as the API's own metrics count them (every worker, read on the
    metrics port), plus the micro-batch counters (``batches``, ``batched``, ``batch_ms``). Waits first for
    the API workers' request counts to reach the shared metrics (each folds its own in every 0.25 s,
    stampede_api.tally)."""
    time.sleep(0.6)
    text = httpx.get(metrics + "/metrics", timeout=10).text
    out: Counter[str] = Counter()
    for ln in text.splitlines():
        for name, key, scale in (
            ("stampede_api_batch_size_count ", "batches", 1),
            ("stampede_api_batch_size_sum ", "batched", 1),
            ("stampede_api_batch_seconds_sum ", "batch_ms", 1000),
        ):
            if ln.startswith(name):
                out[key] += int(float(ln.split(" ")[1]) * scale)
        if not ln.startswith("stampede_api_requests_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', ln))
        if labels.get("route") == route and labels.get("method") == "POST":
            out[labels["status"]] += int(float(ln.rsplit(" ", 1)[1]))
    return out


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if not spy:
        print("   (py-spy not installed: no profile)")
        return None
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def top_of_profile(raw: Path, n: int = 25) -> dict[str, list[tuple[str, float]]]:
    """From py-spy's collapsed stacks: the share of samples where a frame is the leaf ("self") and where
    it is anywhere on the stack below the ASGI entry ("inclusive")."""
    if not raw.exists():
        return {}
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for ln in raw.read_text().splitlines():
        stack, _, count = ln.rpartition(" ")
        c = int(count)
        total += c
        frames = [re.sub(r" \((?:.*/)?([^/]+/[^/]+\.py):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        own[frames[-1]] += c
        for frame in set(frames):
            inclusive[frame] += c
    if not total:
        return {}
    skip = ("asyncio_run", "<module>", "run (", "Runner.run", "Arbiter", "Application.run", "BaseApplication.run")
    incl = [(f, c) for f, c in inclusive.most_common() if not f.startswith(skip) and "Worker" not in f]
    return {
        "self": [(f, round(100.0 * c / total, 1)) for f, c in own.most_common(n)],
        "inclusive": [(f, round(100.0 * c / total, 1)) for f, c in incl[:n]],
    }


async def prepare(env: dict[str, str], buyers_10m: int, buyers_5k: int, workdir: Path) -> dict[str, Any]:
    admin = with_db(env["STAMPEDE_DATABASE_URL"], "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS stampede_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE stampede_bench")
    db = with_db(env["STAMPEDE_DATABASE_URL"], "stampede_bench")
    await migrate(db)
    redis = env["STAMPEDE_REDIS_URL"].rsplit("/", 1)[0] + "/13"
    stock = StockEngine.from_url(redis)
    await stock.flush_database()
    settings = load(ApiSettings, env={}, redis_url=redis, database_url=db, jwt_secret=SECRET)
    ledger = await Ledger.open(settings)
    try:
        for sale, total, limit in (("bench-10m", 10_000_000, 10_000_000), ("bench-5k", 5_000, 1)):
            await stock.seed(sale, SaleConfig(total=total, per_user_limit=limit), open=True)
            await ledger.ensure_sale(
                sale, sku=sale, stock=total, per_user_limit=limit, window_start=None, window_end=None
            )
    finally:
        await ledger.close()
        await stock.close()
    files = {}
    for name, count in (("10m", buyers_10m), ("5k", buyers_5k)):
        path = workdir / f"tokens-{name}.txt"
        with path.open("w") as f:
            for _, tok in tokens.mint_many(SECRET, (f"{name}-buyer-{i}" for i in range(count)), ttl_s=3600):
                f.write(tok + "\n")
        files[name] = path
    return {"db": db, "redis": redis, "files": files}


async def settle_and_audit(env: dict[str, str], stock_url: str, db: str, logdir: Path, results: dict[str, Any]) -> None:
    settings = load(ApiSettings, env={}, redis_url=stock_url, database_url=db, jwt_secret=SECRET)
    ledger = await Ledger.open(settings)
    stock = StockEngine.from_url(stock_url)
    worker_log = open(logdir / "worker.log", "wb")  # noqa: SIM115, ASYNC230
    worker = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "stampede_worker"],
        env={**os.environ, **env, "STAMPEDE_WORKER_METRICS_PORT": "0"},
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        for sale, key in (("bench-10m", "stock-10m"), ("bench-5k", "sell-out")):
            counts = await ledger.counts(sale)
            results[key]["ledger_units"] = sum(counts.values())
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            c5, c10 = await ledger.counts("bench-5k"), await ledger.counts("bench-10m")
            if c5["pending"] == 0 and c10["pending"] == 0:
                break
            await asyncio.sleep(0.5)
        results["settle_s"] = round(time.monotonic() - t0, 1)
        rows = await ledger.rows("bench-5k")
        report = audit(
            "bench-5k",
            stock=5000,
            per_user_limit=1,
            accepted=[r.reservation_id for r in rows],
            rows=rows,
            redis=counts_from(await stock.snapshot("bench-5k")),
        )
        results["sell-out"]["audit"] = report.as_dict()
        print(report.render())
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
        await ledger.close()
        await stock.close()


def line(name: str, r: dict[str, Any], hello: dict[str, Any] | None) -> str:
    frac = f"{100 * r['rps'] / hello['rps']:5.1f}%" if hello else "   -  "
    errs = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    return (
        f"  {name:<10} {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
        f"2xx {r['ok']:>7,}  non-2xx {r['non2xx']:>7,}  socket errors {errs}  of hello {frac}"
    )


def markdown(results: dict[str, Any], ns: argparse.Namespace) -> str:
    """One run as a section of bench/results/api-<date>.md."""
    h = results["hello"]
    load = results["machine"]["load_before"][0]
    out = [
        f"# bench-api {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC\n",
        f"`make bench-api` — wrk -t{ns.threads} -c{ns.connections} -d{ns.duration:g}s per scenario, "
        f"{ns.workers} gunicorn workers (uvicorn, uvloop, httptools), bench/reserve.lua rotating buyer tokens; "
        f"wrk, Redis and PostgreSQL (synchronous commit) on the same {os.cpu_count()} cores, shared with other "
        f"work (load average {load:.2f} at start).\n",
        "| scenario | req/s | p50 | p99 | 2xx | non-2xx | of hello | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| hello (Falcon ASGI, same gunicorn settings) | {h['rps']:,.0f} | {h['p50_ms']:.2f} ms | "
        f"{h['p99_ms']:.2f} ms | {h['ok']:,} | {h['non2xx']:,} | 1.00 | |",
    ]
    for key in ("stock-10m", "sell-out"):
        r = results[key]
        t = r["target"]
        out.append(
            f"| {key} | {r['rps']:,.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['ok']:,} | "
            f"{r['non2xx']:,} | {r['rps'] / h['rps']:.3f} | >= {t['rps']:,.0f} req/s, p99 <= {t['p99_ms']:g} ms: "
            f"{'met' if t['met'] else 'not met'} |"
        )
    out.append("")
    for key in ("stock-10m", "sell-out"):
        r = results[key]
        out.append(
            f"- {key}: server answers {r.get('statuses')} (warm-up included), ledger units {r.get('ledger_units')}, "
            f"ledger batches {r.get('batches')}"
        )
    audit_ok = results.get("sell-out", {}).get("audit", {}).get("ok")
    out.append(
        f"- sell-out audit after settling ({results.get('settle_s')} s, one worker): "
        f"{'clean' if audit_ok else 'VIOLATED'}"
    )
    if results.get("profile_top"):
        top = ", ".join(f"{f} {p}%" for f, p in results["profile_top"]["self"][:8])
        out.append(f"- py-spy, one API worker during stock-10m, leaf frames: {top}")
    return "\n".join(out) + "\n\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--buyers", type=int, default=120_000, help="distinct buyers of the sell-out run")
    p.add_argument("--profile", action="store_true", help="py-spy one API worker during the stock-10m run")
    p.add_argument("--json", type=Path, default=ROOT / ".run" / "bench" / "api.json", help="where to save figures")
    p.add_argument(
        "--markdown",
        type=Path,
        default=ROOT / "bench" / "results" / f"api-{time.strftime('%Y-%m-%d', time.gmtime())}.md",
        help="results file the run's table is appended to",
    )
    ns = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    env = services_env()
    workdir = ROOT / ".run" / "bench" / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print(f"==> preparing: database stampede_bench, Redis db 13, {ns.buyers:,} + 2,000 buyer tokens", flush=True)
    prep = asyncio.run(prepare(env, 2_000, ns.buyers, workdir))
    run_env = {
        **env,
        "STAMPEDE_REDIS_URL": prep["redis"],
        "STAMPEDE_DATABASE_URL": prep["db"],
        "STAMPEDE_JWT_SECRET": SECRET,
        "STAMPEDE_WORKERS": str(ns.workers),
        "STAMPEDE_LOG_LEVEL": "WARNING",
    }
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()},
        "settings": {
            "workers": ns.workers,
            "connections": ns.connections,
            "threads": ns.threads,
            "duration_s": ns.duration,
        },
    }
    route = "/v1/sales/{sale}/reservations"
    hello = Server("hello:app", run_env, workdir, "hello")
    try:
        hello.wait("/hello")
        print(f"==> hello: Falcon ASGI under the same gunicorn settings ({ns.workers} workers)", flush=True)
        wrk(hello.base, "/v1/sales/bench-10m/reservations", prep["files"]["10m"], ns, ns.warmup)
        results["hello"] = wrk(hello.base, "/v1/sales/bench-10m/reservations", prep["files"]["10m"], ns, ns.duration)
    finally:
        hello.stop()
    api = Server("stampede_api.asgi:app", run_env, workdir, "api")
    try:
        api.wait("/readyz")
        for key, sale, files in (("stock-10m", "bench-10m", "10m"), ("sell-out", "bench-5k", "5k")):
            path = f"/v1/sales/{sale}/reservations"
            print(f"==> {key}: POST {path}", flush=True)
            before = status_counts(api.metrics, route)
            if key == "stock-10m":
                wrk(api.base, path, prep["files"][files], ns, ns.warmup)
            spy = None
            if ns.profile and key == "stock-10m" and api.workers():
                spy = profile(api.workers()[0], int(ns.duration) - 1, workdir / "profile.txt")
            results[key] = wrk(api.base, path, prep["files"][files], ns, ns.duration)
            if spy is not None:
                spy.wait(30)
                results["profile_top"] = top_of_profile(workdir / "profile.txt")
            after = status_counts(api.metrics, route)
            # Server-side answers of the scenario, warm-up included: every 202 must have its ledger row.
            delta = {s: after[s] - before.get(s, 0) for s in after if after[s] - before.get(s, 0)}
            batches = max(1, delta.pop("batches", 0))
            batched, batch_ms = delta.pop("batched", 0), delta.pop("batch_ms", 0)
            results[key]["statuses"] = delta
            results[key]["batches"] = {
                "count": batches,
                "avg_size": round(batched / batches, 1),
                "avg_ms": round(batch_ms / batches, 2),
            }
        results["api_log_errors"] = sum(
            1 for ln in (workdir / "api.log").read_text(errors="replace").splitlines() if '"level": "error"' in ln
        )
    finally:
        api.stop()
    print("==> settling with one worker, then the audit of the sell-out sale", flush=True)
    asyncio.run(settle_and_audit(run_env, prep["redis"], prep["db"], workdir, results))

    h = results["hello"]
    print(
        f"\n==> results (wrk -t{ns.threads} -c{ns.connections} -d{ns.duration:g}s, {ns.workers} gunicorn workers, "
        f"load generator, Redis and PostgreSQL on the same {os.cpu_count()} cores)"
    )
    print(line("hello", h, None))
    for key in ("stock-10m", "sell-out"):
        r = results[key]
        print(line(key, r, h))
        print(
            f"  {'':<10} statuses {r.get('statuses')}  ledger units {r.get('ledger_units')}  "
            f"ledger batches {r.get('batches')}"
        )
        rps_t, p99_t = TARGETS[key]
        r["target"] = {"rps": rps_t, "p99_ms": p99_t, "met": r["rps"] >= rps_t and r["p99_ms"] <= p99_t}
        verdict = "met" if r["target"]["met"] else "NOT met"
        print(f"  {'':<10} target >= {rps_t:,.0f} req/s, p99 <= {p99_t:g} ms: {verdict}")
    print(f"  settled in {results.get('settle_s')} s; API error log lines: {results.get('api_log_errors')}")
    if results.get("profile_top"):
        top = results["profile_top"]
        print("\n==> py-spy, one API worker during stock-10m: self time (leaf frame), share of samples")
        for frame, pct in top["self"]:
            print(f"  {pct:5.1f}%  {frame[:150]}")
        print("==> inclusive (frame anywhere on the stack)")
        for frame, pct in top["inclusive"]:
            print(f"  {pct:5.1f}%  {frame[:150]}")
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(results, indent=2))
    ns.markdown.parent.mkdir(parents=True, exist_ok=True)
    with ns.markdown.open("a") as f:
        f.write(markdown(results, ns))
    print(f"\n==> saved {ns.json}, appended to {ns.markdown}")
    print(f"==> logs and tokens in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
