"""``/openapi.json``: the document is built once per process from the settings it serves with."""

from __future__ import annotations

import falcon.asgi
import orjson

from stampede_api.openapi import document
from stampede_api.settings import ApiSettings


class OpenApi:
    def __init__(self, settings: ApiSettings) -> None:
        self._body = orjson.dumps(document(settings))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body

    on_head = on_get
