"""What the resources work with, held in one place per process.

The collaborators (Redis stock engine, ledger, batch flusher, strategy backends) are opened in the ASGI
lifespan startup of each worker process, after gunicorn forked it, so no pool or socket is ever shared
across a fork. Tests hand in their own before startup; resources read them at request time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from psycopg_pool import AsyncConnectionPool

from stampede.ledger import Ledger
from stampede.stock import StockEngine
from stampede.vocabulary import Dependency
from stampede_api.settings import ApiSettings

from .auth import Authenticator
from .batcher import Batcher
from .live_feed import LiveFeeds
from .read_limit import ReadLimiter
from .reserver import ReserveCoalescer

if TYPE_CHECKING:
    from .strategies import Strategy  # imported only when the strategies are enabled


@dataclass
class Services:
    settings: ApiSettings
    auth: Authenticator
    read_limiter: ReadLimiter
    stock: StockEngine | None = None
    ledger: Ledger | None = None
    batcher: Batcher | None = None
    reserver: ReserveCoalescer | None = None
    strategies: dict[str, Strategy] | None = None  # {"v1": Strategy, …} when enabled
    strategy_pool: AsyncConnectionPool | None = None  # the strategies' own pool, opened (and closed) by the lifespan
    live: LiveFeeds | None = None  # the live page's samplers, when STAMPEDE_LIVE_PAGE is on
    owned: list[str] = field(default_factory=list)  # what startup opened and shutdown must close

    def require(self) -> tuple[StockEngine, Ledger, Batcher]:
        if self.stock is None or self.ledger is None or self.batcher is None:
            from stampede import errors

            raise errors.DependencyUnavailable(Dependency.API, "starting up")
        return self.stock, self.ledger, self.batcher
