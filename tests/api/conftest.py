"""Fixtures of the API tests: a migrated database, a real Ledger and StockEngine, the app under Falcon's
ASGI conductor (lifespan included), the API as deployed over real HTTP (gunicorn and a settle worker), and
helpers that open a sale and mint buyer tokens."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol, TypedDict, Unpack

import pytest
from falcon import testing

from stampede import tokens
from stampede.ledger import Ledger
from stampede.settings import load
from stampede.stock import SaleConfig, StockEngine
from stampede.vocabulary import Status
from stampede_api.app import build
from stampede_api.services import Services
from stampede_api.settings import ApiSettings
from stampede_dev.devstack import LocalStack, free_port

SECRET = "test-secret-" + "s" * 32
TOOLS_SH = Path(__file__).resolve().parents[2] / "hack" / "tools.sh"

# The app under test and the Services its resources share (tests look inside).
Api = tuple[testing.ASGIConductor, Services]


class TokenOptions(TypedDict, total=False):
    """``tokens.mint``'s options."""

    ttl_s: int
    issuer: str
    audience: str
    scope: str
    now: int | None


class Rates(TypedDict, total=False):
    """A sale's rate limits, as ``SaleConfig`` and ``Ledger.ensure_sale`` name them (default: none)."""

    buyer_rate: float
    buyer_burst: int
    ip_rate: float
    ip_burst: int


class SaleOptions(Rates, total=False):
    """What ``open_sale`` sets beside the sale's name."""

    total: int
    limit: int
    is_open: bool
    buckets: int


class Minter(Protocol):
    """The ``mint`` fixture: a buyer's token."""

    def __call__(self, user: str, **kw: Unpack[TokenOptions]) -> str: ...


class Headers(Protocol):
    """The ``headers`` fixture: the Authorization header of a buyer's token."""

    def __call__(self, user: str, **kw: Unpack[TokenOptions]) -> dict[str, str]: ...


class Opener(Protocol):
    """The ``opener`` fixture: ``await opener(sale, total=..., limit=..., buyer_rate=..., ...)``."""

    async def __call__(self, sale: str, **kw: Unpack[SaleOptions]) -> None: ...


@pytest.fixture(scope="session")
def strategies_database_url(migrated_database_url: str) -> str:
    """The migrated database plus the strategies' tables (`stampede migrate --with-strategies`)."""
    import asyncio

    from stampede.migrate import migrate
    from stampede_api.strategies.schema import migration_files

    asyncio.run(migrate(migrated_database_url, extra=migration_files()))
    return migrated_database_url


@pytest.fixture(scope="session")
def api_settings(redis_url: str, strategies_database_url: str) -> ApiSettings:
    """Settings of the app under test: this worker's Redis db and migrated database (ledger, queue and
    strategy tables), strategies mounted. Sales are addressed by their bare id (no namespace), so a test
    seeds and reads a sale under the name it buys from; test_namespaces.py covers namespaced APIs."""
    return load(
        ApiSettings,
        env={},
        redis_url=redis_url,
        database_url=strategies_database_url,
        jwt_secret=SECRET,
        strategies_enabled=True,
        sale_namespace="",
        replay_wait_ms=300,
        db_pool_max=8,
    )


@pytest.fixture(scope="session")
async def ledger(api_settings: ApiSettings) -> AsyncIterator[Ledger]:
    led = await Ledger.open(api_settings)
    yield led
    await led.close()


@pytest.fixture(scope="session")
async def api(api_settings: ApiSettings, stock: StockEngine, ledger: Ledger) -> AsyncIterator[Api]:
    """(conductor, services) of one app for the whole session."""
    app, services = build(api_settings, stock, ledger)
    async with testing.ASGIConductor(app) as conductor:
        yield conductor, services


@pytest.fixture(scope="session")
def client(api: Api) -> testing.ASGIConductor:
    return api[0]


@pytest.fixture(scope="session")
def k6_bin() -> str:
    """The pinned k6 (hack/tools.sh builds it on first use); a test that needs it is skipped when it cannot be
    built."""
    found = subprocess.run([str(TOOLS_SH), "path", "k6"], capture_output=True, text=True, timeout=180)
    if found.returncode != 0:
        pytest.skip(f"k6 is not built and cannot be (hack/tools.sh): {found.stderr.strip()[-200:]}")
    return found.stdout.strip()


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """The metrics port of ``server`` (never the default: parallel runs must not share one)."""
    return free_port()


@pytest.fixture(scope="module")
def server(api_settings: ApiSettings, metrics_port: int, request: pytest.FixtureRequest) -> Iterator[str]:
    """The API as a Pod runs it, on loopback: gunicorn with 2 uvicorn workers on this worker's Redis db and
    database (strategies mounted, waiting-room polls hinted every 200 ms), and one settle worker; yields the
    base URL. Their logs are kept (path printed) when a test of the module failed, and no request may have
    ended in an unhandled error."""
    failed_before = request.session.testsfailed
    logdir = Path(tempfile.mkdtemp(prefix="stampede-e2e-"))
    (logdir / "metrics").mkdir()
    env = {
        "STAMPEDE_REDIS_URL": api_settings.redis_url,
        "STAMPEDE_DATABASE_URL": api_settings.database_url,
        "STAMPEDE_JWT_SECRET": SECRET,
        "STAMPEDE_SALE_NAMESPACE": api_settings.sale_namespace,
        "STAMPEDE_STRATEGIES_ENABLED": "true",
        "STAMPEDE_LOG_LEVEL": "WARNING",
        "STAMPEDE_QUEUE_POLL_INTERVAL_MS": "200",
        "STAMPEDE_ADMISSION_TOKEN_TTL_S": "60",
        "STAMPEDE_WORKER_POLL_S": "0.5",
        "PROMETHEUS_MULTIPROC_DIR": str(logdir / "metrics"),
    }
    port = free_port()
    with LocalStack(logdir, env) as stack:
        # gunicorn and the worker start slowly on a loaded machine: a start-up limit, not a test of speed.
        api = stack.api(port=port, workers=2, env={"STAMPEDE_METRICS_PORT": str(metrics_port)}, timeout=90)
        stack.worker(timeout=90)
        yield f"http://127.0.0.1:{port}"
    text = api.output()
    if request.session.testsfailed == failed_before and "unhandled error" not in text:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print(f"server logs kept in {logdir}")
    assert "unhandled error" not in text, text[-3000:]


async def settled_counts(ledger: Ledger, sale: str, seconds: float = 60) -> dict[str, int]:
    """The sale's units by status once none is pending (or after ``seconds``: the caller's assertions then say
    what was left)."""
    deadline = time.monotonic() + seconds
    while True:
        counts = await ledger.counts(sale)
        if counts[Status.PENDING] == 0 or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.25)


def token_for(user: str, **kw: Unpack[TokenOptions]) -> str:
    return tokens.mint(SECRET, user, **kw)


def auth(user: str, **kw: Unpack[TokenOptions]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user, **kw)}"}


@pytest.fixture
def headers() -> Headers:
    return auth


async def open_sale(
    stock: StockEngine,
    ledger: Ledger,
    sale: str,
    *,
    total: int = 10,
    limit: int = 1,
    is_open: bool = True,
    buckets: int = 1,
    **rates: Unpack[Rates],
) -> None:
    """Seeds the sale in Redis and mirrors it in the ledger, as the operator does."""
    await stock.seed(sale, SaleConfig(total=total, per_user_limit=limit, buckets=buckets, **rates), open=is_open)
    await ledger.ensure_sale(
        sale,
        sku=f"SKU-{sale}",
        stock=total,
        per_user_limit=limit,
        window_start=None,
        window_end=None,
        buckets=buckets,
        **rates,
    )


@pytest.fixture
def opener(stock: StockEngine, ledger: Ledger) -> Opener:
    """``await opener(sale, total=..., limit=..., buyer_rate=..., ...)``."""

    async def _open(sale: str, **kw: Unpack[SaleOptions]) -> None:
        await open_sale(stock, ledger, sale, **kw)

    return _open


@pytest.fixture
def mint() -> Minter:
    return token_for
