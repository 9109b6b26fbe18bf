"""The live sale page in a real browser: Debian's Chromium (hack/chromium.sh) driven by Playwright, against
the API under gunicorn and a settle worker on the project's Redis and PostgreSQL.

The page must load and show the sale, its numbers must move while real concurrent buyers burst the sale and
end equal to the integrity audit's, its buy button must take a demo buyer's reservation from pending to
confirmed, and the browser must log no error. A screenshot of the finished sale is saved in the test's tmp
dir (its path is printed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright

from stampede import tokens
from stampede.ledger import Ledger
from stampede.settings import Common, load
from stampede.stock import SaleConfig, StockEngine
from stampede_dev.devstack import LocalStack, free_port
from stampede_dev.sale_audit import audit_sale

ROOT = Path(__file__).resolve().parents[2]
SECRET = "live-page-test-secret-" + "p" * 32
STOCK = 200
BUYERS = 300

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(240)]


def chromium() -> str:
    found = subprocess.run([ROOT / "hack" / "chromium.sh", "path"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        pytest.skip("Chromium is not installed (hack/chromium.sh installs Debian's package as root)")
    return found.stdout.strip()


async def number(page: Page, element: str) -> int | None:
    raw = await page.get_attribute(f"#{element}", "data-value")
    return int(raw) if raw else None


async def wait_for(page: Page, element: str, want: int, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (got := await number(page, element)) != want:
        assert asyncio.get_running_loop().time() < deadline, f"#{element} shows {got}, not {want}"
        await asyncio.sleep(0.1)


async def test_live_page_follows_a_burst_and_matches_the_audit(
    redis_url: str, migrated_database_url: str, tmp_path: Path
) -> None:
    executable = chromium()
    sale = f"live-{uuid.uuid4().hex[:8]}"
    settings = load(Common, env={}, redis_url=redis_url, database_url=migrated_database_url)
    stock = StockEngine.from_url(redis_url)
    ledger = await Ledger.open(settings)
    now = dt.datetime.now(dt.UTC)
    await ledger.ensure_sale(
        sale,
        sku="LIVE-1",
        stock=STOCK,
        per_user_limit=1,
        window_start=now - dt.timedelta(seconds=5),
        window_end=now + dt.timedelta(minutes=10),
    )
    await stock.seed(sale, SaleConfig(total=STOCK, per_user_limit=1), open=True)
    port = free_port()
    env = {
        "STAMPEDE_REDIS_URL": redis_url,
        "STAMPEDE_DATABASE_URL": migrated_database_url,
        "STAMPEDE_JWT_SECRET": SECRET,
        "STAMPEDE_SALE_NAMESPACE": "",
        "STAMPEDE_LOG_LEVEL": "WARNING",
        "STAMPEDE_LIVE_PAGE": "true",
        "STAMPEDE_DEMO_BUYERS": "true",
        "STAMPEDE_ENVIRONMENT": "development",
        "STAMPEDE_LIVE_INTERVAL_MS": "200",
        "STAMPEDE_LIVE_STREAM_S": "4",  # streams end and the browser reconnects during the test
    }
    errors: list[str] = []
    try:
        with LocalStack(tmp_path / "run", env) as stack:
            stack.api(port=port, workers=1)
            stack.worker(concurrency=8)
            base = f"http://127.0.0.1:{port}"
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
                page = await browser.new_page(viewport={"width": 1200, "height": 1100})

                def on_console(msg: ConsoleMessage) -> None:
                    if msg.type == "error":
                        errors.append(f"console: {msg.text}")

                page.on("console", on_console)
                page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

                # The page loads and shows the sale's numbers.
                await page.goto(f"{base}/live/sales/{sale}")
                await wait_for(page, "remaining", STOCK)
                assert await number(page, "stock") == STOCK
                assert await page.text_content("#phase") == "Live"
                assert "closes in" in (await page.text_content("#countdown") or "")
                assert await page.locator('#counters tr[data-counter="Redis.remaining"]').count() == 1

                # The buy button: a demo buyer's reservation goes pending -> confirmed.
                await page.click("#buy")
                mine = page.locator("#my-reservation")
                await mine.wait_for(timeout=30_000)
                await page.wait_for_selector('#my-reservation[data-status="confirmed"]', timeout=30_000)
                assert "pending → confirmed" in (await mine.text_content() or "")

                # A burst of real concurrent buyers, in waves, while the page is watched.
                seen: set[int] = set()
                accepted: list[str] = []

                async def watch(stop: asyncio.Event) -> None:
                    while not stop.is_set():
                        if (v := await number(page, "remaining")) is not None:
                            seen.add(v)
                        await asyncio.sleep(0.05)

                async def buyer(client: httpx.AsyncClient, n: int) -> None:
                    token = tokens.mint(SECRET, f"buyer-{n}")
                    r = await client.post(
                        f"/v1/sales/{sale}/reservations",
                        json={"quantity": 1},
                        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"k-{n}"},
                    )
                    assert r.status_code in (202, 409), r.text
                    if r.status_code == 202:
                        accepted.append(r.json()["reservation_id"])

                stop = asyncio.Event()
                watcher = asyncio.create_task(watch(stop))
                # Idle connections are dropped well before the server's 5 s keep-alive: one reused the instant
                # the server closes it is lost (a loaded machine stretches the waves past it).
                limits = httpx.Limits(keepalive_expiry=1.0)
                try:
                    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
                        for wave in range(0, BUYERS, 30):
                            await asyncio.gather(*(buyer(client, n) for n in range(wave, min(wave + 30, BUYERS))))
                            await asyncio.sleep(0.4)
                finally:
                    stop.set()
                    await watcher
                during = seen - {STOCK, STOCK - 1, 0}
                assert len(during) >= 2, f"the page showed no intermediate stock during the burst: {sorted(seen)}"

                # Settled: the page's numbers equal the audit's.
                accepted.append(await _my_id(page))
                report, _lag, _ = await audit_sale(ledger, stock, sale, accepted=accepted)
                assert report.ok, report.render()
                snap = await stock.snapshot(sale)
                await wait_for(page, "pending", report.pending_units)
                await wait_for(page, "confirmed", report.confirmed_units)
                await wait_for(page, "compensated", report.returned_units)
                await wait_for(page, "remaining", snap.remaining)
                await wait_for(page, "drift", report.drift)
                assert report.confirmed_units == STOCK  # the sale sold out, and exactly so
                await page.wait_for_function("document.getElementById('phase').textContent === 'SoldOut'")

                shot = tmp_path / "live-sale.png"
                await page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}")

                # The overview lists the sale with the same numbers.
                await page.goto(f"{base}/live")
                row = page.locator(f'#sales tr[data-sale="{sale}"]')
                await row.wait_for(timeout=30_000)
                assert "SoldOut" in (await row.text_content() or "")
                await browser.close()
    finally:
        await stock.close()
        await ledger.close()
    assert not errors, errors


async def _my_id(page: Page) -> str:
    """The demo buyer's reservation id, as the page holds it."""
    return str(await page.evaluate("document.getElementById('my-reservation').dataset.reservation"))
