"""One reconcile pass (stampede_operator.reconcile) on real Redis and PostgreSQL, without kopf or a cluster:
the replays of ledger outcomes into Redis, and a disagreement the reconciler must report, not fix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from stampede import audit
from stampede.ledger import Ledger, PendingReservation, Settlement
from stampede.settings import Common, load
from stampede.stock import StockEngine
from stampede_operator import builders, reconcile

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture(scope="module")
async def ledger(migrated_database_url: str) -> AsyncIterator[Ledger]:
    led = await Ledger.open(load(Common, env={}, database_url=migrated_database_url, db_pool_max=2))
    yield led
    await led.close()


def sale_spec(sale: str, stock: int = 10) -> builders.SaleSpec:
    now = datetime.now(UTC)
    # grace 0: a settlement Redis has not followed is replayed at once (the default waits for its writer).
    return builders.SaleSpec(sale, "SKU-1", stock, 1, now - timedelta(minutes=1), now + timedelta(hours=1), grace_s=0)


async def reserve(stock: StockEngine, sale: str, n: int) -> list[PendingReservation]:
    out = []
    for i in range(n):
        r = await stock.reserve(sale, f"u{i}")
        rec = await stock.reservation(sale, r.reservation_id)
        assert rec is not None
        out.append(PendingReservation(r.reservation_id, sale, r.user, 1, rec.reserved_at_ms))
    return out


async def test_ledger_outcomes_are_replayed_into_redis(stock: StockEngine, ledger: Ledger, sale: str) -> None:
    spec = sale_spec(sale)
    await stock.seed(sale, spec.sale_config, open=True)
    batch = await reserve(stock, sale, 3)
    await ledger.record_batch(batch)
    # The worker moved the ledger, then died before Redis heard of it.
    a, b, c = (r.reservation_id for r in batch)
    await ledger.settle([Settlement(a, sale, "confirmed"), Settlement(b, sale, "compensated", "job_failed")], attempt=1)
    outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert outcome.healed == {"replay_confirm": 1, "replay_release": 1}
    assert outcome.drift == 0
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.confirmed) == (8, 1, 1)
    # A second pass finds nothing to do.
    again = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert (again.healed, again.drift) == ({}, 0)
    await ledger.settle([Settlement(c, sale, "confirmed")], attempt=1)
    await stock.confirm(sale, [c])
    report = audit.audit(
        sale, stock=10, per_user_limit=1, accepted=[a, b, c], rows=await ledger.rows(sale),
        redis=audit.counts_from(await stock.snapshot(sale)),
    )  # fmt: skip
    assert report.ok, report.render()


async def test_an_order_whose_stock_redis_gave_back_is_reported_as_drift(
    stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    spec = sale_spec(sale)
    await stock.seed(sale, spec.sale_config, open=True)
    (r,) = await reserve(stock, sale, 1)
    await ledger.record_batch([r])
    await ledger.settle([Settlement(r.reservation_id, sale, "confirmed")], attempt=1)
    await stock.release(sale, [r.reservation_id])  # Redis sold it again: nothing may "fix" this silently
    outcome = await reconcile.reconcile_once(ledger, stock, spec, open_=True)
    assert outcome.healed == {}
    assert outcome.drift == 1
    assert [u.reservation_id for u in outcome.unexplained] == [r.reservation_id]
