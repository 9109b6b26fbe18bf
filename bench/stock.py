"""Micro-benchmark of the stock engine (``make bench-stock``), reported as ratios in one run.

Three figures on the same Redis, back to back:
  1. redis-benchmark EVALSHA of a trivial script (``return 1``): the ceiling of any script call;
  2. redis-benchmark EVALSHA of reserve.lua itself: what the atomic step costs inside Redis;
  3. StockEngine.reserve from Python (asyncio, several processes): what a real client gets.
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
from stampede.stock import SaleConfig, StockEngine, script_source

ROOT = Path(__file__).resolve().parents[1]


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
        "7",
        k.meta,
        k.reservations,
        k.pending,
        k.holds,
        k.idempotency,
        f"{k.base}:rl:u:x",
        "",
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
    print(table)
    out = ROOT / "bench" / "results" / f"stock-{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# bench-stock {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores\n\n{table}\n")
    print(f"==> written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
