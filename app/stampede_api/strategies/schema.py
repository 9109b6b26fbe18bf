"""The tables of the demonstration strategies, applied only where the strategies run.

Production databases never get them: ``stampede migrate --with-strategies`` (used by ``make serve``, the
strategy benchmark and the API tests) passes these files to the core's migration runner as extra migrations.
"""

from __future__ import annotations

from importlib import resources


def migration_files() -> list[tuple[str, str]]:
    """(name, text) of ``strategies/migrations/*.sql`` in name order."""
    folder = resources.files(__package__) / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]
