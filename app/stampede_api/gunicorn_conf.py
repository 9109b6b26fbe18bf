"""gunicorn configuration for the buy API: ``gunicorn -c python:stampede_api.gunicorn_conf stampede_api.asgi:app``.

Everything comes from ``ApiSettings`` (``STAMPEDE_*``), so the operator sets one environment for the
pod. Workers are ``uvicorn-worker``'s UvicornWorker on uvloop and httptools with the ASGI lifespan on:
each worker opens its own Redis and PostgreSQL pools at startup, after the fork; the master opens
nothing. ``reuse_port`` gives every worker its own accept queue, so the kernel spreads connections
instead of one worker winning them all. Prometheus multiprocess mode gets a fresh directory per master
and drops the files of dead workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from uvicorn_worker import UvicornWorker

from stampede.settings import ApiSettings, load

_settings = load(ApiSettings)


class StampedeWorker(UvicornWorker):
    """uvloop + httptools, lifespan required (a worker whose pools cannot open does not serve),
    proxy headers ignored (the client IP is decided by the app's trusted-hops setting)."""

    CONFIG_KWARGS = {  # noqa: RUF012
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
    }


class StampedeAccessLogWorker(StampedeWorker):
    CONFIG_KWARGS = {**StampedeWorker.CONFIG_KWARGS, "access_log": True}  # noqa: RUF012


bind = [_settings.bind]
workers = _settings.workers
worker_class = StampedeAccessLogWorker if _settings.access_log else StampedeWorker
reuse_port = True
timeout = _settings.timeout_s
graceful_timeout = _settings.graceful_timeout_s
keepalive = _settings.keepalive_s
backlog = _settings.backlog
max_requests = _settings.max_requests
max_requests_jitter = max(0, _settings.max_requests // 10)
preload_app = False  # the app is imported in each worker, after the fork
accesslog = "-" if _settings.access_log else None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "stampede-api"

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="stampede-api-metrics-")
_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server: Any) -> None:
    """A fresh multiprocess directory: samples of an earlier master must not be summed in."""
    os.makedirs(_METRICS_DIR, exist_ok=True)
    for name in os.listdir(_METRICS_DIR):
        path = os.path.join(_METRICS_DIR, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _METRICS_DIR)
