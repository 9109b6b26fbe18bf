"""Checkout holds and the real worker process: it settles a sale with holds as `held`, its sweep expires the
holds nobody paid for and gives their units back; SIGKILLed between the ledger's expiry and Redis, the
reconciler gives the units back (once), and the audit of the invariants holds at the end."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stampede.audit import audit, counts_from
from stampede.ledger import Ledger, PendingReservation
from stampede.stock import SaleConfig, StockEngine
from stampede.vocabulary import Status
from stampede_dev.devstack import free_port
from stampede_operator.builders import SaleSpec
from stampede_operator.reconcile import reconcile_once

from .conftest import start_worker

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.faults, pytest.mark.slow]


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def _until(
    what: str, check: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes], log: Path, within: float = 60.0
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert proc.poll() is None, _tail(log)
        assert time.monotonic() < deadline, f"{what}: not in {within}s\n{_tail(log)}"
        await asyncio.sleep(0.05)


async def test_worker_killed_mid_expiry_is_healed_by_the_reconciler(
    redis_url: str, fresh_database_url: str, own_ledger: Ledger, stock: StockEngine, sale: str, tmp_path: Path
) -> None:
    n, hold_s, grace_s = 300, 5, 1
    now = datetime.now(UTC)
    spec = SaleSpec(
        name=sale,
        sku="SKU",
        stock=n,
        per_user_limit=1,
        window_start=now - timedelta(minutes=1),
        window_end=now + timedelta(hours=1),
        grace_s=grace_s,
        hold_seconds=hold_s,
    )
    await stock.seed(sale, SaleConfig(total=n, per_user_limit=1), open=True)
    await own_ledger.ensure_sale(
        sale, sku="SKU", stock=n, per_user_limit=1, window_start=None, window_end=None, hold_seconds=hold_s
    )
    got = await asyncio.gather(*(stock.reserve(sale, f"b{i}") for i in range(n)))
    stamp = await stock.now_ms()
    batch = [PendingReservation(r.reservation_id, sale, r.user, 1, stamp) for r in got]
    for i in range(0, n, 50):
        await own_ledger.record_batch(batch[i : i + 50])
    accepted = [r.reservation_id for r in got]
    log = tmp_path / "worker.log"
    # The first worker expires 100 holds per statement and sleeps between the ledger's expiry and Redis: the
    # kill lands with holds expired in the ledger whose units Redis still counts sold. It never gives back
    # what another sweeper left (return-after: an hour), so only the reconciler can heal that.
    first = start_worker(
        redis_url,
        fresh_database_url,
        free_port(),
        log,
        STAMPEDE_WORKER_HOLD_SWEEP_S="0.2",
        STAMPEDE_WORKER_HOLD_SWEEP_MAX="100",
        STAMPEDE_WORKER_FAULT_EXPIRE_SLEEP_MS="20000",
        STAMPEDE_WORKER_HOLD_RETURN_AFTER_S="3600",
    )
    payers = accepted[:10]
    try:

        async def held() -> bool:
            return (await own_ledger.counts(sale))[Status.HELD] == n

        await _until("settled as holds", held, first, log)
        # A few buyers pay while their holds run (five seconds: time enough on a loaded machine).
        for i, rid in enumerate(payers):
            assert await own_ledger.checkout(rid, user=f"b{i}", key=f"k{i}", payment_ref=f"pay-{i}")

        async def expired_some() -> bool:
            return (await own_ledger.counts(sale))[Status.EXPIRED] > 0

        await _until("the sweep expired holds in the ledger", expired_some, first, log)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    counts = await own_ledger.counts(sale)
    snap = await stock.snapshot(sale)
    torn = counts[Status.EXPIRED]
    assert counts[Status.PAID] == len(payers) and 0 < torn < n - len(payers), counts
    assert snap.remaining == 0 and snap.confirmed == n, "the kill did not land between the ledger and Redis"
    assert len(await own_ledger.expired_unreturned(older_s=0, limit=n, sale=sale)) == torn

    await asyncio.sleep(grace_s + 0.2)
    outcome = await reconcile_once(own_ledger, stock, spec, open_=True)
    assert outcome.healed.get("replay_expire") == torn, outcome.healed
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.released) == (torn, torn)
    assert not await own_ledger.expired_unreturned(older_s=0, limit=n, sale=sale)
    # Healed once: a second pass gives back nothing more.
    again = await reconcile_once(own_ledger, stock, spec, open_=True)
    assert "replay_expire" not in again.healed and again.drift == 0, again

    # A healthy worker expires the rest; every unpaid hold's units are back on sale exactly once.
    second = start_worker(redis_url, fresh_database_url, free_port(), log, STAMPEDE_WORKER_HOLD_SWEEP_S="0.2")
    try:

        async def all_ended() -> bool:
            c = await own_ledger.counts(sale)
            return (
                c[Status.HELD] == 0
                and c[Status.PENDING] == 0
                and not await own_ledger.expired_unreturned(older_s=0, limit=1)
            )

        await _until("every hold ended", all_ended, second, log)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.confirmed, snap.released) == (n - len(payers), len(payers), n - len(payers))
    report = audit(
        sale,
        stock=n,
        per_user_limit=1,
        accepted=accepted,
        rows=await own_ledger.rows(sale),
        redis=counts_from(snap),
        holds=True,
    )
    assert report.ok, report.render()
    assert (report.paid_units, report.expired_units) == (len(payers), n - len(payers))
    final = await reconcile_once(own_ledger, stock, spec, open_=True)
    assert final.drift == 0 and not final.healed, final
    assert (final.tally.paid, final.tally.expired, final.tally.held) == (len(payers), n - len(payers), 0)
