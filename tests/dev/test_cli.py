"""The ``stampede`` command: its version, its help in plain words, the migrations it applies, and that the
subcommands the images run load no component."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from stampede.migrate import MigrationError, migrate, plan
from stampede_api.strategies.schema import migration_files as strategy_migrations

ROOT = Path(__file__).resolve().parents[2]
STAMPEDE = Path(sys.executable).with_name("stampede")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STAMPEDE), *args], capture_output=True, text=True, cwd=ROOT, env=env or dict(os.environ), check=False
    )


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return {r[0] for r in rows.fetchall()}


def test_version_is_the_distribution_version() -> None:
    res = run("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"stampede {importlib.metadata.version('stampede')}"


def test_help_speaks_plainly_and_lists_every_command() -> None:
    res = run("--help")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("usage: stampede [-h] [--version] COMMAND ...")
    assert "Chores around a Stampede flash sale" in out
    for name in ("audit", "burst", "migrate", "mint-token"):
        assert re.search(rf"^    {name}\b", out, re.MULTILINE), f"{name} missing from:\n{out}"
    # Not the module docstring: no reST markup and no talk of how the module is built.
    assert "``" not in out and "@command" not in out


def test_a_missing_command_is_a_usage_error() -> None:
    res = run()
    assert res.returncode == 2
    assert "required: COMMAND" in res.stderr and "Traceback" not in res.stderr


def test_the_commands_the_images_run_load_no_component() -> None:
    """`stampede migrate` runs in the operator image and `stampede audit` in the worker image: building the
    command line and loading those subcommands must not need the API's, worker's or operator's packages."""
    code = (
        "import sys\n"
        "from stampede_dev import cli\n"
        "cli.parser()\n"
        "import stampede.migrate, stampede_dev.sale_audit\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'stampede_api', 'stampede_worker', 'stampede_operator', 'falcon', 'kopf', 'gunicorn'})\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.postgres
async def test_production_migration_creates_no_strategy_tables(fresh_database_url: str) -> None:
    result = await migrate(fresh_database_url)
    assert "0100_strategies.sql" not in result.applied
    assert not {"strategy_products", "strategy_orders"} & _tables(fresh_database_url)
    # Asked for, the strategies' migration applies after the core's, once.
    extra = await migrate(fresh_database_url, extra=strategy_migrations())
    assert extra.applied == ["0100_strategies.sql"]
    assert {"strategy_products", "strategy_orders"} <= _tables(fresh_database_url)
    assert (await migrate(fresh_database_url, extra=strategy_migrations())).applied == []
    # A database migrated with the strategies still migrates without them (the recorded row is left alone).
    assert (await migrate(fresh_database_url)).applied == []


@pytest.mark.postgres
def test_migrate_with_strategies_on_the_command_line(fresh_database_url: str) -> None:
    env = {**os.environ, "STAMPEDE_DATABASE_URL": fresh_database_url}
    plain = run("migrate", env=env)
    assert plain.returncode == 0, plain.stderr
    assert "strategy_products" not in _tables(fresh_database_url)
    res = run("migrate", "--with-strategies", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "==> applied 0100_strategies.sql"
    assert "strategy_products" in _tables(fresh_database_url)


def test_with_strategies_without_the_api_dependencies_is_a_clear_error() -> None:
    """In an image without the API's dependencies (the operator's), the option fails with a message, not a
    traceback, before touching any database."""
    code = (
        "import sys\n"
        "sys.modules['falcon'] = None\n"  # as if the api extra were not installed
        "from stampede_dev.cli import main\n"
        "sys.exit(main(['migrate', '--with-strategies', '--database-url', 'postgresql://127.0.0.1:9/none']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("stampede migrate: --with-strategies needs the API's dependencies")
    assert "Traceback" not in res.stderr


def test_extra_migrations_cannot_take_a_core_name() -> None:
    core_name = plan()[-1][0]
    with pytest.raises(MigrationError, match=core_name):
        plan([(core_name, "SELECT 1")])


def test_migrate_without_a_database_is_a_clear_error() -> None:
    env = {**os.environ, "STAMPEDE_DATABASE_URL": "postgresql://127.0.0.1:9/nowhere?connect_timeout=2"}
    res = run("migrate", env=env)
    assert res.returncode == 1
    assert res.stderr.startswith("stampede migrate:") and "Traceback" not in res.stderr
