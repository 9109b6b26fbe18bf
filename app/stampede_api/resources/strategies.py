"""``POST /api/v{n}/buy`` and ``GET /api/v{n}/stats`` for the demonstration strategies (mounted only when
``STAMPEDE_STRATEGIES_ENABLED`` is true). No token: the case study's body names the user."""

from __future__ import annotations

import falcon.asgi

from stampede.identifiers import BUYER_ID_RULE, is_buyer_id
from stampede.names import SALE_NAME_RE
from stampede_api.body import read_object, str_member
from stampede_api.client_ip import client_ip
from stampede_api.errors import ApiError, bad_request
from stampede_api.services import Services

_MEMBERS = frozenset({"productId", "userId"})


class StrategyBuy:
    def __init__(self, services: Services) -> None:
        self.s = services

    def _strategy(self, version: str) -> object:
        backends = self.s.strategies
        if backends is None:
            raise ApiError(503, "unavailable", "strategies are starting", headers={"Retry-After": "1"})
        strategy = backends.get(version)
        if strategy is None:
            raise ApiError(404, "not_found", f"no strategy {version!r}")
        return strategy

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, version: str) -> None:
        strategy = self._strategy(version)
        body = await read_object(req, self.s.settings.max_body_bytes, _MEMBERS)
        product = str_member(body, "productId", max_len=63)
        if not SALE_NAME_RE.match(product):
            raise bad_request("productId", "must be a lowercase name (letters, digits, '-')")
        user = str_member(body, "userId")
        if not is_buyer_id(user):
            raise bad_request("userId", f"must be {BUYER_ID_RULE}")
        result = await strategy.buy(  # type: ignore[attr-defined]
            product,
            user,
            client_ip=client_ip(req, self.s.settings.client_ip_header, self.s.settings.trusted_proxy_hops),
            request_id=req.context.request_id,
        )
        resp.status = result.status
        resp.media = result.body

    async def on_get_stats(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, version: str) -> None:
        strategy = self._strategy(version)
        product = req.get_param("productId")
        if not product or not SALE_NAME_RE.match(product):
            raise bad_request("productId", "is required: a lowercase name (letters, digits, '-')")
        resp.media = await strategy.stats(product)  # type: ignore[attr-defined]

    on_head_stats = on_get_stats
