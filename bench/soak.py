"""``make bench-soak``: a long sale at a steady arrival rate, to see whether it stays as fast and as small as
a short one.

The same processes as ``make demo`` (the operator on the local control plane, the API under gunicorn with
two workers, settle worker processes), a FlashSale with enough stock that every buy is accepted for the whole
run, and k6's ``soak.js`` at ``--rate`` req/s for ``--minutes``. Every ``--interval`` seconds it samples the
RSS and CPU of every process (each gunicorn worker on its own), Redis ``used_memory`` and the sale's
reservations, the PostgreSQL ledger's size, and the settle backlog (reservations Redis still holds pending,
i.e. accepted and not yet settled); k6 tags every request with its interval and minute, so its summary
gives the API's p50/p99 per interval. After the run it waits for the sale to settle, audits it, measures
Redis bytes per settled reservation (the ``used_memory`` delta over the run, and the settled store's own
``MEMORY USAGE``) beside the same reservations written as full records the way they were stored before
compaction (a baseline from the same run), and writes:

- ``.run/bench/soak.json``: the summary figures, ``.run/bench/soak-series.json``: every sample;
- ``bench/results/soak-<date>-<HHMM>.png``: the series; ``bench/results/soak-<date>-<HHMM>.md``: the summary and
  the py-spy profiles (one API worker, the operator, the settle worker, over the last stretch of the load);
  a line in ``bench/results/soak.md``.

Nothing is asserted: the figures are set beside the issue's targets and the load average of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api as apibench  # py-spy machinery

from stampede.ledger import Ledger
from stampede.migrate import migrate
from stampede.names import DEFAULT_NAMESPACE, sale_id, sale_keys
from stampede.settings import Common, load
from stampede.stock import StockEngine
from stampede.vocabulary import SalePhase
from stampede_dev.devstack import LocalStack, Process, free_port
from stampede_dev.localsale import LocalCluster, flashsale, tool
from stampede_dev.sale_audit import audit_sale, k6_accepted

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "p99_ms": 50.0,
    "api_rss_mb": 120.0,
    "operator_rss_mb": 150.0,
    "worker_rss_mb": 150.0,
    "redis_bytes_per_reservation": 60.0,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- processes -------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def process_roles(procs: dict[str, Process]) -> dict[str, int]:
    """role name -> pid: the operator, each settle worker, the gunicorn master and each of its workers."""
    roles: dict[str, int] = {}
    for name, p in procs.items():
        if name == "api":
            roles["api-master"] = p.pid
            for i, child in enumerate(sorted(children(p.pid))):
                roles[f"api-worker-{i}"] = child
        else:
            roles[name] = p.pid
    return roles


# --- sampling --------------------------------------------------------------------------------------------


@dataclass
class Sampler:
    redis_url: str
    database_url: str
    sale: str
    procs: dict[str, Process]
    samples: list[dict[str, Any]] = field(default_factory=list)
    _cpu: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.r = redis.Redis.from_url(self.redis_url)
        self.pg = psycopg.connect(self.database_url, autocommit=True)
        self.keys = sale_keys(self.sale)

    def close(self) -> None:
        self.r.close()
        self.pg.close()

    def sample(self, t: float) -> dict[str, Any]:
        roles = process_roles(self.procs)
        rss = {role: rss_mb(pid) for role, pid in roles.items()}
        cpu: dict[str, float] = {}
        now = time.monotonic()
        for role, pid in roles.items():
            c = cpu_s(pid)
            if c is None:
                continue
            prev = self._cpu.get(role)
            if prev is not None and now > prev[1]:
                cpu[role] = round(100 * (c - prev[0]) / (now - prev[1]), 1)
            self._cpu[role] = (c, now)
        info = self.r.info("memory")
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.keys.pending)
        pipe.hlen(self.keys.reservations)
        pipe.hget(self.keys.settled, "count")
        backlog, pending_records, settled = pipe.execute()
        row = self.pg.execute(
            "SELECT pg_total_relation_size('stampede_ledger'), pg_total_relation_size('procrastinate_jobs')"
        ).fetchone()
        assert row is not None
        s = {
            "t": round(t, 1),
            "loadavg1": float(Path("/proc/loadavg").read_text().split()[0]),
            "rss_mb": {k: round(v, 1) for k, v in rss.items() if v is not None},
            "cpu_pct": cpu,
            "redis_used_memory": int(info["used_memory"]),
            "reservations": int(pending_records) + int(settled or 0),
            "settle_backlog": int(backlog),
            "ledger_bytes": int(row[0]),
            "jobs_bytes": int(row[1]),
        }
        self.samples.append(s)
        return s


# --- Redis bytes per reservation ----------------------------------------------------------------------------


def settled_store_bytes(r: redis.Redis, sale: str) -> tuple[int, int]:
    """(MEMORY USAGE of the settled store's directory and buckets, settled reservations)."""
    k = sale_keys(sale)
    buckets = int(r.hget(k.settled, "buckets") or 0)
    count = int(r.hget(k.settled, "count") or 0)
    total = int(r.memory_usage(k.settled, samples=0) or 0)
    for start in range(0, buckets, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(buckets, start + 500)):
            pipe.memory_usage(k.bucket(k.settled, i), samples=0)
        total += sum(int(x or 0) for x in pipe.execute())
    return total, count


def full_record_baseline(r: redis.Redis, n: int) -> float:
    """Bytes per reservation when ``n`` settled reservations are kept as full records in one hash, the layout
    before compaction ('confirmed|qty|reserved_at_ms|user' under the reservation id): MEMORY USAGE of such a
    hash, written into a scratch key and deleted again."""
    import uuid

    key = "stampede:{soak-baseline}:res"
    r.delete(key)
    now_ms = int(time.time() * 1000)
    for start in range(0, n, 2000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 2000)):
            pipe.hset(key, str(uuid.uuid4()), f"confirmed|1|{now_ms + i}|buyer-{i % 50000}")
        pipe.execute()
    used = int(r.memory_usage(key, samples=0) or 0)
    r.delete(key)
    return used / n if n else 0.0


# --- k6 summary ------------------------------------------------------------------------------------------------


def tagged(summary: dict[str, Any], tag: str) -> dict[int, dict[str, float]]:
    """{interval or minute: {"p50", "p99", "count"}} from the tagged http_req_duration submetrics."""
    out: dict[int, dict[str, float]] = {}
    prefix = f"http_req_duration{{{tag}:"
    for name, m in summary.get("metrics", {}).items():
        if name.startswith(prefix):
            v = m["values"]
            out[int(name[len(prefix) : -1])] = {"p50": round(v["med"], 2), "p99": round(v["p(99)"], 2)}
    return dict(sorted(out.items()))


# --- chart ----------------------------------------------------------------------------------------------------


def chart(samples: list[dict[str, Any]], intervals: dict[int, dict[str, float]], interval_s: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    ts = [s["t"] for s in samples]
    ax = axes[0][0]
    xs = [(i + 1) * interval_s for i in intervals]
    ax.plot(xs, [v["p50"] for v in intervals.values()], label="p50")
    ax.plot(xs, [v["p99"] for v in intervals.values()], label="p99")
    ax.axhline(TARGETS["p99_ms"], color="grey", ls=":", label="p99 target")
    ax.set_ylabel("API latency per interval (ms)")
    ax.legend()
    ax = axes[0][1]
    roles = sorted({r for s in samples for r in s["rss_mb"]})
    for role in roles:
        ax.plot(ts, [s["rss_mb"].get(role) for s in samples], label=role)
    ax.set_ylabel("RSS (MB)")
    ax.legend(fontsize="small")
    ax = axes[1][0]
    ax.plot(ts, [s["redis_used_memory"] / 2**20 for s in samples], label="Redis used_memory (MB)")
    ax.plot(ts, [s["ledger_bytes"] / 2**20 for s in samples], label="ledger table + indexes (MB)")
    ax.set_ylabel("MB")
    ax.set_xlabel("seconds")
    ax2 = ax.twinx()
    ax2.plot(ts, [s["reservations"] / 1000 for s in samples], color="black", ls="--", label="reservations (k)")
    ax2.set_ylabel("reservations (thousands)")
    ax.legend(loc="upper left", fontsize="small")
    ax = axes[1][1]
    ax.plot(ts, [s["settle_backlog"] for s in samples], label="settle backlog (reservations)")
    ax.set_ylabel("reservations pending")
    ax.set_xlabel("seconds")
    ax3 = ax.twinx()
    for role in ("operator", "worker-0"):
        ax3.plot(ts, [s["cpu_pct"].get(role) for s in samples], ls=":", label=f"{role} CPU %")
    ax3.set_ylabel("CPU % of one core")
    ax.legend(loc="upper left", fontsize="small")
    ax3.legend(loc="upper right", fontsize="small")
    fig.suptitle("make bench-soak: a long sale at a steady arrival rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- the record of a run -------------------------------------------------------------------------------------


def rss_per_minute(samples: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """role -> {minute: the largest RSS sampled in it}, the series that shows growth or a flat line."""
    out: dict[str, dict[int, float]] = {}
    for s in samples:
        for role, mb in s["rss_mb"].items():
            minute = int(s["t"] // 60)
            per = out.setdefault(role, {})
            per[minute] = max(per.get(minute, 0.0), mb)
    return out


def run_record(result: dict[str, Any], sale: str, rate: int, minutes: float, png: str) -> str:
    """The committed record of one run: its summary as written to ``.run/bench/soak.json`` and the profiles."""
    lines = [
        f"# make bench-soak: {rate} req/s for {minutes:g} min (sale {sale})",
        "",
        f"Load average {result['loadavg_start']} → {result['loadavg_end']} on {result['machine_cores']} cores. "
        f"Chart: [{png}]({png}). `.run/bench/soak.json` of the run:",
        "",
        "```json",
        json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=1),
        "```",
    ]
    for role, top in result.get("profile", {}).items():
        lines += [
            "",
            f"## py-spy: {role}, {result['profile_seconds']} s near the end of the load",
            "",
            "| leaf frame | share of samples |",
            "| --- | ---: |",
        ]
        lines += [f"| `{frame[:120]}` | {pct}% |" for frame, pct in top.get("self", [])]
        lines += ["", "| on the stack (inclusive) | share of samples |", "| --- | ---: |"]
        lines += [f"| `{frame[:120]}` | {pct}% |" for frame, pct in top.get("inclusive", [])]
    return "\n".join(lines) + "\n"


# --- the run ---------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench-soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=int(os.environ.get("SOAK_RATE", "500")), help="req/s (SOAK_RATE)")
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")), help="(SOAK_MINUTES)")
    ap.add_argument("--interval", type=int, default=10, help="seconds between samples")
    ap.add_argument("--buyers", type=int, default=50_000)
    ap.add_argument("--worker-processes", type=int, default=1)
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--k6", default=os.environ.get("K6", ""), help="k6 binary (default: the pinned one)")
    ap.add_argument(
        "--profile-seconds",
        type=int,
        default=45,
        help="py-spy one API worker, the operator and the settle worker this long near the end of the load (0: no)",
    )
    ns = ap.parse_args()

    settings = load(Common)
    run_dir = ROOT / ".run" / "bench"
    run_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster.of(ROOT)
    k6 = ns.k6 or tool(ROOT, "k6")
    sale = f"soak-{time.strftime('%H%M%S')}"
    sid = sale_id(DEFAULT_NAMESPACE, sale)  # how Redis and the ledger name the FlashSale
    secret = secrets.token_urlsafe(36)
    seconds = int(ns.minutes * 60)
    intervals_n = -(-seconds // ns.interval)
    stock = int(ns.rate * seconds * 1.3) + 10_000  # every buy is accepted for the whole run
    limit = 1_000_000  # and no buyer reaches a limit: the sale only grows
    load_start = loadavg()
    print(f"==> soak {sale}: {ns.rate} req/s for {ns.minutes:g} min, stock {stock}; load average {load_start}")

    asyncio.run(migrate(settings.database_url))
    # The FlashSale's default reconcile interval, as a real sale runs.
    manifest = flashsale(
        sale, stock, limit, minutes=int(ns.minutes) + 30, workers=ns.worker_processes, reconcile_s=None
    )
    cluster.install_sale(manifest)
    r = redis.Redis.from_url(settings.redis_url)
    summary_path = run_dir / f"{sale}-k6.json"
    with LocalStack(run_dir, {"STAMPEDE_JWT_SECRET": secret, "STAMPEDE_LOG_LEVEL": "WARNING"}) as stack:
        stack.operator(cluster.kubeconfig)
        phase = cluster.wait_phase(sale, SalePhase.LIVE)
        if phase != SalePhase.LIVE:
            print(f"bench-soak: the sale never went Live ({phase!r}):\n{stack.procs['operator'].tail()}")
            return 1
        port = free_port()
        stack.api(port=port, workers=ns.api_workers)
        for i in range(ns.worker_processes):
            stack.worker(name=f"worker-{i}", concurrency=16)
        time.sleep(3)
        used_before = int(r.info("memory")["used_memory"])
        sampler = Sampler(settings.redis_url, settings.database_url, sid, stack.procs)
        print(f"==> k6 soak.js: {ns.rate} req/s for {seconds}s from {ns.buyers} buyers; sampling every {ns.interval}s")
        proc = subprocess.Popen(
            [k6, "run", "--quiet", str(ROOT / "k6" / "soak.js")],
            env={
                **os.environ,
                "BASE_URL": f"http://127.0.0.1:{port}",
                "SALE": sale,
                "JWT_SECRET": secret,
                "BUYERS": str(ns.buyers),
                "RATE": str(ns.rate),
                "DURATION": f"{seconds}s",
                "INTERVAL_S": str(ns.interval),
                "INTERVALS": str(intervals_n),
                "SUMMARY_PATH": str(summary_path),
            },
        )
        started = time.monotonic()
        sampler.sample(0.0)
        next_at = started + ns.interval
        profile_s = min(ns.profile_seconds, max(0, seconds - 10))
        profile_at = started + seconds - profile_s - 5  # the last stretch of the load, when the sale is largest
        spies: dict[str, tuple[subprocess.Popen[bytes] | None, Path]] = {}
        while proc.poll() is None:
            if profile_s > 0 and not spies and time.monotonic() >= profile_at:
                roles = process_roles(stack.procs)
                for role in ("api-worker-0", "operator", "worker-0"):
                    if role in roles:
                        out = run_dir / f"soak-profile-{role}.txt"
                        out.unlink(missing_ok=True)
                        spies[role] = (apibench.profile(roles[role], profile_s, out), out)
            time.sleep(max(0.0, min(1.0, next_at - time.monotonic())))
            if time.monotonic() >= next_at:
                s = sampler.sample(time.monotonic() - started)
                api = max((v for k, v in s["rss_mb"].items() if k.startswith("api-worker")), default=0)
                print(
                    f"  t={s['t']:>5.0f}s reservations {s['reservations']:>7} backlog {s['settle_backlog']:>5} "
                    f"redis {s['redis_used_memory'] / 2**20:6.1f} MB  api {api:5.1f} MB "
                    f"operator {s['rss_mb'].get('operator', 0):5.1f} MB  "
                    f"worker {s['rss_mb'].get('worker-0', 0):5.1f} MB "
                    f"cpu op {s['cpu_pct'].get('operator', 0):5.1f}%  load {s['loadavg1']}",
                    flush=True,
                )
                next_at += ns.interval
        sampler.sample(time.monotonic() - started)
        k6_rc = proc.returncode
        profiles: dict[str, Any] = {}
        for role, (spy, out) in spies.items():
            if spy is not None:
                spy.wait(120)
                profiles[role] = apibench.top_of_profile(out, 12)

        async def judge() -> tuple[Any, Any, float]:
            ledger = await Ledger.open(settings)
            engine = StockEngine.from_url(settings.redis_url)
            try:
                return await audit_sale(ledger, engine, sid, acknowledged=k6_accepted(summary_path), settle_timeout=300)
            finally:
                await engine.close()
                await ledger.close()

        report, lag, waited = asyncio.run(judge())
        print(report.render())
        print(lag.render())
        time.sleep(4)  # rate-limit buckets expire (burst / rate + 1 s): what stays is what a sale keeps
        sampler.sample(time.monotonic() - started)
        sampler.close()
    load_end = loadavg()

    summary = json.loads(summary_path.read_text())
    per_interval = tagged(summary, "iv")
    per_minute = tagged(summary, "minute")
    samples = sampler.samples
    reservations = samples[-1]["reservations"]
    used_after = samples[-1]["redis_used_memory"]
    store_bytes, settled = settled_store_bytes(r, sid)
    baseline = full_record_baseline(r, min(settled, 200_000))
    r.close()

    def peak(prefix: str) -> float:
        return max((v for s in samples for k, v in s["rss_mb"].items() if k.startswith(prefix)), default=0.0)

    minutes = sorted(per_minute)
    full_minutes = [m for m in minutes if (m + 1) * 60 <= seconds] or minutes
    result = {
        "minutes": ns.minutes,
        "rate": ns.rate,
        "p99_ms_first_minute": per_minute[full_minutes[0]]["p99"] if full_minutes else None,
        "p99_ms_last_minute": per_minute[full_minutes[-1]]["p99"] if full_minutes else None,
        "api_rss_mb_max": peak("api-worker"),
        "operator_rss_mb_max": peak("operator"),
        "worker_rss_mb_max": peak("worker-"),
        "redis_bytes_per_reservation": round((used_after - used_before) / reservations, 1) if reservations else None,
        "backlog_max": max(s["settle_backlog"] for s in samples),
        # beyond the fields
        "sale": sale,
        "reservations": reservations,
        "accepted_by_k6": k6_accepted(summary_path),
        "redis_settled_store_bytes_per_reservation": round(store_bytes / settled, 1) if settled else None,
        "redis_full_record_bytes_per_reservation_baseline": round(baseline, 1),
        "p99_ms_per_minute": {m: v["p99"] for m, v in per_minute.items()},
        "p50_ms_per_minute": {m: v["p50"] for m, v in per_minute.items()},
        "audit_ok": report.ok,
        "settled_s_after_load": round(waited, 1),
        "lag_p99_ms": round(lag.p99 * 1000, 1),
        "k6_exit": k6_rc,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "machine_cores": os.cpu_count(),
        "rss_mb_per_minute": rss_per_minute(samples),
        "profile_seconds": profile_s if profiles else 0,
        "profile": profiles,
    }
    (run_dir / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / "soak-series.json").write_text(
        json.dumps({"interval_s": ns.interval, "samples": samples, "latency_per_interval": per_interval}, indent=1)
    )
    date = dt.date.today().isoformat()
    stamp = f"{date}-{time.strftime('%H%M')}"
    out_dir = ROOT / "bench" / "results"
    png = out_dir / f"soak-{stamp}.png"
    chart(samples, per_interval, ns.interval, png)
    details = out_dir / f"soak-{stamp}.md"
    details.write_text(run_record(result, sale, ns.rate, ns.minutes, png.name))
    first, last = result["p99_ms_first_minute"], result["p99_ms_last_minute"]
    drift = f"{last / first:.2f}" if first and last else "n/a"
    line = (
        f"| {date} {time.strftime('%H:%M')} | {ns.rate}/s × {ns.minutes:g} min | {reservations} "
        f"| {first} / {last} ({drift}×) | {max(v['p99'] for v in per_minute.values()):.1f} "
        f"| {result['api_rss_mb_max']:.0f} | {result['operator_rss_mb_max']:.0f} | {result['worker_rss_mb_max']:.0f} "
        f"| {result['redis_bytes_per_reservation']} (store {result['redis_settled_store_bytes_per_reservation']}; "
        f"full records {result['redis_full_record_bytes_per_reservation_baseline']}) "
        f"| {result['backlog_max']} | {'clean' if report.ok else 'VIOLATIONS'} | {load_start} → {load_end} "
        f"| [{png.name}]({png.name}), [run]({details.name}) |"
    )
    md = out_dir / "soak.md"
    if not md.exists():
        md.write_text(
            "# make bench-soak\n\n"
            "A steady arrival rate against a live sale (operator, API with 2 gunicorn workers, settle workers), "
            "sampled every 10 s. Targets (2 cores, 500 req/s, 10 min): p99 ≤ 50 ms every minute, last minute "
            "within 20% of the first, API worker ≤ 120 MB, operator ≤ 150 MB, settle worker ≤ 150 MB, Redis ≤ 60 "
            "bytes per settled reservation, backlog ≤ one second of arrivals.\n\n"
            "| run | rate × length | reservations | p99 first / last minute ms (ratio) | worst minute p99 ms "
            "| API worker MB | operator MB | worker MB | Redis B/reservation | backlog max | audit "
            "| load average | chart |\n"
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- |\n"
        )
    with md.open("a") as f:
        f.write(line + "\n")
    print(json.dumps(result, indent=2))
    for name, target in (
        ("api_rss_mb_max", TARGETS["api_rss_mb"]),
        ("operator_rss_mb_max", TARGETS["operator_rss_mb"]),
        ("worker_rss_mb_max", TARGETS["worker_rss_mb"]),
        ("redis_bytes_per_reservation", TARGETS["redis_bytes_per_reservation"]),
    ):
        value = result[name]
        print(f"  {name}: {value} (target ≤ {target:g}){'' if value is not None and value <= target else '  MISSED'}")
    worst = max(v["p99"] for v in per_minute.values()) if per_minute else 0
    print(f"  worst minute p99: {worst} ms (target ≤ 50){'' if worst <= 50 else '  MISSED'}")
    print(
        f"  backlog max: {result['backlog_max']} (target ≤ {ns.rate})"
        f"{'' if result['backlog_max'] <= ns.rate else '  MISSED'}"
    )
    for role, top in profiles.items():
        print(f"==> py-spy, {role}, {profile_s} s near the end of the load: leaf frames (share of samples)")
        for frame, pct in top.get("self", [])[:10]:
            print(f"  {pct:5.1f}%  {frame[:140]}")
    print(
        f"==> written .run/bench/soak.json, {png.relative_to(ROOT)}, {details.relative_to(ROOT)} "
        f"and a line in {md.relative_to(ROOT)}"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
