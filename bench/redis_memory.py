"""``make bench-redis-memory``: Redis bytes per settled reservation, measured, beside the layout before
compaction in the same run.

Seeds a sale on the project's Redis, reserves ``--reservations`` units for ``--buyers`` distinct buyers
through ``StockEngine.reserve`` (the production script), settles them as the worker does (confirm in
batches, ``--release-share`` released), and reports the ``used_memory`` delta per reservation, and the
``MEMORY USAGE`` of each of the sale's stores per reservation. The baseline writes the same reservations as
full records into one hash and the buyers into another (how a sale kept them before compaction) and
measures them the same way. Writes ``bench/results/redis-memory-<date>.md``. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import time
import uuid
from pathlib import Path

import redis

from stampede.names import sale_keys
from stampede.settings import Common, load
from stampede.stock import SaleConfig, StockEngine

ROOT = Path(__file__).resolve().parents[1]


def store_bytes(r: redis.Redis, directory: str) -> int:
    """MEMORY USAGE of a small-hash store: its directory and every bucket."""
    buckets = int(r.hget(directory, "buckets") or 0)
    total = int(r.memory_usage(directory, samples=0) or 0)
    for start in range(0, buckets, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(buckets, start + 500)):
            pipe.memory_usage(f"{directory}:{i}", samples=0)
        total += sum(int(x or 0) for x in pipe.execute())
    return total


async def fill(url: str, sale: str, n: int, buyers: int, release_share: float) -> float:
    engine = StockEngine.from_url(url, max_connections=32)
    rng = random.Random(18)
    try:
        await engine.delete(sale)
        await engine.seed(sale, SaleConfig(total=n, per_user_limit=n), open=True)
        started = time.perf_counter()
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> str:
            async with sem:
                return (await engine.reserve(sale, f"buyer-{i % buyers}", 1)).reservation_id

        for start in range(0, n, 5000):
            ids = await asyncio.gather(*(one(i) for i in range(start, min(n, start + 5000))))
            released = [rid for rid in ids if rng.random() < release_share]
            gone = set(released)
            for b in range(0, len(ids), 100):
                await engine.confirm(sale, [rid for rid in ids[b : b + 100] if rid not in gone])
            if released:
                await engine.release(sale, released)
        return time.perf_counter() - started
    finally:
        await engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reservations", type=int, default=200_000)
    ap.add_argument("--buyers", type=int, default=50_000)
    ap.add_argument("--release-share", type=float, default=0.05)
    ns = ap.parse_args()
    settings = load(Common)
    r = redis.Redis.from_url(settings.redis_url)
    sale = f"mem-{uuid.uuid4().hex[:8]}"
    k = sale_keys(sale)
    n: int = ns.reservations
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    before = int(r.info("memory")["used_memory"])
    seconds = asyncio.run(fill(settings.redis_url, sale, n, ns.buyers, ns.release_share))
    after = int(r.info("memory")["used_memory"])
    settled = store_bytes(r, k.settled)
    holds = store_bytes(r, k.holds)
    rest = sum(int(r.memory_usage(key, samples=0) or 0) for key in (k.meta, k.reservations, k.pending))

    # Baseline: the layout before compaction (one hash of full records, one hash of buyers), same data.
    base_res, base_holds = "stampede:{mem-baseline}:res", "stampede:{mem-baseline}:holds"
    r.delete(base_res, base_holds)
    b_before = int(r.info("memory")["used_memory"])
    now_ms = int(time.time() * 1000)
    for start in range(0, n, 5000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 5000)):
            pipe.hset(base_res, str(uuid.uuid4()), f"confirmed|1|{now_ms + i}|buyer-{i % ns.buyers}")
            pipe.hincrby(base_holds, f"buyer-{i % ns.buyers}", 1)
        pipe.execute()
    b_after = int(r.info("memory")["used_memory"])
    b_res = int(r.memory_usage(base_res, samples=0) or 0)
    b_holds = int(r.memory_usage(base_holds, samples=0) or 0)
    r.delete(base_res, base_holds)
    asyncio.run(StockEngine.from_url(settings.redis_url).delete(sale))
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    def per(b: float) -> float:
        return b / n

    rows = [
        ("used_memory delta / reservation", per(after - before), per(b_after - b_before)),
        ("settled reservations (MEMORY USAGE)", per(settled), per(b_res)),
        ("per-buyer holdings (MEMORY USAGE)", per(holds), per(b_holds)),
        ("meta + pending records", per(rest), 0.0),
    ]
    date = dt.date.today().isoformat()
    lines = [
        f"# Redis bytes per settled reservation — {date}",
        "",
        f"`make bench-redis-memory`: {n} reservations from {ns.buyers} buyers through `StockEngine.reserve`, "
        f"settled ({ns.release_share:.0%} released) in {seconds:.1f} s; Redis {r.info('server')['redis_version']}. "
        f"Load average {load_start} → {load_end} (2 cores, shared).",
        "",
        "| bytes per reservation | compact (now) | full records (before) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, now, then in rows:
        ratio = f"{now / then:.2f}" if then else "—"
        lines.append(f"| {name} | {now:.1f} | {then:.1f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"redis-memory-{date}.md"
    out.write_text(text)
    print(text)
    print(f"==> written {out.relative_to(ROOT)}")
    r.close()


if __name__ == "__main__":
    main()
