"""Two FlashSales of one name in two namespaces are two sales: each namespace's API (told its namespace, as
the operator tells it) sells only its own sale's stock, sees only its own reservations, and the audit of
each is clean. Real Redis and PostgreSQL, concurrent buyers on both at once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from falcon import testing

from stampede.audit import audit, counts_from
from stampede.ledger import Ledger
from stampede.names import sale_id
from stampede.stock import StockEngine
from stampede_api.app import build
from stampede_api.settings import ApiSettings

from .conftest import auth, open_sale

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
async def apis(
    api_settings: ApiSettings, stock: StockEngine, ledger: Ledger
) -> AsyncIterator[dict[str, testing.ASGIConductor]]:
    """One API per namespace, on the same Redis and ledger."""
    out: dict[str, testing.ASGIConductor] = {}
    async with (
        testing.ASGIConductor(build(dataclasses.replace(api_settings, sale_namespace="shop-a"), stock, ledger)[0]) as a,
        testing.ASGIConductor(build(dataclasses.replace(api_settings, sale_namespace="shop-b"), stock, ledger)[0]) as b,
    ):
        out["shop-a"], out["shop-b"] = a, b
        yield out


async def test_same_name_in_two_namespaces_are_two_sales(
    apis: dict[str, testing.ASGIConductor], sale: str, stock: StockEngine, ledger: Ledger
) -> None:
    units = {"shop-a": 3, "shop-b": 7}
    for ns, total in units.items():
        await open_sale(stock, ledger, sale_id(ns, sale), total=total, limit=1)

    accepted: dict[str, list[str]] = {ns: [] for ns in units}

    async def buy(ns: str, user: str) -> None:
        r = await apis[ns].simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=auth(user))
        if r.status_code == 202:
            assert r.json["sale"] == sale  # the buyer's name for it, not the internal id
            accepted[ns].append(r.json["reservation_id"])
        else:
            assert (r.status_code, r.json["error"]["code"]) == (409, "sold_out"), r.text

    # 20 buyers per namespace at once, the same user ids in both: each namespace has its own per-user limit.
    await asyncio.gather(*(buy(ns, f"buyer-{i}") for i in range(20) for ns in units))
    assert {ns: len(ids) for ns, ids in accepted.items()} == units

    for ns, total in units.items():
        view = await apis[ns].simulate_get(f"/v1/sales/{sale}")
        assert (view.json["sale"], view.json["stock"], view.json["remaining"]) == (sale, total, 0)
        sid = sale_id(ns, sale)
        rows = await ledger.rows(sid)
        assert sorted(r.reservation_id for r in rows) == sorted(accepted[ns])
        report = audit(
            sid, stock=total, per_user_limit=1, accepted=accepted[ns], rows=rows,
            redis=counts_from(await stock.snapshot(sid)), settled=False,
        )  # fmt: skip
        assert report.ok, report.render()

    # A reservation is read through its own namespace's API only.
    rid = accepted["shop-a"][0]
    (row,) = [r for r in await ledger.rows(sale_id("shop-a", sale)) if r.reservation_id == rid]
    mine = await apis["shop-a"].simulate_get(f"/v1/reservations/{rid}", headers=auth(row.user))
    assert (mine.status_code, mine.json["sale"]) == (200, sale)
    elsewhere = await apis["shop-b"].simulate_get(f"/v1/reservations/{rid}", headers=auth(row.user))
    assert elsewhere.status_code == 404


async def test_a_namespace_without_the_sale_does_not_see_another_namespaces_sale(
    apis: dict[str, testing.ASGIConductor], sale: str, stock: StockEngine, ledger: Ledger
) -> None:
    await open_sale(stock, ledger, sale_id("shop-a", sale), total=5)
    r = await apis["shop-b"].simulate_post(f"/v1/sales/{sale}/reservations", json={}, headers=auth("eve"))
    assert (r.status_code, r.json["error"]["code"]) == (404, "sale_not_found")
    assert (await apis["shop-b"].simulate_get(f"/v1/sales/{sale}")).status_code == 404
    assert (await stock.snapshot(sale_id("shop-a", sale))).remaining == 5
