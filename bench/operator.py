"""Benchmark of the operator at rest (``make bench-operator``): what it costs to watch many sales, two of them
large, while nothing happens.

On the project's Redis, PostgreSQL and local control plane:
  1. 100 FlashSales in a fresh namespace: 98 small ones and two with 1,000,000 settled (confirmed)
     reservations each, written once straight into the ledger and Redis through the seeding helpers
     (``Ledger.import_settled``, ``StockEngine.import_settled``) and kept for later runs, so every run (and
     the code it is compared with) sees the same data;
  2. the operator (``kopf run``, standalone, watching that namespace) starts; once every sale has been
     reconciled, it runs 60 s idle: its CPU time over the window (percent of one core), its RSS sampled
     every second, and its reconcile histogram for the two large sales (from its /metrics);
  3. the operator stops; a separate process runs reconcile passes of the large sales back to back and
     times each one (exact p50/p99, and the process's peak RSS growth over them).
``--code DIR`` runs the operator and the passes from another source tree (a checkout of older code) against
the same data, for a before/after in one machine state. Not a test: nothing is asserted. Figures go to
``.run/bench/operator.json`` (and ``operator-<label>.json``) and a line under ``bench/results/``. The machine
is shared: the load average is recorded with every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".run" / "bench"
NAMESPACE = "bench-operator"  # fixed, so the large sales' ids (namespace/name) and data are kept across runs
BIG_PREFIX = "bench-big-"
SMALL_PREFIX = "bench-s"
CHUNK = 50_000
TICK_S = os.sysconf("SC_CLK_TCK")


# --- data ------------------------------------------------------------------------------------------------


async def seed_big(sale: str, rows: int, stock_total: int) -> str:
    """Writes ``rows`` confirmed reservations of ``sale`` into the ledger and Redis, once; a later run finds
    them and keeps them. Returns what it did."""
    from stampede.ledger import Ledger, PendingReservation
    from stampede.settings import Common, load
    from stampede.stock import ReservationRecord, SaleConfig, StockEngine
    from stampede.vocabulary import RedisState, Status

    settings = load(Common)
    ledger = await Ledger.open(settings)
    stock = StockEngine.from_url(settings.redis_url)
    try:
        tally = await ledger.tally(sale)
        try:
            snap = await stock.snapshot(sale)
            in_redis = snap.confirmed
        except Exception:
            in_redis = -1
        if tally.confirmed == rows and in_redis == rows:
            return "kept"
        if tally.confirmed or in_redis > 0:
            raise SystemExit(f"sale {sale} holds partial data ({tally.confirmed} rows, {in_redis} in Redis)")
        await ledger.ensure_sale(
            sale, sku="BENCH", stock=stock_total, per_user_limit=1, window_start=None, window_end=None
        )
        await stock.seed(sale, SaleConfig(total=stock_total), open=True)
        base = 1_700_000_000_000
        for start in range(0, rows, CHUNK):
            batch = [
                PendingReservation(str(uuid.uuid4()), sale, f"buyer-{i}", 1, base + i)
                for i in range(start, min(rows, start + CHUNK))
            ]
            await ledger.import_settled(sale, batch, Status.CONFIRMED)
            await stock.import_settled(
                sale,
                [ReservationRecord(r.reservation_id, RedisState.CONFIRMED, 1, r.reserved_at_ms, r.user) for r in batch],
            )
        return "seeded"
    finally:
        await ledger.close()
        await stock.close()


# --- the control plane -------------------------------------------------------------------------------------


async def create_sales(namespace: str, names: list[str], big: dict[str, int]) -> None:
    """The namespace and one FlashSale per name (the CRD applied first), through the Kubernetes API."""
    import yaml
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.exceptions import ApiException

    await config.load_kube_config()
    async with client.ApiClient() as api:
        crd = yaml.safe_load((ROOT / "crds" / "flashsale.yaml").read_text())
        ext = client.ApiextensionsV1Api(api)
        try:
            await ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            if exc.status != 409:
                raise
        for _ in range(100):
            got = await ext.read_custom_resource_definition(crd["metadata"]["name"])
            if any(c.type == "Established" and c.status == "True" for c in got.status.conditions or []):
                break
            await asyncio.sleep(0.2)
        try:
            await client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        custom = client.CustomObjectsApi(api)
        now = dt.datetime.now(dt.UTC)
        for name in names:
            body = {
                "apiVersion": "stampede.dev/v1alpha1",
                "kind": "FlashSale",
                "metadata": {"name": name},
                "spec": {
                    "product": {"sku": "BENCH"},
                    "stock": big.get(name, 100),
                    "window": {
                        "start": (now - dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
                        "end": (now + dt.timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
                    },
                },
            }
            await custom.create_namespaced_custom_object("stampede.dev", "v1alpha1", namespace, "flashsales", body)


async def cleanup(namespace: str) -> None:
    """Removes what the run made in the control plane (a Service holds one of its few ClusterIPs; with the
    operator gone, a FlashSale's finalizer is dropped by hand, so its Redis keys and ledger rows stay for the
    next run). The namespace stays: the local control plane has no controller to empty a deleted one."""
    from kubernetes_asyncio import client, config

    await config.load_kube_config()
    async with client.ApiClient() as api:
        core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
        for svc in (await core.list_namespaced_service(namespace)).items:
            await core.delete_namespaced_service(svc.metadata.name, namespace)
        for dep in (await apps.list_namespaced_deployment(namespace)).items:
            await apps.delete_namespaced_deployment(dep.metadata.name, namespace)
        coords = ("stampede.dev", "v1alpha1", namespace, "flashsales")
        try:
            sales = (await custom.list_namespaced_custom_object(*coords))["items"]
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            sales = []  # a new control plane: no FlashSale CRD yet, so nothing of a run to remove
        for fs in sales:
            name = fs["metadata"]["name"]
            await custom.patch_namespaced_custom_object(
                *coords,
                name,
                {"metadata": {"finalizers": None}},
                # _content_type goes through **kwargs; the generated signature does not list it.
                _content_type="application/merge-patch+json",  # type: ignore[call-arg]
            )
            await custom.delete_namespaced_custom_object(*coords, name)


async def reconciled(namespace: str) -> tuple[int, int]:
    """(sales with a lastReconcileTime, sales) in the namespace."""
    from kubernetes_asyncio import client, config

    await config.load_kube_config()
    async with client.ApiClient() as api:
        got = await client.CustomObjectsApi(api).list_namespaced_custom_object(
            "stampede.dev", "v1alpha1", namespace, "flashsales"
        )
    items = got["items"]
    return sum(1 for i in items if (i.get("status") or {}).get("lastReconcileTime")), len(items)


# --- the operator process ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def code_env(code: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if code is not None:
        # The other tree's packages first on the path: they shadow this tree's editable install.
        env["PYTHONPATH"] = os.pathsep.join(str(code / d) for d in ("core", "operator"))
    return env


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def histogram(text: str, sales: list[str]) -> dict[str, Any]:
    """The reconcile-seconds histogram of ``sales`` summed: count, mean and the p99 bucket's upper bound."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    for line in text.splitlines():
        if not line.startswith("stampede_operator_reconcile_seconds") or not any(f'sale="{s}"' in line for s in sales):
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("stampede_operator_reconcile_seconds_bucket"):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(value)
        elif name.startswith("stampede_operator_reconcile_seconds_count"):
            count += float(value)
        elif name.startswith("stampede_operator_reconcile_seconds_sum"):
            total += float(value)
    p99 = None
    for bound in sorted(buckets):
        if count and buckets[bound] >= 0.99 * count:
            p99 = bound
            break
    return {
        "passes": int(count),
        "mean_ms": round(1000 * total / count, 1) if count else None,
        "p99_bucket_ms": None if p99 is None else (p99 if p99 == float("inf") else round(1000 * p99, 1)),
    }


def profile_summary(raw: Path, top: int = 12) -> dict[str, list[tuple[str, float]]]:
    """Self and total shares of py-spy's collapsed stacks (``--format raw``), by function."""
    self_n: dict[str, int] = {}
    total_n: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_s)
        samples += n
        frames = stack.split(";")
        leaf = frames[-1].split(" (")[0]
        self_n[leaf] = self_n.get(leaf, 0) + n
        for f in {fr.split(" (")[0] for fr in frames}:
            total_n[f] = total_n.get(f, 0) + n
    if not samples:
        return {"self": [], "total": []}

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, round(100 * v / samples, 1)) for f, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"self": share(self_n), "total": share(total_n)}


def run_operator(ns: argparse.Namespace, namespace: str, names: list[str], big: list[str]) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = code_env(ns.code)
    env.update(
        {
            "STAMPEDE_OPERATOR_METRICS_PORT": str(port),
            "STAMPEDE_LOG_LEVEL": "WARNING",
            "STAMPEDE_STANDALONE": "true",
        }
    )
    log_path = OUT / f"operator-{ns.label}.log"
    cmd = [
        sys.executable,
        "-m",
        "kopf",
        "run",
        "--standalone",
        "--namespace",
        namespace,
        "-m",
        "stampede_operator.main",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out: dict[str, Any] = {}
    try:
        started = time.monotonic()
        rss_start = None
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"operator exited with {proc.returncode}; see {log_path}")
            if rss_start is None and time.monotonic() - started > 1:
                rss_start = rss_mb(proc.pid)
            done, total = asyncio.run(reconciled(namespace))
            if done == total == len(names):
                break
            if time.monotonic() - started > ns.warmup_timeout:
                raise SystemExit(f"only {done}/{total} sales reconciled after {ns.warmup_timeout}s; see {log_path}")
            time.sleep(2)
        out["warmup_s"] = round(time.monotonic() - started, 1)
        out["rss_mb_after_warmup"] = round(rss_mb(proc.pid), 1)
        load_before = os.getloadavg()
        t0, c0 = time.monotonic(), cpu_ticks(proc.pid)
        samples = []
        while time.monotonic() - t0 < ns.idle:
            time.sleep(1.0)
            samples.append(rss_mb(proc.pid))
        elapsed, ticks = time.monotonic() - t0, cpu_ticks(proc.pid) - c0
        out.update(
            {
                "cpu_pct": round(100 * ticks / TICK_S / elapsed, 1),
                "rss_mb": round(max(samples), 1),
                "rss_mb_end": round(samples[-1], 1),
                "rss_mb_first_second": None if rss_start is None else round(rss_start, 1),
                "idle_s": round(elapsed, 1),
                "load_during": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
        out["operator_histogram_big"] = histogram(scrape(port), big)
        if ns.profile:
            raw = OUT / f"operator-{ns.label}.pyspy.txt"
            spy = subprocess.run(
                ["py-spy", "record", "-p", str(proc.pid), "-d", str(ns.profile), "-r", "50", "--nonblocking",
                 "--format", "raw", "-o", str(raw)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if spy.returncode == 0 and raw.exists():
                out["profile_top"] = profile_summary(raw)
            else:
                out["profile_error"] = (spy.stderr or spy.stdout).strip()[-300:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


# --- passes of one sale, timed (run as a subprocess, from the code under test) -----------------------------------


async def passes(sales: list[str], n: int, stock_total: int) -> dict[str, Any]:
    from stampede.ledger import Ledger
    from stampede.settings import load
    from stampede.stock import StockEngine
    from stampede_operator import builders, reconcile
    from stampede_operator.settings import OperatorSettings

    settings = load(OperatorSettings)
    ledger = await Ledger.open(settings)
    stock = StockEngine.from_url(settings.redis_url)
    now = dt.datetime.now(dt.UTC)
    times: list[float] = []
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        for _ in range(n):
            for sale in sales:
                namespace, _, name = sale.rpartition("/")
                spec = builders.SaleSpec(
                    name, "BENCH", stock_total, 1, now - dt.timedelta(minutes=1), now + dt.timedelta(hours=2)
                )
                if namespace:  # sales are identified by namespace and name since the sale-identity change
                    spec = dataclasses.replace(spec, namespace=namespace)
                t = time.perf_counter()
                outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
                times.append(time.perf_counter() - t)
                if outcome.drift or outcome.healed:
                    raise SystemExit(f"{sale}: drift {outcome.drift}, healed {outcome.healed}: not a quiet sale")
    finally:
        await ledger.close()
        await stock.close()
    times.sort()

    def pct(p: float) -> float:
        return round(1000 * times[min(len(times) - 1, int(p * len(times)))], 1)

    return {
        "passes": len(times),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(1000 * times[-1], 1),
        "peak_rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024, 1),
    }


def run_passes(ns: argparse.Namespace, big: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "passes", "--n", str(ns.passes), "--stock", str(ns.big_stock),
           *big]  # fmt: skip
    done = subprocess.run(cmd, env=code_env(ns.code), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"timed passes failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- report ------------------------------------------------------------------------------------------------------


def markdown_line(r: dict[str, Any]) -> str:
    h = r["operator"]["operator_histogram_big"]
    p = r["passes"]
    return (
        f"| {r['when']} | {r['label']} | {r['sales']} ({r['big_rows']:,} rows x {r['big']}) | {r['cpu_pct']} | "
        f"{r['rss_mb']} ({r['operator']['rss_mb_after_warmup']} after warm-up) | {r['reconcile_p99_ms']} "
        f"(p50 {p['p50_ms']}, max {p['max_ms']}, {p['passes']} passes, +{p['peak_rss_growth_mb']} MB) | "
        f"{h['mean_ms']} mean, p99 <= {h['p99_bucket_ms']} ({h['passes']}) | {r['operator']['warmup_s']} | "
        f"{' '.join(str(x) for x in r['operator']['load_during'])} |"
    )


HEADER = (
    "| when (UTC) | code | sales | idle CPU % of a core | RSS MB max | reconcile pass p99 ms, 1M-row sales (timed) | "
    "operator's own passes of them, ms | warm-up s | load avg |\n|---|---|---|---:|---:|---|---|---:|---|\n"
)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "passes":
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("--n", type=int, required=True)
        ap.add_argument("--stock", type=int, required=True)
        ap.add_argument("sales", nargs="+")
        a = ap.parse_args()
        print(json.dumps(asyncio.run(passes(a.sales, a.n, a.stock))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sales", type=int, default=100, help="FlashSales in the namespace (default 100)")
    ap.add_argument("--big", type=int, default=2, help="of them, sales with --big-rows settled reservations")
    ap.add_argument("--big-rows", type=int, default=1_000_000, help="settled reservations of each large sale")
    ap.add_argument("--big-stock", type=int, default=1_500_000, help="stock of each large sale")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds the operator is measured idle")
    ap.add_argument("--passes", type=int, default=50, help="timed reconcile passes of each large sale")
    ap.add_argument("--warmup-timeout", type=float, default=600.0, help="seconds for every sale's first pass")
    ap.add_argument("--profile", type=int, default=0, help="seconds of py-spy on the idle operator (0: none)")
    ap.add_argument("--code", type=Path, default=None, help="source tree to run the operator and passes from")
    ap.add_argument("--label", default="current", help="name of the code under test in the results")
    ap.add_argument(
        "--results",
        type=Path,
        default=ROOT / "bench" / "results" / f"operator-{time.strftime('%Y-%m-%d', time.gmtime())}.md",
    )
    ns = ap.parse_args()
    from stampede.migrate import migrate

    asyncio.run(migrate(os.environ["STAMPEDE_DATABASE_URL"]))
    from stampede.names import sale_id

    big = [f"{BIG_PREFIX}{ns.big_rows}-{i + 1}" for i in range(ns.big)]
    names = big + [f"{SMALL_PREFIX}{i:03d}" for i in range(ns.sales - ns.big)]
    t = time.monotonic()
    for name in big:
        sale = sale_id(NAMESPACE, name)
        print(f"{sale}: {asyncio.run(seed_big(sale, ns.big_rows, ns.big_stock))}", flush=True)
    print(f"data ready in {time.monotonic() - t:.1f}s", flush=True)
    namespace = NAMESPACE
    asyncio.run(cleanup(namespace))  # what an interrupted run may have left
    asyncio.run(create_sales(namespace, names, dict.fromkeys(big, ns.big_stock)))
    print(f"{len(names)} FlashSales in namespace {namespace}; operator ({ns.label}) starting", flush=True)
    try:
        op = run_operator(ns, namespace, names, [sale_id(NAMESPACE, b) for b in big])
    finally:
        asyncio.run(cleanup(namespace))
    print(json.dumps(op), flush=True)
    ps = run_passes(ns, [sale_id(NAMESPACE, b) for b in big])
    result = {
        "sales": len(names),
        "cpu_pct": op["cpu_pct"],
        "rss_mb": op["rss_mb"],
        "reconcile_p99_ms": ps["p99_ms"],
        "label": ns.label,
        "big": ns.big,
        "big_rows": ns.big_rows,
        "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cores": os.cpu_count(),
        "operator": op,
        "passes": ps,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for path in (OUT / "operator.json", OUT / f"operator-{ns.label}.json"):
        path.write_text(json.dumps(result, indent=2) + "\n")
    ns.results.parent.mkdir(parents=True, exist_ok=True)
    new = not ns.results.exists()
    with ns.results.open("a") as f:
        if new:
            f.write("# make bench-operator\n\n" + HEADER)
        f.write(markdown_line(result) + "\n")
    targets = [
        ("idle CPU <= 5% of a core", result["cpu_pct"] <= 5),
        ("RSS <= 150 MB", result["rss_mb"] <= 150),
        ("reconcile pass p99 <= 50 ms on the 1M-row sales", result["reconcile_p99_ms"] <= 50),
    ]
    print(json.dumps({k: result[k] for k in ("sales", "cpu_pct", "rss_mb", "reconcile_p99_ms")}))
    for name, met in targets:
        print(f"  {name}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
