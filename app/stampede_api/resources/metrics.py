"""``/metrics`` in the Prometheus text format. Under gunicorn every worker process writes its samples to
``PROMETHEUS_MULTIPROC_DIR`` and any worker answers the scrape for all of them; without that variable
(tests, a single process) the default registry is served."""

from __future__ import annotations

import os

import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from stampede_api.tally import TALLY


class Metrics:
    def __init__(self) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._registry = CollectorRegistry()
            MultiProcessCollector(self._registry)
        else:
            self._registry = REGISTRY

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        TALLY.flush()  # this process's counts are current; other workers' are at most tally.FLUSH_S late
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self._registry)
