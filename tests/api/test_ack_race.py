"""A ledger write that waits longer than the reconciler's grace period loses the race for the reservations
the reconciler finds first: they are recorded ``lost_before_ack`` and their stock goes back. The write
still commits the rest, and its buyers of the lost ones get 503 with Retry-After, never a 202."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from falcon import testing

from stampede import audit
from stampede.ledger import Ledger, PendingReservation, RecordedBatch
from stampede.stock import StockEngine
from stampede_api.app import build
from stampede_api.settings import ApiSettings
from stampede_operator import builders, reconcile

if TYPE_CHECKING:
    from tests.api.conftest import Headers, Opener

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


class HeldLedger:
    """The real ledger, whose record_batch waits while ``open`` is clear: PostgreSQL answering late."""

    def __init__(self, real: Ledger) -> None:
        self.real = real
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = asyncio.Event()  # set once a write is held

    async def record_batch(self, reservations: Sequence[PendingReservation]) -> RecordedBatch:
        if not self.open.is_set():
            self.waiting.set()
            await self.open.wait()
        return await self.real.record_batch(reservations)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_write_that_loses_to_the_reconciler_answers_503(
    api_settings: ApiSettings, stock: StockEngine, ledger: Ledger, opener: Opener, headers: Headers, sale: str
) -> None:
    held = HeldLedger(ledger)
    app, _ = build(api_settings, stock, cast(Ledger, held))
    total, late_buyers = 30, 12
    await opener(sale, total=total, limit=1)
    now = datetime.now(UTC)
    spec = builders.SaleSpec(
        sale, f"SKU-{sale}", total, 1, now - timedelta(minutes=1), now + timedelta(hours=1), grace_s=0
    )
    url = f"/v1/sales/{sale}/reservations"

    async with testing.ASGIConductor(app) as client:

        async def buy(user: str) -> testing.Result:
            return await client.simulate_post(url, json={"quantity": 1}, headers=headers(user))

        early = await asyncio.gather(*(buy(f"early-{i}") for i in range(5)))
        assert [r.status_code for r in early] == [202] * 5, [r.text for r in early]

        # The write of the next buyers is held past the (zero) grace while a reconcile pass runs.
        held.open.clear()
        late = [asyncio.create_task(buy(f"late-{i}")) for i in range(late_buyers)]
        await asyncio.wait_for(held.waiting.wait(), 10)
        deadline = asyncio.get_running_loop().time() + 10
        while len(await stock.reservations(sale)) < 5 + late_buyers:  # every late buyer reserved in Redis
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # older than the grace by the Redis clock
        outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
        assert outcome.healed.get("compensate_lost") == late_buyers, outcome.healed
        held.open.set()
        answers = await asyncio.gather(*late)

    # Not one 202 for a reservation the reconciler cancelled; each such buyer is told to retry.
    assert [a.status_code for a in answers] == [503] * late_buyers, [a.text for a in answers]
    for a in answers:
        assert a.json["error"]["code"] == "dependency_unavailable"
        assert int(a.headers["retry-after"]) >= 1
    accepted = [r.json["reservation_id"] for r in early]
    rows = await ledger.rows(sale)
    lost = [r for r in rows if r.reason == "lost_before_ack"]
    assert len(lost) == late_buyers
    assert {r.status for r in lost} == {"compensated"}
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending) == (total - 5, 5)  # released once, not twice
    report = audit.audit(
        sale, stock=total, per_user_limit=1, accepted=accepted, rows=rows, redis=audit.counts_from(snap), settled=False
    )
    assert report.ok, report.render()

    # A retry of a cancelled buyer is a fresh reservation that is acknowledged.
    async with testing.ASGIConductor(app) as client:
        again = await client.simulate_post(url, json={"quantity": 1}, headers=headers("late-0"))
    assert again.status_code == 202, again.text
