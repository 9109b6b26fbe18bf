"""``/healthz`` says the process serves; ``/readyz`` says it can take a buy (Redis and PostgreSQL answer),
so Kubernetes stops routing to a pod that cannot reach its state instead of letting it answer 503s.

Both answer without a token, so ``/readyz`` reuses one check for ``readiness_cache_ms`` (and requests
arriving while a check runs wait for that same check): a flood of probes costs PostgreSQL and Redis at
most about one ping each per second per process.
"""

from __future__ import annotations

import asyncio
import time

import falcon
import falcon.asgi

from stampede.vocabulary import Dependency
from stampede_api.errors import ApiError
from stampede_api.services import Services

_PING_TIMEOUT_S = 2.0


class Healthz:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}

    on_head = on_get


class Readyz:
    def __init__(self, services: Services) -> None:
        self.s = services
        self._ttl = services.settings.readiness_cache_ms / 1000
        self._checked: tuple[float, dict[str, str]] | None = None  # (monotonic expiry, checks)
        self._running: asyncio.Future[dict[str, str]] | None = None

    async def _ping_all(self) -> dict[str, str]:
        assert self.s.stock is not None and self.s.ledger is not None
        checks: dict[str, str] = {}
        for name, ping in ((Dependency.REDIS, self.s.stock.ping()), (Dependency.POSTGRESQL, self.s.ledger.ping())):
            try:
                await asyncio.wait_for(ping, _PING_TIMEOUT_S)
                checks[name.value] = "ok"  # a plain str key: the JSON encoder takes no str subclass as a key
            except Exception:
                checks[name.value] = "unavailable"
        return checks

    async def _checks(self) -> dict[str, str]:
        cached = self._checked
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._ping_all())
            try:
                checks = await asyncio.shield(self._running)
            finally:
                self._running = None
            self._checked = (time.monotonic() + self._ttl, checks)
            return checks
        return await asyncio.shield(self._running)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if self.s.stock is None or self.s.ledger is None or self.s.batcher is None:
            raise ApiError(503, "not_ready", "starting up", headers={"Retry-After": "1"})
        checks = await self._checks()
        failed = [k for k, v in checks.items() if v != "ok"]
        if failed:
            raise ApiError(
                503,
                "not_ready",
                f"unreachable: {', '.join(failed)}",
                headers={"Retry-After": str(self.s.settings.retry_after_s)},
            )
        resp.status = falcon.HTTP_200
        resp.media = {"status": "ready", "checks": checks}

    on_head = on_get
