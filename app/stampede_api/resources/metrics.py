"""``/metrics`` in the Prometheus text format, answered only on the metrics port, never to buyers.

gunicorn binds two addresses: the buyers' (``STAMPEDE_BIND``, the port the sale's Service targets) and
``STAMPEDE_METRICS_HOST:STAMPEDE_METRICS_PORT`` (the container port ``metrics``, scraped by a PodMonitor).
Both are served by the same worker processes; this resource answers 404 unless the request arrived on
the metrics port, so the per-sale counts are not readable through the buyers' Service. Under gunicorn
every worker writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` and any worker answers for all of them;
without that variable (tests, a single process) the default registry is served.
"""

from __future__ import annotations

import os

import falcon
import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from stampede_api.tally import TALLY


def registry() -> CollectorRegistry:
    """Every worker process's samples under gunicorn (multiprocess mode), else this process's own."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        MultiProcessCollector(reg)  # type: ignore[no-untyped-call]  # prometheus-client leaves it untyped
        return reg
    return REGISTRY


class Metrics:
    def __init__(self, port: int) -> None:
        self._port = port
        self._registry = registry()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        server = tuple(req.scope.get("server") or ())  # (host, port); None for a unix socket
        if not self._port or len(server) != 2 or server[1] != self._port:
            raise falcon.HTTPNotFound()
        TALLY.flush()  # this process's counts are current; other workers' are at most tally.FLUSH_S late
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self._registry)
