"""`stampede migrate` against the real PostgreSQL: idempotent, safe when several pods run it at once,
and it refuses to continue from a migration that was edited after it was applied."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from stampede.migrate import (
    PROCRASTINATE_STEP,
    MigrationError,
    migrate,
    plan,
    procrastinate_steps,
    procrastinate_version,
)

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


def _recorded(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM stampede_schema_version ORDER BY name").fetchall()]


async def test_twice_applies_once(fresh_database_url: str) -> None:
    first = await migrate(fresh_database_url)
    names = [n for n, _ in plan()]
    assert first.applied == names and names[0].startswith("procrastinate-") and "0001_ledger.sql" in names
    second = await migrate(fresh_database_url)
    assert second.applied == [] and second.already == names
    assert sorted(_recorded(fresh_database_url)) == sorted(names)


async def test_concurrent_migrators_serialise(fresh_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(fresh_database_url) for _ in range(4)))
    assert sum(len(r.applied) for r in results) == len(plan())  # each migration applied by exactly one
    assert sorted(_recorded(fresh_database_url)) == sorted(n for n, _ in plan())


def test_concurrent_cli_processes(fresh_database_url: str) -> None:
    env = {**os.environ, "STAMPEDE_DATABASE_URL": fresh_database_url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "stampede_dev.cli", "migrate"], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert sum(o.count("==> applied") for o in outs) == len(plan())


async def test_edited_migration_is_refused(fresh_database_url: str) -> None:
    await migrate(fresh_database_url)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("UPDATE stampede_schema_version SET checksum = 'x' WHERE name = '0001_ledger.sql'")
    with pytest.raises(MigrationError, match=r"0001_ledger\.sql"):
        await migrate(fresh_database_url)


async def test_procrastinate_schema_applied_by_hand_is_adopted(fresh_database_url: str) -> None:
    from procrastinate.schema import SchemaManager

    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(SchemaManager.get_schema())
    result = await migrate(fresh_database_url)
    assert result.already[0].startswith("procrastinate-") and "0001_ledger.sql" in result.applied
    assert (await migrate(fresh_database_url)).applied == []


FIXTURES = Path(__file__).resolve().parent / "fixtures"
# What makes up procrastinate's schema, read from the catalog: tables' columns, indexes, functions (with their
# arguments and bodies), triggers and enum labels. Two databases with the same answers have the same schema.
_CATALOG = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relname LIKE 'procrastinate%%' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE tablename LIKE 'procrastinate%%'
UNION ALL
SELECT 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') ' || md5(p.prosrc)
  FROM pg_proc p WHERE p.proname LIKE 'procrastinate%%'
UNION ALL
SELECT 'trigger', t.tgname || ' ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relname LIKE 'procrastinate%%' AND NOT t.tgisinternal
UNION ALL
SELECT 'enum', t.typname || '.' || e.enumlabel
  FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid WHERE t.typname LIKE 'procrastinate%%'
"""


def _procrastinate_catalog(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return {(kind, what) for kind, what in conn.execute(_CATALOG).fetchall()}


async def test_older_procrastinate_schema_is_upgraded_by_its_migrations(
    fresh_database_url: str, database_url: str
) -> None:
    """A database left at procrastinate 3.0.2 (its real schema, recorded as `stampede migrate` of that time did)
    is brought to the installed version by procrastinate's own migration files, each recorded once, and then holds
    the same schema as a database created at the installed version; a second run applies nothing."""
    old = (FIXTURES / "procrastinate-3.0.2-schema.sql").read_text()
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(old.encode())
        conn.execute(
            "CREATE TABLE stampede_schema_version (name text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO stampede_schema_version VALUES ('procrastinate-3.0.2', 'x')")
    steps = [f"{PROCRASTINATE_STEP}{name}" for name, _ in procrastinate_steps("3.0.2", procrastinate_version())]
    assert steps, "procrastinate has no migration after 3.0.2: this test proves nothing"
    assert not any(s.startswith(f"{PROCRASTINATE_STEP}03.00.00_") for s in steps)  # 3.0.2's own are in its schema

    result = await migrate(fresh_database_url)
    installed = f"procrastinate-{procrastinate_version()}"
    assert result.applied[: len(steps) + 1] == [*steps, installed]
    assert "0001_ledger.sql" in result.applied
    assert set(_recorded(fresh_database_url)) >= {*steps, installed, "procrastinate-3.0.2"}
    again = await migrate(fresh_database_url)
    assert again.applied == []

    # The same schema as a database created at the installed version.
    base, _, _ = database_url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{fresh_database_url.rpartition("/")[2]}_new"')
    fresh_new = f"{fresh_database_url}_new"
    try:
        await migrate(fresh_new)
        upgraded, created = _procrastinate_catalog(fresh_database_url), _procrastinate_catalog(fresh_new)
        assert upgraded == created, (sorted(upgraded - created), sorted(created - upgraded))
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh_database_url.rpartition("/")[2]}_new" WITH (FORCE)')


async def test_upgrade_stopped_half_way_continues_where_it_stopped(fresh_database_url: str) -> None:
    """Each of procrastinate's files is applied in a transaction with its record: a run that applied the first
    file and died goes on from the second, never applying the first twice."""
    old = (FIXTURES / "procrastinate-3.0.2-schema.sql").read_text()
    (first, sql), *rest = procrastinate_steps("3.0.2", procrastinate_version())
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(old.encode())
        conn.execute(sql.encode())
        conn.execute(
            "CREATE TABLE stampede_schema_version (name text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO stampede_schema_version VALUES ('procrastinate-3.0.2', 'x'), (%s, 'x')",
            (f"{PROCRASTINATE_STEP}{first}",),
        )
    result = await migrate(fresh_database_url)
    assert f"{PROCRASTINATE_STEP}{first}" in result.already
    assert [s for s in result.applied if s.startswith(PROCRASTINATE_STEP)] == [
        f"{PROCRASTINATE_STEP}{name}" for name, _ in rest
    ]


def test_procrastinate_older_than_3_is_refused() -> None:
    with pytest.raises(MigrationError, match=r"older than 3\.0\.0"):
        procrastinate_steps("2.15.1", "3.10.0")
