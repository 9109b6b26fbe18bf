"""gunicorn configuration for the buy API: ``gunicorn -c python:stampede_api.gunicorn_conf stampede_api.asgi:app``.

Everything comes from ``ApiSettings`` (``STAMPEDE_*``), so the operator sets one environment for the
pod. Workers are ``uvicorn-worker``'s UvicornWorker on uvloop and httptools with the ASGI lifespan on:
each worker opens its own Redis and PostgreSQL pools at startup, after the fork; the master opens
nothing. ``reuse_port`` gives every worker its own accept queue, so the kernel spreads connections
instead of one worker winning them all. Prometheus multiprocess mode gets a fresh directory per master
and drops the files of dead workers; gunicorn binds ``STAMPEDE_METRICS_PORT`` beside the buyers' address and
only there is ``/metrics`` answered.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from uvicorn_worker import UvicornWorker

from stampede.settings import load
from stampede_api import http_protocol
from stampede_api.settings import ApiSettings

_settings = load(ApiSettings)


# The request-head bounds of the protocol below; workers are forked from this process, so they inherit them.
http_protocol.LIMITS.update(
    max_header_bytes=_settings.max_header_bytes,
    header_timeout_s=_settings.header_timeout_s,
    idle_timeout_s=_settings.idle_timeout_s,
)


class StampedeWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn-worker ships no type information
    """uvloop + httptools with bounded request heads (``stampede_api.http_protocol``: 431 past
    ``STAMPEDE_MAX_HEADER_BYTES``, 408 past ``STAMPEDE_HEADER_TIMEOUT_S``), lifespan required (a worker
    whose pools cannot open does not serve), proxy headers ignored (the client IP is decided by the app's
    client-IP header and trusted-hops settings)."""

    CONFIG_KWARGS = {  # noqa: RUF012
        "loop": "uvloop",
        "http": "stampede_api.http_protocol:BoundedHttpToolsProtocol",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
    }


class StampedeAccessLogWorker(StampedeWorker):
    CONFIG_KWARGS = {**StampedeWorker.CONFIG_KWARGS, "access_log": True}  # noqa: RUF012


# The buyers' address, and the metrics port (answered by the same workers; /metrics is 404 elsewhere).
bind = [_settings.bind] + ([f"{_settings.metrics_host}:{_settings.metrics_port}"] if _settings.metrics_port else [])
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
# gunicorn's control socket (default $XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl) is a path shared by every
# gunicorn of the user: another master could reach this one's controls, or this one take over theirs. Off.
control_socket_disable = True

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

    multiprocess.mark_process_dead(worker.pid, _METRICS_DIR)  # type: ignore[no-untyped-call]  # untyped upstream
