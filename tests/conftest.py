"""Session fixtures that start the project's own Redis and PostgreSQL once (hack/services.sh) and hand
each test worker its own Redis database and PostgreSQL database, so tests run in parallel without
seeing each other's sales."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from stampede.stock import StockEngine

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "hack" / "services.sh"
ENV_FILE = ROOT / ".run" / "services" / "env"


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def _read_env() -> dict[str, str]:
    return dict(line.split("=", 1) for line in ENV_FILE.read_text().split() if "=" in line)


@pytest.fixture(scope="session")
def services() -> Iterator[dict[str, str]]:
    """Starts Redis and PostgreSQL if they are not up; stops them at the end only if this session
    started them and is not one of several parallel workers (then `make test` stops them)."""
    was_up = (
        "postgres: up" in subprocess.run([SERVICES, "status"], capture_output=True, text=True, check=False).stdout
        and "redis: up" in subprocess.run([SERVICES, "status"], capture_output=True, text=True, check=False).stdout
    )
    subprocess.run([SERVICES, "up"], check=True)
    yield _read_env()
    if not was_up and "PYTEST_XDIST_WORKER" not in os.environ:
        subprocess.run([SERVICES, "down"], check=False)


@pytest.fixture(scope="session")
def redis_url(services: dict[str, str]) -> str:
    """A Redis database of this test worker's own (db 1..15), flushed at the start."""
    db = 1 + _worker_index() % 15
    url = f"redis://127.0.0.1:{services['STAMPEDE_REDIS_PORT']}/{db}"
    subprocess.run(
        ["redis-cli", "-p", services["STAMPEDE_REDIS_PORT"], "-n", str(db), "flushdb"],
        check=True,
        capture_output=True,
    )
    return url


@pytest.fixture(scope="session")
def database_url(services: dict[str, str]) -> str:
    """A fresh PostgreSQL database of this test worker's own."""
    port = services["STAMPEDE_PG_PORT"]
    name = f"stampede_test_{_worker_index()}"
    admin = f"postgresql://stampede@127.0.0.1:{port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://stampede@127.0.0.1:{port}/{name}"


@pytest.fixture(scope="session")
async def stock(redis_url: str) -> AsyncIterator[StockEngine]:
    engine = StockEngine.from_url(redis_url)
    yield engine
    await engine.close()


@pytest.fixture
def sale() -> str:
    """A sale name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"
