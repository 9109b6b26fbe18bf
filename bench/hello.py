"""A Falcon ASGI "hello" app served under the same gunicorn settings as the real one: the benchmark's
yardstick for what the framework, server and machine give before any Redis or PostgreSQL work."""

from __future__ import annotations

import falcon
import falcon.asgi


class Hello:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b'{"hello":"world"}'

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str) -> None:
        await req.stream.read()
        resp.status = falcon.HTTP_202
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b'{"hello":"world"}'


app = falcon.asgi.App()
app.add_route("/hello", Hello())
app.add_route("/v1/sales/{sale}/reservations", Hello())
