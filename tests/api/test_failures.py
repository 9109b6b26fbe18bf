"""What the API does when its dependencies fail: release at once and 503 with Retry-After, a retry with the
same Idempotency-Key reserves afresh, a bug is a JSON 500 with no traceback, readiness says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import pytest
from falcon import testing

from stampede import errors
from stampede.ledger import Ledger, LedgerRow, PendingReservation, RecordedBatch
from stampede.stock import StockEngine
from stampede.vocabulary import Dependency
from stampede_api.app import build
from stampede_api.settings import ApiSettings

if TYPE_CHECKING:
    from tests.api.conftest import Headers, Opener

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


class FlakyLedger:
    """The real ledger, except that record_batch fails while ``failing`` is set, and every call is counted."""

    def __init__(self, real: Ledger) -> None:
        self.real = real
        self.failing = False
        self.batches: list[int] = []

    async def record_batch(self, reservations: Sequence[PendingReservation]) -> RecordedBatch:
        self.batches.append(len(reservations))
        if self.failing:
            raise errors.DependencyUnavailable(Dependency.POSTGRESQL, "injected")
        return await self.real.record_batch(reservations)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class BrokenReads(FlakyLedger):
    async def get_reservation(self, reservation_id: str) -> LedgerRow | None:
        raise RuntimeError("a bug with a secret detail")


Flaky = tuple[testing.ASGIConductor, FlakyLedger]


@pytest.fixture
async def flaky(api_settings: ApiSettings, stock: StockEngine, ledger: Ledger) -> AsyncIterator[Flaky]:
    fl = FlakyLedger(ledger)
    app, _ = build(api_settings, stock, cast(Ledger, fl))  # the real ledger behind a switch
    async with testing.ASGIConductor(app) as conductor:
        yield conductor, fl


async def test_failed_write_releases_and_answers_503(
    flaky: Flaky, opener: Opener, headers: Headers, sale: str, stock: StockEngine, ledger: Ledger
) -> None:
    client, fl = flaky
    await opener(sale, total=3, limit=1)
    fl.failing = True
    h = {**headers("alice"), "Idempotency-Key": "k1"}
    r = await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=h)
    assert r.status_code == 503, r.text
    assert r.json["error"]["code"] == "dependency_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert "injected" not in r.text  # internals stay in the log
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.released) == (3, 0, 1)
    assert await ledger.rows(sale) == []
    # The retry with the same key is a fresh attempt, not a replay of the failed one.
    fl.failing = False
    again = await client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=h)
    assert again.status_code == 202, again.text
    assert len(await ledger.rows(sale)) == 1


async def test_concurrent_buys_share_batches(
    flaky: Flaky, opener: Opener, headers: Headers, sale: str, ledger: Ledger
) -> None:
    client, fl = flaky
    await opener(sale, total=100, limit=1)
    answers = await asyncio.gather(
        *(
            client.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=headers(f"u{i}"))
            for i in range(60)
        )
    )
    assert [a.status_code for a in answers] == [202] * 60
    assert sum(fl.batches) == 60
    assert len(fl.batches) < 60  # requests that arrived during a commit went together
    assert len(await ledger.rows(sale)) == 60


async def test_unexpected_error_is_json_500_without_traceback(
    api_settings: ApiSettings, stock: StockEngine, ledger: Ledger, headers: Headers, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = build(api_settings, stock, cast(Ledger, BrokenReads(ledger)))
    async with testing.ASGIConductor(app) as client:
        r = await client.simulate_get(
            "/v1/reservations/7b0e9f5e-4a57-4b55-9a3e-2f1a7c1d9a10", headers={**headers("a"), "X-Request-ID": "rq-9"}
        )
    assert r.status_code == 500
    assert r.json == {"error": {"code": "internal", "message": "internal error"}}
    assert "secret detail" not in r.text and "Traceback" not in r.text
    logged = [rec for rec in caplog.records if rec.getMessage() == "unhandled error"]
    assert logged and logged[0].__dict__["request_id"] == "rq-9"


async def test_readiness_names_the_missing_dependency(api_settings: ApiSettings, ledger: Ledger) -> None:
    dead = StockEngine.from_url("redis://127.0.0.1:1/0")
    app, _ = build(api_settings, dead, ledger)
    async with testing.ASGIConductor(app) as client:
        assert (await client.simulate_get("/healthz")).status_code == 200
        r = await client.simulate_get("/readyz")
        assert r.status_code == 503 and "redis" in r.json["error"]["message"]
        assert r.headers["retry-after"] == "1"
    await dead.close()


async def test_ready_when_both_answer(client: testing.ASGIConductor) -> None:
    r = await client.simulate_get("/readyz")
    assert r.status_code == 200 and r.json["checks"] == {"redis": "ok", "postgresql": "ok"}


async def test_sale_lost_from_redis_is_503_not_404_until_restored(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, stock: StockEngine
) -> None:
    """Redis restarted without persistence: the ledger still knows the sale, so reads and buys answer 503
    with Retry-After: 1 while the first of them restores it from the ledger, and buying resumes with the
    reservations the ledger holds counted; a sale the ledger never heard of stays a 404."""
    path = f"/v1/sales/{sale}/reservations"
    await opener(sale, total=3, limit=1)
    first = await client.simulate_post(path, json={"quantity": 1}, headers=headers("al"))
    assert first.status_code == 202, first.text

    async def restored() -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + 10
        while (got := await client.simulate_get(f"/v1/sales/{sale}")).status_code == 503:
            assert asyncio.get_running_loop().time() < deadline, got.text
            await asyncio.sleep(0.01)
        assert got.status_code == 200, got.text
        return dict(got.json)

    await stock.delete(sale)
    read = await client.simulate_get(f"/v1/sales/{sale}")
    await restored()
    await stock.delete(sale)
    buy = await client.simulate_post(path, json={"quantity": 1}, headers=headers("bo"))
    for r in (read, buy):
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json["error"]["code"] == "sale_restoring"
    sale_now = await restored()
    assert (sale_now["remaining"], sale_now["pending"], sale_now["phase"]) == (2, 1, "Live")
    again = await client.simulate_post(path, json={"quantity": 1}, headers=headers("al"))
    assert again.status_code == 409 and again.json["error"]["code"] == "limit_reached"  # al's unit came back
    bo = await client.simulate_post(path, json={"quantity": 1}, headers=headers("bo"))
    assert bo.status_code == 202, bo.text
    unknown_buy = await client.simulate_post("/v1/sales/no-such-sale/reservations", json={"quantity": 1},
                                             headers=headers("al"))  # fmt: skip
    unknown_read = await client.simulate_get("/v1/sales/no-such-sale")
    assert (unknown_buy.status_code, unknown_read.status_code) == (404, 404), unknown_buy.text
