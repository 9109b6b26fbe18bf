"""The expiry sweep costs one read when nothing is held: it asks the ledger what there is to do
(``Ledger.hold_work``) and runs its statements only for that. A sale with holds still has its due holds
expired and their units given back, and expired rows a dead sweeper left are still returned; the audit of the
invariants holds after each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stampede.audit import audit, counts_from
from stampede.domain import Settlement
from stampede.ledger import Ledger, PendingReservation
from stampede.stock import SaleConfig, StockEngine
from stampede.vocabulary import Status
from stampede_worker import holds

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


class Spy:
    """Counts the sweep's statements on the real ledger (each method still runs)."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in ("hold_work", "expire_due", "expired_unreturned"):
            monkeypatch.setattr(ledger, name, self._counted(name, getattr(ledger, name)))

    def _counted(self, name: str, real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await real(*args, **kwargs)

        return call

    def take(self) -> list[str]:
        out, self.calls = self.calls, []
        return out


async def _held_sale(stock: StockEngine, ledger: Ledger, sale: str, buyers: int, hold_seconds: int) -> list[str]:
    """A sale with holds whose ``buyers`` reservations are settled ``held`` (ledger, then Redis), concurrently."""
    await stock.seed(sale, SaleConfig(total=buyers + 5, per_user_limit=1), open=True)
    await ledger.ensure_sale(
        sale,
        sku="SKU",
        stock=buyers + 5,
        per_user_limit=1,
        window_start=None,
        window_end=None,
        hold_seconds=hold_seconds,
    )
    got = await asyncio.gather(*(stock.reserve(sale, f"b{i}") for i in range(buyers)))
    now = await stock.now_ms()
    await ledger.record_batch([PendingReservation(r.reservation_id, sale, r.user, 1, now) for r in got])
    ids = [r.reservation_id for r in got]
    settled = await ledger.settle([Settlement(rid, sale, Status.CONFIRMED) for rid in ids], attempt=1)
    assert {s.status for s in settled} == {Status.HELD}
    await stock.confirm(sale, ids)
    return ids


async def _audit_clean(stock: StockEngine, ledger: Ledger, sale: str, total: int, accepted: list[str]) -> None:
    """The audit of a sale with holds: every accepted reservation ended held, paid, expired or compensated,
    and the units of the expired ones are back on sale in Redis."""
    report = audit(
        sale,
        stock=total,
        per_user_limit=1,
        accepted=accepted,
        rows=await ledger.rows(sale),
        redis=counts_from(await stock.snapshot(sale)),
        holds=True,
    )
    assert not report.violations, report.violations


async def test_a_sweep_with_nothing_held_is_one_read(
    own_ledger: Ledger, stock: StockEngine, sale: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(own_ledger, monkeypatch)
    report = await holds.sweep(own_ledger, stock, limit=100, return_after_s=10)
    assert (report.expired, report.returned, report.healed) == (0, 0, 0)
    assert spy.take() == ["hold_work"]
    # Holds that are not due yet: still nothing for the sweep's statements to do.
    ids = await _held_sale(stock, own_ledger, sale, buyers=3, hold_seconds=3600)
    await holds.sweep(own_ledger, stock, limit=100, return_after_s=10)
    assert spy.take() == ["hold_work"]
    assert (await own_ledger.counts(sale))[Status.HELD] == 3
    await _audit_clean(stock, own_ledger, sale, 8, ids)


async def test_due_holds_are_still_expired_and_given_back(
    own_ledger: Ledger, stock: StockEngine, sale: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _held_sale(stock, own_ledger, sale, buyers=12, hold_seconds=1)
    before = await stock.snapshot(sale)
    spy = Spy(own_ledger, monkeypatch)
    await asyncio.sleep(1.2)  # every hold has passed (the ledger's clock decides)
    # Four sweepers at once, as four worker processes: each due hold is expired once, limit 5 per statement.
    reports = await asyncio.gather(*(holds.sweep(own_ledger, stock, limit=5, return_after_s=10) for _ in range(4)))
    assert sum(r.expired for r in reports) == 12 and sum(r.returned for r in reports) == 12
    assert "expire_due" in spy.take()
    for rid in ids:
        row = await own_ledger.get_reservation(rid)
        assert row is not None and row.status == Status.EXPIRED
    after = await stock.snapshot(sale)
    assert after.remaining == before.remaining + 12
    await holds.sweep(own_ledger, stock, limit=5, return_after_s=10)
    assert spy.take() == ["hold_work"]  # done: the next tick is one read again
    await _audit_clean(stock, own_ledger, sale, 17, ids)


async def test_expired_rows_a_dead_sweeper_left_are_returned(
    own_ledger: Ledger, stock: StockEngine, sale: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _held_sale(stock, own_ledger, sale, buyers=4, hold_seconds=1)
    before = await stock.snapshot(sale)
    await asyncio.sleep(1.2)
    # A sweeper that died between the ledger and Redis: the rows are expired, their units not yet back.
    left = await own_ledger.expire_due(100)
    assert len(left) == 4
    spy = Spy(own_ledger, monkeypatch)
    report = await holds.sweep(own_ledger, stock, limit=100, return_after_s=0)
    assert (report.healed, report.returned, report.expired) == (4, 4, 0)
    assert spy.take() == ["hold_work", "expired_unreturned"]
    assert (await stock.snapshot(sale)).remaining == before.remaining + 4
    await holds.sweep(own_ledger, stock, limit=100, return_after_s=0)
    assert spy.take() == ["hold_work"]
    await _audit_clean(stock, own_ledger, sale, 9, ids)
