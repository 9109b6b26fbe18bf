"""Fixtures of the API tests: a migrated database, a real Ledger and StockEngine, the app under Falcon's
ASGI conductor (lifespan included), and helpers that open a sale and mint buyer tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, TypedDict, Unpack

import pytest
from falcon import testing

from stampede import tokens
from stampede.ledger import Ledger
from stampede.settings import load
from stampede.stock import SaleConfig, StockEngine
from stampede_api.app import build
from stampede_api.services import Services
from stampede_api.settings import ApiSettings

SECRET = "test-secret-" + "s" * 32

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
