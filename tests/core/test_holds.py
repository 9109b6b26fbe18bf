"""Checkout holds against the real PostgreSQL and Redis: a sale with holds settles `pending -> held`, a checkout
pays a hold once, the expiry returns its units once, and when both race for the same holds the ledger decides
each one exactly once (docs/architecture.md, "Checkout holds")."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from stampede import errors
from stampede.audit import audit, counts_from
from stampede.domain import Outcome, Settlement
from stampede.ledger import Expired, Ledger, PendingReservation
from stampede.settings import Common, load
from stampede.stock import SaleConfig, StockEngine
from stampede.vocabulary import RedisState, Status

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
async def ledger(migrated_database_url: str) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(load(Common, env={}, database_url=migrated_database_url, db_pool_max=16))
    yield lg
    await lg.close()


async def _open(stock: StockEngine, ledger: Ledger, sale: str, total: int, hold_seconds: int) -> None:
    await stock.seed(sale, SaleConfig(total=total, per_user_limit=1), open=True)
    await ledger.ensure_sale(
        sale,
        sku="SKU",
        stock=total,
        per_user_limit=1,
        window_start=None,
        window_end=None,
        hold_seconds=hold_seconds,
    )


async def _reserve_and_settle(
    stock: StockEngine, ledger: Ledger, sale: str, users: list[str]
) -> list[PendingReservation]:
    """Reserves one unit for each user, records the rows and settles them as a settle job does (ledger, then
    Redis confirm): the rows end held in a sale with holds."""
    got = await asyncio.gather(*(stock.reserve(sale, u) for u in users))
    now = await stock.now_ms()
    rows = [PendingReservation(r.reservation_id, sale, r.user, 1, now) for r in got]
    await ledger.record_batch(rows)
    settled = await ledger.settle([Settlement(r.reservation_id, sale, Status.CONFIRMED) for r in rows], attempt=1)
    assert all(s.moved for s in settled)
    await stock.confirm(sale, [s.reservation_id for s in settled])
    return rows


async def _sweep_once(ledger: Ledger, stock: StockEngine, limit: int = 1000) -> list[Expired]:
    due = await ledger.expire_due(limit)
    by_sale: dict[str, dict[str, str]] = {}
    for e in due:
        by_sale.setdefault(e.sale, {})[e.reservation_id] = e.user
    for sale, buyers in by_sale.items():
        outcomes = await stock.expire(sale, buyers)
        assert set(outcomes.values()) <= {Outcome.RELEASED}, outcomes
        await ledger.mark_returned(list(buyers))
    return due


async def test_sale_without_holds_confirms_as_before(stock: StockEngine, ledger: Ledger, sale: str) -> None:
    await _open(stock, ledger, sale, 3, hold_seconds=0)
    rows = await _reserve_and_settle(stock, ledger, sale, ["a", "b"])
    for r in rows:
        row = await ledger.get_reservation(r.reservation_id)
        assert row is not None and row.status == Status.CONFIRMED and row.hold_expires_at is None
    assert not await ledger.checkout(rows[0].reservation_id, user="a", key="k", payment_ref="pay")
    assert (await ledger.tally(sale)).confirmed == 2


async def test_held_then_paid_once_and_never_expired(stock: StockEngine, ledger: Ledger, sale: str) -> None:
    await _open(stock, ledger, sale, 3, hold_seconds=60)
    (r,) = await _reserve_and_settle(stock, ledger, sale, ["a"])
    row = await ledger.get_reservation(r.reservation_id)
    assert row is not None and row.status == Status.HELD and row.hold_expires_at is not None
    assert row.settled_at is not None and (row.hold_expires_at - row.settled_at).total_seconds() == pytest.approx(60)
    assert (await ledger.tally(sale)).held == 1
    # Another buyer cannot pay for it; its buyer can, once.
    assert not await ledger.checkout(r.reservation_id, user="b", key="k1", payment_ref="p1")
    assert await ledger.checkout(r.reservation_id, user="a", key="k1", payment_ref="p1")
    assert not await ledger.checkout(r.reservation_id, user="a", key="k2", payment_ref="p2")
    row = await ledger.get_reservation(r.reservation_id)
    assert row is not None and (row.status, row.checkout_key, row.payment_ref) == (Status.PAID, "k1", "p1")
    assert row.closed_at is not None
    tally = await ledger.tally(sale)
    assert (tally.held, tally.paid, tally.expired) == (0, 1, 0)
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.confirmed) == (2, 1)


async def test_the_ledger_refuses_moves_out_of_a_hold_end(
    stock: StockEngine, ledger: Ledger, sale: str, migrated_database_url: str
) -> None:
    await _open(stock, ledger, sale, 3, hold_seconds=60)
    paid, held = await _reserve_and_settle(stock, ledger, sale, ["a", "b"])
    assert await ledger.checkout(paid.reservation_id, user="a", key="k", payment_ref="p")
    refused = [
        ("status = 'expired', closed_at = now()", paid.reservation_id),  # paid -> expired
        ("payment_ref = 'other'", paid.reservation_id),  # a payment is never rewritten
        ("status = 'confirmed'", held.reservation_id),  # held -> confirmed
        ("hold_expires_at = now() + interval '1 day'", held.reservation_id),  # a hold is never extended
        ("status = 'compensated', reason = 'x'", held.reservation_id),  # a hold ends paid or expired only
    ]
    async with await psycopg.AsyncConnection.connect(migrated_database_url, autocommit=True) as conn:
        for assignment, rid in refused:
            with pytest.raises(psycopg.errors.CheckViolation):
                await conn.execute(f"UPDATE stampede_ledger SET {assignment} WHERE reservation_id = %s", (rid,))


async def test_checkout_and_expiry_racing_decide_each_hold_once(stock: StockEngine, ledger: Ledger, sale: str) -> None:
    """200 holds of two seconds; each buyer checks out at a random instant around its hold's expiry (read from
    the ledger) while four sweepers expire what is due: each hold ends paid xor expired, paid exactly when its
    checkout said so, and the units of exactly the expired ones are back on sale (once)."""
    n = 200
    await _open(stock, ledger, sale, n, hold_seconds=2)
    users = [f"u{i}" for i in range(n)]
    rows = await _reserve_and_settle(stock, ledger, sale, users)
    ends = {}
    for r in rows:
        row = await ledger.get_reservation(r.reservation_id)
        assert row is not None and row.hold_expires_at is not None
        ends[r.reservation_id] = row.hold_expires_at.timestamp()
    paid_by_checkout: set[str] = set()
    expired_by_sweep: list[str] = []
    stop = asyncio.Event()

    async def buyer(r: PendingReservation) -> None:
        await asyncio.sleep(max(0.0, ends[r.reservation_id] - time.time() + random.uniform(-0.8, 0.4)))
        if await ledger.checkout(r.reservation_id, user=r.user, key=f"k-{r.user}", payment_ref=f"pay-{r.user}"):
            paid_by_checkout.add(r.reservation_id)

    async def sweeper() -> None:
        while not stop.is_set():
            expired_by_sweep.extend(e.reservation_id for e in await _sweep_once(ledger, stock, limit=7))
            await asyncio.sleep(0.01)

    sweepers = [asyncio.create_task(sweeper()) for _ in range(4)]
    await asyncio.gather(*(buyer(r) for r in rows))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*sweepers)
    expired_by_sweep.extend(e.reservation_id for e in await _sweep_once(ledger, stock))

    assert len(expired_by_sweep) == len(set(expired_by_sweep)), "a hold was expired twice"
    assert paid_by_checkout.isdisjoint(expired_by_sweep)
    assert len(paid_by_checkout) + len(expired_by_sweep) == n
    assert paid_by_checkout and expired_by_sweep, "the race did not happen: every hold ended one way"
    statuses = {r.reservation_id: r.status for r in await ledger.rows(sale)}
    assert {rid for rid, s in statuses.items() if s == Status.PAID} == paid_by_checkout
    assert {rid for rid, s in statuses.items() if s == Status.EXPIRED} == set(expired_by_sweep)
    tally = await ledger.tally(sale)
    assert (tally.held, tally.paid, tally.expired) == (0, len(paid_by_checkout), len(expired_by_sweep))
    snap = await stock.snapshot(sale)
    assert snap.remaining == len(expired_by_sweep) and snap.confirmed == len(paid_by_checkout)
    assert snap.released == len(expired_by_sweep), "units of an expired hold returned more than once"
    report = audit(
        sale,
        stock=n,
        per_user_limit=1,
        accepted=[r.reservation_id for r in rows],
        rows=await ledger.rows(sale),
        redis=counts_from(snap),
        holds=True,
    )
    assert report.ok, report.render()
    assert not await ledger.expired_unreturned(older_s=0, limit=10, sale=sale)


async def test_expired_units_are_sold_again(stock: StockEngine, ledger: Ledger, sale: str) -> None:
    await _open(stock, ledger, sale, 5, hold_seconds=1)
    first = await _reserve_and_settle(stock, ledger, sale, [f"u{i}" for i in range(5)])
    with pytest.raises(Exception, match="units left"):
        await stock.reserve(sale, "late")
    await asyncio.sleep(1.1)
    assert len(await _sweep_once(ledger, stock)) == 5
    # Units and the buyers' per-user allowance are back: the same buyers and a new one buy again.
    second = await _reserve_and_settle(stock, ledger, sale, ["u0", "u1", "u2", "u3", "late"])
    for r in second:
        assert await ledger.checkout(r.reservation_id, user=r.user, key="k", payment_ref="p")
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.confirmed, snap.released) == (0, 5, 5)
    report = audit(
        sale,
        stock=5,
        per_user_limit=1,
        accepted=[r.reservation_id for r in first + second],
        rows=await ledger.rows(sale),
        redis=counts_from(snap),
        holds=True,
    )
    assert report.ok, report.render()
    assert (report.paid_units, report.expired_units, report.accepted) == (5, 5, 10)


async def test_stock_expire_is_idempotent_and_takes_back_unconfirmed(stock: StockEngine, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=3, per_user_limit=1), open=True)
    a, b = await stock.reserve(sale, "a"), await stock.reserve(sale, "b")
    await stock.confirm(sale, [a.reservation_id])
    unknown = str(uuid.uuid4())
    first = await stock.expire(sale, {a.reservation_id: "a", b.reservation_id: "b", unknown: "c"})
    assert first == {a.reservation_id: Outcome.RELEASED, b.reservation_id: Outcome.RELEASED, unknown: Outcome.UNKNOWN}
    again = await stock.expire(sale, {a.reservation_id: "a", b.reservation_id: "b"})
    assert set(again.values()) == {Outcome.ALREADY}
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.confirmed, snap.released, snap.pending_count) == (3, 0, 0, 2, 0)
    assert snap.balanced


async def test_compacted_hold_expires_with_the_ledgers_buyer_exactly_once(
    stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    """A held reservation Redis keeps only as a compact settled entry (no buyer) expires with the buyer read
    from its ledger row: its unit and the buyer's allowance come back once, however many expire calls race
    (concurrent sweepers, a re-run), and the buyer can buy again."""
    await _open(stock, ledger, sale, 2, hold_seconds=1)
    held, other = await _reserve_and_settle(stock, ledger, sale, ["a", "b"])
    compact = (await stock.records(sale, [held.reservation_id]))[held.reservation_id]
    assert (compact.state, compact.user) == (RedisState.CONFIRMED, "")  # compacted: Redis no longer knows the buyer
    assert await stock.holdings(sale) == {"a": 1, "b": 1}
    assert await ledger.checkout(other.reservation_id, user="b", key="k", payment_ref="p")
    mine: list[Expired] = []
    deadline = time.monotonic() + 30
    while not mine and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        mine = [e for e in await ledger.expire_due(1000) if e.sale == sale]
    assert [(e.reservation_id, e.user, e.quantity) for e in mine] == [(held.reservation_id, "a", 1)]
    expired = await ledger.expired_of([held.reservation_id, other.reservation_id])
    assert [(e.reservation_id, e.user) for e in expired] == [(held.reservation_id, "a")]
    buyers = {held.reservation_id: "a"}
    outcomes = await asyncio.gather(*(stock.expire(sale, buyers) for _ in range(8)))
    assert sorted(o[held.reservation_id] for o in outcomes) == [Outcome.ALREADY] * 7 + [Outcome.RELEASED]
    assert await stock.expire(sale, buyers) == {held.reservation_id: Outcome.ALREADY}
    await ledger.mark_returned([held.reservation_id])
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.confirmed, snap.released) == (1, 0, 1, 1)
    assert snap.balanced
    assert await stock.holdings(sale) == {"b": 1}
    assert (await stock.records(sale, [held.reservation_id]))[held.reservation_id].state == RedisState.RELEASED
    again = await stock.reserve(sale, "a")  # the allowance came back with the unit
    assert again.state == RedisState.PENDING and (await stock.snapshot(sale)).remaining == 0
    with pytest.raises(errors.InvalidArgument):
        await stock.expire(sale, {held.reservation_id: ""})  # the buyer is required, checked before Redis


async def test_audit_counts_hold_ends_against_accepted() -> None:
    from stampede.audit import Row

    rows = [Row("a", "u1", 1, Status.PAID), Row("b", "u2", 1, Status.EXPIRED), Row("c", "u3", 1, Status.CONFIRMED)]
    report = audit("s", stock=3, per_user_limit=1, accepted=["a", "b", "c"], rows=rows, holds=True)
    assert not report.ok and any("!= accepted 3" in v for v in report.violations)
    rows[2] = Row("c", "u3", 1, Status.COMPENSATED, "job_failed")
    assert audit("s", stock=3, per_user_limit=1, accepted=["a", "b", "c"], rows=rows, holds=True).ok


def test_the_reconciler_replays_an_expiry_redis_missed_and_counts_holds_as_orders() -> None:
    """healing.decide by value: an expired hold Redis still counts sold (settled long ago) is given back; a
    fresh one is its sweeper's; held and paid rows are orders Redis holds confirmed; drift compares Redis's
    confirmed units with confirmed + held + paid."""
    from stampede import healing
    from stampede.domain import ReservationRecord
    from stampede.healing import LedgerEntry, Observation
    from stampede.vocabulary import RedisState

    STATE_CONFIRMED, STATE_RELEASED = RedisState.CONFIRMED, RedisState.RELEASED

    now, grace = 1_000_000, 30_000

    def entry(rid: str, status: Status, age_ms: int) -> LedgerEntry:
        return LedgerEntry(rid, "u", 1, status, None, now - grace - 5, None, age_ms)

    ledger_rows = [
        entry("stuck", Status.EXPIRED, grace + 1),
        entry("fresh", Status.EXPIRED, 10),
        entry("done", Status.EXPIRED, grace + 1),
        entry("held", Status.HELD, grace + 1),
        entry("paid", Status.PAID, grace + 1),
    ]
    redis = {
        rid: ReservationRecord(rid, STATE_RELEASED if rid == "done" else STATE_CONFIRMED, 1, now - grace - 5, "u")
        for rid in ("stuck", "fresh", "done", "held", "paid")
    }
    obs = Observation("s", now, grace, True, redis, {r.reservation_id: r for r in ledger_rows}, {})
    plan = healing.decide(obs)
    assert [(a.kind, a.reservation_ids) for a in plan.actions] == [("replay_expire", ("stuck",))]
    assert not plan.unexplained
    tally = healing.Tally(confirmed=1, held=2, paid=3)
    quiet = Observation("s", now, grace, True, {}, {}, {}, tally, 0)
    assert healing.measure_drift(quiet, healing.Plan(), redis_pending=0, redis_confirmed=6) == 0
    assert healing.measure_drift(quiet, healing.Plan(), redis_pending=0, redis_confirmed=8) == 2
    assert [healing.redis_state(s) for s in (Status.HELD, Status.PAID, Status.EXPIRED)] == [
        STATE_CONFIRMED,
        STATE_CONFIRMED,
        STATE_RELEASED,
    ]
