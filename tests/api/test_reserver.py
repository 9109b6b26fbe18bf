"""The per-process reserve coalescer gives exactly the answers of ``StockEngine.reserve``, survives a
flushed script cache, and turns a dead Redis into DependencyUnavailable."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from stampede import errors
from stampede.stock import Reservation, ReserveCall, SaleConfig, StockEngine, reserve_call
from stampede_api.reserver import ReserveCoalescer
from tests.stores import redis_client

pytestmark = pytest.mark.redis


async def test_concurrent_reserves_are_pipelined_and_typed(stock: StockEngine, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=5, per_user_limit=2), open=True)
    co = ReserveCoalescer(stock)

    async def attempt(user: str, qty: int, key: str | None = None) -> Reservation | str:
        try:
            return await co.reserve(sale, user, qty, idempotency_key=key)
        except errors.StampedeError as exc:
            return exc.code

    answers = await asyncio.gather(
        attempt("a", 2, "k"),
        attempt("a", 2, "k"),  # replay of the line above, in the same pipeline
        attempt("a", 1, "k"),  # same key, different quantity
        attempt("a", 1),  # over the limit of 2
        attempt("b", 2),
        attempt("c", 2),  # only 1 left
        attempt("c", 1),
    )
    first, replay, conflict, limit, b, sold_out, c = answers
    assert isinstance(first, Reservation) and isinstance(replay, Reservation), answers
    assert first.replay is False and first.remaining == 3
    assert replay.replay is True and replay.reservation_id == first.reservation_id
    assert (conflict, limit, sold_out) == ("idempotency_conflict", "limit_reached", "sold_out")
    assert isinstance(b, Reservation) and isinstance(c, Reservation), answers
    assert b.remaining == 1 and c.remaining == 0
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending) == (0, 5) and snap.balanced
    assert await attempt("d", 1) == "sold_out"
    await stock.set_open(sale, False)
    assert await attempt("d", 1) == "sale_closed"
    assert await attempt("d", 1) == "sale_closed"
    with pytest.raises(errors.SaleNotFound):
        await co.reserve("never-" + sale, "d", 1)
    with pytest.raises(errors.InvalidArgument):
        await co.reserve("Bad Name", "d", 1)


async def test_survives_a_flushed_script_cache(stock: StockEngine, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=10, per_user_limit=10), open=True)
    co = ReserveCoalescer(stock)
    await co.reserve(sale, "a", 1)
    await redis_client(stock).script_flush()
    got = await asyncio.gather(*(co.reserve(sale, "a", 1) for _ in range(3)))
    assert [r.remaining for r in got] == [8, 7, 6]


async def test_dead_redis_is_dependency_unavailable() -> None:
    dead = StockEngine.from_url("redis://127.0.0.1:1/0")
    co = ReserveCoalescer(dead)
    with pytest.raises(errors.DependencyUnavailable):
        await co.reserve("some-sale", "a", 1)
    await dead.close()


def test_hand_packed_commands_match_redis_py() -> None:
    from redis.asyncio.connection import Connection

    from stampede.stock import resp_command as _resp

    args = ("EVALSHA", "0" * 40, 7, "stampede:{s}:meta", "", "buyer-é", 3, "idem key")
    assert _resp(args) == b"".join(Connection().pack_command(*args))


async def test_sold_out_is_remembered_briefly_but_never_for_keyed_requests(stock: StockEngine, sale: str) -> None:
    await stock.seed(sale, SaleConfig(total=1, per_user_limit=1), open=True)
    co = ReserveCoalescer(stock, sold_out_cache_ms=200)
    first = await co.reserve(sale, "a", 1, idempotency_key="k")
    with pytest.raises(errors.SoldOut):
        await co.reserve(sale, "b", 1)  # asks Redis, learns the sale is empty
    await stock.release(sale, [first.reservation_id])  # a unit comes back
    with pytest.raises(errors.SoldOut):
        await co.reserve(sale, "c", 1)  # answered from memory: still within 200 ms
    replay = await co.reserve(sale, "a", 1, idempotency_key="k")  # a keyed request always asks Redis
    assert replay.replay and replay.reservation_id == first.reservation_id
    await asyncio.sleep(0.25)
    got = await co.reserve(sale, "c", 1)  # memory expired: Redis has the unit again
    assert got.remaining == 0


async def test_a_kept_connection_the_server_closed_is_replaced_before_a_batch_is_written(
    redis_url: str, services: dict[str, str], sale: str
) -> None:
    """The reserve pipe keeps its connection between batches (no pool checkout per batch); when Redis closes
    it while idle (a restart, an idle timeout, CLIENT KILL), the next batch goes on a fresh connection and
    every buyer in it is answered, none refused for a connection nobody was using."""
    single = redis_url if redis_url.startswith("redis://") else f"redis://127.0.0.1:{services['STAMPEDE_REDIS_PORT']}/1"
    name = f"kept-{uuid.uuid4().hex[:12]}"
    stock = StockEngine.from_url(f"{single}?client_name={name}")
    admin = aioredis.Redis.from_url(single)
    try:
        await stock.seed(sale, SaleConfig(total=10, per_user_limit=10), open=True)
        co = ReserveCoalescer(stock)
        assert (await co.reserve(sale, "a", 1)).remaining == 9
        mine = [c["id"] for c in await admin.client_list() if c.get("name") == name]
        assert mine  # at least the kept reserve connection
        for client_id in mine:
            await admin.client_kill_filter(_id=client_id)
        await asyncio.sleep(0.2)  # the kept connection's reader takes in the end of the stream
        got = await asyncio.gather(*(co.reserve(sale, f"b{i}", 1) for i in range(3)))
        assert {r.remaining for r in got} == {6, 7, 8}
        snap = await stock.snapshot(sale)
        assert (snap.remaining, snap.pending) == (6, 4) and snap.balanced
    finally:
        await admin.aclose()
        await stock.close()


async def test_a_call_that_cannot_be_encoded_is_answered_alone(
    stock: StockEngine, sale: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only non-ASCII strings are test-encoded before a batch is sent; one that cannot be (a lone surrogate
    a bug let through) is refused on its own and its neighbours in the same pipeline are reserved."""
    await stock.seed(sale, SaleConfig(total=10, per_user_limit=10), open=True)

    def with_a_bad_one(sale_: str, user: str, quantity: int, **kw: Any) -> ReserveCall:
        call = reserve_call(sale_, user, quantity, **kw)
        if user == "bad":
            call = dataclasses.replace(call, args=[call.args[0], "bad\ud800", *call.args[2:]])
        return call

    monkeypatch.setattr("stampede_api.reserver.reserve_call", with_a_bad_one)
    co = ReserveCoalescer(stock)
    first, bad, last = await asyncio.gather(
        co.reserve(sale, "good-1", 1), co.reserve(sale, "bad", 1), co.reserve(sale, "good-2", 1), return_exceptions=True
    )
    assert isinstance(bad, errors.InvalidArgument)
    assert not isinstance(first, BaseException) and not isinstance(last, BaseException)
    assert {first.remaining, last.remaining} == {8, 9}
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending) == (8, 2) and snap.balanced
