"""``stampede migrate``: brings a PostgreSQL database to the schema this code expects.

Plain SQL files in ``stampede/sql/migrations/`` apply in name order, each in its own transaction together
with its row in ``stampede_schema_version`` (name + checksum), so a migration is either applied and
recorded or neither. procrastinate's own schema is applied first by the same command and recorded under
``procrastinate-<version>``. Everything runs under one PostgreSQL advisory lock, so several pods starting
at once serialise: the first applies, the others wait and then find nothing to do. A recorded migration
whose file changed since is refused, never re-applied.

A component may bring migrations of its own that not every database needs (the API's demonstration
strategies): the caller passes them as ``extra``, they apply after the core's, by the same rules.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from procrastinate.schema import SchemaManager

from . import errors, pgerrors, sqlfiles

log = logging.getLogger(__name__)

# An arbitrary constant that names "the stampede schema" among advisory locks (bigint).
LOCK_KEY = 0x5741_4D50_4544_45  # "WAMPEDE"


class MigrationError(errors.StampedeError):
    """The database holds a migration history this code cannot continue from."""

    code = "migration_error"


@dataclass
class MigrationResult:
    applied: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def procrastinate_version() -> str:
    return importlib.metadata.version("procrastinate")


def plan(extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(name, sql) of every migration in the order it applies: procrastinate's schema, ours, then ``extra``."""
    core = [(f"procrastinate-{procrastinate_version()}", SchemaManager.get_schema()), *sqlfiles.migration_files()]
    names = {name for name, _ in core}
    clash = [name for name, _ in extra if name in names]
    if clash:
        raise MigrationError(f"extra migrations reuse the names of core ones: {', '.join(clash)}")
    return [*core, *sorted(extra)]


async def migrate(database_url: str, *, extra: Sequence[tuple[str, str]] = ()) -> MigrationResult:
    """Applies what is missing (the core's migrations, then ``extra``); idempotent and safe to run concurrently."""
    q = sqlfiles.queries("migrate.sql")
    result = MigrationResult()
    try:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    except pgerrors.UNAVAILABLE as exc:
        raise pgerrors.unavailable(exc) from exc
    async with conn:
        await conn.execute(q["lock"], {"key": LOCK_KEY})
        try:
            await conn.execute(q["create_version_table"])
            cur = await conn.execute(q["applied"])
            applied = {name: checksum for name, checksum in await cur.fetchall()}
            for name, text in plan(extra):
                checksum = _checksum(text)
                if name in applied:
                    if applied[name] != checksum and not name.startswith("procrastinate-"):
                        raise MigrationError(
                            f"migration {name} was applied with checksum {applied[name][:12]} but the file now "
                            f"has {checksum[:12]}: never edit an applied migration, add a new one"
                        )
                    result.already.append(name)
                    continue
                if name.startswith("procrastinate-"):
                    done = [n for n in applied if n.startswith("procrastinate-")]
                    cur = await conn.execute(q["procrastinate_present"])
                    row = await cur.fetchone()
                    if done:
                        # Recorded by another procrastinate version: its upgrade is procrastinate's own
                        # migration path (its sql/migrations), not a re-apply of the whole schema.
                        log.warning(
                            "procrastinate schema of another version; upgrade it with procrastinate's migrations",
                            extra={"recorded": done, "installed": name},
                        )
                        result.already.append(name)
                        continue
                    if row is not None and row[0]:
                        # Applied by hand (`procrastinate schema --apply`): adopted as it is, recorded once.
                        await conn.execute(q["record"], {"name": name, "checksum": "adopted"})
                        log.info("procrastinate schema found in place; recorded", extra={"migration": name})
                        result.already.append(name)
                        continue
                async with conn.transaction():
                    # A file holds many statements: without parameters psycopg sends it as one simple query.
                    await conn.execute(text)
                    await conn.execute(q["record"], {"name": name, "checksum": checksum})
                log.info("migration applied", extra={"migration": name})
                result.applied.append(name)
        finally:
            await conn.execute(q["unlock"], {"key": LOCK_KEY})
    return result
