"""Every branch of the stock scripts against the project's real Redis."""

from __future__ import annotations

import asyncio
from typing import TypedDict, Unpack

import pytest

from stampede import errors
from stampede.names import sale_keys
from stampede.stock import Outcome, SaleConfig, StockEngine
from tests.stores import redis_client

pytestmark = pytest.mark.redis


class Rates(TypedDict, total=False):
    """A sale's rate limits, as ``SaleConfig`` names them."""

    buyer_rate: float
    buyer_burst: int
    ip_rate: float
    ip_burst: int


async def open_sale(stock: StockEngine, sale: str, total: int = 10, limit: int = 2, **kw: Unpack[Rates]) -> None:
    await stock.seed(sale, SaleConfig(total=total, per_user_limit=limit, **kw), open=True)


async def test_seed_creates_then_is_idempotent(stock: StockEngine, sale: str) -> None:
    first = await stock.seed(sale, SaleConfig(total=10))
    assert (first.outcome, first.total, first.remaining) == ("created", 10, 10)
    again = await stock.seed(sale, SaleConfig(total=10))
    assert (again.outcome, again.total, again.remaining) == ("unchanged", 10, 10)
    snap = await stock.snapshot(sale)
    assert not snap.open  # a new sale is closed until it is opened


async def test_seed_never_clobbers_live_counts(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, total=10, limit=5)
    r = await stock.reserve(sale, "alice", 3)
    await stock.confirm(sale, [r.reservation_id])
    await stock.reserve(sale, "bob", 2)
    # A re-seed with the same total (operator restart) leaves every counter alone.
    res = await stock.seed(sale, SaleConfig(total=10, per_user_limit=5))
    assert res.outcome == "unchanged"
    snap = await stock.snapshot(sale)
    assert (snap.total, snap.remaining, snap.pending, snap.confirmed) == (10, 5, 2, 3)
    assert snap.open  # open='' keeps the gate as it was


async def test_restock_by_delta(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, total=10, limit=5)
    await stock.reserve(sale, "alice", 4)
    up = await stock.seed(sale, SaleConfig(total=15, per_user_limit=5))
    assert (up.outcome, up.total, up.remaining, up.sold) == ("restocked", 15, 11, 4)
    down = await stock.seed(sale, SaleConfig(total=4, per_user_limit=5))
    assert (down.outcome, down.total, down.remaining) == ("restocked", 4, 0)
    with pytest.raises(errors.RestockBelowSold) as exc:
        await stock.seed(sale, SaleConfig(total=3, per_user_limit=5))
    assert exc.value.sold == 4
    snap = await stock.snapshot(sale)
    assert (snap.total, snap.remaining, snap.pending) == (4, 0, 4)


async def test_seed_rejects_bad_config(stock: StockEngine, sale: str) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        await stock.seed(sale, SaleConfig(total=-1))
    assert exc.value.field == "stock"
    with pytest.raises(errors.InvalidArgument) as exc:
        await stock.seed(sale, SaleConfig(total=1, per_user_limit=0))
    assert exc.value.field == "perUserLimit"
    with pytest.raises(errors.InvalidArgument) as exc:
        await stock.seed("Bad{Name}", SaleConfig(total=1))
    assert exc.value.field == "sale"


async def test_reserve_happy_path_records_pending(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale)
    r = await stock.reserve(sale, "alice", 2)
    assert (r.state, r.replay, r.remaining, r.quantity) == ("pending", False, 8, 2)
    rec = await stock.reservation(sale, r.reservation_id)
    assert rec is not None
    assert (rec.state, rec.quantity, rec.user) == ("pending", 2, "alice")
    assert rec.reserved_at_ms > 1_600_000_000_000
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.pending_count, snap.reservations) == (8, 2, 1, 1)
    assert snap.balanced


async def test_reserve_unknown_and_closed(stock: StockEngine, sale: str) -> None:
    with pytest.raises(errors.SaleNotFound):
        await stock.reserve(sale, "alice")
    await stock.seed(sale, SaleConfig(total=5))
    with pytest.raises(errors.SaleClosed):
        await stock.reserve(sale, "alice")
    assert await stock.set_open(sale, True) is False
    assert (await stock.reserve(sale, "alice")).state == "pending"
    assert await stock.set_open(sale, False) is True
    with pytest.raises(errors.SaleClosed):
        await stock.reserve(sale, "bob")
    with pytest.raises(errors.SaleNotFound):
        await stock.set_open("t-never-seeded", True)


async def test_reserve_per_user_limit(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, limit=2)
    await stock.reserve(sale, "alice", 1)
    with pytest.raises(errors.LimitReached) as exc:
        await stock.reserve(sale, "alice", 2)
    assert exc.value.held == 1
    await stock.reserve(sale, "alice", 1)
    with pytest.raises(errors.LimitReached):
        await stock.reserve(sale, "alice", 1)
    # Another buyer is not affected.
    await stock.reserve(sale, "bob", 2)


async def test_reserve_sold_out(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, total=3, limit=3)
    await stock.reserve(sale, "alice", 2)
    with pytest.raises(errors.SoldOut) as exc:
        await stock.reserve(sale, "bob", 2)
    assert exc.value.remaining == 1
    await stock.reserve(sale, "bob", 1)
    with pytest.raises(errors.SoldOut):
        await stock.reserve(sale, "carol", 1)
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending) == (0, 3)


async def test_idempotent_replay_and_conflict(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, total=5, limit=1)
    first = await stock.reserve(sale, "alice", 1, idempotency_key="k1")
    again = await stock.reserve(sale, "alice", 1, idempotency_key="k1")
    assert again.replay and again.reservation_id == first.reservation_id and again.state == "pending"
    # The replay did not take stock nor count against the limit.
    assert (await stock.snapshot(sale)).remaining == 4
    await stock.confirm(sale, [first.reservation_id])
    later = await stock.reserve(sale, "alice", 1, idempotency_key="k1")
    assert later.reservation_id == first.reservation_id and later.state == "confirmed"
    with pytest.raises(errors.IdempotencyConflict) as exc:
        await stock.reserve(sale, "alice", 2, idempotency_key="k1")
    assert exc.value.reservation_id == first.reservation_id
    # Keys are per buyer: bob's k1 is his own.
    bob = await stock.reserve(sale, "bob", 1, idempotency_key="k1")
    assert not bob.replay and bob.reservation_id != first.reservation_id


async def test_replay_works_after_sale_closes(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, total=1, limit=1)
    first = await stock.reserve(sale, "alice", 1, idempotency_key="k")
    await stock.set_open(sale, False)
    again = await stock.reserve(sale, "alice", 1, idempotency_key="k")
    assert again.reservation_id == first.reservation_id


@pytest.mark.parametrize(
    ("user", "qty", "field"),
    [
        ("", 1, "user"),
        ("alice", 0, "quantity"),
        ("alice", -3, "quantity"),
        ("alice", 1.5, "quantity"),
        ("alice", "2", "quantity"),
        ("alice", True, "quantity"),
        (None, 1, "user"),
        ("x" * 300, 1, "user"),
    ],
)
async def test_reserve_bad_arguments_are_typed(
    stock: StockEngine, sale: str, user: object, qty: object, field: str
) -> None:
    await open_sale(stock, sale)
    with pytest.raises(errors.InvalidArgument) as exc:
        await stock.reserve(sale, user, qty)  # type: ignore[arg-type]  # deliberately ill-typed: the engine's own check
    assert exc.value.field == field
    assert (await stock.snapshot(sale)).remaining == 10


async def test_script_guards_bad_arguments_too(stock: StockEngine, sale: str) -> None:
    """The Lua side refuses what slips past Python (another client calling the script directly)."""
    await open_sale(stock, sale)
    k = sale_keys(sale)
    keys = [k.meta, k.reservations, k.pending, k.holds, k.idempotency, k.buyer_bucket("a"), k.room_config, k.settled]
    for args, field in (
        (["r1", "a", "0", ""], b"quantity"),
        (["r1", "", "1", ""], b"user"),
        (["r1", "a", "x", ""], b"quantity"),
        (["", "a", "1", ""], b"reservation_id"),
    ):
        out = await stock._scripts["reserve"](keys=keys, args=args)
        assert out[0] == b"bad_args" and out[2] == field
    # An id reused for a second reservation is refused rather than overwriting the first.
    await stock.reserve(sale, "a", 1, reservation_id="same-id")
    with pytest.raises(errors.InvalidArgument):
        await stock.reserve(sale, "b", 1, reservation_id="same-id")
    assert (await stock.snapshot(sale)).remaining == 9
    # Still refused once settled (the settled store hashes ids that are not UUIDs with SHA-1).
    assert await stock.confirm(sale, ["same-id"]) == {"same-id": Outcome.CONFIRMED}
    with pytest.raises(errors.InvalidArgument):
        await stock.reserve(sale, "b", 1, reservation_id="same-id")
    assert [(r.reservation_id, r.state) for r in await stock.reservations(sale)] == [("same-id", "confirmed")]


async def test_confirm_branches(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, limit=5)
    a = await stock.reserve(sale, "alice", 2)
    b = await stock.reserve(sale, "bob", 1)
    await stock.release(sale, [b.reservation_id])
    out = await stock.confirm(sale, [a.reservation_id, a.reservation_id, b.reservation_id, "nope"])
    # A repeated id in one call is confirmed once, then seen as already confirmed.
    assert out[a.reservation_id] in (Outcome.CONFIRMED, Outcome.ALREADY)
    assert out[b.reservation_id] == Outcome.RELEASED
    assert out["nope"] == Outcome.UNKNOWN
    assert await stock.confirm(sale, [a.reservation_id]) == {a.reservation_id: Outcome.ALREADY}
    snap = await stock.snapshot(sale)
    assert (snap.confirmed, snap.pending, snap.remaining, snap.pending_count) == (2, 0, 8, 0)
    assert await stock.confirm(sale, []) == {}


async def test_release_branches(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, limit=5)
    a = await stock.reserve(sale, "alice", 3)
    b = await stock.reserve(sale, "bob", 1)
    await stock.confirm(sale, [b.reservation_id])
    out = await stock.release(sale, [a.reservation_id, b.reservation_id, "nope"])
    assert out == {
        a.reservation_id: Outcome.RELEASED,
        b.reservation_id: Outcome.REFUSED_CONFIRMED,
        "nope": Outcome.UNKNOWN,
    }
    assert await stock.release(sale, [a.reservation_id]) == {a.reservation_id: Outcome.ALREADY}
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.confirmed, snap.released) == (9, 0, 1, 3)
    # Released units no longer count against alice's limit.
    await stock.reserve(sale, "alice", 5)


async def test_snapshot_unknown_sale(stock: StockEngine, sale: str) -> None:
    with pytest.raises(errors.SaleNotFound):
        await stock.snapshot(sale)


async def test_rate_limit_buyer_and_ip(stock: StockEngine, sale: str) -> None:
    await stock.seed(
        sale, SaleConfig(total=100, per_user_limit=100, buyer_rate=1, buyer_burst=2, ip_rate=1, ip_burst=3), open=True
    )
    await stock.reserve(sale, "alice", client_ip="10.0.0.1")
    await stock.reserve(sale, "alice", client_ip="10.0.0.1")
    with pytest.raises(errors.RateLimited) as exc:
        await stock.reserve(sale, "alice", client_ip="10.0.0.1")
    assert exc.value.scope == "buyer" and 0 < exc.value.retry_after_ms <= 1000
    await stock.reserve(sale, "bob", client_ip="10.0.0.1")  # third token of the IP bucket
    with pytest.raises(errors.RateLimited) as exc:
        await stock.reserve(sale, "carol", client_ip="10.0.0.1")
    assert exc.value.scope == "ip"
    # The refused request spent no token: carol still has her full buyer bucket elsewhere.
    await stock.reserve(sale, "carol", client_ip="10.0.0.2")
    await stock.reserve(sale, "carol", client_ip="10.0.0.3")
    await asyncio.sleep(1.05)
    await stock.reserve(sale, "alice", client_ip="10.0.0.4")  # refilled
    assert (await stock.snapshot(sale)).pending == 6


async def test_delete_removes_every_key(stock: StockEngine, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=5, buyer_rate=10, buyer_burst=10), open=True)
    await stock.reserve(sale, "alice", idempotency_key="k", client_ip="1.2.3.4")
    assert await stock.delete(sale) >= 6
    assert await redis_client(stock).keys(f"{sale_keys(sale).base}*") == []


async def test_pending_older_than_uses_redis_clock(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale)
    r = await stock.reserve(sale, "alice")
    now = await stock.now_ms()
    assert await stock.pending_older_than(sale, now) == [r.reservation_id]
    assert await stock.pending_older_than(sale, now - 60_000) == []
    await stock.confirm(sale, [r.reservation_id])
    assert await stock.pending_older_than(sale, now) == []


async def test_suspects_reads_the_pending_set_a_window_at_a_time(stock: StockEngine, sale: str) -> None:
    await open_sale(stock, sale, total=20)
    ids = [(await stock.reserve(sale, f"u{i}")).reservation_id for i in range(9)]  # many share a millisecond
    await asyncio.sleep(2.0)
    young = await stock.reserve(sale, "young")
    view = await stock.suspects(sale, 0, None, 100)
    assert view.snapshot is not None and (view.snapshot.pending, view.young) == (10, 0)
    rec = await stock.reservation(sale, young.reservation_id)
    assert rec is not None
    grace = await stock.now_ms() - rec.reserved_at_ms + 1000  # the nine are old, the last one is young
    seen: list[str] = []
    after = None
    while True:
        view = await stock.suspects(sale, grace, after, 2)
        assert view.young == 1  # younger than the grace period: counted, never listed
        seen += [rid for rid, _ in view.window]
        if len(view.window) < 2:
            break
        after = (view.window[-1][1], view.window[-1][0])
        if len(seen) == 4:
            await stock.confirm(sale, [after[1]])  # the cursor's entry leaves the set: the walk goes on after it
    assert len(seen) == len(set(seen)) and set(seen) == set(ids)
    assert (await stock.suspects(f"{sale}-none", 0, None, 10)).snapshot is None
