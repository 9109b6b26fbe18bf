"""``make bench-protocols``: the cost of bounding request heads, as a ratio to uvicorn's plain httptools protocol.

The API serves through ``stampede_api.http_protocol.BoundedHttpToolsProtocol`` (httptools plus a head size
and head time bound). The alternative was uvicorn's h11 protocol, which has a size bound of its own
(``h11_max_incomplete_event_size``) but is pure Python. This runs the same gunicorn settings (the
project's config module, 2 workers) with each protocol in turn — plain httptools (the baseline), bounded
httptools, h11 — and measures ``GET /healthz`` with wrk, ``--rounds`` times interleaved so a change of
machine load hits all three alike. Figures go to ``bench/results/http-<date>.md`` with the load average.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "bench"))

from api import services_env  # noqa: E402

from stampede_dev.devstack import free_port  # noqa: E402

PROTOCOLS = {
    "httptools (uvicorn, unbounded; baseline)": "httptools",
    "bounded httptools (the API's)": "stampede_api.http_protocol:BoundedHttpToolsProtocol",
    "h11 (uvicorn, h11_max_incomplete_event_size)": "h11",
}
WORKER_MODULE = """
from stampede_api.gunicorn_conf import StampedeWorker

class Worker(StampedeWorker):
    CONFIG_KWARGS = {**StampedeWorker.CONFIG_KWARGS, "http": %r, "h11_max_incomplete_event_size": 16384}
"""


def serve(http: str, env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    module = workdir / f"bench_worker_{list(PROTOCOLS.values()).index(http)}.py"
    module.write_text(WORKER_MODULE % http)
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "python:stampede_api.gunicorn_conf", "-k", f"{module.stem}.Worker",
         "stampede_api.asgi:app"],
        env={**os.environ, **env, "PYTHONPATH": str(workdir), "STAMPEDE_BIND": f"127.0.0.1:{port}",
             "STAMPEDE_METRICS_PORT": str(free_port()), "STAMPEDE_METRICS_HOST": "127.0.0.1",
             "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-http-metrics-")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"gunicorn with {http} did not start")


def wrk(base: str, ns: argparse.Namespace) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", f"-t{ns.threads}", f"-c{ns.connections}", f"-d{ns.seconds}s", "--latency", base + "/healthz"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps_line = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps_line is None:
        raise SystemExit(f"wrk printed no Requests/sec line:\n{out}")
    rps = float(rps_line.group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return rps, float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ns = ap.parse_args()
    env = {**services_env(), "STAMPEDE_JWT_SECRET": "bench-http-" + "h" * 32, "STAMPEDE_WORKERS": "2",
           "STAMPEDE_LOG_LEVEL": "WARNING"}  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in PROTOCOLS}
    loads = []
    for r in range(ns.rounds):
        for name, http in PROTOCOLS.items():
            proc, base = serve(http, env, workdir)
            try:
                wrk(base, argparse.Namespace(**{**vars(ns), "seconds": 2}))  # warm-up
                loads.append(Path("/proc/loadavg").read_text().split()[0])
                figures[name].append(wrk(base, ns))
                print(f"round {r + 1} {name}: {figures[name][-1][0]:,.0f} req/s, p99 {figures[name][-1][1]:.2f} ms")
            finally:
                proc.terminate()
                proc.wait(30)
    base_rps = statistics.median(rps for rps, _ in figures[next(iter(PROTOCOLS))])
    lines = [
        f"# Request-head protocols, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`GET /healthz` of the API under the project's gunicorn settings (2 uvicorn workers, uvloop), wrk "
        f"-t{ns.threads} -c{ns.connections} {ns.seconds} s, {ns.rounds} rounds interleaved; medians. "
        f"Load average (1 min) at each run: {', '.join(loads)}.",
        "",
        "| protocol | req/s | p99 ms | vs httptools |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, runs in figures.items():
        rps = statistics.median(x for x, _ in runs)
        p99 = statistics.median(y for _, y in runs)
        lines.append(f"| {name} | {rps:,.0f} | {p99:.2f} | {rps / base_rps:.2f} |")
    out = ROOT / "bench" / "results" / f"http-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"==> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
