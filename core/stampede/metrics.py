"""Prometheus metric definitions, in one place so names and labels never drift between processes.

Each process imports only its section. The API runs under gunicorn with several worker processes, so it
uses prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR); definitions here are plain and
work in both modes.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE = "stampede"

# --- worker --------------------------------------------------------------------------------------

# --- API -----------------------------------------------------------------------------------------

# --- operator ------------------------------------------------------------------------------------

__all__ = ["NAMESPACE", "Counter", "Gauge", "Histogram"]
