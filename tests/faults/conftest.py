"""The fault suite's world: a private Redis + PostgreSQL pair (the suite stops and restarts them, so they
are not the ones other tests share), the local control plane with a namespace per scenario, and a
``SaleRun`` that starts the real processes (operator, gunicorn API, worker), fires concurrent buyers over
HTTP, injects a fault mid-sale, waits for the system to heal, and audits the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from stampede.audit import AuditReport
from stampede.ledger import Ledger
from stampede.migrate import migrate
from stampede.names import sale_id
from stampede.settings import Common, load
from stampede.stock import StockEngine
from stampede.tokens import mint
from stampede_dev.devstack import LocalStack
from stampede_dev.sale_audit import audit_sale

if TYPE_CHECKING:
    from tests.conftest import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "hack" / "services.sh"
REPORT = ROOT / ".run" / "faults" / "report.txt"
SECRET = "fault-suite-secret-0123456789abcdef0123456789"


@dataclass
class FaultServices:
    dir: Path
    env: dict[str, str]
    cluster_url: str = ""  # the private pair's 6-node Redis Cluster (redis+cluster://…)

    def do(self, *args: str, env: dict[str, str] | None = None) -> None:
        subprocess.run(
            [str(SERVICES), *args],
            env={**os.environ, "STAMPEDE_SERVICES_DIR": str(self.dir), **(env or {})},
            check=True,
            capture_output=True,
        )

    def kill_postgres(self) -> int:
        """SIGKILL to the postmaster and every backend at once, as when its container is OOM-killed: no
        shutdown checkpoint, the next start runs crash recovery from the WAL. Returns the processes killed."""
        postmaster = int((self.dir / "pg" / "data" / "postmaster.pid").read_text().split()[0])
        family = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == postmaster:  # ppid
                family.append(int(stat.parent.name))
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(family)


@pytest.fixture(scope="session")
def fault_services(pytestconfig: pytest.Config) -> Iterator[FaultServices]:
    """The private services: Redis, PostgreSQL and a 6-node Redis Cluster (the failover scenario's). With
    --redis-cluster every scenario's processes use the cluster."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    d = ROOT / ".run" / "faults" / worker / "services"
    svc = FaultServices(d, {})
    # A clean pair every session: jobs or keys left by an earlier run must not leak into this one.
    if d.exists():
        svc.do("down")
        shutil.rmtree(d)
    mode = "cluster" if pytestconfig.getoption("--redis-cluster") else "single"
    svc.do("up", env={"STAMPEDE_REDIS_MODE": "cluster"})
    env = dict(line.split("=", 1) for line in (d / "env").read_text().split() if "=" in line)
    svc.cluster_url = env["STAMPEDE_REDIS_CLUSTER_URL"]
    redis_url = svc.cluster_url if mode == "cluster" else f"redis://127.0.0.1:{env['STAMPEDE_REDIS_PORT']}/0"
    svc.env = {"STAMPEDE_REDIS_URL": redis_url, "STAMPEDE_DATABASE_URL": env["STAMPEDE_DATABASE_URL"]}
    asyncio.run(migrate(svc.env["STAMPEDE_DATABASE_URL"]))
    yield svc
    svc.do("down")


@dataclass
class Outcome:
    """What the buyers saw."""

    statuses: dict[int, int] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    answered: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), HTTP status) each
    retry_after_missing: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    transport_error_kinds: dict[str, int] = field(default_factory=dict)  # exception name -> count

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors


@dataclass
class SaleRun:
    """One scenario: a FlashSale in its own namespace and the processes serving it."""

    name: str
    namespace: str
    stock_units: int
    limit: int
    services: FaultServices
    stack: LocalStack
    kubectl: Callable[..., subprocess.CompletedProcess[str]]
    kubeconfig: Path
    api_port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def sale_id(self) -> str:
        """The sale's id in Redis and the ledger (namespace and name)."""
        return sale_id(self.namespace, self.name)

    # --- the sale ---------------------------------------------------------------------------------
    def apply(self) -> None:
        now = time.time()

        def iso(t: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        manifest = {
            "apiVersion": "stampede.dev/v1alpha1",
            "kind": "FlashSale",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "product": {"sku": "FAULT-1", "name": "Fault", "price": "1.00", "currency": "USD"},
                "stock": self.stock_units,
                "perUserLimit": self.limit,
                "window": {"start": iso(now - 5), "end": iso(now + 1800)},
                "api": {"replicas": 1},
                "workers": {"replicas": 1, "concurrency": 8},
                "reconcile": {"intervalSeconds": 2, "graceSeconds": 3},
                # Every buyer here comes from 127.0.0.1: the per-IP bucket must not be what refuses them.
                "rateLimit": {"perIp": {"rate": 1_000_000, "burst": 1_000_000}},
            },
        }
        res = self.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        assert res.returncode == 0, res.stderr

    def status(self) -> dict[str, Any]:
        res = self.kubectl("get", "flashsales", self.name, "-n", self.namespace, "-o", "json")
        return json.loads(res.stdout).get("status", {}) if res.returncode == 0 else {}

    def wait_phase(self, phase: str, timeout: float = 120) -> None:
        """Waits for the sale's ``phase``; the first wait includes the operator's start-up, which a loaded
        2-core machine stretches to tens of seconds (a start-up limit, not a test of speed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status().get("phase") == phase:
                return
            time.sleep(0.3)
        op = self.stack.procs.get("operator") or self.stack.procs.get("operator-a")
        raise AssertionError(f"sale never reached {phase}: {self.status()}\n{op.tail() if op else ''}")

    # --- processes --------------------------------------------------------------------------------
    def start_operator(self, name: str = "operator", priority: int | None = None) -> None:
        self.stack.operator(self.kubeconfig, name=name, namespace=self.namespace, priority=priority, env=self.env)

    def start_api(self, env: dict[str, str] | None = None) -> None:
        from stampede_dev.devstack import free_port

        self.api_port = self.api_port or free_port()
        self.stack.api(port=self.api_port, workers=2, env={**self.env, **(env or {})})

    def start_worker(self, env: dict[str, str] | None = None) -> None:
        self.stack.worker(
            concurrency=8,
            env={**self.env, "STAMPEDE_WORKER_HEARTBEAT_S": "1", "STAMPEDE_WORKER_STALLED_S": "3", **(env or {})},
        )

    # --- load -------------------------------------------------------------------------------------
    async def buyers(
        self,
        *,
        users: int = 600,
        requests: int = 3000,
        concurrency: int = 200,
        rate: float = 250,
        fault_at: float = 0.3,
        fault: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> Outcome:
        """``requests`` buys from ``users`` distinct buyers arriving at ``rate`` per second, at most
        ``concurrency`` in flight, so the sale lasts long enough for ``fault`` to land mid-sale: it runs
        (concurrently with the load) once ``fault_at`` of the requests were sent."""
        out = Outcome()
        tokens = [mint(SECRET, f"buyer-{i}", ttl_s=900) for i in range(users)]
        sem = asyncio.Semaphore(concurrency)
        sent = 0
        fault_task: asyncio.Task[None] | None = None
        url = f"http://127.0.0.1:{self.api_port}/v1/sales/{self.name}/reservations"
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            t0 = time.monotonic()

            async def one(i: int) -> None:
                nonlocal sent, fault_task
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                async with sem:
                    sent += 1
                    if fault is not None and fault_task is None and sent >= requests * fault_at:
                        fault_task = asyncio.create_task(fault())
                    try:
                        r = await client.post(
                            url, json={"quantity": 1}, headers={"Authorization": f"Bearer {tokens[i % users]}"}
                        )
                    except httpx.TransportError as exc:
                        out.transport_errors += 1
                        kind = type(exc).__name__
                        out.transport_error_kinds[kind] = out.transport_error_kinds.get(kind, 0) + 1
                        await asyncio.sleep(0.05)
                        return
                out.statuses[r.status_code] = out.statuses.get(r.status_code, 0) + 1
                out.answered.append((time.monotonic(), r.status_code))
                if r.status_code == 202:
                    out.accepted.append(r.json()["reservation_id"])
                elif r.status_code in (429, 503) and "retry-after" not in r.headers:
                    out.retry_after_missing += 1
                elif r.status_code >= 500 and r.status_code != 503:
                    out.server_errors += 1

            await asyncio.gather(*(one(i) for i in range(requests)))
            if fault_task is not None:
                await fault_task
        return out

    # --- healing and the verdict ----------------------------------------------------------------
    async def settle_and_audit(self, outcome: Outcome, timeout: float = 90) -> tuple[AuditReport, float]:  # noqa: ASYNC109
        """Waits until the ledger has nothing pending, the reconciler reports drift 0 and the audit is
        clean (or the timeout passes), and returns the last audit with the seconds it took."""
        redis_url = self.env["STAMPEDE_REDIS_URL"]
        settings = load(Common, {**os.environ, **self.services.env, "STAMPEDE_REDIS_URL": redis_url})
        started = time.monotonic()
        ledger = await Ledger.open(settings)
        stock = StockEngine.from_url(settings.redis_url)
        try:
            while True:
                try:
                    report, _lag, _ = await audit_sale(
                        ledger, stock, self.sale_id, accepted=outcome.accepted, settle_timeout=1
                    )
                except Exception as exc:  # Redis keys not rebuilt yet, a restarting dependency, …
                    report = None
                    last_error = repr(exc)
                drift = self.status().get("drift")
                if report is not None and report.ok and drift == 0:
                    return report, time.monotonic() - started
                if time.monotonic() - started > timeout:
                    detail = report.render() if report is not None else last_error
                    raise AssertionError(
                        f"did not heal in {timeout}s (status drift {drift}):\n{detail}\n"
                        f"status: {self.status()}\n{self.logs()}"
                    )
                await asyncio.sleep(1)
        finally:
            await stock.close()
            await ledger.close()

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.tail(15)}" for n, p in self.stack.procs.items())

    def record(self, fault: str, outcome: Outcome, report: AuditReport, heal_s: float, extra: str = "") -> str:
        line = (
            f"{fault:<28} requests {outcome.requests:>5}  accepted {len(outcome.accepted):>4}  "
            f"confirmed {report.confirmed_units:>4}  compensated {report.returned_units:>3}  "
            f"oversold {report.oversold}  lost {report.lost}  drift {report.drift}  "
            f"healed in {heal_s:5.1f}s  (HTTP {dict(sorted(outcome.statuses.items()))}){extra}"
        )
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        with REPORT.open("a") as f:
            f.write(line + "\n")
        print(line)
        return line


class ChaosProxy:
    """A TCP proxy in a thread of its own that delays every chunk each way and cuts a share of the
    connections mid-stream: network delay and loss between the API and Redis in user space, no root."""

    def __init__(self, target_port: int, delay_s: float = 0.02, cut_ratio: float = 0.02, seed: int = 1) -> None:
        import random
        import threading

        self.target_port = target_port
        self.delay_s = delay_s
        self.cut_ratio = cut_ratio
        self.rng = random.Random(seed)
        self.cuts = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, peer: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    await asyncio.sleep(self.delay_s)
                    if self.rng.random() < self.cut_ratio:
                        self.cuts += 1
                        break
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for x in (w, peer):
                    x.close()

        async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                cw.close()
                return
            await asyncio.gather(pipe(cr, uw, cw), pipe(ur, cw, uw))

        async def serve() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await self._stop.wait()
            # Connections still piping end with the proxy, not as orphaned coroutines.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._loop.run_until_complete(serve())
        self._loop.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture
def sale_run(
    fault_services: FaultServices, control_plane: ControlPlane, flashsale_crd: str, request: pytest.FixtureRequest
) -> Iterator[SaleRun]:
    ns = f"f-{uuid.uuid4().hex[:8]}"
    assert control_plane.kubectl("create", "namespace", ns).returncode == 0
    run_dir = ROOT / ".run" / "faults" / request.node.name
    env = {
        **fault_services.env,
        "STAMPEDE_JWT_SECRET": SECRET,
        "STAMPEDE_LOG_LEVEL": "INFO",
        "STAMPEDE_SALE_NAMESPACE": ns,
    }
    with LocalStack(run_dir, env) as stack:
        run = SaleRun(
            name=f"sale-{uuid.uuid4().hex[:6]}",
            namespace=ns,
            stock_units=1000,
            limit=2,
            services=fault_services,
            stack=stack,
            kubectl=control_plane.kubectl,
            kubeconfig=control_plane.kubeconfig,
            env=env,
        )
        yield run
    control_plane.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.fixture
def chaos_proxy() -> Iterator[Callable[[int], ChaosProxy]]:
    made: list[ChaosProxy] = []

    def make(port: int) -> ChaosProxy:
        made.append(ChaosProxy(port))
        return made[-1]

    yield make
    for p in made:
        p.close()
