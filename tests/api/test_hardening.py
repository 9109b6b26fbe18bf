"""Hostile and malformed input against the API in one process (real Redis and PostgreSQL): what a buyer
hands in is refused with a clear 4xx before it reaches Redis or SQL, and whatever goes wrong with one
entry of a micro-batch, every other buyer of that batch is answered and served."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

import jwt
import pytest
from falcon import testing
from redis.exceptions import ConnectionError as RedisConnectionError

from stampede import errors
from stampede.ledger import Ledger, PendingReservation
from stampede.stock import StockEngine
from stampede_api.app import build
from stampede_api.batcher import Batcher
from stampede_api.reserver import ReserveCoalescer, _Call
from stampede_api.settings import ApiSettings
from tests.stores import ledger_pool, redis_client, set_redis_client

from .conftest import SECRET

if TYPE_CHECKING:
    from tests.api.conftest import Headers, Opener

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

# A waiter that is never answered would hang the test: everything waits at most this long.
HANG_S = 10.0


def hostile_token(sub: str) -> dict[str, str]:
    """A validly signed token with any subject at all (PyJWT, so the subject is not checked on the way)."""
    now = int(time.time())
    claims = {"sub": sub, "iss": "stampede", "aud": "stampede-api", "scope": "buy", "iat": now, "exp": now + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@pytest.mark.parametrize("sub", ["x\ud800", "a\x00b", "tab\there", "two words", "caf\u00e9", "x" * 257, ""])
async def test_subject_outside_the_safe_set_is_401(
    client: testing.ASGIConductor, opener: Opener, sale: str, sub: str
) -> None:
    await opener(sale, total=5, limit=1)
    r = await asyncio.wait_for(
        client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=hostile_token(sub)),
        HANG_S,
    )
    assert r.status_code == 401, r.text
    assert r.json["error"]["code"] == "unauthorized"


async def test_hostile_subjects_never_hurt_the_buyers_sharing_their_batch(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, stock: StockEngine, ledger: Ledger
) -> None:
    """The review's probe: surrogate and NUL subjects in flight together with honest buyers."""
    await opener(sale, total=100, limit=1)
    hostile = [hostile_token("x\ud800"), hostile_token("nul\x00")] * 10
    honest = [headers(f"buyer-{i}") for i in range(40)]
    mixed = honest + hostile
    random.Random(7).shuffle(mixed)
    answers = await asyncio.wait_for(
        asyncio.gather(
            *(client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=h) for h in mixed)
        ),
        HANG_S * 3,
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 40 + [401] * 20
    assert len(await ledger.rows(sale)) == 40
    assert (await stock.snapshot(sale)).pending == 40


@pytest.mark.parametrize(("user", "field"), [("nul\\u0000", "userId"), ("x\\ud800", "body"), (" ", "userId")])
async def test_strategy_user_id_outside_the_safe_set_is_400(
    client: testing.ASGIConductor, sale: str, user: str, field: str
) -> None:
    body = b'{"productId": "%s", "userId": "%s"}' % (sale.encode(), user.encode())
    r = await client.simulate_post("/api/v4/buy", body=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json["error"]["field"] == field


async def test_reserve_flusher_answers_every_waiter_when_one_call_cannot_be_encoded(
    stock: StockEngine, opener: Opener, sale: str
) -> None:
    await opener(sale, total=50, limit=1)
    coalescer = ReserveCoalescer(stock)
    try:
        from stampede.stock import reserve_call

        bad = reserve_call(sale, "someone", 1)
        bad.args[1] = "x\ud800"  # what a subject with a lone surrogate became before it was refused
        loop = asyncio.get_running_loop()
        bad_call = _Call(bad, loop.create_future())
        honest = [asyncio.ensure_future(coalescer.reserve(sale, f"b{i}", 1)) for i in range(10)]
        coalescer._enqueue(bad_call)
        honest += [asyncio.ensure_future(coalescer.reserve(sale, f"c{i}", 1)) for i in range(10)]
        done = await asyncio.wait_for(asyncio.gather(*honest, return_exceptions=True), HANG_S)
        assert all(getattr(r, "state", None) == "pending" for r in done), done
        with pytest.raises(errors.StampedeError):
            await asyncio.wait_for(bad_call.future, HANG_S)
        assert (await stock.snapshot(sale)).pending == 20
    finally:
        await coalescer.close()


async def test_reserve_flusher_answers_every_waiter_on_any_exception_and_goes_on(
    stock: StockEngine, opener: Opener, sale: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await opener(sale, total=50, limit=1)
    coalescer = ReserveCoalescer(stock)
    real_send = stock._reserve_on
    calls = 0

    async def broken_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the flusher")
        return await real_send(*args)

    monkeypatch.setattr(stock, "_reserve_on", broken_once)
    try:
        first = await asyncio.wait_for(
            asyncio.gather(*(coalescer.reserve(sale, f"b{i}", 1) for i in range(8)), return_exceptions=True), HANG_S
        )
        assert all(isinstance(r, errors.DependencyUnavailable) for r in first), first
        after = await asyncio.wait_for(coalescer.reserve(sale, "later", 1), HANG_S)
        assert after.state == "pending"
    finally:
        await coalescer.close()


def _pending(sale: str, user: Any, rid: str | None = None) -> PendingReservation:
    return PendingReservation(
        reservation_id=rid or str(uuid.uuid4()),
        sale=sale,
        user=user,
        quantity=1,
        reserved_at_ms=int(time.time() * 1000),
    )


async def test_ledger_flusher_fails_only_the_entry_the_ledger_refuses(
    stock: StockEngine, ledger: Ledger, opener: Opener, sale: str
) -> None:
    """A NUL made PostgreSQL refuse the whole micro-batch (12 of 20 co-batched buyers got 503): the batch
    is written in halves until the refused entry stands alone."""
    await opener(sale, total=50, limit=1)
    batcher = Batcher(ledger, stock)
    good = [_pending(sale, f"g{i}") for i in range(15)]
    bad = _pending(sale, "nul\x00")
    entries = [*good[:7], bad, *good[7:]]
    answers = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(e) for e in entries), return_exceptions=True), HANG_S
    )
    refused = [a for a in answers if a is not None]
    assert len(refused) == 1 and isinstance(refused[0], errors.InvalidArgument), answers
    rows = {r.reservation_id for r in await ledger.rows(sale)}
    assert rows == {e.reservation_id for e in good}


class _Broken:
    """An entry with nothing a reservation has: a bug, as seen by the flusher."""

    reservation_id = "not-a-reservation"


async def test_ledger_flusher_answers_every_waiter_whatever_an_entry_breaks(
    stock: StockEngine, ledger: Ledger, opener: Opener, sale: str
) -> None:
    await opener(sale, total=50, limit=1)
    batcher = Batcher(ledger, stock)
    good = [_pending(sale, f"g{i}") for i in range(9)]
    entries: list[Any] = [*good[:4], _Broken(), *good[4:]]
    answers = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(e) for e in entries), return_exceptions=True), HANG_S
    )
    assert isinstance(answers[4], errors.StampedeError), answers
    assert answers[:4] + answers[5:] == [None] * 9, answers
    assert {r.reservation_id for r in await ledger.rows(sale)} == {e.reservation_id for e in good}
    later = _pending(sale, "later")
    await asyncio.wait_for(batcher.submit(later), HANG_S)  # the flusher is still alive
    assert later.reservation_id in {r.reservation_id for r in await ledger.rows(sale)}


async def test_idempotent_replays_spend_the_rate_limit(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str
) -> None:
    await opener(sale, total=10, limit=1, buyer_rate=1.0, buyer_burst=3)
    h = {**headers("replayer"), "Idempotency-Key": "same-key"}
    first = await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=h)
    assert first.status_code == 202, first.text
    codes = [
        (await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=h)).status_code
        for _ in range(10)
    ]
    assert codes[:2] == [200, 200]
    assert 429 in codes, codes


class _HdelFails:
    """The stock engine's Redis client, except that HDEL fails (the second of the two calls the failure
    path made) while ``failing`` is set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.failing = True

    async def hdel(self, *a: Any) -> Any:
        if self.failing:
            raise RedisConnectionError("connection lost")
        return await self.real.hdel(*a)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_failed_write_releases_and_forgets_the_key_in_one_step(
    api_settings: ApiSettings, stock: StockEngine, ledger: Ledger, opener: Opener, headers: Headers, sale: str
) -> None:
    """If the ledger write fails, the units go back and the idempotency key is forgotten together: a lost
    connection between two separate calls once left the key naming a released reservation, and every
    retry of that key answered 503."""
    from falcon import testing

    from .test_failures import FlakyLedger

    await opener(sale, total=3, limit=1)
    fl = FlakyLedger(ledger)
    own = StockEngine(redis_client(stock), ack_replicas=stock.ack_replicas)
    set_redis_client(own, _HdelFails(redis_client(stock)))
    app, _ = build(api_settings, own, cast(Ledger, fl))
    h = {**headers("retrier"), "Idempotency-Key": "retry-me"}
    async with testing.ASGIConductor(app) as client:
        fl.failing = True
        r = await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=h)
        assert r.status_code == 503, r.text
        fl.failing = False
        again = await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=h)
        assert again.status_code == 202, again.text


async def test_ledger_row_carries_the_redis_reserve_time(
    client: testing.ASGIConductor,
    opener: Opener,
    headers: Headers,
    sale: str,
    stock: StockEngine,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """reserved_at_ms is Redis's clock (the pending set's score), not the API host's."""
    await opener(sale, total=3, limit=1)
    h = headers("clock")
    skewed = time.time() - 3600  # an API host an hour behind
    monkeypatch.setattr("stampede_api.purchase.time.time", lambda: skewed)
    r = await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=h)
    monkeypatch.undo()
    assert r.status_code == 202, r.text
    rid = r.json["reservation_id"]
    record = await stock.reservation(sale, rid)
    assert record is not None
    async with ledger_pool(ledger).connection() as conn:
        cur = await conn.execute("SELECT reserved_at_ms FROM stampede_ledger WHERE reservation_id = %s", (rid,))
        row = await cur.fetchone()
    assert row is not None and row[0] == record.reserved_at_ms
    score = await redis_client(stock).zscore(f"stampede:{{{sale}}}:pending", rid)
    assert score is not None and int(score) == record.reserved_at_ms


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/_pool/stats?productId=x"), ("POST", "/api/_pool/buy")])
async def test_strategy_pool_is_not_a_route(client: testing.ASGIConductor, method: str, path: str) -> None:
    if method == "GET":
        r = await client.simulate_get(path.split("?")[0], query_string=path.split("?")[1])
    else:
        r = await client.simulate_post(path, json={"productId": "x", "userId": "u"})
    assert r.status_code == 404, r.text


async def test_duplicate_json_members_are_400(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, ledger: Ledger
) -> None:
    await opener(sale, total=5, limit=3)
    r = await client.simulate_post(
        f"/v1/sales/{sale}/reservations",
        body=b'{"quantity":1,"quantity":2}',
        headers={**headers("dup"), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json["error"]["field"] == "quantity"
    assert await ledger.rows(sale) == []


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/v1/sales/{sale}"])
async def test_head_answers_like_get_without_a_body(
    client: testing.ASGIConductor, opener: Opener, sale: str, path: str
) -> None:
    await opener(sale, total=5, limit=1)
    r = await client.simulate_head(path.format(sale=sale))
    assert r.status_code == 200, r.text
    assert r.content == b""


async def test_metrics_are_not_served_on_the_buyer_port(client: testing.ASGIConductor) -> None:
    assert (await client.simulate_get("/metrics")).status_code == 404


async def test_readiness_is_cached_briefly(api_settings: ApiSettings, stock: StockEngine, ledger: Ledger) -> None:
    pings = 0

    class CountingLedger:
        def __init__(self, real: Ledger) -> None:
            self.real = real

        async def ping(self) -> None:
            nonlocal pings
            pings += 1
            await self.real.ping()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    from falcon import testing

    app, _ = build(api_settings, stock, cast(Ledger, CountingLedger(ledger)))
    async with testing.ASGIConductor(app) as client:
        answers = await asyncio.gather(*(client.simulate_get("/readyz") for _ in range(50)))
        assert {a.status_code for a in answers} == {200}
    assert 1 <= pings <= 2, pings


async def test_public_sale_reads_are_rate_limited(
    client: testing.ASGIConductor, opener: Opener, sale: str, stock: StockEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await opener(sale, total=5, limit=1)
    snapshots = 0
    real = stock.snapshot

    async def counting(name: str) -> Any:
        nonlocal snapshots
        snapshots += 1
        return await real(name)

    monkeypatch.setattr(stock, "snapshot", counting)
    answers = [await client.simulate_get(f"/v1/sales/{sale}") for _ in range(200)]
    codes = [a.status_code for a in answers]
    assert codes[0] == 200
    limited = [a for a in answers if a.status_code == 429]
    assert limited, codes
    assert int(limited[0].headers["retry-after"]) >= 1
    assert snapshots < 200


async def test_client_ip_is_the_proxy_header_counted_from_the_right(
    api_settings: ApiSettings, stock: StockEngine, ledger: Ledger, opener: Opener, headers: Headers, sale: str
) -> None:
    """Behind one trusted proxy appending to X-Forwarded-For, a buyer's own Forwarded or X-Forwarded-For
    entries pick neither their bucket nor another address's."""
    from falcon import testing

    from stampede.settings import load

    behind = load(ApiSettings, env={}, **{**api_settings.__dict__, "trusted_proxy_hops": 1})
    await opener(sale, total=100, limit=100, ip_rate=0.5, ip_burst=2)
    app, _ = build(behind, stock, ledger)
    async with testing.ASGIConductor(app) as client:
        codes = []
        for i in range(4):
            spoof = {"Forwarded": f"for=198.51.100.{i}", "X-Forwarded-For": f"203.0.113.{i}, 10.1.2.3"}
            r = await client.simulate_post(
                f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers={**headers(f"s{i}"), **spoof}
            )
            codes.append(r.status_code)
        assert codes == [202, 202, 429, 429], codes
        # 203.0.113.0 was only ever a client-written entry: its own bucket is untouched.
        fresh = await client.simulate_post(
            f"/v1/sales/{sale}/reservations",
            json={"quantity": 1},
            headers={**headers("other"), "X-Forwarded-For": "203.0.113.0"},
        )
        assert fresh.status_code == 202, fresh.text
        bad = await client.simulate_post(
            f"/v1/sales/{sale}/reservations",
            json={"quantity": 1},
            headers={**headers("bad"), "X-Forwarded-For": "1.2.3.4, not-an-ip"},
        )
        assert bad.status_code == 400 and bad.json["error"]["field"] == "X-Forwarded-For", bad.text


@pytest.mark.parametrize(
    ("header", "hops", "sent", "expected"),
    [
        ("X-Forwarded-For", 0, {"X-Forwarded-For": "1.1.1.1"}, "10.0.0.1"),
        ("X-Forwarded-For", 1, {}, "10.0.0.1"),
        ("X-Forwarded-For", 1, {"X-Forwarded-For": "1.1.1.1, 2.2.2.2"}, "2.2.2.2"),
        ("X-Forwarded-For", 2, {"X-Forwarded-For": "1.1.1.1, 2.2.2.2, 3.3.3.3"}, "2.2.2.2"),
        ("X-Forwarded-For", 3, {"X-Forwarded-For": "2.2.2.2, 3.3.3.3"}, "2.2.2.2"),
        ("X-Forwarded-For", 1, {"X-Forwarded-For": "1.1.1.1", "Forwarded": "for=9.9.9.9"}, "1.1.1.1"),
        ("X-Forwarded-For", 1, {"X-Forwarded-For": "5.5.5.5:4711"}, "5.5.5.5"),
        ("X-Forwarded-For", 1, {"X-Forwarded-For": "2001:DB8::1"}, "2001:db8::1"),
        ("Forwarded", 1, {"Forwarded": 'for=1.1.1.1, for="[2001:db8::2]:80";proto=https'}, "2001:db8::2"),
        ("Forwarded", 1, {"Forwarded": "for=1.1.1.1", "X-Forwarded-For": "9.9.9.9"}, "1.1.1.1"),
    ],
)
def test_client_ip_reading(header: str, hops: int, sent: dict[str, str], expected: str) -> None:
    from falcon import testing

    from stampede_api.client_ip import client_ip

    req = testing.create_asgi_req(headers=sent, remote_addr="10.0.0.1")
    assert client_ip(req, header, hops) == expected
