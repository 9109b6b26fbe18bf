"""A Redis Cluster master SIGKILLed mid-sale: its replica is promoted (the cluster's own failover) and the sale
goes on. Redis replication is asynchronous, so the API answers a reserve only after the replica holds it
(``WAIT``, STAMPEDE_REDIS_ACK_REPLICAS): every 202 survives the promotion, and the operator restores the sale's
counters from the ledger under the new master's run_id. Ends with the audit: 0 oversold, 0 lost, drift 0."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis
from redis.crc import key_slot

from stampede.stock import StockEngine

from .test_faults import check, start_all

if TYPE_CHECKING:
    from tests.faults.conftest import SaleRun

pytestmark = [
    pytest.mark.faults,
    pytest.mark.k8s,
    pytest.mark.slow,
    pytest.mark.xdist_group("faults"),
    pytest.mark.timeout(600),
]


def _nodes(ports: list[int]) -> list[list[str]]:
    """CLUSTER NODES as seen by the first node of ``ports`` that answers."""
    for port in ports:
        try:
            with redis.Redis(port=port, socket_timeout=0.5) as r:
                return [line.split() for line in r.execute_command("CLUSTER", "NODES").decode().splitlines()]
        except redis.RedisError:
            continue
    return []


def _master_of_slot(ports: list[int], slot: int) -> str | None:
    for f in _nodes(ports):
        if "master" in f[2] and "fail" not in f[2]:
            for rng in f[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return f[1].split("@")[0]
    return None


async def test_redis_cluster_master_killed_mid_sale(sale_run: SaleRun) -> None:
    run = sale_run
    svc = run.services
    run.env["STAMPEDE_REDIS_URL"] = svc.cluster_url
    run.stock_units = 2000  # stock left after the failover: buying again is what is measured
    env = dict(line.split("=", 1) for line in (svc.dir / "env").read_text().split() if "=" in line)
    ports = [int(p) for p in env["STAMPEDE_REDIS_CLUSTER_PORTS"].split(",")]
    probe = StockEngine.from_url(svc.cluster_url)
    killed: dict[str, float] = {}

    async def fault() -> None:
        master = await probe.master_of(run.sale_id)
        assert master is not None
        slot = key_slot(f"stampede:{{{run.sale_id}}}:meta".encode())
        port = int(master.rsplit(":", 1)[1])
        others = [p for p in ports if p != port]
        await asyncio.to_thread(svc.do, "kill-redis-node", str(port))
        killed["at"] = time.monotonic()
        while (new := await asyncio.to_thread(_master_of_slot, others, slot)) in (None, master):
            assert time.monotonic() - killed["at"] < 60, "the replica was never promoted"
            await asyncio.sleep(0.05)
        killed["promoted"] = time.monotonic()
        killed["new"] = float(new.rsplit(":", 1)[1])
        # The old master comes back as a replica of the new one: the cluster is whole again.
        await asyncio.to_thread(svc.do, "start-redis-node", str(port))

    try:
        start_all(run)
        outcome = await run.buyers(users=1500, requests=3000, fault=fault)
        report, heal = await run.settle_and_audit(outcome, timeout=180)
    finally:
        await probe.close()
    promoted = killed["promoted"] - killed["at"]
    after = [(t - killed["promoted"], code) for t, code in outcome.answered if t >= killed["promoted"]]
    back_s = next((t for t, code in after if code == 202), None)
    unavailable = sum(1 for t, code in outcome.answered if code == 503 and t >= killed["at"])
    with psycopg.connect(svc.env["STAMPEDE_DATABASE_URL"]) as conn:
        (orders_compensated,) = conn.execute(
            "SELECT count(*) FROM stampede_ledger WHERE reservation_id = ANY(%s::uuid[]) AND status = 'compensated'",
            (outcome.accepted,),
        ).fetchone() or (0,)
    back = "never" if back_s is None else f"{back_s * 1000:.0f} ms"
    check(
        run,
        "Redis Cluster master SIGKILL",
        outcome,
        report,
        heal,
        extra=f"  replica promoted {promoted:.1f}s after the kill, first 202 {back} after it, 503s {unavailable}",
    )
    assert report.oversold == 0 and report.lost == 0 and report.drift == 0
    assert back_s is not None, "no buy succeeded after the failover"
    assert orders_compensated == 0  # a failover never cancels an accepted order
