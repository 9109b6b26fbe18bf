"""``make demo``: a whole flash sale on one machine, end to end, with its integrity audit.

Real parts only: the project's Redis and PostgreSQL, the local kube-apiserver, the FlashSale CRD, the kopf
operator (which seeds the stock and opens the sale by its window), the Falcon API under gunicorn, a settle
worker, and a k6 spike of thousands of distinct buyers. It ends by auditing Redis against the ledger and
printing ``kubectl get flashsales``. Each step is named as it starts; every process it started is stopped
at the end, and the sale's records stay in Redis, the ledger and the control plane for a look afterwards.

While the sale runs, the API serves the live sale page (development settings: a demo buyer can take part
from the page); its address is printed. The demo ends by saving a screenshot of the finished sale's page and
a PNG chart of its timeline next to the k6 report (``stampede_dev.pictures``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from stampede.ledger import Ledger
from stampede.migrate import migrate
from stampede.names import CRD_PLURAL, DEFAULT_NAMESPACE, sale_id
from stampede.settings import Common, load
from stampede.stock import StockEngine
from stampede.vocabulary import SalePhase

from . import pictures
from .devstack import LocalStack, free_port
from .localsale import LocalCluster, flashsale, tool
from .sale_audit import audit_sale, k6_accepted

STEPS = 10


def step(n: int, text: str) -> None:
    print(f"==> [{n}/{STEPS}] {text}", flush=True)


K6_THRESHOLDS_FAILED = 99  # k6's exit code when a threshold of the script failed


def save_pictures(
    recorder: pictures.TimelineRecorder,
    watcher: pictures.PageWatcher | None,
    run_dir: Path,
    sale: str,
    screenshot: Path,
) -> None:
    """Stops the page's recorder and browser and saves what they saw next to the k6 report."""
    recorder.stop()
    recorder.save(run_dir / f"{sale}-timeline.jsonl")
    chart = run_dir / f"{sale}-timeline.png"
    title = f"Stampede sale {sale!r}, {time.strftime('%Y-%m-%d %H:%M')}"
    if pictures.timeline_chart(recorder.samples, chart, title):
        print(f"    timeline chart: {chart}")
    else:
        print("    timeline chart: not drawn (the live page streamed no sample)")
    if watcher is None:
        print("    screenshot: skipped, Chromium is not installed (make browser installs Debian's package)")
    elif watcher.finish():
        print(f"    screenshot: {screenshot}")
    else:
        print(f"    screenshot: not saved ({watcher.error})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stampede-demo", description=__doc__)
    ap.add_argument("--stock", type=int, default=5000)
    ap.add_argument("--limit", type=int, default=1, help="per-user limit")
    ap.add_argument("--buyers", type=int, default=20000)
    ap.add_argument("--peak", type=int, default=1000, help="k6 peak arrival rate, req/s")
    ap.add_argument("--stage-seconds", type=int, default=5, help="k6 stage length (the spike lasts 5 stages)")
    ap.add_argument("--worker-processes", type=int, default=2, help="settle worker processes")
    ap.add_argument(
        "--scenario",
        choices=("spike", "smoke"),
        default="spike",
        help="k6 script: the spike, or the few-second smoke run CI uses",
    )
    ns = ap.parse_args(argv)

    root = Path.cwd()
    if not (root / "k6" / "spike.js").exists():
        print("stampede demo: run it from the repository root (make demo)", file=sys.stderr)
        return 2
    settings = load(Common)
    run_dir = root / ".run" / "demo"
    run_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster.of(root)
    sale = f"demo-{time.strftime('%H%M%S')}"
    secret = secrets.token_urlsafe(36)

    step(1, "migrating the ledger and queue schema")
    asyncio.run(migrate(settings.database_url))

    step(2, f"applying the FlashSale CRD and sale {sale!r} (stock {ns.stock}, limit {ns.limit})")
    cluster.install_sale(flashsale(sale, ns.stock, ns.limit, minutes=30))

    stack_env = {
        "STAMPEDE_JWT_SECRET": secret,
        "STAMPEDE_LOG_LEVEL": "WARNING",
        # The live page, with its buy button: a local demo is a development deployment.
        "STAMPEDE_LIVE_PAGE": "true",
        "STAMPEDE_ENVIRONMENT": "development",
        "STAMPEDE_DEMO_BUYERS": "true",
    }
    with LocalStack(run_dir, stack_env) as stack:
        try:
            step(3, "starting the operator; waiting for it to seed the stock and open the sale")
            stack.operator(cluster.kubeconfig)
            phase = cluster.wait_phase(sale, SalePhase.LIVE)
            if phase != SalePhase.LIVE:
                print(
                    f"stampede demo: the sale never went Live (phase {phase!r}); operator log:\n"
                    f"{stack.procs['operator'].tail()}",
                    file=sys.stderr,
                )
                return 1

            step(4, f"starting the API (gunicorn, 2 uvicorn workers) and {ns.worker_processes} settle workers")
            port = free_port()
            stack.api(port=port, workers=2)
            for i in range(ns.worker_processes):
                stack.worker(name=f"worker-{i}", concurrency=16)
            page_url = f"http://127.0.0.1:{port}/live/sales/{sale}"
            print(f"    live page: {page_url}  (every sale: http://127.0.0.1:{port}/live)", flush=True)
            recorder = pictures.TimelineRecorder(f"{page_url}/events")
            recorder.start()
            browser = pictures.chromium(root)
            screenshot = run_dir / f"{sale}-live.png"
            watcher = pictures.PageWatcher(browser, page_url, screenshot) if browser else None
            if watcher is not None:
                watcher.start()
                # Chromium starts slowly on a loaded machine: the page must watch the whole spike.
                watcher.ready.wait(90)

            if ns.scenario == "spike":
                step(5, f"k6 spike: 50 -> {ns.peak // 3} -> {ns.peak} req/s from {ns.buyers} buyers")
            else:
                step(5, f"k6 smoke: 100 req/s for 5s from {ns.buyers} buyers")
            summary = run_dir / f"{sale}-k6.json"
            k6 = subprocess.run(
                [tool(root, "k6"), "run", "--quiet", str(root / "k6" / f"{ns.scenario}.js")],
                env={
                    **os.environ,
                    "BASE_URL": f"http://127.0.0.1:{port}",
                    "SALE": sale,
                    "JWT_SECRET": secret,
                    "BUYERS": str(ns.buyers),
                    "PEAK_RATE": str(ns.peak),
                    "MID_RATE": str(ns.peak // 3),
                    "STAGE_SECONDS": str(ns.stage_seconds),
                    "SUMMARY_PATH": str(summary),
                    "K6_WEB_DASHBOARD": "true",
                    "K6_WEB_DASHBOARD_EXPORT": str(run_dir / f"{sale}-k6.html"),
                    "K6_WEB_DASHBOARD_PORT": "-1",
                },
                check=False,
            )

            step(6, "waiting for every reservation to settle, then auditing Redis against the ledger")

            async def judge() -> int:
                ledger = await Ledger.open(settings)
                stock = StockEngine.from_url(settings.redis_url)
                try:
                    report, lag, waited = await audit_sale(
                        ledger, stock, sale_id(DEFAULT_NAMESPACE, sale), acknowledged=k6_accepted(summary)
                    )
                finally:
                    await stock.close()
                    await ledger.close()
                print(report.render())
                print(lag.render())
                print(f"  settled {waited:.1f}s after the spike ended")
                return 0 if report.ok else 1

            verdict = asyncio.run(judge())

            step(7, "letting the reconciler publish the final status")
            time.sleep(6)
            step(8, "kubectl get flashsales")
            subprocess.run([cluster.kubectl, "get", CRD_PLURAL, sale], env=cluster.env, check=False)
            step(9, "saving pictures of the sale: the live page's screenshot and the timeline chart")
            save_pictures(recorder, watcher, run_dir, sale, screenshot)
            print(f"    k6 report: {run_dir / (sale + '-k6.html')}; logs: {run_dir}/*.log")
            if k6.returncode == K6_THRESHOLDS_FAILED:
                print("    k6: thresholds failed (exit 99): the run does not pass, whatever the audit says")
            elif k6.returncode != 0:
                print(f"    k6: exited {k6.returncode}")
            step(10, "done" if verdict == 0 and k6.returncode == 0 else "done, with violations (see above)")
            # A failed k6 threshold is a failed run: a spike that bought nothing must not pass on a clean audit.
            return verdict or (0 if k6.returncode == 0 else 1)
        finally:
            stack.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
