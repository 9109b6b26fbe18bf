"""``stampede migrate``: brings a PostgreSQL database to the schema this code expects.

Plain SQL files in ``stampede/sql/migrations/`` apply in name order, each in its own transaction together
with its row in ``stampede_schema_version`` (name + checksum), so a migration is either applied and
recorded or neither. procrastinate's own schema is applied first by the same command and recorded under
``procrastinate-<version>``. When the installed procrastinate is newer than the version recorded, its own migration
files (``procrastinate/sql/migrations``, named ``XX.YY.ZZ_NN_[pre|post_]what.sql``; a version's schema already
holds that version's files) are applied in name order from the recorded version (exclusive) to the installed one
(inclusive), each recorded as ``procrastinate/<file>`` in its own transaction, then the new version is recorded:
an upgrade stopped half-way continues where it stopped.

Everything runs under one PostgreSQL advisory lock, so several pods starting at once serialise: the first
applies, the others wait and then find nothing to do. A recorded migration whose file changed since is refused,
never re-applied.

A component may bring migrations of its own that not every database needs (the API's demonstration
strategies): the caller passes them as ``extra``, they apply after the core's, by the same rules.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


PROCRASTINATE = "procrastinate-"  # + version: procrastinate's schema at that version
PROCRASTINATE_STEP = "procrastinate/"  # + file: one of procrastinate's migrations, applied by an upgrade
_MIGRATION_FILE = re.compile(r"(\d+)\.(\d+)\.(\d+)_\d+_.*\.sql")


def _version(text: str) -> tuple[int, ...]:
    """``3.10.0`` -> (3, 10, 0); a pre-release suffix (``3.11.0rc1``) counts as its release."""
    parts = re.findall(r"\d+", text)[:3]
    if not parts:
        raise MigrationError(f"not a procrastinate version: {text!r}")
    return tuple(int(p) for p in parts)


def procrastinate_steps(recorded: str, installed: str) -> list[tuple[str, str]]:
    """(file name, sql) of procrastinate's migrations that bring its schema from version ``recorded`` to
    ``installed``: the files of versions after ``recorded`` up to ``installed``, in name order (version, then
    serial: a version's ``pre`` files before its ``post`` ones). Only upgrades within procrastinate 3 are
    automatic: procrastinate's older files follow another naming rule."""
    old, new = _version(recorded), _version(installed)
    if old[0] < 3:
        raise MigrationError(
            f"procrastinate schema {recorded} is older than 3.0.0: upgrade it by procrastinate's own guide first"
        )
    folder = Path(SchemaManager.get_migrations_path())
    steps = []
    for path in sorted(folder.glob("*.sql")):
        m = _MIGRATION_FILE.fullmatch(path.name)
        if m is not None and old < tuple(int(g) for g in m.groups()) <= new:
            steps.append((path.name, path.read_text(encoding="utf-8")))
    return steps


def plan(extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(name, sql) of every migration in the order it applies: procrastinate's schema, ours, then ``extra``."""
    core = [(f"{PROCRASTINATE}{procrastinate_version()}", SchemaManager.get_schema()), *sqlfiles.migration_files()]
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
                    if applied[name] != checksum and not name.startswith(PROCRASTINATE):
                        raise MigrationError(
                            f"migration {name} was applied with checksum {applied[name][:12]} but the file now "
                            f"has {checksum[:12]}: never edit an applied migration, add a new one"
                        )
                    result.already.append(name)
                    continue
                if name.startswith(PROCRASTINATE):
                    done = [n for n in applied if n.startswith(PROCRASTINATE)]
                    if done:
                        await _upgrade_procrastinate(conn, q, done, name, checksum, applied, result)
                        continue
                    cur = await conn.execute(q["procrastinate_present"])
                    row = await cur.fetchone()
                    if row is not None and row[0]:
                        # Applied by hand (`procrastinate schema --apply`): adopted as it is, recorded once.
                        await conn.execute(q["record"], {"name": name, "checksum": "adopted"})
                        log.info("procrastinate schema found in place; recorded", extra={"migration": name})
                        result.already.append(name)
                        continue
                await _apply(conn, q, name, text, checksum)
                result.applied.append(name)
        finally:
            await conn.execute(q["unlock"], {"key": LOCK_KEY})
    return result


async def _apply(conn: psycopg.AsyncConnection[Any], q: dict[str, str], name: str, text: str, checksum: str) -> None:
    """One migration and its record, in one transaction."""
    async with conn.transaction():
        # A file holds many statements: without parameters psycopg sends it as one simple query.
        await conn.execute(text)
        await conn.execute(q["record"], {"name": name, "checksum": checksum})
    log.info("migration applied", extra={"migration": name})


async def _upgrade_procrastinate(
    conn: psycopg.AsyncConnection[Any],
    q: dict[str, str],
    done: list[str],
    name: str,
    checksum: str,
    applied: dict[str, str],
    result: MigrationResult,
) -> None:
    """procrastinate's schema is recorded at another version (``done``): apply its migrations up to the installed
    one (``name``), each file once, then record the installed version. A database ahead of the code (a
    rollback of the code) is left as it is, with a warning: procrastinate's migrations only go forward."""
    recorded = max((n.removeprefix(PROCRASTINATE) for n in done), key=_version)
    installed = name.removeprefix(PROCRASTINATE)
    if _version(recorded) > _version(installed):
        log.warning(
            "procrastinate schema is newer than the installed procrastinate; left as it is",
            extra={"recorded": recorded, "installed": installed},
        )
        result.already.append(name)
        return
    for file, sql in procrastinate_steps(recorded, installed):
        step = f"{PROCRASTINATE_STEP}{file}"
        if step in applied:
            result.already.append(step)
            continue
        await _apply(conn, q, step, sql, _checksum(sql))
        result.applied.append(step)
    async with conn.transaction():
        await conn.execute(q["record"], {"name": name, "checksum": checksum})
    log.info("procrastinate schema upgraded", extra={"from": recorded, "to": installed})
    result.applied.append(name)
