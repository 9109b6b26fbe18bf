"""The live sale page's server side: its settings (demo buyers refused in production), its routes, the SSE
samples read from the real Redis and ledger (equal to what the audit reads), and the shared sampler."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from falcon import testing

from stampede.ledger import Ledger
from stampede.settings import SettingsError, load
from stampede.stock import SaleConfig, Snapshot, StockEngine, counter_fields
from stampede_api.app import build
from stampede_api.auth import Authenticator
from stampede_api.live_feed import Feed, countdown, phase
from stampede_api.settings import ApiSettings

from .conftest import auth

if TYPE_CHECKING:
    from tests.api.conftest import Api

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

DEV = {"live_page": True, "demo_buyers": True, "environment": "development"}


# --- settings -----------------------------------------------------------------------------------------


def test_demo_buyers_are_refused_in_production(api_settings: ApiSettings) -> None:
    base = dataclasses.asdict(api_settings)
    with pytest.raises(SettingsError, match="STAMPEDE_ENVIRONMENT=development"):
        load(ApiSettings, env={}, **{**base, "live_page": True, "demo_buyers": True})
    with pytest.raises(SettingsError, match="STAMPEDE_ENVIRONMENT=development"):
        load(
            ApiSettings,
            env={"STAMPEDE_DEMO_BUYERS": "true", "STAMPEDE_LIVE_PAGE": "true", "STAMPEDE_JWT_SECRET": "s" * 40},
        )
    with pytest.raises(SettingsError, match="STAMPEDE_LIVE_PAGE"):
        load(ApiSettings, env={}, **{**base, "demo_buyers": True, "environment": "development"})
    with pytest.raises(SettingsError, match="STAMPEDE_ENVIRONMENT must be"):
        load(ApiSettings, env={}, **{**base, "environment": "staging"})
    assert load(ApiSettings, env={}, **{**base, **DEV}).demo_buyers


# --- pure parts ---------------------------------------------------------------------------------------


def snap(remaining: int, *, open_: bool = True, reservations: int = 0) -> Snapshot:
    return Snapshot("s", 10, remaining, 0, 10 - remaining, 0, open_, 1, 0, reservations)


def test_phase_and_countdown_follow_the_window() -> None:
    now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    start, end = now + dt.timedelta(minutes=1), now + dt.timedelta(hours=1)
    assert phase(snap(10, open_=False), start, end, now) == "Scheduled"
    assert countdown("Scheduled", start, end, now) == {"to": "start", "seconds": 60.0}
    past = now - dt.timedelta(minutes=1)
    assert phase(snap(4), past, end, now) == "Live"
    assert countdown("Live", past, end, now) == {"to": "end", "seconds": 3600.0}
    assert phase(snap(0), past, end, now) == "SoldOut"
    assert phase(snap(4), past - dt.timedelta(hours=2), past, now) == "Ended"
    assert countdown("Ended", past, past, now) is None
    # No window mirrored in the ledger: Redis alone, as GET /v1/sales/{sale} answers.
    assert phase(snap(4, open_=False, reservations=3), None, None, now) == "Ended"
    assert phase(snap(10, open_=False), None, None, now) == "Scheduled"


def test_every_counter_of_the_meta_hash_is_listed_and_configuration_is_not() -> None:
    flat = ["total", "5", "remaining", "2", "held", "3", "open", "1", "limit", "2", "run", "a1b2", "pending_count", 1]
    assert counter_fields(flat) == {"total": 5, "remaining": 2, "held": 3, "pending_count": 1}


async def test_one_sampler_serves_every_stream_and_stops_when_none_is_left() -> None:
    calls = 0

    async def sample() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"n": calls}

    feed = Feed(sample, 0.05)
    until = time.monotonic() + 0.5

    async def read() -> list[int]:
        return [s["n"] async for s in feed.stream(until)]

    a, b = await asyncio.gather(read(), read())
    assert a and b
    assert a[-1] == b[-1] == calls  # both saw the newest sample of the one sampler
    assert calls <= 0.5 / 0.05 + 2  # one sampler, not one per stream
    await asyncio.sleep(0.15)
    stopped = calls
    await asyncio.sleep(0.15)
    assert calls == stopped  # nobody reads: nothing samples
    assert feed.readers == 0
    # A stream opened later sees a fresh sample first, never the one left from before the feed went idle.
    first = await anext(feed.stream(time.monotonic() + 0.3))
    assert first["n"] == stopped + 1


# --- the routes against the real stores ------------------------------------------------------------------


@pytest.fixture
async def live_client(api_settings: ApiSettings, stock: StockEngine, ledger: Ledger) -> AsyncIterator[Api]:
    cfg = load(
        ApiSettings,
        env={},
        **{
            **dataclasses.asdict(api_settings),
            **DEV,
            "live_interval_ms": 50,
            "live_stream_s": 0.4,
            "live_max_streams": 2,
        },
    )
    app, services = build(cfg, stock, ledger)
    async with testing.ASGIConductor(app) as conductor:
        yield conductor, services


def events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


async def test_routes_are_absent_unless_the_page_is_on(client: testing.ASGIConductor) -> None:
    for path in ("/live", "/live/sales/x", "/live/events"):
        assert (await client.simulate_get(path)).status_code == 404
    assert (await client.simulate_post("/live/demo-token")).status_code == 404


async def test_openapi_lists_the_live_routes_only_when_on(live_client: Api, client: testing.ASGIConductor) -> None:
    on = (await live_client[0].simulate_get("/openapi.json")).json["paths"]
    assert {"/live", "/live/events", "/live/sales/{sale}", "/live/sales/{sale}/events", "/live/demo-token"} <= set(on)
    off = (await client.simulate_get("/openapi.json")).json["paths"]
    assert not [p for p in off if p.startswith("/live")]


async def test_page_assets_and_unknown_names(live_client: Api, stock: StockEngine, sale: str) -> None:
    client, _ = live_client
    await stock.seed(sale, SaleConfig(total=5), open=True)
    page = await client.simulate_get(f"/live/sales/{sale}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f'data-sale="{sale}"' in page.text and 'data-demo="on"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert (await client.simulate_get("/live")).status_code == 200
    assert (await client.simulate_get("/live/assets/live.js")).headers["content-type"].startswith("text/javascript")
    assert (await client.simulate_get("/live/assets/live.css")).status_code == 200
    assert (await client.simulate_get("/live/assets/..%2Fapp.py")).status_code == 404
    unknown = await client.simulate_get("/live/sales/no-such-sale")
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "sale_not_found"
    bad = await client.simulate_get("/live/sales/Bad_Name/events")
    assert bad.status_code == 404 and "error" in bad.json


async def test_demo_token_buys_through_the_real_path(live_client: Api, stock: StockEngine, sale: str) -> None:
    client, services = live_client
    await stock.seed(sale, SaleConfig(total=5), open=True)
    got = await client.simulate_post("/live/demo-token")
    assert got.status_code == 200
    assert got.json["buyer"].startswith("demo-") and got.json["expires_in"] <= 600
    assert Authenticator(services.settings).verify(got.json["token"]).id == got.json["buyer"]
    bought = await client.simulate_post(
        f"/v1/sales/{sale}/reservations",
        json={"quantity": 1},
        headers={"Authorization": f"Bearer {got.json['token']}", "Idempotency-Key": "demo-1"},
    )
    assert bought.status_code == 202, bought.text


async def test_stream_samples_equal_the_stores(live_client: Api, stock: StockEngine, ledger: Ledger, sale: str) -> None:
    client, _ = live_client
    await stock.seed(sale, SaleConfig(total=20, per_user_limit=2), open=True)
    answers = await asyncio.gather(
        *(
            client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=auth(f"u{i}"))
            for i in range(6)
        )
    )
    assert [a.status_code for a in answers] == [202] * 6
    got = events((await client.simulate_get(f"/live/sales/{sale}/events")).text)
    assert got  # the simulated client disconnects after the first event; the browser test follows a stream
    last = got[-1]
    snapshot = await stock.snapshot(sale)
    counts = await ledger.counts(sale)
    assert last["sale"] == sale and last["stock"] == 20
    assert last["remaining"] == snapshot.remaining == 14
    assert last["redis"]["remaining"] == 14 and last["redis"]["reservations"] == 6
    assert last["outcomes"]["pending"] + last["outcomes"]["confirmed"] == counts["pending"] + counts["confirmed"] == 6
    assert last["phase"] == "Live"


async def test_open_streams_are_capped(live_client: Api, stock: StockEngine, sale: str) -> None:
    client, services = live_client
    await stock.seed(sale, SaleConfig(total=5), open=True)
    live = services.live
    assert live is not None  # the live page is on in this app
    live.streams = services.settings.live_max_streams  # as if that many were open
    try:
        capped = await client.simulate_get(f"/live/sales/{sale}/events")
    finally:
        live.streams = 0
    assert capped.status_code == 429 and capped.headers["retry-after"]
