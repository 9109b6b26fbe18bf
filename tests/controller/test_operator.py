"""The operator against the real kube-apiserver, Redis and PostgreSQL: one ``kopf run`` subprocess for the
module watches a namespace of its own; each test drives a FlashSale with kubectl and checks what the
operator wrote (Redis, the ledger, Deployments, Service, status, Events).

The control plane runs no Pods, so nothing settles reservations by itself: where a test needs its sale
settled it runs the real worker (``python -m stampede_worker``) until the ledger has nothing pending.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from stampede import audit, errors
from stampede.ledger import Ledger, PendingReservation
from stampede.names import sale_id, sale_keys
from stampede.settings import Common, load
from stampede.stock import StockEngine
from stampede_dev.devstack import free_port
from tests.stores import ledger_pool, redis_client

if TYPE_CHECKING:
    from falcon import testing

    from tests.conftest import ControlPlane
    from tests.controller.conftest import OperatorProcess, OperatorStarter

pytestmark = [pytest.mark.k8s, pytest.mark.redis, pytest.mark.postgres, pytest.mark.xdist_group("k8s")]

REPO_ROOT = Path(__file__).resolve().parents[2]
JWT_SECRET = "controller-secret-" + "c" * 32


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def op_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name, check=True)
    yield name
    control_plane.kubectl("delete", "flashsales.stampede.dev", "--all", "-n", name, "--wait=false")
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def operator(start_operator: OperatorStarter, op_namespace: str, metrics_port: int) -> OperatorProcess:
    return start_operator(
        op_namespace, "operator", standalone="true", drift_confirmations="1", operator_metrics_port=str(metrics_port),
        autoscale_cooldown_s="3",
    )  # fmt: skip


@pytest.fixture(scope="module")
async def ledger(migrated_database_url: str) -> AsyncIterator[Ledger]:
    led = await Ledger.open(load(Common, env={}, database_url=migrated_database_url, db_pool_max=2))
    yield led
    await led.close()


# The ``run_worker`` fixture: ``await run_worker(sale)``.
WorkerRun = Callable[[str], Awaitable[None]]


@pytest.fixture
def run_worker(redis_url: str, migrated_database_url: str, ledger: Ledger) -> WorkerRun:
    """Runs the real worker until the sale has nothing pending in the ledger, then stops it."""

    async def run(sale: str, within: float = 30) -> None:
        env = {
            **os.environ,
            "STAMPEDE_REDIS_URL": redis_url,
            "STAMPEDE_DATABASE_URL": migrated_database_url,
            "STAMPEDE_WORKER_METRICS_PORT": "0",
            "STAMPEDE_WORKER_POLL_S": "0.5",
            "STAMPEDE_DB_POOL_MAX": "4",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stampede_worker",
            env=env, cwd=REPO_ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:

            async def settled() -> None:
                assert proc.returncode is None, "the worker exited"
                assert (await ledger.counts(sale))["pending"] == 0

            await eventually(settled, within)
        finally:
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    return run


# --- helpers ----------------------------------------------------------------------------------------------


def iso(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_sale(
    cp: ControlPlane, namespace: str, name: str, *, stock: int = 10, start: float = -60, end: float = 3600,
    interval: int = 1, grace: int = 1, **spec: Any,
) -> None:  # fmt: skip
    body = {
        "apiVersion": "stampede.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": name},
        "spec": {
            "product": {"sku": "SKU-1"},
            "stock": stock,
            "window": {"start": iso(start), "end": iso(end)},
            "reconcile": {"intervalSeconds": interval, "graceSeconds": grace},
            **spec,
        },
    }
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=True)


def patch_spec(cp: ControlPlane, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cp.kubectl("patch", "fs", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}), check=True)


def get_fs(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return cp.kubectl_json("get", "fs", name, "-n", namespace)


def conditions(fs: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in fs.get("status", {}).get("conditions", [])}


def make_available(cp: ControlPlane, namespace: str, deployment: str) -> None:
    """Plays the Deployment controller and the kubelet, which the local control plane does not run (as envtest
    users do): every desired pod of ``deployment`` is reported ready and available, through the status
    subresource."""
    d = cp.kubectl_json("get", "deployment", deployment, "-n", namespace)
    n = d["spec"]["replicas"]
    status = {
        "observedGeneration": d["metadata"]["generation"],
        "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
    }  # fmt: skip
    cp.kubectl(
        "patch", "deployment", deployment, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=True,
    )  # fmt: skip


def events_of(cp: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    events = cp.kubectl_json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return list(events["items"])


def event_reasons(cp: ControlPlane, namespace: str, name: str) -> list[str]:
    events = cp.kubectl_json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return [e["reason"] for e in events["items"]]


async def eventually(check: Callable[[], Any], within: float = 30.0, interval: float = 0.25) -> Any:
    """Calls ``check`` (sync or async) until it stops raising AssertionError; returns its result."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(interval)


def status_where(cp: ControlPlane, namespace: str, name: str, **expected: Any) -> Callable[[], dict[str, Any]]:
    def check() -> dict[str, Any]:
        fs = get_fs(cp, namespace, name)
        status = fs.get("status", {})
        got = {k: status.get(k) for k in expected}
        assert got == expected, f"status {got} != {expected}"
        return fs

    return check


async def reserve(stock: StockEngine, sale: str, n: int, prefix: str = "buyer") -> list[PendingReservation]:
    out = []
    for i in range(n):
        r = await stock.reserve(sale, f"{prefix}-{i}-{uuid.uuid4().hex[:6]}")
        rec = await stock.reservation(sale, r.reservation_id)
        assert rec is not None
        out.append(PendingReservation(r.reservation_id, sale, r.user, r.quantity, rec.reserved_at_ms))
    return out


async def audit_clean(stock: StockEngine, ledger: Ledger, sale: str, units: int, accepted: list[str]) -> None:
    report = audit.audit(
        sale,
        stock=units,
        per_user_limit=1,
        accepted=accepted,
        rows=await ledger.rows(sale),
        redis=audit.counts_from(await stock.snapshot(sale)),
        settled=True,
    )
    assert report.ok, report.render()


async def sql(ledger: Ledger, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with ledger_pool(ledger).connection() as conn:
        cur = await conn.execute(query, params)
        return list(await cur.fetchall()) if cur.description else []


# --- tests ------------------------------------------------------------------------------------------------


async def test_sale_is_seeded_deployed_scaled_restocked_and_reported(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=25, grace=600, api={"replicas": 3}, workers={"replicas": 2, "concurrency": 4})
    fs = await eventually(status_where(cp, ns, sale, phase="Live", stock=25, remaining=25, drift=0))
    assert fs["status"]["observedGeneration"] == 1
    assert fs["status"]["lastReconcileTime"]
    conds = conditions(fs)
    assert {t: conds[t][0] for t in ("Seeded", "Ready", "Reconciled", "Drifted")} == {
        "Seeded": "True", "Ready": "False", "Reconciled": "True", "Drifted": "False",
    }  # fmt: skip
    # Manifests sent is not serving: Ready waits for the Deployments' pods (no kubelet here: their status is
    # patched as the Deployment controller would).
    assert conds["Ready"] == ("False", "WorkloadsUnavailable")
    assert fs["status"]["api"] == {"desired": 3, "ready": 0, "available": 0}
    make_available(cp, ns, f"{sale}-api")
    await eventually(status_where(cp, ns, sale, api={"desired": 3, "ready": 3, "available": 3}))
    assert conditions(get_fs(cp, ns, sale))["Ready"] == ("False", "WorkloadsUnavailable")  # workers: 0/2
    make_available(cp, ns, f"{sale}-worker")

    def ready() -> dict[str, Any]:
        fs = get_fs(cp, ns, sale)
        assert conditions(fs)["Ready"] == ("True", "Serving")
        return fs

    fs = await eventually(ready)
    assert fs["status"]["workers"]["available"] == 2
    assert cp.kubectl("wait", "--for=condition=Ready", f"fs/{sale}", "-n", ns, "--timeout=5s").returncode == 0
    printed = cp.kubectl("get", "fs", sale, "-n", ns, check=True).stdout
    assert printed.split("\n")[0].split()[:3] == ["NAME", "READY", "PHASE"]
    assert printed.split("\n")[1].split()[1:3] == ["True", "Live"]
    (seeded_event,) = [e for e in events_of(cp, ns, sale) if e["reason"] == "Seeded"]
    assert seeded_event["source"]["component"] == "stampede-operator"
    snap = await stock.snapshot(sid)
    assert (snap.total, snap.remaining, snap.open) == (25, 25, True)
    assert await sql(ledger, "SELECT sku, stock, per_user_limit FROM stampede_sales WHERE sale = %s", sid) == [
        ("SKU-1", 25, 1)
    ]

    uid = fs["metadata"]["uid"]
    api = cp.kubectl_json("get", "deployment", f"{sale}-api", "-n", ns)
    worker = cp.kubectl_json("get", "deployment", f"{sale}-worker", "-n", ns)
    svc = cp.kubectl_json("get", "service", f"{sale}-api", "-n", ns)
    for obj in (api, worker, svc):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("FlashSale", sale, uid, True)
        assert obj["metadata"]["labels"]["stampede.dev/sale"] == sale
    assert api["spec"]["replicas"] == 3
    assert worker["spec"]["replicas"] == 2
    (c,) = api["spec"]["template"]["spec"]["containers"]
    assert {"name": "STAMPEDE_SALE_NAMESPACE", "value": ns} in c["env"]
    assert {e["name"] for e in c["env"] if "valueFrom" in e} == {
        "STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL", "STAMPEDE_JWT_SECRET",
    }  # fmt: skip
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "256Mi"}
    (w,) = worker["spec"]["template"]["spec"]["containers"]
    assert {"name": "STAMPEDE_WORKER_CONCURRENCY", "value": "4"} in w["env"]
    assert svc["spec"]["selector"] == {"stampede.dev/sale": sale, "app.kubernetes.io/component": "api"}

    # Scale and restock.
    patch_spec(cp, ns, sale, {"stock": 40, "api": {"replicas": 5}, "workers": {"replicas": 2, "concurrency": 16}})

    def scaled() -> None:
        api = cp.kubectl_json("get", "deployment", f"{sale}-api", "-n", ns)
        (w,) = cp.kubectl_json("get", "deployment", f"{sale}-worker", "-n", ns)["spec"]["template"]["spec"][
            "containers"
        ]
        assert api["spec"]["replicas"] == 5
        assert {"name": "STAMPEDE_WORKER_CONCURRENCY", "value": "16"} in w["env"]

    await eventually(scaled)
    await eventually(status_where(cp, ns, sale, stock=40, remaining=40, observedGeneration=2))
    assert (await stock.snapshot(sid)).total == 40

    # A restock below what is sold is refused, with a condition and an Event; Redis keeps its stock.
    await reserve(stock, sid, 3)
    patch_spec(cp, ns, sale, {"stock": 2})

    def refused() -> None:
        fs = get_fs(cp, ns, sale)
        assert conditions(fs)["Seeded"] == ("False", "RestockBelowSold")

    await eventually(refused)
    assert "RestockRefused" in event_reasons(cp, ns, sale)
    assert "Restocked" in event_reasons(cp, ns, sale)
    snap = await stock.snapshot(sid)
    assert (snap.total, snap.remaining, snap.pending) == (40, 37, 3)
    patch_spec(cp, ns, sale, {"stock": 40})

    def seeded_again() -> None:
        assert conditions(get_fs(cp, ns, sale))["Seeded"] == ("True", "Seeded")

    await eventually(seeded_again)


async def test_phases_follow_the_window(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine
) -> None:
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    # The window opens 10 s out: a loaded machine can take several seconds to report Scheduled, and the
    # early buy must still land before the start.
    create_sale(cp, ns, sale, stock=5, start=10, end=16, grace=600)
    await eventually(status_where(cp, ns, sale, phase="Scheduled"))
    with pytest.raises(errors.SaleClosed):
        await stock.reserve(sid, "early-bird")
    await eventually(status_where(cp, ns, sale, phase="Live"), within=30)
    assert (await stock.snapshot(sid)).open
    await stock.reserve(sid, "on-time")
    await eventually(status_where(cp, ns, sale, phase="Ended"), within=30)
    assert not (await stock.snapshot(sid)).open
    with pytest.raises(errors.SaleClosed):
        await stock.reserve(sid, "too-late")
    assert "PhaseChanged" in event_reasons(cp, ns, sale)


async def test_sold_out_closes_the_sale(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=2)
    await eventually(status_where(cp, ns, sale, phase="Live"))
    batch = await reserve(stock, sid, 2)
    await ledger.record_batch(batch)
    await run_worker(sid)
    await eventually(status_where(cp, ns, sale, phase="SoldOut", remaining=0, confirmed=2, drift=0))
    assert not (await stock.snapshot(sid)).open
    await audit_clean(stock, ledger, sid, 2, [r.reservation_id for r in batch])


async def test_reconciler_redefers_a_deleted_job(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=10)
    await eventually(status_where(cp, ns, sale, phase="Live"))
    batch = await reserve(stock, sid, 3)
    job_id = (await ledger.record_batch(batch)).job
    await sql(ledger, "DELETE FROM procrastinate_jobs WHERE id = %s", job_id)

    async def redeferred() -> None:
        row = await ledger.get_reservation(batch[0].reservation_id)
        assert row is not None
        assert row.job_id not in (None, job_id)
        assert await sql(ledger, "SELECT status::text FROM procrastinate_jobs WHERE id = %s", row.job_id) == [("todo",)]

    await eventually(redeferred)
    await run_worker(sid)
    await eventually(status_where(cp, ns, sale, confirmed=3, reserved=0, remaining=7, drift=0))
    assert "Healed" in event_reasons(cp, ns, sale)
    await audit_clean(stock, ledger, sid, 10, [r.reservation_id for r in batch])


async def test_reconciler_compensates_a_lost_enqueue(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=10, grace=1)
    await eventually(status_where(cp, ns, sale, phase="Live"))
    acked = await reserve(stock, sid, 1, "acked")
    await ledger.record_batch(acked)
    lost = await reserve(stock, sid, 2, "lost")  # Redis took them; the API died before the ledger write

    async def compensated() -> None:
        for r in lost:
            row = await ledger.get_reservation(r.reservation_id)
            assert row is not None
            assert (row.status, row.reason) == ("compensated", "lost_before_ack")
            rec = await stock.reservation(sid, r.reservation_id)
            assert rec is not None
            assert rec.state == "released"

    await eventually(compensated, within=20)
    await run_worker(sid)
    await eventually(status_where(cp, ns, sale, confirmed=1, reserved=0, remaining=9, compensated=2, drift=0))
    await audit_clean(stock, ledger, sid, 10, [r.reservation_id for r in acked])


async def test_reconciler_compensates_a_failed_job(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=10)
    await eventually(status_where(cp, ns, sale, phase="Live"))
    batch = await reserve(stock, sid, 2)
    job_id = (await ledger.record_batch(batch)).job
    await sql(ledger, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", job_id)
    await sql(ledger, "UPDATE procrastinate_jobs SET status = 'failed' WHERE id = %s", job_id)
    await eventually(status_where(cp, ns, sale, confirmed=0, reserved=0, remaining=10, compensated=2, drift=0))
    for r in batch:
        row = await ledger.get_reservation(r.reservation_id)
        assert row is not None
        assert (row.status, row.reason) == ("compensated", "job_failed")
    await audit_clean(stock, ledger, sid, 10, [r.reservation_id for r in batch])


async def test_reconciler_rebuilds_a_flushed_redis(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=10, grace=600)
    await eventually(status_where(cp, ns, sale, phase="Live"))
    settled = await reserve(stock, sid, 3, "early")
    await ledger.record_batch(settled)
    await run_worker(sid)
    waiting = await reserve(stock, sid, 2, "late")
    await ledger.record_batch(waiting)
    if stock.cluster:
        await stock.delete(sid)  # the cluster is shared by every test worker: lose only this sale
    else:
        await redis_client(stock).flushdb()

    async def rebuilt() -> None:
        try:
            snap = await stock.snapshot(sid)
        except errors.SaleNotFound:
            raise AssertionError("not rebuilt yet") from None
        assert (snap.total, snap.remaining, snap.pending, snap.confirmed, snap.open) == (10, 5, 2, 3, True)

    await eventually(rebuilt)

    def healed_event() -> None:
        # The pass that rebuilt the sale posts its Event once the pass ends, a moment after Redis shows the sale.
        assert "Healed" in event_reasons(cp, ns, sale)

    await eventually(healed_event)
    await run_worker(sid)
    await eventually(status_where(cp, ns, sale, confirmed=5, reserved=0, remaining=5, drift=0))
    await audit_clean(stock, ledger, sid, 10, [r.reservation_id for r in settled + waiting])


async def test_sold_out_sale_stays_sold_out_while_redis_is_restored(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun,
) -> None:  # fmt: skip
    """While Redis lost the sale the phase follows the ledger: a sold-out sale stays SoldOut (no
    SoldOut -> Live -> SoldOut), and comes back closed."""
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=2, grace=600)
    await eventually(status_where(cp, ns, sale, phase="Live"))
    batch = await reserve(stock, sid, 2)
    await ledger.record_batch(batch)
    await run_worker(sid)
    await eventually(status_where(cp, ns, sale, phase="SoldOut", remaining=0, confirmed=2))
    await stock.delete(sid)  # Redis lost it
    phases: set[str] = set()

    async def restored_closed() -> None:
        phases.add(get_fs(cp, ns, sale)["status"]["phase"])
        try:
            snap = await stock.snapshot(sid)
        except errors.SaleNotFound:
            raise AssertionError("not restored yet") from None
        assert (snap.remaining, snap.confirmed, snap.open) == (0, 2, False)

    await eventually(restored_closed)
    for _ in range(3):  # a few more reconcile ticks
        await asyncio.sleep(1)
        phases.add(get_fs(cp, ns, sale)["status"]["phase"])
    assert phases == {"SoldOut"}
    assert event_reasons(cp, ns, sale).count("PhaseChanged") == 1  # Live -> SoldOut, once
    await audit_clean(stock, ledger, sid, 2, [r.reservation_id for r in batch])


async def test_reconciler_restores_a_sale_after_a_redis_restart_that_kept_its_keys(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun,
) -> None:  # fmt: skip
    """Redis restarted from an append-only file that lost its last write: the sale's keys are there, its
    last reservation is not, and Redis's run_id changed. The reconciler notices the new run_id and restores
    the reservation from the ledger, so it is confirmed, not compensated."""
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=10, grace=600)
    await eventually(status_where(cp, ns, sale, phase="Live"))
    batch = await reserve(stock, sid, 3)
    await ledger.record_batch(batch)
    lost = batch[-1]
    k = sale_keys(sid)
    async with redis_client(stock).pipeline(transaction=True) as pipe:
        pipe.hdel(k.reservations, lost.reservation_id)
        pipe.zrem(k.pending, lost.reservation_id)
        pipe.hdel(k.holds, lost.user)
        pipe.hincrby(k.meta, "pending", -1)
        pipe.hincrby(k.meta, "remaining", 1)
        pipe.hset(k.meta, "run", "an-earlier-run")
        await pipe.execute()

    async def restored() -> None:
        assert await stock.reservation(sid, lost.reservation_id) is not None
        snap = await stock.snapshot(sid)
        assert (snap.remaining, snap.pending) == (7, 3)

    await eventually(restored)
    await run_worker(sid)
    await eventually(status_where(cp, ns, sale, confirmed=3, reserved=0, remaining=7, drift=0))
    await audit_clean(stock, ledger, sid, 10, [r.reservation_id for r in batch])


async def test_spec_change_after_redis_lost_the_sale_rebuilds_instead_of_reseeding(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=10, interval=3600, grace=600)  # the loop will not tick again: ensure must cope
    await eventually(status_where(cp, ns, sale, phase="Live", stock=10))
    batch = await reserve(stock, sid, 4)
    await ledger.record_batch(batch)
    await stock.delete(sid)
    patch_spec(cp, ns, sale, {"stock": 12})

    async def restocked_over_the_ledger() -> None:
        try:
            snap = await stock.snapshot(sid)
        except errors.SaleNotFound:
            raise AssertionError("not there yet") from None
        assert (snap.total, snap.remaining, snap.pending) == (12, 8, 4)

    await eventually(restocked_over_the_ledger)


async def test_deletion_removes_redis_keys_and_keeps_the_ledger(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)  # the sale's id in Redis and the ledger
    create_sale(cp, ns, sale, stock=5)
    await eventually(status_where(cp, ns, sale, phase="Live"))
    batch = await reserve(stock, sid, 2)
    await ledger.record_batch(batch)
    await run_worker(sid)
    assert get_fs(cp, ns, sale)["metadata"]["finalizers"] == ["stampede.dev/finalizer"]
    cp.kubectl("delete", "fs", sale, "-n", ns, "--wait=false", check=True)

    def gone() -> None:
        assert cp.kubectl("get", "fs", sale, "-n", ns).returncode != 0

    await eventually(gone)
    assert await redis_client(stock).exists(*sale_keys(sid).all_static()) == 0
    assert sorted(r.status for r in await ledger.rows(sid)) == ["confirmed", "confirmed"]


async def test_a_name_the_sale_cannot_run_under_never_reaches_the_operator(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, stock: StockEngine
) -> None:
    """Admission refuses such a name (the CRD's root CEL rule), so no Failed sale is left to find later; the
    operator's own check (parse_spec: NameTooLong, InvalidName) stays for objects stored before the rule."""
    cp, ns = control_plane, op_namespace
    too_long = "t" + uuid.uuid4().hex[:8] + "-" + "x" * 47  # a valid Kubernetes name, but "<name>-worker" is over 63
    digit_first = "9" + uuid.uuid4().hex[:8]
    for name in (too_long, digit_first):
        body = {
            "apiVersion": "stampede.dev/v1alpha1", "kind": "FlashSale", "metadata": {"name": name},
            "spec": {"product": {"sku": "SKU-1"}, "stock": 1, "window": {"start": iso(-60), "end": iso(3600)}},
        }  # fmt: skip
        refused = cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
        assert refused.returncode != 0
        assert "metadata.name must be a DNS-1035 label" in refused.stderr, refused.stderr
        assert cp.kubectl("get", "fs", name, "-n", ns).returncode != 0
        assert cp.kubectl("get", "deployment", f"{name}-api", "-n", ns).returncode != 0
        with pytest.raises(errors.SaleNotFound):
            await stock.snapshot(sale_id(ns, name))
    assert operator.alive()
    assert "Traceback" not in operator.log()


async def test_metrics_are_exported(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, metrics_port: int
) -> None:  # fmt: skip
    """The reconciler's figures for a live sale are on the operator's /metrics."""
    create_sale(control_plane, op_namespace, sale, stock=5)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as rsp:
            body = str(rsp.read().decode())
        assert f'stampede_operator_reconcile_seconds_count{{sale="{op_namespace}/{sale}"}}' in body
        return body

    body = await eventually(scrape)
    assert "stampede_operator_drift_units{sale=" in body
    assert "# HELP stampede_operator_healed_total" in body
    assert f'stampede_operator_stock_units{{sale="{op_namespace}/{sale}"' in body
    # A deleted sale leaves no series behind (it once kept all but drift for ever).
    control_plane.kubectl("delete", "fs", sale, "-n", op_namespace, "--wait=false", check=True)

    def forgotten() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as rsp:
            left = [line for line in rsp.read().decode().splitlines() if f'sale="{op_namespace}/{sale}"' in line]
        assert left == [], left[:5]

    await eventually(forgotten)


async def test_a_deployment_of_an_older_version_loses_its_envfrom(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str
) -> None:
    """Upgrade: a sale's worker Deployment written with envFrom (every key of the Secret, the JWT secret included)
    is patched to read only its own keys."""
    from stampede_operator import builders
    from stampede_operator.settings import OperatorSettings

    cp, ns = control_plane, op_namespace
    window = {"start": iso(-60), "end": iso(600)}
    spec = builders.parse_spec(sale, {"product": {"sku": "S"}, "stock": 1, "window": window})
    old = builders.build_worker_deployment(spec, ns, load(OperatorSettings, env={}))
    (c,) = old["spec"]["template"]["spec"]["containers"]
    c["envFrom"] = [{"secretRef": {"name": "stampede-env"}}]
    c["env"] = [e for e in c["env"] if "valueFrom" not in e]
    cp.kubectl("create", "-f", "-", input=json.dumps(old), check=True)
    create_sale(cp, ns, sale, stock=5)

    def patched() -> None:
        worker = cp.kubectl_json("get", "deployment", f"{sale}-worker", "-n", ns)
        (c,) = worker["spec"]["template"]["spec"]["containers"]
        assert "envFrom" not in c
        assert {e["name"] for e in c["env"] if "valueFrom" in e} == {"STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL"}

    await eventually(patched)


# --- two namespaces -----------------------------------------------------------------------------------------


@pytest.fixture
def two_namespaces(control_plane: ControlPlane) -> Iterator[tuple[str, str]]:
    made = (f"ns-a-{uuid.uuid4().hex[:6]}", f"ns-b-{uuid.uuid4().hex[:6]}")
    for name in made:
        control_plane.kubectl("create", "namespace", name, check=True)
    yield made
    for name in made:
        control_plane.kubectl("delete", "flashsales.stampede.dev", "--all", "-n", name, "--wait=false")
        control_plane.kubectl("delete", "namespace", name, "--wait=false")


@asynccontextmanager
async def namespace_api(
    redis_url: str, database_url: str, namespace: str, stock: StockEngine, ledger: Ledger
) -> AsyncIterator[testing.ASGIConductor]:
    """The buy API as the operator configures a sale's API pods in ``namespace`` (in process)."""
    from falcon import testing

    from stampede_api.app import build
    from stampede_api.settings import ApiSettings

    settings = load(
        ApiSettings, env={}, redis_url=redis_url, database_url=database_url, jwt_secret=JWT_SECRET,
        sale_namespace=namespace,
    )  # fmt: skip
    async with testing.ASGIConductor(build(settings, stock, ledger)[0]) as conductor:
        yield conductor


async def test_same_name_in_two_namespaces_never_touch_each_other(
    control_plane: ControlPlane, start_operator: OperatorStarter, two_namespaces: tuple[str, str],
    sale: str, stock: StockEngine, ledger: Ledger, run_worker: WorkerRun, redis_url: str,
    migrated_database_url: str,
) -> None:  # fmt: skip
    """A FlashSale ``x`` in namespace A and another ``x`` in B are two sales: restocking, closing and deleting
    A leaves B's stock, gate and pending reservations alone, each namespace's API sells only its own sale,
    and both audits are clean."""
    from stampede import tokens

    cp = control_plane
    ns_a, ns_b = two_namespaces
    sid_a, sid_b = sale_id(ns_a, sale), sale_id(ns_b, sale)
    start_operator((ns_a, ns_b), "operator-two-ns", standalone="true", delete_drain_timeout_s="2")
    create_sale(cp, ns_a, sale, stock=10, grace=600)
    create_sale(cp, ns_b, sale, stock=10, grace=600)
    await eventually(status_where(cp, ns_a, sale, phase="Live", stock=10, remaining=10))
    await eventually(status_where(cp, ns_b, sale, phase="Live", stock=10, remaining=10))
    for ns in (ns_a, ns_b):
        (c,) = cp.kubectl_json("get", "deployment", f"{sale}-api", "-n", ns)["spec"]["template"]["spec"]["containers"]
        assert {"name": "STAMPEDE_SALE_NAMESPACE", "value": ns} in c["env"]

    accepted: dict[str, list[str]] = {ns_a: [], ns_b: []}
    async with (
        namespace_api(redis_url, migrated_database_url, ns_a, stock, ledger) as api_a,
        namespace_api(redis_url, migrated_database_url, ns_b, stock, ledger) as api_b,
    ):
        apis = {ns_a: api_a, ns_b: api_b}

        async def buy(ns: str, user: str) -> None:
            token = tokens.mint(JWT_SECRET, user)
            r = await apis[ns].simulate_post(
                f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 202, r.text
            accepted[ns].append(r.json["reservation_id"])

        # The same buyer ids in both namespaces, all at once: 3 units of A, 5 of B.
        await asyncio.gather(*(buy(ns_a, f"buyer-{i}") for i in range(3)), *(buy(ns_b, f"buyer-{i}") for i in range(5)))
        snap_b = await stock.snapshot(sid_b)
        assert (snap_b.total, snap_b.remaining, snap_b.pending, snap_b.open) == (10, 5, 5, True)

        # Restock A: B keeps its stock.
        patch_spec(cp, ns_a, sale, {"stock": 12})
        await eventually(status_where(cp, ns_a, sale, stock=12, remaining=9))
        assert (await stock.snapshot(sid_b)).total == 10

        # Close A by its window: B stays open and keeps selling.
        patch_spec(cp, ns_a, sale, {"window": {"start": iso(-120), "end": iso(-1)}})
        await eventually(status_where(cp, ns_a, sale, phase="Ended"))
        assert not (await stock.snapshot(sid_a)).open
        assert (await stock.snapshot(sid_b)).open
        assert get_fs(cp, ns_b, sale)["status"]["phase"] == "Live"
        await buy(ns_b, "late-buyer")

    # Delete A while both sales hold pending reservations: A's are compensated and its keys removed; B's
    # reservations stay pending (then settle), B's keys stay.
    cp.kubectl("delete", "fs", sale, "-n", ns_a, "--wait=false", check=True)

    def a_gone() -> None:
        assert cp.kubectl("get", "fs", sale, "-n", ns_a).returncode != 0

    await eventually(a_gone)
    assert await redis_client(stock).exists(*sale_keys(sid_a).all_static()) == 0
    assert {r.status for r in await ledger.rows(sid_a)} == {"compensated"}
    assert sorted(r.status for r in await ledger.rows(sid_b)) == ["pending"] * 6
    snap_b = await stock.snapshot(sid_b)
    assert (snap_b.total, snap_b.remaining, snap_b.pending, snap_b.open) == (10, 4, 6, True)

    await run_worker(sid_b)
    await eventually(status_where(cp, ns_b, sale, confirmed=6, reserved=0, remaining=4, drift=0))
    await audit_clean(stock, ledger, sid_b, 10, accepted[ns_b])
    report = audit.audit(
        sid_a, stock=12, per_user_limit=1, accepted=accepted[ns_a], rows=await ledger.rows(sid_a), settled=True
    )
    assert report.ok, report.render()
    assert await redis_client(stock).exists(*sale_keys(sid_a).all_static()) == 0  # settling B never brought A back


# --- children kept, readiness, autoscaling -------------------------------------------------------------


def restored(cp: ControlPlane, ns: str, sale: str, reason: str, *words: str) -> Callable[[], None]:
    """An Event ``reason`` on the sale whose message names every one of ``words``."""

    def check() -> None:
        messages = [e["message"] for e in events_of(cp, ns, sale) if e["reason"] == reason]
        assert any(all(w in m for w in words) for m in messages), f"no {reason} event with {words}: {messages}"

    return check


async def test_deleted_and_edited_children_are_put_back(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str
) -> None:
    cp, ns = control_plane, op_namespace
    create_sale(cp, ns, sale, stock=5, workers={"replicas": 2})
    await eventually(status_where(cp, ns, sale, phase="Live"))
    api, worker = f"{sale}-api", f"{sale}-worker"
    pdb = cp.kubectl_json("get", "pdb", api, "-n", ns)  # one budget per sale, over its own API pods only
    assert pdb["spec"]["selector"]["matchLabels"] == {"stampede.dev/sale": sale, "app.kubernetes.io/component": "api"}
    assert pdb["spec"]["maxUnavailable"] == 1
    uid = get_fs(cp, ns, sale)["metadata"]["uid"]

    # Deleted: created again, with the same owner.
    for kind in ("deployment", "service", "pdb"):
        cp.kubectl("delete", kind, api, "-n", ns, "--wait=false", check=True)

    def recreated() -> None:
        for kind in ("deployment", "service", "pdb"):
            obj = cp.kubectl_json("get", kind, api, "-n", ns)
            assert obj["metadata"]["ownerReferences"][0]["uid"] == uid

    await eventually(recreated)
    await eventually(restored(cp, ns, sale, "Recreated", "Deployment", api))
    await eventually(restored(cp, ns, sale, "Recreated", "PodDisruptionBudget", api))

    # Edited by hand: replicas, image, env, labels are put back, and the Event says what.
    cp.kubectl("scale", "deployment", worker, "-n", ns, "--replicas=7", check=True)
    cp.kubectl("set", "image", f"deployment/{api}", "-n", ns, "api=evil:1", check=True)
    cp.kubectl("set", "env", f"deployment/{api}", "-n", ns, "STAMPEDE_SALE_NAMESPACE=elsewhere", "EXTRA=1", check=True)
    cp.kubectl("label", "service", api, "-n", ns, "--overwrite", "stampede.dev/sale=other", check=True)

    def back() -> None:
        w = cp.kubectl_json("get", "deployment", worker, "-n", ns)
        assert w["spec"]["replicas"] == 2
        a = cp.kubectl_json("get", "deployment", api, "-n", ns)
        (c,) = a["spec"]["template"]["spec"]["containers"]
        assert c["image"] == "stampede-api:latest"
        assert {"name": "STAMPEDE_SALE_NAMESPACE", "value": ns} in c["env"]
        assert "EXTRA" not in {e["name"] for e in c["env"]}
        svc = cp.kubectl_json("get", "service", api, "-n", ns)
        assert svc["metadata"]["labels"]["stampede.dev/sale"] == sale

    await eventually(back)
    await eventually(restored(cp, ns, sale, "Restored", worker, "replicas 7 -> 2"))
    await eventually(restored(cp, ns, sale, "Restored", api, "image 'evil:1' -> 'stampede-api:latest'"))
    await eventually(restored(cp, ns, sale, "Restored", api, "STAMPEDE_SALE_NAMESPACE", "EXTRA"))
    await eventually(restored(cp, ns, sale, "Restored", "Service", "label stampede.dev/sale='other'"))
    assert operator.alive()


async def test_an_ended_sale_scales_to_zero_once_settled(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun, metrics_port: int,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)
    create_sale(cp, ns, sale, stock=5, end=8, grace=600, api={"replicas": 2}, workers={"replicas": 2})
    await eventually(status_where(cp, ns, sale, phase="Live"))
    batch = await reserve(stock, sid, 1)
    await ledger.record_batch(batch)
    await eventually(status_where(cp, ns, sale, phase="Ended"), within=30)

    # Ended with a reservation still pending: the workers stay to settle it, the API for its buyer to read it.
    def replicas() -> tuple[int, int]:
        return tuple(
            cp.kubectl_json("get", "deployment", f"{sale}-{c}", "-n", ns)["spec"]["replicas"] for c in ("api", "worker")
        )

    assert replicas() == (2, 2)
    assert conditions(get_fs(cp, ns, sale))["Ready"] == ("False", "Ended")
    await run_worker(sid)

    def zero() -> None:
        assert replicas() == (0, 0)

    await eventually(zero)
    await eventually(status_where(cp, ns, sale, reserved=0, confirmed=1))
    fs = get_fs(cp, ns, sale)
    assert fs["status"]["workers"]["desired"] == 0
    assert "ended" in fs["status"]["workers"]["reason"]
    # A hand scale-up of an ended sale is put back to zero.
    cp.kubectl("scale", "deployment", f"{sale}-api", "-n", ns, "--replicas=3", check=True)
    await eventually(zero)
    await eventually(restored(cp, ns, sale, "Restored", "replicas 3 -> 0"))
    await audit_clean(stock, ledger, sid, 5, [r.reservation_id for r in batch])

    # Nothing of it moves any more: its series are dropped from the operator's /metrics.
    def dropped() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as rsp:
            left = [line for line in rsp.read().decode().splitlines() if f'sale="{sid}"' in line]
        assert left == [], left[:5]

    await eventually(dropped)


async def test_workers_follow_the_settle_backlog(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun,
) -> None:  # fmt: skip
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)
    create_sale(cp, ns, sale, stock=200, grace=600, workers={"autoscale": {"min": 1, "max": 4, "targetLagMs": 500}})
    await eventually(status_where(cp, ns, sale, phase="Live"))

    def workers() -> tuple[int, dict[str, Any]]:
        d = cp.kubectl_json("get", "deployment", f"{sale}-worker", "-n", ns)
        return d["spec"]["replicas"], get_fs(cp, ns, sale)["status"]["workers"]

    n, st = workers()
    assert (n, st["desired"]) == (1, 1)
    # A real backlog: 120 reservations pending in the ledger (no worker runs), older than the target lag.
    batch = []
    for chunk in range(4):
        part = await reserve(stock, sid, 30, f"b{chunk}")
        await ledger.record_batch(part)
        batch += part
    assert (await ledger.settle_backlog(sid)).rows == 120

    def scaled_up() -> None:
        n, st = workers()
        assert n > 1 and st["desired"] == n, (n, st)
        assert st["reason"].startswith("scaled up: settle lag")

    await eventually(scaled_up, within=30)
    await eventually(restored(cp, ns, sale, "WorkersScaled", "workers 1 -> "))
    assert workers()[0] <= 4

    # The backlog drains; after the cool-down the workers go back to min.
    await run_worker(sid)
    assert (await ledger.settle_backlog(sid)).rows == 0

    def scaled_down() -> None:
        n, st = workers()
        assert (n, st["desired"]) == (1, 1), (n, st)
        assert st["reason"].startswith("scaled down: backlog drained")

    await eventually(scaled_down, within=30)
    await eventually(restored(cp, ns, sale, "WorkersScaled", "-> 1: scaled down: backlog drained"))
    # A hand scale of an autoscaled Deployment is put back to the autoscaler's decision.
    cp.kubectl("scale", "deployment", f"{sale}-worker", "-n", ns, "--replicas=9", check=True)
    await eventually(lambda: assert_replicas(cp, ns, f"{sale}-worker", 1))
    await audit_clean(stock, ledger, sid, 200, [r.reservation_id for r in batch])


def assert_replicas(cp: ControlPlane, ns: str, deployment: str, n: int) -> None:
    assert cp.kubectl_json("get", "deployment", deployment, "-n", ns)["spec"]["replicas"] == n


async def test_a_sale_places_and_sizes_its_pods(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str
) -> None:
    cp, ns = control_plane, op_namespace
    api_template = {
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "nodeSelector": {"pool": "checkout"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "sales", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"stampede.dev/sale": sale, "app.kubernetes.io/component": "api"}},
        }],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["amd64"]}]},
        ]}}},
    }  # fmt: skip
    create_sale(cp, ns, sale, workers={"replicas": 1, "template": {"priorityClassName": "settle"}}, api={
        "template": api_template,
    })  # fmt: skip
    await eventually(status_where(cp, ns, sale, phase="Live"))

    def placed() -> None:
        pod = cp.kubectl_json("get", "deployment", f"{sale}-api", "-n", ns)["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"] == api_template["resources"]
        for key in ("nodeSelector", "tolerations", "topologySpreadConstraints", "affinity"):
            assert pod[key] == api_template[key], key
        worker = cp.kubectl_json("get", "deployment", f"{sale}-worker", "-n", ns)["spec"]["template"]["spec"]
        assert worker["priorityClassName"] == "settle"
        assert "nodeSelector" not in worker

    await eventually(placed)
    # A field dropped from the template leaves the Deployment too.
    patch_spec(cp, ns, sale, {"api": {"template": {"nodeSelector": None}}})

    def dropped() -> None:
        pod = cp.kubectl_json("get", "deployment", f"{sale}-api", "-n", ns)["spec"]["template"]["spec"]
        assert "nodeSelector" not in pod
        assert pod["tolerations"] == api_template["tolerations"]

    await eventually(dropped)


async def test_kubectl_stampede_status_and_audit(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine,
    ledger: Ledger, run_worker: WorkerRun, redis_url: str, migrated_database_url: str,
) -> None:  # fmt: skip
    """The installed console script, as kubectl runs a plugin (kubectl strips its own flags; -n is ours)."""
    import subprocess

    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)
    plugin = Path(sys.executable).with_name("kubectl-stampede")
    env = {
        **os.environ, **cp.env, "KUBECTL": str(cp.kubectl_path),
        "STAMPEDE_REDIS_URL": redis_url, "STAMPEDE_DATABASE_URL": migrated_database_url,
    }  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(plugin), *args], capture_output=True, text=True, env=env, timeout=120)

    create_sale(cp, ns, sale, stock=7, grace=600, api={"replicas": 2}, workers={"replicas": 1})
    await eventually(status_where(cp, ns, sale, phase="Live"))
    batch = await reserve(stock, sid, 3)
    await ledger.record_batch(batch)
    await run_worker(sid)
    make_available(cp, ns, f"{sale}-api")
    make_available(cp, ns, f"{sale}-worker")

    def shown() -> str:
        done = run("-n", ns, "status", sale)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert f"FlashSale {ns}/{sale}: SKU-1" in out
        assert "Phase:      Live" in out
        assert "Ready:      True (Serving" in out
        assert "remaining 4  reserved 0  confirmed 3" in out
        assert "API:        2/2 available, 2 ready" in out
        assert "Workers:    1/1 available" in out
        assert "Drift:      0" in out
        return out

    out = await eventually(shown)
    assert "Seeded" in out.split("Last events:")[1]
    audited = run("-n", ns, "audit", sale, "--wait", "30")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert f"audit of sale '{sid}': CLEAN" in audited.stdout
    missing = run("-n", ns, "status", "no-such-sale")
    assert missing.returncode == 1
    assert "not found" in missing.stderr and "Traceback" not in missing.stderr
    bad = run("-n", ns, "status", "Not_A_Name")
    assert bad.returncode == 1 and "invalid sale name" in bad.stderr
