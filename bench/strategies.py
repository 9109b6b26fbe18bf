"""``make bench``: the case study's spike against the four strategies and the production path, in one run.

One API (gunicorn, uvicorn workers, strategies enabled) and one settle worker serve every strategy on the
same machine; each strategy gets a fresh product with the same stock and the same k6 spike (the case
study's shape: ramping arrivals to a peak, hold, taper). The table reports oversold units, latency
percentiles, throughput, 5xx rate and, where a queue is involved, the 202 -> confirmed lag, plus each
strategy's throughput as a ratio of the production path. Then the production path behind a waiting room
(``k6/waiting-room.js``: a spike of buyers joining before the start, bots, cheaters): the admission rate measured
from Redis's admission times as a ratio of the configured rate. Writes bench/results/<date>.md and a PNG chart.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from stampede.ledger import Ledger
from stampede.migrate import migrate
from stampede.settings import Common, load
from stampede.stock import StockEngine
from stampede_api.strategies import open_pool, setup_product
from stampede_api.strategies.schema import migration_files as strategy_migrations
from stampede_dev.devstack import LocalStack, free_port
from stampede_dev.localsale import tool
from stampede_dev.sale_audit import lag, wait_settled

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("v1", "v2", "v3", "v4", "prod")
TITLES = {
    "v1": "v1 naive read-modify-write",
    "v2": "v2 atomic UPDATE … WHERE stock >= 1",
    "v3": "v3 Redis Lua + sync INSERT",
    "v4": "v4 Redis Lua + durable batch + queue",
    "prod": "/v1 production path (JWT, limits)",
}


async def prepare(settings: Common, strategy: str, product: str, stock: int, limit: int = 1) -> None:
    """A fresh product with ``stock`` units (``limit`` per buyer where the strategy has limits), set up as the
    tests set it up (``setup_product``); the production path's product is v4's."""
    pool = await open_pool(settings.database_url, min_size=1, max_size=1)
    engine = StockEngine.from_url(settings.redis_url)
    ledger = await Ledger.open(settings)
    try:
        version = "v4" if strategy == "prod" else strategy
        await setup_product(version, product, stock, pool=pool, stock=engine, ledger=ledger, per_user_limit=limit)
    finally:
        await ledger.close()
        await engine.close()
        await pool.close()


async def settle_lag(settings: Common, product: str) -> tuple[float, dict[str, float]]:
    ledger = await Ledger.open(settings)
    try:
        waited = await wait_settled(ledger, product, 120)
        lg = await lag(ledger, product)
        return waited, {"p50": lg.p50, "p95": lg.p95, "p99": lg.p99}
    finally:
        await ledger.close()


def stats(base: str, strategy: str, product: str) -> dict[str, Any]:
    import urllib.request

    version = "v4" if strategy == "prod" else strategy
    with urllib.request.urlopen(f"{base}/api/{version}/stats?productId={product}", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def metric(summary: dict[str, Any], name: str, field: str = "count") -> float:
    m = summary["metrics"].get(name)
    return float(m["values"].get(field, 0)) if m else 0.0


WARNING = "#cf222e"  # the colour of a strategy that oversold


def machine_line() -> str:
    """What the figures were measured on: CPUs, platform and the load average when the chart was drawn."""
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "n/a"
    return (
        f"{os.cpu_count()} CPUs · {platform.machine()} · {platform.system()} {platform.release()} · "
        f"Python {platform.python_version()} · load average {load}"
    )


def chart(rows: list[dict[str, Any]], path: Path, *, when: str, machine: str) -> None:
    """Latency and sustained throughput per strategy, titled with the date and the machine; a strategy that
    oversold is drawn in the warning colour (its throughput bar, its name, a band behind it) and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["strategy"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.6))
    x = range(len(rows))
    for i, (key, label) in enumerate((("p50", "p50"), ("p95", "p95"), ("p99", "p99"))):
        a.bar([j + (i - 1) * 0.27 for j in x], [r[key] for r in rows], width=0.27, label=label)
    a.set_xticks(list(x), names)
    a.set_ylabel("latency, ms")
    a.set_yscale("log")
    a.legend()
    a.set_title("latency per strategy")
    tput = [r.get("cap_rps", r["rps"]) for r in rows]
    b.bar(list(x), tput, color=[WARNING if r["oversold"] else "tab:green" for r in rows])
    b.set_xticks(list(x), names)
    b.set_ylabel("purchases/s (closed loop, stock 10M)")
    b.set_title("sustained throughput per strategy")
    for j, r in enumerate(rows):
        if not r["oversold"]:
            continue
        for ax in (a, b):
            ax.axvspan(j - 0.45, j + 0.45, color=WARNING, alpha=0.10, zorder=0)
            ax.get_xticklabels()[j].set_color(WARNING)
            ax.get_xticklabels()[j].set_fontweight("bold")
        b.annotate(f"OVERSOLD {r['oversold']}", (j, tput[j]), ha="center", va="bottom", color=WARNING,
                   fontweight="bold")  # fmt: skip
    fig.suptitle(f"make bench: the buy strategies under a k6 spike, {when}", fontweight="bold")
    fig.text(0.5, 0.005, machine, ha="center", va="bottom", fontsize=8, color="0.35")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def capacity(
    ns: argparse.Namespace,
    settings: Common,
    k6: str,
    base: str,
    secret: str,
    strategy: str,
    product: str,
    run_dir: Path,
) -> dict[str, float]:
    """A closed loop of ``ns.vus`` buyers on stock 10M: what the strategy sustains when every buy is
    accepted and written."""
    asyncio.run(prepare(settings, strategy, product, 10_000_000, limit=1_000_000))
    path = run_dir / f"{product}.json"
    print(f"==> {TITLES[strategy]}: closed loop, {ns.vus} VUs for {ns.capacity_seconds}s on stock 10M", flush=True)
    subprocess.run(
        [k6, "run", "--quiet", str(ROOT / "k6" / "strategies.js")],
        env={
            **os.environ,
            "BASE_URL": base,
            "STRATEGY": strategy,
            "PRODUCT": product,
            "SALE": product,
            "JWT_SECRET": secret,
            "BUYERS": str(ns.buyers),
            "MODE": "capacity",
            "VUS": str(ns.vus),
            "DURATION": f"{ns.capacity_seconds}s",
            "SUMMARY_PATH": str(path),
        },
        check=False,
    )
    summary = json.loads(path.read_text())
    out = {
        "cap_rps": metric(summary, "strategy_accepted") / ns.capacity_seconds,
        "cap_p99": metric(summary, "http_req_duration", "p(99)"),
    }
    print(f"    sustained {out['cap_rps']:.0f} purchases/s, p99 {out['cap_p99']:.1f} ms", flush=True)
    return out


def waiting_room(
    ns: argparse.Namespace, settings: Common, k6: str, base: str, secret: str, product: str, run_dir: Path
) -> dict[str, Any]:
    """A sale behind its waiting room: ``ns.room_buyers`` buyers (and a few bots and cheaters) join in the 5 s
    before the start, stock for half of them, admitted at ``ns.room_rate``/s; the rate measured from the first
    admission to the one that sold the sale out, from Redis's admission times."""
    units = max(1, ns.room_buyers // 2)
    asyncio.run(prepare(settings, "prod", product, units))

    async def configure() -> int:
        engine = StockEngine.from_url(settings.redis_url)
        try:
            now = await engine.now_ms()
            start: int = now + 10_000 + ns.room_buyers * 10  # k6 starts one user per buyer first
            await engine.room.configure(
                product, on=True, open_ms=now, start_ms=start, end_ms=0, rate_per_s=ns.room_rate
            )
            return start
        finally:
            await engine.close()

    async def admitted() -> list[int]:
        engine = StockEngine.from_url(settings.redis_url)
        try:
            return sorted(a.admitted_ms for a in await engine.room.admitted(product))
        finally:
            await engine.close()

    start = asyncio.run(configure())
    path = run_dir / f"{product}.json"
    print(f"==> waiting room: {ns.room_buyers} buyers for {units} units, admitted at {ns.room_rate}/s", flush=True)
    subprocess.run(
        [k6, "run", "--quiet", str(ROOT / "k6" / "waiting-room.js")],
        env={
            **os.environ,
            "BASE_URL": base,
            "SALE": product,
            "JWT_SECRET": secret,
            "BUYERS": str(ns.room_buyers),
            "JOIN_SECONDS": "5",
            "SUMMARY_PATH": str(path),
        },
        check=False,
    )
    summary = json.loads(path.read_text())
    times = asyncio.run(admitted())[:units]
    measured = (len(times) - 1) * 1000 / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    out = {
        "buyers": ns.room_buyers,
        "units": units,
        "rate": ns.room_rate,
        "measured": measured,
        "first_after_start_ms": (times[0] - start) if times else None,
        "joined": int(metric(summary, "queue_joined")),
        "admitted": int(metric(summary, "queue_admitted")),
        "accepted": int(metric(summary, "reservations_accepted")),
        "polls": int(metric(summary, "queue_polls")),
        "too_soon": int(metric(summary, "queue_too_soon")),
        "cheaters_accepted": int(metric(summary, "cheaters_accepted")),
        "p95": metric(summary, "http_req_duration", "p(95)"),
    }
    print(f"    admission rate {measured:.1f}/s for {ns.room_rate}/s; {out['accepted']} bought", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stock", type=int, default=5000)
    ap.add_argument("--buyers", type=int, default=100_000)
    ap.add_argument("--peak", type=int, default=1000, help="k6 peak arrival rate (req/s)")
    ap.add_argument("--stage-seconds", type=int, default=5, help="the spike lasts 5 stages")
    ap.add_argument("--only", default=",".join(STRATEGIES), help="comma-separated subset")
    ap.add_argument("--capacity-seconds", type=int, default=10, help="closed-loop run per strategy (0: skip)")
    ap.add_argument("--vus", type=int, default=64, help="k6 virtual users of the closed-loop run")
    ap.add_argument("--worker-concurrency", type=int, default=16)
    ap.add_argument("--room-buyers", type=int, default=500, help="buyers of the waiting-room run (0: skip it)")
    ap.add_argument("--room-rate", type=float, default=50.0, help="admissions per second of the waiting-room run")
    ns = ap.parse_args()

    settings = load(Common)
    asyncio.run(migrate(settings.database_url, extra=strategy_migrations()))
    run_dir = ROOT / ".run" / "bench"
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    secret = "bench-secret-" + "x" * 40
    k6 = tool(ROOT, "k6")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stamp = time.strftime("%H%M%S")
    rows: list[dict[str, Any]] = []
    with LocalStack(
        run_dir,
        {
            **settings_env(settings),
            "STAMPEDE_JWT_SECRET": secret,
            "STAMPEDE_STRATEGIES_ENABLED": "true",
            "STAMPEDE_LOG_LEVEL": "WARNING",
            # Benchmark products are bare sale ids: the /v1 path must not qualify them with a namespace (it
            # answered 404 to every /v1 buy of the production row when it did).
            "STAMPEDE_SALE_NAMESPACE": "",
        },
    ) as stack:
        print("==> starting the API (gunicorn, 2 workers, strategies on) and a settle worker", flush=True)
        stack.api(port=port, workers=2)
        stack.worker(concurrency=ns.worker_concurrency)
        for strategy in ns.only.split(","):
            product = f"bench-{strategy}-{stamp}"
            asyncio.run(prepare(settings, strategy, product, ns.stock))
            summary_path = run_dir / f"{product}.json"
            print(f"==> {TITLES[strategy]}: spike to {ns.peak} req/s on stock {ns.stock}", flush=True)
            subprocess.run(
                [k6, "run", "--quiet", str(ROOT / "k6" / "strategies.js")],
                env={
                    **os.environ,
                    "BASE_URL": base,
                    "STRATEGY": strategy,
                    "PRODUCT": product,
                    "SALE": product,
                    "JWT_SECRET": secret,
                    "BUYERS": str(ns.buyers),
                    "PEAK_RATE": str(ns.peak),
                    "MID_RATE": str(ns.peak // 3),
                    "STAGE_SECONDS": str(ns.stage_seconds),
                    "SUMMARY_PATH": str(summary_path),
                },
                check=False,
            )
            summary = json.loads(summary_path.read_text())
            lag_s: dict[str, float] = {}
            waited = 0.0
            if strategy in ("v4", "prod"):
                waited, lag_s = asyncio.run(settle_lag(settings, product))
            st = stats(base, strategy, product)
            reqs = metric(summary, "http_reqs")
            fails = metric(summary, "strategy_failed")
            rows.append(
                {
                    "strategy": strategy,
                    "title": TITLES[strategy],
                    "oversold": int(st.get("oversold", 0)),
                    "accepted": int(st.get("accepted", 0)),
                    "p50": metric(summary, "http_req_duration", "med"),
                    "p95": metric(summary, "http_req_duration", "p(95)"),
                    "p99": metric(summary, "http_req_duration", "p(99)"),
                    "rps": metric(summary, "http_reqs", "rate"),
                    "requests": int(reqs),
                    "fail_pct": 100 * fails / reqs if reqs else 0.0,
                    "lag_p99_ms": lag_s.get("p99", 0.0) * 1000 if lag_s else None,
                    "settle_s": waited if lag_s else None,
                }
            )
            r = rows[-1]
            print(
                f"    oversold {r['oversold']}  accepted {r['accepted']}  p95 {r['p95']:.1f} ms  "
                f"{r['rps']:.0f} req/s  failures {r['fail_pct']:.2f}%",
                flush=True,
            )
            if ns.capacity_seconds:
                r.update(capacity(ns, settings, k6, base, secret, strategy, f"cap-{strategy}-{stamp}", run_dir))
        room = waiting_room(ns, settings, k6, base, secret, f"bench-room-{stamp}", run_dir) if ns.room_buyers else None

    prod = next((r for r in rows if r["strategy"] == "prod"), rows[-1])
    lines = [
        f"# make bench — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Same machine ({os.cpu_count()} cores, k6 on the same box), one API (gunicorn, 2 uvicorn workers) and one "
        f"settle worker; each strategy gets stock {ns.stock} and the same k6 spike (50 → {ns.peak // 3} → "
        f"{ns.peak} req/s, {5 * ns.stage_seconds}s) from {ns.buyers:,} buyers.",
        "",
        f"Spike columns: the arrival-rate spike on stock {ns.stock}. Sustained columns: a closed loop of {ns.vus} "
        f"k6 VUs for {ns.capacity_seconds}s on stock 10M (every buy accepted: the write-bound case), as purchases "
        f"per second and as a ratio of the production /v1 path. Settle worker concurrency {ns.worker_concurrency}.",
        "",
        "| strategy | oversold | accepted | spike p50 ms | p95 ms | p99 ms | spike req/s | failed | "
        "202→confirmed p99 | sustained buys/s | vs /v1 | sustained p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lag_cell = f"{r['lag_p99_ms']:.0f} ms" if r["lag_p99_ms"] is not None else "—"
        cap = r.get("cap_rps")
        ratio = f"{cap / prod['cap_rps']:.2f}" if cap is not None and prod.get("cap_rps") else "—"
        cap_cell = "—" if cap is None else f"{cap:.0f}"
        cap_p99 = "—" if cap is None else f"{r['cap_p99']:.1f}"
        lines.append(
            f"| {r['title']} | {r['oversold']} | {r['accepted']} | {r['p50']:.1f} | {r['p95']:.1f} | "
            f"{r['p99']:.1f} | {r['rps']:.0f} | {r['fail_pct']:.2f}% | {lag_cell} | {cap_cell} | {ratio} | {cap_p99} |"
        )
    if room is not None:
        lines += [
            "",
            f"Waiting room (`k6/waiting-room.js`, the /v1 path behind `spec.admission`): {room['buyers']} buyers (and "
            f"10 bots polling every 50 ms, 10 cheaters buying without a token) join in the 5 s before the start "
            f"for {room['units']} units, admitted at {room['rate']:g}/s. Admission rate measured from Redis's "
            f"admission times, first admission to the one that sold out: **{room['measured']:.1f}/s, "
            f"{room['measured'] / room['rate']:.2f} of the configured rate**; first admission "
            f"{room['first_after_start_ms']} ms after the start; joined {room['joined']}, admitted "
            f"{room['admitted']}, bought {room['accepted']}, polls {room['polls']} ({room['too_soon']} refused as "
            f"too soon), cheaters served {room['cheaters_accepted']}; p95 of all its requests {room['p95']:.1f} ms.",
        ]
    date = dt.date.today().isoformat()
    png = out_dir / f"{date}-strategies.png"
    chart(rows, png, when=f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", machine=machine_line())
    lines += ["", f"![latency and throughput per strategy]({png.name})", ""]
    md = out_dir / f"{date}.md"
    md.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"==> written {md.relative_to(ROOT)} and {png.relative_to(ROOT)}")


def settings_env(settings: Common) -> dict[str, str]:
    return {"STAMPEDE_REDIS_URL": settings.redis_url, "STAMPEDE_DATABASE_URL": settings.database_url}


if __name__ == "__main__":
    main()
