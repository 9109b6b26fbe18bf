"""Checkout holds through the API (Falcon's ASGI conductor, real Redis and PostgreSQL): the endpoint's answers
one by one, then buyers paying while their holds expire, with the real worker process settling and expiring,
checkout replays, other buyers' attempts, and late buyers buying the units that expiry gave back; the audit
of the invariants at the end (docs/architecture.md, "Checkout holds")."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from falcon import testing
from prometheus_client import REGISTRY

from stampede.audit import audit, counts_from
from stampede.domain import Settlement
from stampede.ledger import Ledger
from stampede.stock import StockEngine
from stampede.vocabulary import Status
from stampede_api.settings import ApiSettings
from stampede_dev.devstack import free_port

if TYPE_CHECKING:
    from tests.api.conftest import Headers, Opener

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]


async def _open(stock: StockEngine, ledger: Ledger, opener: Opener, sale: str, total: int, hold_seconds: int) -> None:
    await opener(sale, total=total)
    await ledger.ensure_sale(
        sale,
        sku=f"SKU-{sale}",
        stock=total,
        per_user_limit=1,
        window_start=None,
        window_end=None,
        hold_seconds=hold_seconds,
    )


async def _buy(client: testing.ASGIConductor, headers: Headers, sale: str, user: str) -> str:
    r = await client.simulate_post(f"/v1/sales/{sale}/reservations", json={}, headers=headers(user))
    assert r.status_code == 202, r.text
    return str(r.json["reservation_id"])


async def _settle(ledger: Ledger, stock: StockEngine, sale: str, rid: str) -> None:
    """What the settle job does for one reservation (ledger, then Redis)."""
    (settled,) = await ledger.settle([Settlement(rid, sale, Status.CONFIRMED)], attempt=1)
    await stock.confirm(sale, [rid])
    assert settled.moved


def _checkout(
    client: testing.ASGIConductor,
    headers: Headers,
    user: str,
    rid: str,
    key: str | None,
    ref: object = "pay-1",
    **kw: Any,
) -> Awaitable[testing.Result]:
    h = dict(headers(user))
    if key is not None:
        h["Idempotency-Key"] = key
    body = kw.pop("json", {"payment_reference": ref})
    return client.simulate_post(f"/v1/reservations/{rid}/checkout", json=body, headers=h, **kw)


async def test_checkout_pays_a_hold_and_replays(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, ledger: Ledger, stock: StockEngine
) -> None:
    await _open(stock, ledger, opener, sale, total=3, hold_seconds=60)
    rid = await _buy(client, headers, sale, "alice")
    pending = await _checkout(client, headers, "alice", rid, "k1")
    assert pending.status_code == 409 and pending.json["error"]["code"] == "reservation_pending"
    assert pending.headers["retry-after"] == "1"
    await _settle(ledger, stock, sale, rid)
    held = await client.simulate_get(f"/v1/reservations/{rid}", headers=headers("alice"))
    assert held.json["status"] == Status.HELD and "hold_expires_at" in held.json

    # Bad requests change nothing.
    for key, kw, field in (
        (None, {}, "Idempotency-Key"),
        ("bad key", {}, "Idempotency-Key"),
        ("k1", {"json": {}}, "payment_reference"),
        ("k1", {"json": {"payment_reference": "p", "amount": 3}}, "amount"),
        ("k1", {"json": {"payment_reference": "x" * 257}}, "payment_reference"),
    ):
        bad = await _checkout(client, headers, "alice", rid, key, **kw)
        assert bad.status_code == 400 and bad.json["error"]["field"] == field, bad.text
    other = await _checkout(client, headers, "mallory", rid, "k1")
    assert other.status_code == 403 and other.json["error"]["code"] == "not_your_reservation"
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        assert (await _checkout(client, headers, "alice", missing, "k1")).status_code == 404
    assert (
        await client.simulate_post(f"/v1/reservations/{rid}/checkout", json={"payment_reference": "p"})
    ).status_code == 401
    row = await ledger.get_reservation(rid)
    assert row is not None and row.status == Status.HELD

    paid = await _checkout(client, headers, "alice", rid, "k1", "pay-1")
    assert paid.status_code == 200, paid.text
    assert "idempotent-replayed" not in paid.headers
    assert paid.json["status"] == Status.PAID and paid.json["payment_reference"] == "pay-1" and paid.json["paid_at"]
    replay = await _checkout(client, headers, "alice", rid, "k1", "pay-1")
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json == paid.json
    conflict = await _checkout(client, headers, "alice", rid, "k1", "pay-2")
    assert conflict.status_code == 409 and conflict.json["error"]["code"] == "idempotency_conflict"
    again = await _checkout(client, headers, "alice", rid, "k2", "pay-2")
    assert again.status_code == 409 and again.json["error"]["code"] == "already_paid"
    row = await ledger.get_reservation(rid)
    assert row is not None and (row.status, row.checkout_key, row.payment_ref) == (Status.PAID, "k1", "pay-1")
    snap = await stock.snapshot(sale)
    assert (snap.remaining, snap.confirmed) == (2, 1)  # paying changes nothing in stock


async def test_expired_hold_and_a_sale_without_holds_refuse_checkout(
    client: testing.ASGIConductor, opener: Opener, headers: Headers, sale: str, ledger: Ledger, stock: StockEngine
) -> None:
    await _open(stock, ledger, opener, sale, total=3, hold_seconds=1)
    rid = await _buy(client, headers, sale, "bob")
    await _settle(ledger, stock, sale, rid)
    await asyncio.sleep(1.2)
    # Its time passed by the ledger's clock; no sweep has run yet: still refused, and still unpaid.
    late = await _checkout(client, headers, "bob", rid, "k1")
    assert late.status_code == 409 and late.json["error"]["code"] == "hold_expired"
    row = await ledger.get_reservation(rid)
    assert row is not None and row.status == Status.HELD
    (expired,) = await ledger.expire_due(100)
    assert expired.reservation_id == rid
    late = await _checkout(client, headers, "bob", rid, "k1")
    assert late.status_code == 409 and late.json["error"]["code"] == "hold_expired"
    shown = await client.simulate_get(f"/v1/reservations/{rid}", headers=headers("bob"))
    assert shown.json["status"] == Status.EXPIRED and shown.json["expired_at"]

    plain = sale + "-plain"
    await _open(stock, ledger, opener, plain, total=3, hold_seconds=0)
    rid = await _buy(client, headers, plain, "carol")
    await _settle(ledger, stock, plain, rid)
    refused = await _checkout(client, headers, "carol", rid, "k1")
    assert refused.status_code == 409 and refused.json["error"]["code"] == "not_held"
    row = await ledger.get_reservation(rid)
    assert row is not None and row.status == Status.CONFIRMED


def _start_worker(settings: ApiSettings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "STAMPEDE_REDIS_URL": settings.redis_url,
        "STAMPEDE_DATABASE_URL": settings.database_url,
        "STAMPEDE_WORKER_CONCURRENCY": "4",
        "STAMPEDE_WORKER_METRICS_HOST": "127.0.0.1",
        "STAMPEDE_WORKER_METRICS_PORT": str(free_port()),
        "STAMPEDE_WORKER_POLL_S": "0.1",
        "STAMPEDE_WORKER_HOLD_SWEEP_S": "0.1",
        "STAMPEDE_WORKER_HOLD_RETURN_AFTER_S": "2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "stampede_worker"], cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def test_buyers_pay_while_holds_expire(
    client: testing.ASGIConductor,
    opener: Opener,
    headers: Headers,
    sale: str,
    ledger: Ledger,
    stock: StockEngine,
    api_settings: ApiSettings,
    tmp_path: Path,
) -> None:
    """30 units held 8 s (time enough for a prompt payer on a loaded machine). A third of the buyers pay at
    once (and replay their checkout concurrently), a third pay around the instant their hold expires, a third
    never pay; another buyer tries to pay for each; 30 late buyers keep trying to buy and pay for what expiry
    gives back. The real worker process settles and expires. Each checkout's answer matches what the ledger
    holds, every unit is paid for or back on sale exactly once, and the units returned by expiry are sold
    again."""
    stock_units, hold_s = 30, 8
    await _open(stock, ledger, opener, sale, total=stock_units, hold_seconds=hold_s)
    log = tmp_path / "worker.log"
    worker = _start_worker(api_settings, log)
    answers: list[tuple[str, str, int, str, bool]] = []  # (buyer, reservation, status, code, replayed)
    accepted: list[str] = []
    late_bought: list[str] = []
    rng = random.Random(15)
    all_bought = asyncio.Event()  # the late buyers start once every unit was bought once

    async def held(user: str, rid: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            assert worker.poll() is None, _tail(log)
            r = await client.simulate_get(f"/v1/reservations/{rid}", headers=headers(user))
            if r.status_code == 200 and r.json["status"] != "pending":
                return dict(r.json)
            assert time.monotonic() < deadline, f"{rid} not settled: {r.text}\n{_tail(log)}"
            await asyncio.sleep(0.1)

    async def pay(user: str, rid: str, key: str) -> None:
        r = await _checkout(client, headers, user, rid, key, f"pay-{key}")
        code = "" if r.status_code == 200 else r.json["error"]["code"]
        answers.append((user, rid, r.status_code, code, r.headers.get("idempotent-replayed") == "true"))

    async def early_buyer(i: int) -> None:
        user = f"early-{i}"
        rid = await _buy(client, headers, sale, user)
        accepted.append(rid)
        if len(accepted) == stock_units:
            all_bought.set()
        record = await held(user, rid)
        thief = await _checkout(client, headers, f"thief-{i}", rid, "t", "stolen")
        assert thief.status_code == 403, thief.text
        if i % 3 == 0:  # pays at once, and its client retries the same checkout twice at the same time
            await asyncio.gather(*(pay(user, rid, f"k-{user}") for _ in range(3)))
        elif i % 3 == 1:  # pays around the instant its hold expires
            ends = datetime.fromisoformat(record["hold_expires_at"]).timestamp()
            await asyncio.sleep(max(0.0, ends - time.time() + rng.uniform(-0.5, 0.5)))
            await pay(user, rid, f"k-{user}")

    async def late_buyer(i: int) -> None:
        user = f"late-{i}"
        await all_bought.wait()
        while True:
            r = await client.simulate_post(f"/v1/sales/{sale}/reservations", json={}, headers=headers(user))
            if r.status_code == 202:
                rid = str(r.json["reservation_id"])
                accepted.append(rid)
                late_bought.append(rid)
                await held(user, rid)
                await pay(user, rid, f"k-{user}")
                return
            assert r.status_code == 409 and r.json["error"]["code"] == "sold_out", r.text
            # Stop once no unit can come back: none left, none held, none pending.
            tally = await ledger.tally(sale)
            if (await stock.snapshot(sale)).remaining == 0 and tally.held == 0 and tally.pending == 0:
                return
            await asyncio.sleep(0.2)

    try:
        # Early buyers pay, replay and let holds expire while late buyers try to buy what comes back.
        await asyncio.gather(
            *(early_buyer(i) for i in range(stock_units)), *(late_buyer(i) for i in range(stock_units))
        )
        deadline = time.monotonic() + 60
        while (t := await ledger.tally(sale)).held or t.pending or await ledger.expired_unreturned(older_s=0, limit=1):
            assert worker.poll() is None, _tail(log)
            assert time.monotonic() < deadline, f"holds did not end: {t}\n{_tail(log)}"
            await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(30)

    rows = {r.reservation_id: r for r in await ledger.rows(sale)}
    statuses = Counter(r.status for r in rows.values())
    # Every checkout answer agrees with the ledger's decision.
    for user, rid, status, code, _replayed in answers:
        row = await ledger.get_reservation(rid)
        assert row is not None
        if status == 200:
            assert row.status == Status.PAID and row.checkout_key == f"k-{user}", (user, row)
        else:
            assert (status, code) == (409, "hold_expired") and row.status == Status.EXPIRED, (user, status, code, row)
    first_pays = [a for a in answers if a[2] == 200 and not a[4]]
    assert len(first_pays) == statuses[Status.PAID] == len({a[1] for a in first_pays}), "a hold was paid twice"
    assert any(a[4] for a in answers), "no checkout replay was answered as one"
    assert statuses[Status.EXPIRED] >= stock_units // 3, statuses  # the buyers who never pay
    # Units returned by expiry were sold again: more reservations were accepted than there are units.
    assert late_bought and len(accepted) > stock_units
    snap = await stock.snapshot(sale)
    report = audit(
        sale,
        stock=stock_units,
        per_user_limit=1,
        accepted=accepted,
        rows=list(await ledger.rows(sale)),
        redis=counts_from(snap),
        holds=True,
    )
    assert report.ok, report.render()
    assert report.paid_units + snap.remaining == stock_units  # what was not paid for is back on sale
    print(
        f"checkout race: ledger {dict(statuses)}, accepted {len(accepted)} (late {len(late_bought)}), "
        f"answers {dict(Counter((a[2], a[3] or ('replayed' if a[4] else 'paid')) for a in answers))}"
    )
    assert REGISTRY.get_sample_value("stampede_api_checkouts_total", {"sale": sale, "outcome": "paid"}) == len(
        first_pays
    )


async def test_openapi_documents_checkout_and_hold_states(client: testing.ASGIConductor) -> None:
    doc = (await client.simulate_get("/openapi.json")).json
    op = doc["paths"]["/v1/reservations/{reservation_id}/checkout"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "429", "503"} <= set(op["responses"])
    assert "hold_expired" in op["responses"]["409"]["description"]
    assert "already_paid" in op["responses"]["409"]["description"]
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in op["parameters"])
    record = doc["components"]["schemas"]["ReservationRecord"]["properties"]
    assert {"held", "paid", "expired"} <= set(record["status"]["enum"])
    assert doc["components"]["schemas"]["CheckoutRequest"]["required"] == ["payment_reference"]
