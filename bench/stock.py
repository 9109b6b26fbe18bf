"""Micro-benchmark of the stock engine (``make bench-stock``), reported as ratios in one run.

Three figures on the same Redis, back to back:
  1. redis-benchmark EVALSHA of a trivial script (``return 1``): the ceiling of any script call;
  2. redis-benchmark EVALSHA of reserve.lua itself: what the atomic step costs inside Redis;
  3. StockEngine.reserve from Python (asyncio, several processes): what a real client gets.
Then the Redis Cluster (STAMPEDE_REDIS_CLUSTER_URL, which ``make bench-stock`` starts), in the same run: the
API's path (``StockEngine.reserve_batch``, pipelines of 32 as the reserve coalescer sends them under load) on
one sale and on many sales, on the single Redis and on the 3-master cluster, with and without the replica
acknowledgement (``WAIT 1``) that makes a failover safe; each as a ratio to the single Redis in the same shape;
and one sale split over 6 stock buckets (``spec.stockBuckets``) against the same sale in one bucket.
Not a test: nothing is asserted; the figures go to stdout and bench/results/stock-<date>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from stampede.names import sale_keys
from stampede.stock import SaleConfig, StockEngine, reserve_call, script_source

ROOT = Path(__file__).resolve().parents[1]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as quoted next to every figure."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def redis_benchmark(port: int, requests: int, clients: int, *command: str) -> float:
    out = subprocess.run(
        [
            "redis-benchmark",
            "-p",
            str(port),
            "-n",
            str(requests),
            "-c",
            str(clients),
            "-r",
            "100000000",
            "--csv",
            *command,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # --csv: header line, then "test","rps",...
    row = out.strip().splitlines()[-1]
    return float(re.findall(r'"([0-9.]+)"', row)[0])


async def _reserve_loop(url: str, sale: str, n: int, concurrency: int, offset: int) -> int:
    engine = StockEngine.from_url(url, max_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await engine.reserve(sale, f"b{offset + i}")

    await asyncio.gather(*(one(i) for i in range(n)))
    await engine.close()
    return n


def _reserve_proc(url: str, sale: str, n: int, concurrency: int, offset: int) -> int:
    return asyncio.run(_reserve_loop(url, sale, n, concurrency, offset))


async def python_reserve(url: str, requests: int, processes: int, concurrency: int) -> float:
    sale = "bench-stock-py"
    engine = StockEngine.from_url(url)
    await engine.delete(sale)
    await engine.seed(sale, SaleConfig(total=10_000_000), open=True)
    loop = asyncio.get_running_loop()
    per = requests // processes
    started = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        done = await asyncio.gather(
            *(loop.run_in_executor(pool, _reserve_proc, url, sale, per, concurrency, p * per) for p in range(processes))
        )
    seconds = time.perf_counter() - started
    await engine.delete(sale)
    await engine.close()
    return sum(done) / seconds


async def _batch_loop(url: str, sales: list[str], n: int, batch: int, inflight: int, ack: int, tag: str) -> int:
    engine = StockEngine.from_url(url, max_connections=inflight * 2, ack_replicas=ack)
    done = 0

    async def lane(lane_no: int) -> None:
        nonlocal done
        i = lane_no
        while done < n:
            calls = [reserve_call(sales[(i + j) % len(sales)], f"{tag}{lane_no}-{i + j}") for j in range(batch)]
            i += batch * inflight
            out = await engine.reserve_batch(calls)
            bad = [r for r in out if isinstance(r, BaseException)]
            if bad:
                raise RuntimeError(f"reserve_batch failed: {bad[0]!r}")
            done += len(calls)

    await asyncio.gather(*(lane(k) for k in range(inflight)))
    await engine.close()
    return done


def _batch_proc(url: str, sales: list[str], n: int, batch: int, inflight: int, ack: int, tag: str) -> int:
    return asyncio.run(_batch_loop(url, sales, n, batch, inflight, ack, tag))


async def batch_reserve(url: str, sales: list[str], requests: int, processes: int, ack: int, buckets: int = 1) -> float:
    """reserve ops/s through ``reserve_batch`` (4 pipelines of 32 in flight per process) over ``sales``, each
    split over ``buckets`` stock buckets."""
    engine = StockEngine.from_url(url)
    for sale in sales:
        await engine.delete(sale)
        await engine.seed(sale, SaleConfig(total=100_000_000, buckets=buckets), open=True)
    loop = asyncio.get_running_loop()
    per = requests // processes
    started = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        done = await asyncio.gather(
            *(loop.run_in_executor(pool, _batch_proc, url, sales, per, 32, 4, ack, f"p{p}-") for p in range(processes))
        )
    seconds = time.perf_counter() - started
    for sale in sales:
        await engine.delete(sale)
    await engine.close()
    return sum(done) / seconds


BUCKETS = 6  # stock buckets of the one hot sale: two per master of the local cluster


async def cluster_rows(single: str, cluster: str, requests: int, processes: int) -> list[str]:
    one = ["bench-stock/one"]
    many = [f"bench-stock/s{i}" for i in range(30)]
    masters = {await _master(cluster, s) for s in many}
    spread = len(set(await _bucket_masters(cluster, one[0], BUCKETS)))
    hot = f"one sale, {BUCKETS} buckets over {spread} masters"
    runs: list[tuple[str, str, list[str], int, str | None, int]] = [
        ("one sale, single Redis", single, one, 0, None, 1),
        ("one sale, cluster, no WAIT", cluster, one, 0, "one sale, single Redis", 1),
        ("one sale, cluster, WAIT 1", cluster, one, 1, "one sale, single Redis", 1),
        (f"one sale, {BUCKETS} buckets, single Redis", single, one, 0, "one sale, single Redis", BUCKETS),
        (f"{hot}, no WAIT", cluster, one, 0, "one sale, cluster, no WAIT", BUCKETS),
        (f"{hot}, WAIT 1", cluster, one, 1, "one sale, cluster, WAIT 1", BUCKETS),
        ("30 sales, single Redis", single, many, 0, None, 1),
        (f"30 sales over {len(masters)} masters, no WAIT", cluster, many, 0, "30 sales, single Redis", 1),
        (f"30 sales over {len(masters)} masters, WAIT 1", cluster, many, 1, "30 sales, single Redis", 1),
    ]
    got: dict[str, float] = {}
    rows = ["| reserve_batch (pipelines of 32) | ops/s | ratio | baseline (same run) |", "| --- | ---: | ---: | --- |"]
    for name, url, sales, ack, base, buckets in runs:
        print(f"==> {name}", flush=True)
        got[name] = await batch_reserve(url, sales, requests, processes, ack, buckets)
        ratio = 1.0 if base is None else got[name] / got[base]
        rows.append(f"| {name} | {got[name]:,.0f} | {ratio:.2f} | {base or '-'} |")
    return rows


async def _bucket_masters(url: str, sale: str, buckets: int) -> list[str | None]:
    engine = StockEngine.from_url(url)
    try:
        await engine.delete(sale)
        await engine.seed(sale, SaleConfig(total=buckets, buckets=buckets))
        return await engine.masters_of(sale)
    finally:
        await engine.delete(sale)
        await engine.close()


async def _master(url: str, sale: str) -> str | None:
    engine = StockEngine.from_url(url)
    try:
        return await engine.master_of(sale)
    finally:
        await engine.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--processes", type=int, default=2)
    ns = ap.parse_args()
    url = os.environ.get("STAMPEDE_REDIS_URL")
    if not url:
        # Never a Redis the machine happens to run: the project's own, which `make bench-stock` starts.
        raise SystemExit("bench/stock.py: STAMPEDE_REDIS_URL is not set; run it as `make bench-stock`")
    port = urlparse(url).port or 6379

    load_before = loadavg()
    cli = ["redis-cli", "-p", str(port)]
    trivial = subprocess.run(
        [*cli, "script", "load", "return 1"], capture_output=True, text=True, check=True
    ).stdout.strip()
    reserve = subprocess.run(
        [*cli, "script", "load", script_source("reserve")], capture_output=True, text=True, check=True
    ).stdout.strip()
    sale = "bench-stock-lua"
    engine = StockEngine.from_url(url)
    await engine.delete(sale)
    await engine.seed(sale, SaleConfig(total=100_000_000), open=True)
    await engine.close()
    k = sale_keys(sale)

    print(f"==> redis-benchmark EVALSHA 'return 1' ({ns.requests} requests, {ns.clients} clients)", flush=True)
    trivial_rps = redis_benchmark(port, ns.requests, ns.clients, "EVALSHA", trivial, "0")
    print("==> redis-benchmark EVALSHA reserve.lua (same)", flush=True)
    lua_rps = redis_benchmark(
        port,
        ns.requests,
        ns.clients,
        "EVALSHA",
        reserve,
        "8",
        k.meta,
        k.reservations,
        k.pending,
        k.holds,
        k.idempotency,
        f"{k.base}:rl:u:x",
        k.room_config,
        k.settled,
        "__rand_int__",
        "__rand_int__",
        "1",
        "",
    )
    print(f"==> StockEngine.reserve from Python ({ns.processes} processes x {ns.clients} in flight)", flush=True)
    py_rps = await python_reserve(url, ns.requests // 2, ns.processes, ns.clients)
    engine = StockEngine.from_url(url)
    await engine.delete(sale)
    await engine.close()

    table = "\n".join(
        [
            "| what | ops/s | vs trivial EVALSHA |",
            "| --- | ---: | ---: |",
            f"| redis-benchmark EVALSHA `return 1` | {trivial_rps:,.0f} | 1.00 |",
            f"| redis-benchmark EVALSHA reserve.lua | {lua_rps:,.0f} | {lua_rps / trivial_rps:.2f} |",
            f"| StockEngine.reserve (Python asyncio, {ns.processes} procs) | {py_rps:,.0f} "
            f"| {py_rps / trivial_rps:.2f} |",
        ]
    )
    cluster_url = os.environ.get("STAMPEDE_REDIS_CLUSTER_URL")
    if cluster_url:
        rows = await cluster_rows(url, cluster_url, ns.requests // 2, ns.processes)
        table += "\n\n" + "\n".join(rows)
    load = loadavg()
    table += (
        f"\n\nLoad average: {load_before} at the start, {load} at the end ({os.cpu_count()} cores shared by every"
        " process above and whatever else the machine runs)."
    )
    print(table)
    out = ROOT / "bench" / "results" / f"stock-{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# bench-stock {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores\n\n{table}\n")
    print(f"==> written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
