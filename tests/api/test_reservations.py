"""The buy and its refusals through Falcon's ASGI conductor, against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from falcon import testing

from stampede.ledger import Ledger
from stampede.stock import StockEngine

if TYPE_CHECKING:
    from tests.api.conftest import Headers, Minter, Opener

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def url(sale: str) -> str:
    return f"/v1/sales/{sale}/reservations"


async def test_reserve_is_durable_before_202(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, ledger: Ledger, stock: StockEngine
) -> None:
    await opener(sale, total=5, limit=2)
    r = await client.simulate_post(url(sale), json={"quantity": 2}, headers=headers("alice"))
    assert r.status_code == 202, r.text
    body = r.json
    assert body["status"] == "pending" and body["quantity"] == 2 and body["sale"] == sale
    rid = body["reservation_id"]
    assert r.headers["location"] == f"/v1/reservations/{rid}"
    assert r.headers["x-request-id"]
    row = await ledger.get_reservation(rid)
    assert row is not None and (row.status, row.user, row.quantity) == ("pending", "alice", 2)
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending) == (3, 2)


async def test_quantity_defaults_to_one_and_request_id_is_echoed(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str
) -> None:
    await opener(sale)
    r = await client.simulate_post(url(sale), json={}, headers={**headers("bob"), "X-Request-ID": "abc-123"})
    assert r.status_code == 202 and r.json["quantity"] == 1
    assert r.headers["x-request-id"] == "abc-123"


async def test_get_reservation_only_for_its_buyer(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str
) -> None:
    await opener(sale)
    rid = (await client.simulate_post(url(sale), json={"quantity": 1}, headers=headers("carol"))).json["reservation_id"]
    mine = await client.simulate_get(f"/v1/reservations/{rid}", headers=headers("carol"))
    assert mine.status_code == 200
    assert mine.json["status"] == "pending" and mine.json["reservation_id"] == rid and mine.json["settled_at"] is None
    other = await client.simulate_get(f"/v1/reservations/{rid}", headers=headers("mallory"))
    assert other.status_code == 404 and other.json["error"]["code"] == "reservation_not_found"
    unknown = await client.simulate_get(f"/v1/reservations/{uuid.uuid4()}", headers=headers("carol"))
    assert unknown.status_code == 404
    garbage = await client.simulate_get("/v1/reservations/not-a-uuid", headers=headers("carol"))
    assert garbage.status_code == 404
    anonymous = await client.simulate_get(f"/v1/reservations/{rid}")
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("make_header", "status", "code"),
    [
        (lambda mint: {}, 401, "unauthorized"),
        (lambda mint: {"Authorization": "Basic Zm9vOmJhcg=="}, 401, "unauthorized"),
        (lambda mint: {"Authorization": "Bearer not.a.jwt"}, 401, "unauthorized"),
        (lambda mint: {"Authorization": "Bearer " + mint("u", ttl_s=60, now=1_000_000)}, 401, "unauthorized"),
        (lambda mint: {"Authorization": "Bearer " + mint("u", audience="someone-else")}, 401, "unauthorized"),
        (lambda mint: {"Authorization": "Bearer " + mint("u", ttl_s=86_400)}, 401, "unauthorized"),
        (lambda mint: {"Authorization": "Bearer " + mint("u", scope="read")}, 403, "forbidden"),
    ],
    ids=["missing", "not-bearer", "garbage", "expired", "wrong-audience", "too-long-lived", "no-buy-scope"],
)
async def test_token_refusals(
    client: testing.ASGIConductor,
    opener: Opener,
    sale: str,
    mint: Minter,
    make_header: Callable[[Minter], dict[str, str]],
    status: int,
    code: str,
) -> None:
    await opener(sale)
    r = await client.simulate_post(url(sale), json={"quantity": 1}, headers=make_header(mint))
    assert r.status_code == status, r.text
    assert r.json["error"]["code"] == code
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_badly_signed_token_is_401(client: testing.ASGIConductor, opener: Opener, sale: str) -> None:
    from stampede import tokens

    await opener(sale)
    forged = tokens.mint("another-secret-" + "x" * 32, "alice")
    r = await client.simulate_post(url(sale), json={"quantity": 1}, headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"body": b'{"quantity": 1}', "content_type": "text/plain"}, 415, "Content-Type"),
        ({"body": b"{not json", "content_type": "application/json"}, 400, "body"),
        ({"body": b"[1]", "content_type": "application/json"}, 400, "body"),
        ({"body": b"", "content_type": "application/json"}, 400, "body"),
        ({"json": {"quantity": "1"}}, 400, "quantity"),
        ({"json": {"quantity": 1.5}}, 400, "quantity"),
        ({"json": {"quantity": True}}, 400, "quantity"),
        ({"json": {"quantity": 0}}, 400, "quantity"),
        ({"json": {"quantity": 10_000}}, 400, "quantity"),
        ({"json": {"quantity": 1, "user": "bob"}}, 400, "user"),
        ({"body": b'{"quantity": 1, "pad": "' + b"x" * 5000 + b'"}', "content_type": "application/json"}, 413, None),
    ],
    ids=["415", "malformed", "not-object", "empty", "string", "float", "bool", "zero", "huge", "unknown", "413"],
)
async def test_body_refusals_name_the_field(
    client: testing.ASGIConductor,
    opener: Opener,
    headers: Headers,
    sale: str,
    kwargs: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    await opener(sale)
    h = headers("dave")
    if "content_type" in kwargs:
        h["Content-Type"] = kwargs.pop("content_type")
    r = await client.simulate_post(url(sale), headers=h, **kwargs)
    assert r.status_code == status, r.text
    assert set(r.json) == {"error"}
    if field is not None:
        assert r.json["error"]["field"] == field


async def test_bad_idempotency_key_is_400(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str
) -> None:
    await opener(sale)
    r = await client.simulate_post(
        url(sale), json={"quantity": 1}, headers={**headers("erin"), "Idempotency-Key": "x" * 300}
    )
    assert r.status_code == 400 and r.json["error"]["field"] == "Idempotency-Key"


async def test_domain_refusals_have_distinct_codes(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, stock: StockEngine
) -> None:
    await opener(sale, total=2, limit=1)
    assert (await client.simulate_post(url(sale), json={"quantity": 1}, headers=headers("a"))).status_code == 202
    limit = await client.simulate_post(url(sale), json={"quantity": 1}, headers=headers("a"))
    assert (limit.status_code, limit.json["error"]["code"]) == (409, "limit_reached")
    assert (await client.simulate_post(url(sale), json={"quantity": 1}, headers=headers("b"))).status_code == 202
    sold = await client.simulate_post(url(sale), json={"quantity": 1}, headers=headers("c"))
    assert (sold.status_code, sold.json["error"]["code"]) == (409, "sold_out")
    await opener(sale + "-c", total=2, is_open=False)
    closed = await client.simulate_post(url(sale + "-c"), json={"quantity": 1}, headers=headers("d"))
    assert (closed.status_code, closed.json["error"]["code"]) == (409, "sale_closed")
    unknown = await client.simulate_post(url("no-such-sale-" + sale), json={"quantity": 1}, headers=headers("d"))
    assert (unknown.status_code, unknown.json["error"]["code"]) == (404, "sale_not_found")
    invalid = await client.simulate_post(url("Not_A_Sale"), json={"quantity": 1}, headers=headers("d"))
    assert invalid.status_code == 404


async def test_rate_limit_is_429_with_retry_after(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str
) -> None:
    await opener(sale, total=100, limit=100, buyer_rate=0.5, buyer_burst=2)
    codes = [
        (await client.simulate_post(url(sale), json={"quantity": 1}, headers=headers("greedy"))).status_code
        for _ in range(3)
    ]
    assert codes == [202, 202, 429]
    r = await client.simulate_post(url(sale), json={"quantity": 1}, headers=headers("greedy"))
    assert r.status_code == 429 and r.json["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1


async def test_idempotent_replay_returns_the_same_reservation(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, ledger: Ledger
) -> None:
    await opener(sale, total=5, limit=1)
    h = {**headers("frank"), "Idempotency-Key": "order-1"}
    first = await client.simulate_post(url(sale), json={"quantity": 1}, headers=h)
    again = await client.simulate_post(url(sale), json={"quantity": 1}, headers=h)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json["reservation_id"] == first.json["reservation_id"]
    assert again.headers["idempotent-replayed"] == "true"
    conflict = await client.simulate_post(url(sale), json={"quantity": 2}, headers=h)
    assert (conflict.status_code, conflict.json["error"]["code"]) == (409, "idempotency_conflict")
    assert (await ledger.counts(sale))["pending"] == 1


async def test_concurrent_replays_record_once(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, ledger: Ledger
) -> None:
    await opener(sale, total=5, limit=1)
    h = {**headers("gina"), "Idempotency-Key": "same-key"}
    answers = await asyncio.gather(
        *(client.simulate_post(url(sale), json={"quantity": 1}, headers=h) for _ in range(8))
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 7 + [202]
    assert len({a.json["reservation_id"] for a in answers}) == 1
    rows = await ledger.rows(sale)
    assert len(rows) == 1


async def test_sale_view(client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str) -> None:
    await opener(sale, total=3, limit=3)
    await client.simulate_post(url(sale), json={"quantity": 2}, headers=headers("hal"))
    r = await client.simulate_get(f"/v1/sales/{sale}")
    assert r.status_code == 200
    assert {k: r.json[k] for k in ("phase", "stock", "remaining", "pending", "confirmed")} == {
        "phase": "Live",
        "stock": 3,
        "remaining": 1,
        "pending": 2,
        "confirmed": 0,
    }
    await client.simulate_post(url(sale), json={"quantity": 1}, headers=headers("ivy"))
    assert (await client.simulate_get(f"/v1/sales/{sale}")).json["phase"] == "SoldOut"
    assert (await client.simulate_get("/v1/sales/never-seeded-x")).status_code == 404


async def test_sale_phase_before_and_after(
    client: testing.ASGIConductor, opener: Opener, stock: StockEngine, sale: str
) -> None:
    await opener(sale, total=3, is_open=False)
    assert (await client.simulate_get(f"/v1/sales/{sale}")).json["phase"] == "Scheduled"
    await stock.set_open(sale, True)
    await stock.reserve(sale, "x", 1)
    await stock.set_open(sale, False)
    assert (await client.simulate_get(f"/v1/sales/{sale}")).json["phase"] == "Ended"


async def test_unknown_route_and_method_are_json(client: testing.ASGIConductor) -> None:
    r = await client.simulate_get("/nope")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    r = await client.simulate_delete("/v1/sales/x")
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed"
