"""Stampede's shared domain core: the one place for key names, settings, the stock engine, the ledger
and the job queue, so the API, the worker and the operator can never disagree about them."""

from __future__ import annotations

__version__ = "0.1.0"
