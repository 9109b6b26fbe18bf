"""The tables of the demonstration strategies, applied only where the strategies run, and their SQL.

Production databases never get them: ``stampede migrate --with-strategies`` (used by ``make serve``, the
strategy benchmark and the API tests) passes these files to the core's migration runner as extra migrations.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from stampede import sqlfiles


@cache
def queries() -> dict[str, str]:
    """The strategies' named queries (``strategies/strategies.sql``): demonstration tables, not the ledger,
    so their SQL lives beside them rather than in the core."""
    return sqlfiles.parse((resources.files(__package__) / "strategies.sql").read_text(encoding="utf-8"))


def migration_files() -> list[tuple[str, str]]:
    """(name, text) of ``strategies/migrations/*.sql`` in name order."""
    folder = resources.files(__package__) / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]
