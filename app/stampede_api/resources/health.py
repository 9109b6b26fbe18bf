"""``/healthz`` says the process serves; ``/readyz`` says it can take a buy (Redis and PostgreSQL answer),
so Kubernetes stops routing to a pod that cannot reach its state instead of letting it answer 503s."""

from __future__ import annotations

import asyncio

import falcon
import falcon.asgi

from stampede_api.errors import ApiError
from stampede_api.services import Services

_PING_TIMEOUT_S = 2.0


class Healthz:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class Readyz:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks: dict[str, str] = {}
        if self.s.stock is None or self.s.ledger is None or self.s.batcher is None:
            raise ApiError(503, "not_ready", "starting up", headers={"Retry-After": "1"})
        for name, ping in (("redis", self.s.stock.client.ping()), ("postgresql", self.s.ledger.ping())):
            try:
                await asyncio.wait_for(ping, _PING_TIMEOUT_S)
                checks[name] = "ok"
            except Exception:
                checks[name] = "unavailable"
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
