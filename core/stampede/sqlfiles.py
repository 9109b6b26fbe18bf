"""Named SQL queries from ``.sql`` files shipped in the package (``stampede/sql/``).

A file holds blocks that start with ``-- name: <query_name>``; everything up to the next such line is the
query. Files are read once per process, so SQL lives in .sql files and Python refers to it by name.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Splits a file's text into {name: query}; text before the first name line is ignored."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@cache
def queries(filename: str) -> dict[str, str]:
    """The named queries of ``stampede/sql/<filename>``."""
    return parse((resources.files("stampede") / "sql" / filename).read_text(encoding="utf-8"))


def migration_files() -> list[tuple[str, str]]:
    """(name, text) of ``stampede/sql/migrations/*.sql`` in name order: the order they apply in."""
    folder = resources.files("stampede") / "sql" / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]
