"""Cross-cutting request handling: a request id on every request and answer, and the request count and
latency metrics by route template and status (counted through ``tally``, not one memory-mapped write each).

The request id comes from a well-formed ``X-Request-ID`` header (so a trace can be followed through a
proxy) or is generated as a per-process random prefix plus a counter (unique without a ``getrandom``
system call per request); error logs carry it, and the answer echoes it.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

import falcon.asgi

from stampede_api import metrics

from .tally import TALLY

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    """Request id, timing and the request metrics, in one middleware (Falcon awaits every middleware
    method of every request, so one class costs less than two)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)
        # Label children are cached: ``labels()`` costs more than ``inc()`` on the hot path.
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.started = time.perf_counter()
        rid = req.get_header("X-Request-ID")
        if not rid or not _REQUEST_ID.match(rid):
            rid = f"{self._prefix}-{next(self._counter):x}"
        req.context.request_id = rid
        resp.set_header("X-Request-ID", rid)

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: object, req_succeeded: bool
    ) -> None:
        route = req.uri_template or "unmatched"
        method = req.method
        key = (route, method, str(resp.status_code))
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.API_REQUESTS.labels(*key)
        TALLY.inc(counter)
        started = getattr(req.context, "started", None)
        if started is not None:
            tkey = (route, method)
            timer = self._timers.get(tkey)
            if timer is None:
                timer = self._timers[tkey] = metrics.API_LATENCY.labels(route, method)
            TALLY.observe(timer, time.perf_counter() - started)
