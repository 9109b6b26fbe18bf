"""Each scenario runs a real sale (operator, gunicorn API, worker, Redis, PostgreSQL, kube-apiserver, all
processes on loopback) under 200 concurrent buyers, injects one fault mid-sale, lets the system heal, and
ends with the audit of the invariants (docs/architecture.md): 0 oversold, every 202 exactly one ledger row that ended
confirmed or compensated, per-user limit held, drift 0 as the reconciler reports it."""

from __future__ import annotations

import asyncio
import calendar
import json
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import pytest

from stampede.audit import AuditReport

if TYPE_CHECKING:
    from tests.faults.conftest import ChaosProxy, Outcome, SaleRun

pytestmark = [
    pytest.mark.faults,
    pytest.mark.k8s,
    pytest.mark.slow,
    pytest.mark.xdist_group("faults"),
    # A guard against a hang, not a limit of speed: each scenario starts four processes (about 5 s of CPU each
    # to import) and paces 2,000-3,000 buys through them; on a 2-core machine that also runs the rest of the
    # suite this alone can take minutes (a run of the leader scenario: 5 minutes from its first operator's
    # start to the audit, most of it the buys).
    pytest.mark.timeout(600),
]

# Starting a process is slow on a loaded machine: a start-up limit, not a test of speed.
STARTUP_LIMIT_S = 120


def start_all(run: SaleRun, api_env: dict[str, str] | None = None, worker_env: dict[str, str] | None = None) -> None:
    run.start_operator()
    run.apply()
    run.wait_phase("Live")
    run.start_api(api_env)
    run.start_worker(worker_env)


def check(run: SaleRun, fault: str, outcome: Outcome, report: AuditReport, heal_s: float, extra: str = "") -> None:
    run.record(fault, outcome, report, heal_s, extra)
    assert report.ok
    assert outcome.server_errors == 0, outcome.statuses
    assert outcome.retry_after_missing == 0
    assert outcome.accepted


async def wait_log(run: SaleRun, name: str, needle: str, within: float = STARTUP_LIMIT_S) -> None:
    deadline = time.monotonic() + within
    while needle not in run.stack.procs[name].output():
        assert time.monotonic() < deadline, f"{name} never logged {needle!r}:\n{run.stack.procs[name].tail()}"
        await asyncio.sleep(0.2)


async def test_worker_killed_mid_batch(sale_run: SaleRun) -> None:
    # A slow Redis confirm step makes the kill land between the ledger write and Redis.
    start_all(sale_run, worker_env={"STAMPEDE_WORKER_FAULT_SLEEP_MS": "40"})

    async def fault() -> None:
        await asyncio.sleep(0.5)
        sale_run.stack.signal("worker", signal.SIGKILL)
        await asyncio.sleep(4)  # longer than the stalled threshold: the new worker must recover the jobs
        sale_run.start_worker()

    outcome = await sale_run.buyers(fault=fault)
    report, heal = await sale_run.settle_and_audit(outcome)
    check(sale_run, "worker SIGKILL mid-batch", outcome, report, heal)


async def test_postgres_down_for_ten_seconds(sale_run: SaleRun) -> None:
    start_all(sale_run)

    async def fault() -> None:
        await asyncio.to_thread(sale_run.services.do, "stop-postgres")
        await asyncio.sleep(10)
        await asyncio.to_thread(sale_run.services.do, "start-postgres")

    outcome = await sale_run.buyers(requests=3000, rate=100, fault_at=0.05, fault=fault)
    # While PostgreSQL is down the API refuses new buys with 503 + Retry-After (the stock goes back at once).
    report, heal = await sale_run.settle_and_audit(outcome)
    check(sale_run, "PostgreSQL down 10 s", outcome, report, heal)
    assert outcome.statuses.get(503, 0) > 0, outcome.statuses


async def test_postgres_killed_mid_sale(sale_run: SaleRun) -> None:
    """A crash, not a clean stop: the postmaster and its backends SIGKILLed mid-sale, started again 5 s later
    (crash recovery from the WAL). A 202 is sent only after its commit, so recovery keeps every one of them."""
    start_all(sale_run)

    async def fault() -> None:
        killed = await asyncio.to_thread(sale_run.services.kill_postgres)
        assert killed > 1  # the postmaster and its backends
        await asyncio.sleep(5)
        await asyncio.to_thread(sale_run.services.do, "start-postgres")

    outcome = await sale_run.buyers(requests=3000, rate=100, fault_at=0.05, fault=fault)
    report, heal = await sale_run.settle_and_audit(outcome)
    check(sale_run, "PostgreSQL SIGKILL, restarted", outcome, report, heal)
    assert outcome.statuses.get(503, 0) > 0, outcome.statuses


@pytest.mark.single_redis
@pytest.mark.parametrize("aof", [False, True], ids=["no-persistence", "aof-everysec"])
async def test_redis_killed_mid_sale(sale_run: SaleRun, aof: bool) -> None:
    """Redis SIGKILLed mid-sale at full rate and started again on the same address a second later: empty
    (no persistence) or from its append-only file with fsync every second (the chart's setting). No accepted
    order is compensated, the sale takes buys again soon after Redis answers (measured from the first PONG to
    the first 202 after it, printed), and the audit is clean."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    services = sale_run.services
    mode = {"STAMPEDE_REDIS_APPENDONLY": "yes" if aof else "no"}
    if aof:  # this scenario's Redis keeps an append-only file from before the sale
        await asyncio.to_thread(services.do, "kill-redis")
        await asyncio.to_thread(services.do, "start-redis", env=mode)
    answered_at = 0.0

    async def fault() -> None:
        nonlocal answered_at
        await asyncio.to_thread(services.do, "kill-redis")
        await asyncio.sleep(1.0)
        probe = aioredis.Redis.from_url(services.env["STAMPEDE_REDIS_URL"], socket_timeout=0.5)
        starting = asyncio.create_task(asyncio.to_thread(services.do, "start-redis", env=mode))
        try:
            while True:
                try:
                    if await probe.ping():
                        break
                except (RedisError, OSError):
                    pass
                await asyncio.sleep(0.005)
            answered_at = time.monotonic()
            await starting
        finally:
            await probe.aclose()

    try:
        sale_run.stock_units = 2000  # stock left when Redis comes back: buying again is what is measured
        start_all(sale_run)
        outcome = await sale_run.buyers(users=1500, requests=3000, fault=fault)
        report, heal = await sale_run.settle_and_audit(outcome, timeout=120)
    finally:
        if aof:  # the scenarios after this one run on a Redis without persistence, as before
            await asyncio.to_thread(services.do, "kill-redis")
            shutil.rmtree(services.dir / "redis" / "appendonlydir", ignore_errors=True)
            await asyncio.to_thread(services.do, "start-redis")
    after = [(t - answered_at, code) for t, code in outcome.answered if t >= answered_at]
    back_s = next((t for t, code in after if code == 202), None)
    refused = sum(1 for _, code in after if code == 503)
    with psycopg.connect(sale_run.services.env["STAMPEDE_DATABASE_URL"]) as conn:
        reasons: dict[str, int] = dict(
            conn.execute(
                "SELECT reason, count(*) FROM stampede_ledger"
                " WHERE sale = %s AND status = 'compensated' GROUP BY reason",
                (sale_run.sale_id,),
            ).fetchall()
        )
        (orders_compensated,) = conn.execute(
            "SELECT count(*) FROM stampede_ledger WHERE reservation_id = ANY(%s::uuid[]) AND status = 'compensated'",
            (outcome.accepted,),
        ).fetchone() or (0,)
    fault_name = f"Redis SIGKILL ({'AOF everysec' if aof else 'no persistence'})"
    back = "never" if back_s is None else f"{back_s * 1000:.0f} ms"
    check(
        sale_run,
        fault_name,
        outcome,
        report,
        heal,
        extra=f"  buying again {back} after Redis answered, 503 after that {refused}, compensations {reasons}",
    )
    buckets = [Counter(c for t, c in after if i / 10 <= t < (i + 1) / 10) for i in range(12)]
    print(
        "answers per 100 ms from Redis's first PONG:",
        " | ".join(",".join(f"{code}x{n}" for code, n in sorted(b.items())) or "-" for b in buckets),
    )
    assert back_s is not None, "no buy succeeded after Redis came back"
    assert orders_compensated == 0, reasons  # losing Redis never cancels an accepted order
    assert not {"unknown_sale", "not_in_redis", "retries_exhausted", "settle_error", "job_failed"} & set(reasons)


async def test_api_killed_between_reserve_and_record(sale_run: SaleRun) -> None:
    # The hook makes an API worker process exit right after reserving, before the ledger write.
    start_all(sale_run, api_env={"STAMPEDE_FAULT_EXIT_AFTER_RESERVES": "300"})
    outcome = await sale_run.buyers()
    report, heal = await sale_run.settle_and_audit(outcome)
    check(sale_run, "API killed before the write", outcome, report, heal)
    # The orphans were found by the reconciler, released, and recorded as lost before the 202.
    with psycopg.connect(sale_run.services.env["STAMPEDE_DATABASE_URL"]) as conn:
        lost = conn.execute(
            "SELECT count(*) FROM stampede_ledger WHERE sale = %s AND reason = 'lost_before_ack'",
            (sale_run.sale_id,),
        ).fetchone()
    assert lost is not None
    assert lost[0] > 0


async def test_operator_leader_killed(sale_run: SaleRun, kopf_peering_crds: None) -> None:
    from stampede.settings import load
    from stampede_operator.peering import build_peering_object
    from stampede_operator.settings import OperatorSettings

    # The peering object once its CRD is served (applied with it, it is refused while the CRD is new).
    peering = build_peering_object(load(OperatorSettings), sale_run.namespace)
    applied = sale_run.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(peering))
    assert applied.returncode == 0, applied.stderr
    # A short peering lifetime so the standby declares the dead leader gone within seconds.
    sale_run.env["STAMPEDE_PEERING_LIFETIME_S"] = "5"
    peering_name = load(OperatorSettings).peering_name

    async def peers_in_peering_object(n: int) -> None:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            got = sale_run.kubectl("get", "kopfpeerings.kopf.dev", peering_name, "-n", sale_run.namespace, "-o", "json")
            peers = json.loads(got.stdout).get("status") or {} if got.returncode == 0 else {}
            if len(peers) >= n:
                return
            assert time.monotonic() < deadline, f"not {n} replicas in the peering object: {got.stdout}{got.stderr}"
            await asyncio.sleep(0.2)

    # Only the leader may act on the sale. A standby that starts while the leader's record is already in the
    # peering object reads it in its first look and stays paused; one that starts before could resume for a
    # moment (kopf starts paused and resumes when it sees no peer of higher priority).
    sale_run.start_operator("operator-a", priority=200)
    await wait_log(sale_run, "operator-a", "operator started")
    await peers_in_peering_object(1)
    sale_run.start_operator("operator-b", priority=100)
    await peers_in_peering_object(2)
    sale_run.apply()
    sale_run.wait_phase("Live")
    sale_run.start_api()
    sale_run.start_worker()
    killed_at = 0.0

    async def fault() -> None:
        nonlocal killed_at
        sale_run.stack.signal("operator-a", signal.SIGKILL)
        killed_at = time.time()

    outcome = await sale_run.buyers(fault=fault)

    def reconciled_since_kill() -> bool:
        last = sale_run.status().get("lastReconcileTime", "")
        return bool(last) and calendar.timegm(time.strptime(last, "%Y-%m-%dT%H:%M:%SZ")) > killed_at

    deadline = time.monotonic() + 60
    while not reconciled_since_kill():
        assert time.monotonic() < deadline, f"the standby never reconciled: {sale_run.status()}\n{sale_run.logs()}"
        await asyncio.sleep(0.5)
    report, heal = await sale_run.settle_and_audit(outcome, timeout=120)
    heal = time.time() - killed_at
    check(sale_run, "operator leader SIGKILL", outcome, report, heal)


@pytest.mark.single_redis
async def test_network_delay_and_cuts_between_api_and_redis(
    sale_run: SaleRun, chaos_proxy: Callable[[int], ChaosProxy]
) -> None:
    """20 ms each way and 2 % of chunks cut: a reserve can run in Redis while its answer is lost, so the
    API answers 503 and the reservation is an orphan only the reconciler can find and release."""
    redis_port = int(sale_run.services.env["STAMPEDE_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    proxy = chaos_proxy(redis_port)
    start_all(sale_run, api_env={"STAMPEDE_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"})
    outcome = await sale_run.buyers(requests=2000)
    report, heal = await sale_run.settle_and_audit(outcome, timeout=120)
    check(sale_run, f"API-Redis delay+cuts ({proxy.cuts})", outcome, report, heal)
    assert proxy.cuts > 0
