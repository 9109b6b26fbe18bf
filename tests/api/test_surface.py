"""Metrics (as the metrics port serves them), the OpenAPI document, and the demonstration strategies
through the conductor."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from falcon import testing
from prometheus_client import generate_latest

from stampede.ledger import Ledger
from stampede.settings import load
from stampede.stock import StockEngine
from stampede_api.app import create_app
from stampede_api.resources.metrics import registry
from stampede_api.settings import ApiSettings
from stampede_api.strategies import open_pool, setup_product
from stampede_api.tally import TALLY

if TYPE_CHECKING:
    from tests.api.conftest import Api, Headers, Opener

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


async def test_metrics_count_requests_and_outcomes(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str
) -> None:
    await opener(sale, total=1)
    await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=headers("m1"))
    await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=headers("m2"))
    TALLY.flush()  # what the metrics port does before it answers
    text = generate_latest(registry()).decode()
    assert 'stampede_api_requests_total{method="POST",route="/v1/sales/{sale}/reservations",status="202"}' in text
    assert f'stampede_api_reservations_total{{outcome="sold_out",sale="{sale}"}} 1.0' in text
    assert f'stampede_api_stock_remaining{{sale="{sale}"}} 0.0' in text
    assert "stampede_api_batch_size_bucket" in text


async def test_openapi_document_lists_every_route(client: testing.ASGIConductor) -> None:
    r = await client.simulate_get("/openapi.json")
    assert r.status_code == 200
    doc = r.json
    assert doc["openapi"] == "3.1.0"
    assert {
        "/v1/sales/{sale}/reservations",
        "/v1/reservations/{reservation_id}",
        "/v1/sales/{sale}",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/api/{version}/buy",
        "/api/{version}/stats",
    } <= set(doc["paths"])
    responses = doc["paths"]["/v1/sales/{sale}/reservations"]["post"]["responses"]
    assert {"200", "202", "400", "401", "403", "404", "409", "413", "415", "429", "503"} <= set(responses)


async def test_strategies_are_off_unless_enabled(api_settings: ApiSettings, stock: StockEngine, ledger: Ledger) -> None:
    off = load(ApiSettings, env={}, **{**api_settings.__dict__, "strategies_enabled": False})
    async with testing.ASGIConductor(create_app(off, stock, ledger)) as client:
        r = await client.simulate_post("/api/v1/buy", json={"productId": "p", "userId": "u"})
        assert r.status_code == 404
        assert "/api/{version}/buy" not in (await client.simulate_get("/openapi.json")).json["paths"]


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4"])
async def test_each_strategy_buys_counts_and_stops_at_zero(
    client: testing.ASGIConductor,
    api: Api,
    api_settings: ApiSettings,
    stock: StockEngine,
    ledger: Ledger,
    sale: str,
    version: str,
) -> None:
    pool = await open_pool(api_settings.database_url, min_size=1, max_size=2)
    try:
        await setup_product(version, sale, 2, pool=pool, stock=stock, ledger=ledger)
    finally:
        await pool.close()
    buys = [
        await client.simulate_post(f"/api/{version}/buy", json={"productId": sale, "userId": f"u{i}"}) for i in range(3)
    ]
    ok = 202 if version == "v4" else 201
    assert [b.status_code for b in buys] == [ok, ok, 409], [b.text for b in buys]
    assert buys[2].json["error"]["code"] == "sold_out"
    stats = (await client.simulate_get(f"/api/{version}/stats", params={"productId": sale})).json
    assert (stats["initial"], stats["stock"], stats["accepted"], stats["oversold"]) == (2, 0, 2, 0)


async def test_strategy_body_and_product_errors(client: testing.ASGIConductor) -> None:
    r = await client.simulate_post("/api/v2/buy", json={"productId": "nope-never"})
    assert r.status_code == 400 and r.json["error"]["field"] == "userId"
    r = await client.simulate_post("/api/v2/buy", json={"productId": "nope-never", "userId": "u"})
    assert r.status_code == 404
    r = await client.simulate_post("/api/v9/buy", json={"productId": "p", "userId": "u"})
    assert r.status_code == 404


async def test_v1_oversells_under_concurrency(
    client: testing.ASGIConductor, api_settings: ApiSettings, stock: StockEngine, ledger: Ledger, sale: str
) -> None:
    """The naive strategy, raced by many concurrent buyers through a pool of several connections."""
    pool = await open_pool(api_settings.database_url, min_size=1, max_size=2)
    try:
        await setup_product("v1", sale, 20, pool=pool)
    finally:
        await pool.close()
    answers = await asyncio.gather(
        *(client.simulate_post("/api/v1/buy", json={"productId": sale, "userId": f"u{i}"}) for i in range(200))
    )
    accepted = sum(1 for a in answers if a.status_code == 201)
    stats = (await client.simulate_get("/api/v1/stats", params={"productId": sale})).json
    assert stats["accepted"] == accepted
    assert stats["oversold"] > 0, stats
