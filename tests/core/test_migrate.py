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

from stampede.migrate import MigrationError, migrate, plan

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
