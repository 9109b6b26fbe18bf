"""The Falcon ASGI application factory.

``create_app(settings, stock, ledger)`` wires resources to their collaborators. In a gunicorn worker the
collaborators are not passed: the lifespan middleware opens them in the ASGI startup of each worker
process, after the fork, and closes them (after the batch in flight is written) at shutdown. Tests pass
their own and the app only adds what lives in the event loop (the batch flusher, strategy pools).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import falcon
import falcon.asgi
import falcon.media
import orjson

from stampede.ledger import Ledger
from stampede.stock import StockEngine
from stampede_api.settings import ApiSettings

from . import errors
from .auth import Authenticator
from .batcher import Batcher
from .errors import AsgiApp
from .live_feed import LiveFeeds
from .middleware import RequestContext
from .read_limit import ReadLimiter
from .reserver import ReserveCoalescer
from .resources.checkout import ReservationCheckout
from .resources.docs import OpenApi
from .resources.health import Healthz, Readyz
from .resources.live import DemoToken, LiveAsset, LiveOverview, LiveOverviewEvents, LiveSale
from .resources.metrics import Metrics as MetricsResource
from .resources.queue import Queue
from .resources.reservations import ReservationItem, SaleReservations
from .resources.sales import Sale
from .resources.strategies import StrategyBuy
from .services import Services
from .tally import TALLY

if TYPE_CHECKING:
    from .strategies import Strategy

log = logging.getLogger("stampede_api")


class Lifespan:
    """Opens the process's pools at ASGI startup and closes them at shutdown."""

    def __init__(self, services: Services) -> None:
        self.s = services

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        s = self.s
        cfg = s.settings
        if s.stock is None:
            s.stock = StockEngine.from_url(
                cfg.redis_url,
                max_connections=cfg.redis_max_connections,
                ack_replicas=cfg.ack_replicas,
                ack_timeout_ms=cfg.redis_ack_timeout_ms,
            )
            s.owned.append("stock")
        if s.ledger is None:
            s.ledger = await Ledger.open(cfg)
            s.owned.append("ledger")
        TALLY.start()
        s.batcher = Batcher(s.ledger, s.stock, max_batch=cfg.batch_max, fault_exit_after=cfg.fault_exit_after_reserves)
        s.reserver = ReserveCoalescer(s.stock, sold_out_cache_ms=cfg.sold_out_cache_ms)
        if cfg.live_page:
            s.live = LiveFeeds(s.stock, s.ledger, cfg.sale_namespace, cfg.live_interval_ms / 1000)
        if cfg.strategies_enabled and s.strategies is None:
            from .strategies import STRATEGIES, Backends, open_pool

            pool = await open_pool(cfg.database_url, min_size=cfg.db_pool_min, max_size=cfg.db_pool_max)
            s.owned.append("strategy_pool")
            backends = Backends(
                pool, s.stock, s.ledger, s.batcher, cfg.replay_wait_ms, cfg.retry_after_s, reserver=s.reserver
            )
            s.strategies = {name: cls(backends) for name, cls in STRATEGIES.items()}
            s.strategy_pool = pool  # beside the strategies, never among them: only v1-v4 are routes
        log.info("api process ready", extra={"strategies": cfg.strategies_enabled})

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        s = self.s
        if s.batcher is not None:
            await s.batcher.close()
        if s.reserver is not None:
            await s.reserver.close()
        if s.live is not None:
            await s.live.close()
        await TALLY.stop()
        for name in reversed(s.owned):
            try:
                if name == "stock" and s.stock is not None:
                    await s.stock.close()
                elif name == "ledger" and s.ledger is not None:
                    await s.ledger.close()
                elif name == "strategy_pool" and s.strategy_pool is not None:
                    await s.strategy_pool.close()
            except Exception as exc:
                log.warning("close failed", extra={"what": name, "error": str(exc)})
        s.owned.clear()


def _json_handler() -> falcon.media.JSONHandler:
    return falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)


def create_app(
    settings: ApiSettings,
    stock: StockEngine | None = None,
    ledger: Ledger | None = None,
    *,
    strategies: dict[str, Strategy] | None = None,
) -> AsgiApp:
    """The ASGI app. Collaborators left ``None`` are opened per process at lifespan startup."""
    return build(settings, stock, ledger, strategies=strategies)[0]


def build(
    settings: ApiSettings,
    stock: StockEngine | None = None,
    ledger: Ledger | None = None,
    *,
    strategies: dict[str, Strategy] | None = None,
) -> tuple[AsgiApp, Services]:
    """``create_app`` that also hands back the Services the resources share (tests look inside)."""
    services = Services(
        settings=settings,
        auth=Authenticator(settings),
        read_limiter=ReadLimiter(settings.public_read_rate, settings.public_read_burst),
        stock=stock,
        ledger=ledger,
        strategies=strategies,
    )
    app: AsgiApp = falcon.asgi.App()
    app.add_middleware(RequestContext())
    app.add_middleware(Lifespan(services))
    handler = _json_handler()
    app.req_options.media_handlers[falcon.MEDIA_JSON] = handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
    errors.install(app, settings.retry_after_s)

    app.add_route("/v1/sales/{sale}/reservations", SaleReservations(services))
    app.add_route("/v1/reservations/{reservation_id}", ReservationItem(services))
    app.add_route("/v1/reservations/{reservation_id}/checkout", ReservationCheckout(services))
    app.add_route("/v1/sales/{sale}", Sale(services))
    queue = Queue(services)
    app.add_route("/v1/sales/{sale}/queue", queue)
    app.add_route("/v1/sales/{sale}/queue/{ticket}", queue, suffix="ticket")
    app.add_route("/healthz", Healthz())
    app.add_route("/readyz", Readyz(services))
    app.add_route("/metrics", MetricsResource(settings.metrics_port))  # 404 but on the metrics port
    app.add_route("/openapi.json", OpenApi(settings))
    if settings.live_page:
        app.add_route("/live", LiveOverview(services))
        app.add_route("/live/events", LiveOverviewEvents(services))
        page = LiveSale(services)
        app.add_route("/live/sales/{sale}", page)
        app.add_route("/live/sales/{sale}/events", page, suffix="events")
        app.add_route("/live/assets/{name}", LiveAsset(services))
        if settings.demo_buyers:
            app.add_route("/live/demo-token", DemoToken(services))
    if settings.strategies_enabled:
        buy = StrategyBuy(services)
        app.add_route("/api/{version}/buy", buy)
        app.add_route("/api/{version}/stats", buy, suffix="stats")
    return app, services
