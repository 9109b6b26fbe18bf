"""The one mapping of PostgreSQL trouble to ``DependencyUnavailable``: a lost or refused connection, a pool
that timed out or closed, a serialization failure or deadlock (``OperationalError`` covers both: worth
retrying). An SQL error that is not about the connection (a violated constraint: a bug) is not mapped and
passes through unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool

from .errors import DependencyUnavailable
from .vocabulary import Dependency

UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
)


def unavailable(exc: BaseException) -> DependencyUnavailable:
    """``exc`` as the DependencyUnavailable of PostgreSQL (raise it ``from exc``)."""
    return DependencyUnavailable(Dependency.POSTGRESQL, f"{type(exc).__name__}: {exc}")


@contextmanager
def mapped() -> Iterator[None]:
    """Raises any of ``UNAVAILABLE`` inside the block as ``unavailable(exc)``."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise unavailable(exc) from exc


__all__ = ["UNAVAILABLE", "mapped", "unavailable"]
