"""The live sale page: ``/live`` (every sale of the API's namespace), ``/live/sales/{sale}`` (one sale), their
Server-Sent Event streams, and, in development only, ``POST /live/demo-token`` for the page's buy button.

Served by the API itself (``STAMPEDE_LIVE_PAGE=true``), on the buyers' port: the page then has the buy
endpoints on its own origin, so the button goes through the real buy path (reserve, durable write, settle)
with no cross-origin rules and no proxy, and nothing else must be deployed. Its auth model is the API's: the
page, its assets and its streams are public reads, like ``GET /v1/sales/{sale}`` (each request spends one
token of the client address's read bucket; open streams are capped per process), and buying from it needs a
buyer token like any buy. Only with ``STAMPEDE_DEMO_BUYERS=true``, which the settings refuse unless
``STAMPEDE_ENVIRONMENT=development``, does the page mint one: a new demo buyer with a 10-minute token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources

import falcon
import falcon.asgi

from stampede import errors, restore, tokens
from stampede.names import SALE_NAME_RE, sale_id
from stampede_api.client_ip import client_ip
from stampede_api.errors import ApiError
from stampede_api.live_feed import Feed, LiveFeeds
from stampede_api.services import Services

ASSETS = {"live.js": "text/javascript; charset=utf-8", "live.css": "text/css; charset=utf-8"}
DEMO_TOKEN_TTL_S = 600
RETRY_MS = 1000  # the browser's reconnect delay after a stream ends

# The page loads its own script and style only and talks only to its own origin.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def _static(name: str) -> str:
    return (resources.files("stampede_api") / "static" / name).read_text(encoding="utf-8")


class _Live:
    def __init__(self, services: Services) -> None:
        self.s = services

    def _read(self, req: falcon.asgi.Request) -> None:
        cfg = self.s.settings
        self.s.read_limiter.check(client_ip(req, cfg.client_ip_header, cfg.trusted_proxy_hops) or "unknown")

    def _feeds(self) -> LiveFeeds:
        self.s.require()  # 503 until the process's startup has run
        assert self.s.live is not None  # startup makes the feeds whenever these routes exist
        return self.s.live

    def _page(self, resp: falcon.asgi.Response, view: str, sale: str = "") -> None:
        html = _static("live.html")
        demo = "on" if self.s.settings.demo_buyers else "off"
        # ``sale`` matched SALE_NAME_RE: lower-case letters, digits and dashes only, nothing to escape.
        resp.text = html.replace("{{view}}", view).replace("{{sale}}", sale).replace("{{demo}}", demo)
        resp.content_type = falcon.MEDIA_HTML
        resp.set_headers(_PAGE_HEADERS)

    async def _stream(self, resp: falcon.asgi.Response, feed: Feed, event: str) -> None:
        feeds = self._feeds()
        if feeds.streams >= self.s.settings.live_max_streams:
            raise ApiError(429, "rate_limited", "too many live streams open; retry later", headers={"Retry-After": "5"})
        feeds.streams += 1
        until = time.monotonic() + self.s.settings.live_stream_s

        async def events() -> AsyncIterator[falcon.asgi.SSEvent]:
            try:
                async for sample in feed.stream(until):
                    yield falcon.asgi.SSEvent(event=event, json=sample, retry=RETRY_MS)
            finally:
                feeds.streams -= 1

        resp.set_header("Cache-Control", "no-store")
        resp.set_header("X-Accel-Buffering", "no")  # a buffering proxy would hold the events back
        resp.sse = events()


class LiveOverview(_Live):
    """``GET /live``: every sale of the namespace."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._read(req)
        self._page(resp, "overview")


class LiveOverviewEvents(_Live):
    """``GET /live/events``: the overview's samples (event ``sales``)."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._read(req)
        await self._stream(resp, self._feeds().overview(), "sales")


class LiveSale(_Live):
    """``GET /live/sales/{sale}`` (the page) and ``GET /live/sales/{sale}/events`` (event ``sale``)."""

    async def _known(self, sale: str) -> str:
        """The sale's id, or 404 for a sale nobody knows and 503 while Redis restores it."""
        if not SALE_NAME_RE.match(sale):
            raise errors.SaleNotFound(sale[:64])
        stock, ledger, _ = self.s.require()
        sid = sale_id(self.s.settings.sale_namespace, sale)
        try:
            await stock.snapshot(sid)
        except errors.SaleNotFound:
            await restore.sale_lost(ledger, stock, sid)
        return sid

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sale: str) -> None:
        self._read(req)
        await self._known(sale)
        self._page(resp, "sale", sale)

    async def on_get_events(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sale: str) -> None:
        self._read(req)
        sid = await self._known(sale)
        await self._stream(resp, self._feeds().sale(sid, sale), "sale")


class LiveAsset(_Live):
    """``GET /live/assets/{name}``: the page's script and style sheet (a fixed list, nothing else)."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        self._read(req)
        kind = ASSETS.get(name)
        if kind is None:
            raise falcon.HTTPNotFound()
        resp.text = _static(name)
        resp.content_type = kind
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Cache-Control", "no-cache")


class DemoToken(_Live):
    """``POST /live/demo-token`` (development only): a new demo buyer and a short-lived token for it."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._read(req)
        cfg = self.s.settings
        buyer = f"demo-{secrets.token_hex(6)}"
        ttl = min(DEMO_TOKEN_TTL_S, cfg.jwt_max_ttl_s)
        token = tokens.mint(cfg.jwt_secret, buyer, ttl_s=ttl, issuer=cfg.jwt_issuer, audience=cfg.jwt_audience)
        resp.set_header("Cache-Control", "no-store")
        resp.media = {"buyer": buyer, "token": token, "expires_in": ttl}
