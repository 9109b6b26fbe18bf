"""Property-based: random programs of reserve/confirm/release, run in random concurrent groups against the
real Redis, never break the invariants; run one at a time they match a plain Python model exactly."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stampede import errors
from stampede.stock import Outcome, Reservation, SaleConfig, StockEngine

pytestmark = pytest.mark.redis

USERS = ["ann", "bob", "cid", "dee"]


@dataclass(frozen=True)
class Op:
    kind: str  # reserve | confirm | release
    user: str = ""
    qty: int = 1
    target: int = 0  # index into the reservations made so far


ops = st.one_of(
    st.builds(Op, st.just("reserve"), st.sampled_from(USERS), st.integers(1, 3)),
    st.builds(Op, st.sampled_from(["confirm", "release"]), target=st.integers(0, 30)),
)


async def run(stock: StockEngine, sale: str, op: Op, made: list[str]) -> object:
    if op.kind == "reserve":
        try:
            return await stock.reserve(sale, op.user, op.qty)
        except (errors.SoldOut, errors.LimitReached) as exc:
            return exc
    if not made:
        return None
    rid = made[op.target % len(made)]
    return await (stock.confirm if op.kind == "confirm" else stock.release)(sale, [rid])


async def check_invariants(stock: StockEngine, sale: str, total: int, limit: int, buyer_of: dict[str, str]) -> None:
    snap = await stock.snapshot(sale)
    records = await stock.reservations(sale)
    assert snap.balanced
    assert snap.total == total
    assert 0 <= snap.remaining <= total
    by_state: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for r in records:
        by_state[r.state] += r.quantity
        if r.state != "released":
            held[buyer_of[r.reservation_id]] += r.quantity  # settled records in Redis keep no buyer
    assert (by_state["pending"], by_state["confirmed"]) == (snap.pending, snap.confirmed)
    assert by_state["pending"] + by_state["confirmed"] <= total
    assert all(n <= limit for n in held.values())
    assert snap.pending_count == sum(1 for r in records if r.state == "pending")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    program=st.lists(st.lists(ops, min_size=1, max_size=8), min_size=1, max_size=8),
    total=st.integers(0, 12),
    limit=st.integers(1, 4),
)
async def test_random_interleavings_keep_the_invariant(
    stock: StockEngine, program: list[list[Op]], total: int, limit: int
) -> None:
    sale = f"p-{uuid.uuid4().hex[:12]}"
    await stock.seed(sale, SaleConfig(total=total, per_user_limit=limit), open=True)
    made: list[str] = []
    buyer_of: dict[str, str] = {}
    for group in program:
        # Each group's operations are in flight together; Redis orders them as it likes.
        results = await asyncio.gather(*(run(stock, sale, op, list(made)) for op in group))
        made += [r.reservation_id for r in results if hasattr(r, "reservation_id")]
        buyer_of.update({r.reservation_id: r.user for r in results if isinstance(r, Reservation)})
        await check_invariants(stock, sale, total, limit, buyer_of)
    await stock.delete(sale)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=st.lists(ops, min_size=1, max_size=30), total=st.integers(0, 10), limit=st.integers(1, 3))
async def test_sequential_programs_match_the_model(
    stock: StockEngine, program: list[Op], total: int, limit: int
) -> None:
    sale = f"m-{uuid.uuid4().hex[:12]}"
    await stock.seed(sale, SaleConfig(total=total, per_user_limit=limit), open=True)
    remaining = total
    state: dict[str, tuple[str, str, int]] = {}  # id -> (state, user, qty)
    made: list[str] = []
    for op in program:
        out = await run(stock, sale, op, made)
        if op.kind == "reserve":
            held = sum(q for s, u, q in state.values() if u == op.user and s != "released")
            if held + op.qty > limit:
                assert isinstance(out, errors.LimitReached)
            elif remaining < op.qty:
                assert isinstance(out, errors.SoldOut)
            else:
                assert not isinstance(out, Exception)
                assert isinstance(out, Reservation)
                rid = out.reservation_id
                made.append(rid)
                state[rid] = ("pending", op.user, op.qty)
                remaining -= op.qty
        elif made:
            rid = made[op.target % len(made)]
            cur, user, qty = state[rid]
            assert isinstance(out, dict)
            outcome = out[rid]
            if op.kind == "confirm":
                expected = {"pending": Outcome.CONFIRMED, "confirmed": Outcome.ALREADY, "released": Outcome.RELEASED}
                assert outcome == expected[cur]
                if cur == "pending":
                    state[rid] = ("confirmed", user, qty)
            else:
                expected = {
                    "pending": Outcome.RELEASED,
                    "confirmed": Outcome.REFUSED_CONFIRMED,
                    "released": Outcome.ALREADY,
                }
                assert outcome == expected[cur]
                if cur == "pending":
                    state[rid] = ("released", user, qty)
                    remaining += qty
    snap = await stock.snapshot(sale)
    assert snap.remaining == remaining
    assert snap.confirmed == sum(q for s, _, q in state.values() if s == "confirmed")
    await check_invariants(stock, sale, total, limit, {rid: user for rid, (_, user, _) in state.items()})
    await stock.delete(sale)
