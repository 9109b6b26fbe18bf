"""The waiting room through the API (Falcon's ASGI conductor, the project's Redis and PostgreSQL): joining,
polling, the admission token the buy endpoint asks for, every refusal with its code, and a crowd of
concurrent buyers (admitted, early, cheating) ending with the audit."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from typing import Any

import pytest
from falcon import testing

from stampede import admission
from stampede.audit import audit, counts_from
from stampede.ledger import Ledger
from stampede.stock import StockEngine
from stampede.vocabulary import Status
from stampede.waitroom import admission_violations
from stampede_api.app import build
from stampede_api.settings import ApiSettings

from .conftest import SECRET, auth, open_sale

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


async def _room(stock: StockEngine, sale: str, *, start_in_ms: int, rate: float, open_in_ms: int = -600_000) -> int:
    now = await stock.now_ms()
    await stock.room.configure(
        sale, on=True, open_ms=now + open_in_ms, start_ms=now + start_in_ms, end_ms=0, rate_per_s=rate
    )
    return now + start_in_ms


async def _join(client: testing.ASGIConductor, sale: str, user: str) -> Any:
    return await client.simulate_post(f"/v1/sales/{sale}/queue", headers=auth(user))


async def _poll(client: testing.ASGIConductor, sale: str, user: str, ticket: str) -> Any:
    return await client.simulate_get(f"/v1/sales/{sale}/queue/{ticket}", headers=auth(user))


async def _buy(client: testing.ASGIConductor, sale: str, user: str, token: str | None = None) -> Any:
    headers = auth(user)
    if token is not None:
        headers["Admission-Token"] = token
    return await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=headers)


async def test_join_poll_admit_and_buy(
    client: testing.ASGIConductor, stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    await open_sale(stock, ledger, sale, total=5)
    await _room(stock, sale, start_in_ms=400, rate=50)
    first = await _join(client, sale, "alice")
    assert first.status_code == 201, first.text
    body = first.json
    assert body["status"] == "waiting_for_start" and body["position"] is None
    assert int(first.headers["Retry-After"]) >= 1 and body["retry_after_ms"] >= 1
    assert first.headers["Location"] == f"/v1/sales/{sale}/queue/{body['ticket']}"
    hammer = await _join(client, sale, "alice")  # joining again is a poll: no way around the interval
    assert hammer.status_code == 429 and int(hammer.headers["Retry-After"]) >= 1

    no_token = await _buy(client, sale, "alice")
    assert no_token.status_code == 403 and no_token.json["error"]["code"] == "admission_required"

    await asyncio.sleep(0.6)
    polled = await _join(client, sale, "alice")  # one ticket per buyer: the same one, now admitted
    assert polled.status_code == 200, polled.text
    p = polled.json
    assert p["ticket"] == body["ticket"]
    assert p["status"] == "admitted" and p["position"] == 1 and p["ahead"] == 0
    assert "Retry-After" not in polled.headers
    token = p["admission_token"]
    replay = await _poll(client, sale, "alice", body["ticket"])
    assert replay.status_code == 429 and replay.json["error"]["code"] == "rate_limited"

    bob = (await _join(client, sale, "bob")).json
    assert bob["status"] == "queued" and bob["position"] == 2
    stolen = await _buy(client, sale, "bob", token)  # alice's token is alice's
    assert stolen.status_code == 403 and stolen.json["error"]["code"] == "admission_required"
    forged = await _buy(client, sale, "alice", token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    assert forged.status_code == 403 and forged.json["error"]["code"] == "admission_required"

    bought = await _buy(client, sale, "alice", token)
    assert bought.status_code == 202, bought.text
    row = await ledger.get_reservation(bought.json["reservation_id"])
    assert row is not None and row.user == "alice"


async def test_another_sales_token_and_an_expired_token_are_refused(
    client: testing.ASGIConductor, stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    await open_sale(stock, ledger, sale, total=5)
    await _room(stock, sale, start_in_ms=-1000, rate=1000)
    key = admission.derive_key(SECRET)
    now = await stock.now_ms()
    other = admission.mint(key, admission.Admission("another-sale", "carol", "t", now + 60_000))
    r = await _buy(client, sale, "carol", other)
    assert r.status_code == 403 and r.json["error"]["code"] == "admission_required"
    old = admission.mint(key, admission.Admission(sale, "carol", "t", now - 1))
    r = await _buy(client, sale, "carol", old)
    assert r.status_code == 403 and r.json["error"]["code"] == "admission_expired"
    assert (await stock.snapshot(sale)).pending == 0


async def test_admission_expires_after_its_time(
    api_settings: ApiSettings, stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    """An API whose admissions last a second: the token it hands out stops buying after that second, and
    polling again gives no second admission."""
    settings = dataclasses.replace(api_settings, admission_token_ttl_s=1, queue_poll_interval_ms=1)
    app, _ = build(settings, stock, ledger)
    async with testing.ASGIConductor(app) as short:
        await open_sale(stock, ledger, sale, total=5)
        await _room(stock, sale, start_in_ms=-1000, rate=1000)
        ticket = (await _join(short, sale, "dave")).json["ticket"]
        await asyncio.sleep(0.05)
        token = (await _poll(short, sale, "dave", ticket)).json["admission_token"]
        await asyncio.sleep(1.2)
        late = await _buy(short, sale, "dave", token)
        assert late.status_code == 403 and late.json["error"]["code"] == "admission_expired"
        again = await _poll(short, sale, "dave", ticket)
        assert again.status_code == 200 and again.json["status"] == "expired"
        assert "admission_token" not in again.json


async def test_refusals_of_the_room(
    client: testing.ASGIConductor, stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    await open_sale(stock, ledger, sale, total=1)
    no_room = await _join(client, sale, "erin")
    assert no_room.status_code == 404 and no_room.json["error"]["code"] == "no_waiting_room"
    assert (await _buy(client, sale, "erin")).status_code == 202  # no room: buy directly
    await _room(stock, sale, start_in_ms=60_000, rate=1, open_in_ms=30_000)
    early = await _join(client, sale, "frank")
    assert early.status_code == 409 and early.json["error"]["code"] == "queue_not_open"
    assert 20 <= int(early.headers["Retry-After"]) <= 30
    missing = await _poll(client, sale, "frank", "no-such-ticket")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "ticket_not_found"
    bad = await _poll(client, sale, "frank", "bad%20ticket!")
    assert bad.status_code == 404
    unknown = await _join(client, "no-such-sale-x", "frank")
    assert unknown.status_code == 404
    unauth = await client.simulate_post(f"/v1/sales/{sale}/queue")
    assert unauth.status_code == 401
    await _room(stock, sale, start_in_ms=-10, rate=1)
    sold = await _join(client, sale, "frank")  # erin bought the only unit
    assert sold.status_code == 409 and sold.json["error"]["code"] == "sold_out"


async def test_a_crowd_sells_out_only_to_admitted_buyers(
    client: testing.ASGIConductor, stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    """120 buyers join before the start and 40 cheaters buy without (or with a forged) token, all at once;
    the room admits 200/s; 50 units sell out to admitted buyers only, nobody is admitted twice, and the
    audit of Redis against the ledger is clean."""
    units = 50
    await open_sale(stock, ledger, sale, total=units)
    await _room(stock, sale, start_in_ms=1500, rate=200)
    buyers = [f"buyer-{i}" for i in range(120)]
    accepted: list[str] = []
    codes: Counter[str] = Counter()

    async def buyer(user: str) -> None:
        r = await _join(client, sale, user)
        assert r.status_code == 201, r.text
        body = r.json
        while body["status"] not in ("admitted", "expired"):
            await asyncio.sleep(body.get("retry_after_ms", 200) / 1000)
            r = await _poll(client, sale, user, body["ticket"])
            if r.status_code == 409:
                codes["poll_sold_out"] += 1
                return
            if r.status_code == 429:
                codes["poll_too_soon"] += 1
                continue
            assert r.status_code == 200, r.text
            body = r.json
        b = await _buy(client, sale, user, body["admission_token"])
        codes[f"buy_{b.status_code}"] += 1
        if b.status_code == 202:
            accepted.append(b.json["reservation_id"])
        else:
            assert b.status_code == 409 and b.json["error"]["code"] == "sold_out", b.text

    async def cheater(i: int) -> None:
        for _ in range(10):
            token = None if i % 2 else "a1.e30.AAAA"
            b = await _buy(client, sale, f"cheater-{i}", token)
            codes[f"cheat_{b.status_code}"] += 1
            assert b.status_code in (403, 409), b.text
            await asyncio.sleep(0.2)

    await asyncio.gather(*(buyer(u) for u in buyers), *(cheater(i) for i in range(40)))
    assert len(accepted) == units, codes
    assert codes["cheat_403"] > 0 and codes["cheat_202"] == 0
    rows = await ledger.rows(sale)  # every 202 was written before it was sent; no worker settles them here
    snap = await stock.snapshot(sale)
    report = audit(
        sale, stock=units, per_user_limit=1, accepted=accepted, rows=rows, redis=counts_from(snap), settled=False
    )
    assert report.ok, report.render()
    assert snap.remaining == 0
    held_by = [r.user for r in rows if r.status in (Status.CONFIRMED, Status.PENDING)]
    assert admission_violations(held_by, await stock.room.admitted(sale)) == []
    assert not any(u.startswith("cheater-") for u in held_by)
