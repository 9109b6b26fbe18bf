"""The bundled data stores as the chart configures them, run for real on this machine: Redis started with the exact
arguments of the chart's StatefulSet (its ACL user, the default user off) and a PostgreSQL database prepared by the
chart's init script (Stampede's role owns it and is no superuser). A whole sale runs on them with the least
privilege they grant: `stampede migrate` as the role, concurrent buyers through the API, the real settle worker,
the audit; and what Stampede never needs is refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from falcon import testing

from stampede import tokens
from stampede.ledger import Ledger
from stampede.migrate import migrate
from stampede.settings import load
from stampede.stock import SaleConfig, StockEngine
from stampede_api.app import build
from stampede_api.settings import ApiSettings
from stampede_dev.sale_audit import audit_sale

if TYPE_CHECKING:
    from tests.chart.conftest import Render

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "stampede"
SECRET = "datastores-secret-" + "d" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _container(render: Render, kind: str, name: str, container: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = render().get(kind, name)["spec"]["template"]["spec"]["containers"]
    (c,) = [c for c in containers if c["name"] == container]
    return c


@pytest.fixture
def chart_redis(render: Render, tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    """redis-server with the chart's arguments ($(REDIS_PASSWORD) filled in), on a free loopback port with its
    files under tmp_path. Yields (user, password, port)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (hack/services.sh installs it)")
    c = _container(render, "StatefulSet", "stampede-redis", "redis")
    user = next(e["value"] for e in c["env"] if e["name"] == "REDIS_USER")
    password = uuid.uuid4().hex
    args = [a.replace("$(REDIS_PASSWORD)", password) for a in c["args"]]
    assert args[args.index("--dir") + 1] == "/data"  # the volume; here a folder of the test's own
    args[args.index("--dir") + 1] = str(tmp_path)
    port = _free_port()
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen(
        [server, *args, "--port", str(port), "--bind", "127.0.0.1", "--save", ""], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port, username=user, password=password).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"redis-server with the chart's arguments did not start: {(tmp_path / 'redis.log').read_text()}"
                    )
                time.sleep(0.1)
        yield user, password, port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def chart_postgres(fresh_database_url: str) -> Iterator[str]:
    """A fresh database prepared by the chart's init script as the PostgreSQL image runs it (as the superuser);
    yields the URL of Stampede's role."""
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed (hack/services.sh installs PostgreSQL)")
    url = urlsplit(fresh_database_url)
    role, password = f"app_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    env = {
        **os.environ, "PGHOST": url.hostname or "", "PGPORT": str(url.port),
        "POSTGRES_USER": url.username or "", "POSTGRES_DB": url.path.lstrip("/"),
        "APP_DB_USER": role, "APP_DB_PASSWORD": password,
    }  # fmt: skip
    script = CHART / "files" / "postgresql" / "initdb-stampede-role.sh"
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    try:
        yield f"postgresql://{role}:{password}@{url.hostname}:{url.port}{url.path}"
    finally:
        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            conn.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def test_the_chart_renders_the_init_script_it_ships(render: Render) -> None:
    cm = render().get("ConfigMap", "stampede-postgresql-initdb")
    assert cm["data"]["10-stampede-role.sh"] == (CHART / "files/postgresql/initdb-stampede-role.sh").read_text()
    env = {e["name"]: e for e in _container(render, "StatefulSet", "stampede-postgresql", "postgresql")["env"]}
    assert env["POSTGRES_USER"]["value"] == "postgres"
    assert env["APP_DB_USER"]["value"] == "stampede"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "postgresql-admin-password"


def test_stampedes_role_is_no_superuser_and_cannot_grow(chart_postgres: str) -> None:
    with psycopg.connect(chart_postgres, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False, False)
        for forbidden in ("CREATE ROLE intruder", "CREATE DATABASE other", "ALTER ROLE current_user SUPERUSER",
                          "COPY (SELECT 1) TO PROGRAM 'true'"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)


def test_redis_refuses_what_stampede_never_sends(chart_redis: tuple[str, str, int]) -> None:
    user, password, port = chart_redis
    r = redis.Redis(host="127.0.0.1", port=port, username=user, password=password)
    r.hset("stampede:{x}:meta", "total", 1)
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("SET", "other:key", "1"),
                    ("EVAL", "return 1", "0"), ("ACL", "LIST"), ("SHUTDOWN",)):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*command)  # type: ignore[no-untyped-call]  # untyped in redis-py
    with pytest.raises(redis.exceptions.NoPermissionError):  # keys outside stampede:, even inside a script
        r.eval("return redis.call('GET', KEYS[1])", 1, "elsewhere")
    with pytest.raises(redis.exceptions.AuthenticationError):  # the default user is off
        redis.Redis(host="127.0.0.1", port=port, password=password).ping()
    # The probes' command, with the password from REDISCLI_AUTH as the chart gives it.
    probe = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--user", user, "ping"],
        env={**os.environ, "REDISCLI_AUTH": password}, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert probe.stdout.strip() == "PONG", probe.stderr


async def test_a_whole_sale_runs_with_the_least_privilege_the_chart_grants(
    chart_redis: tuple[str, str, int], chart_postgres: str, sale: str
) -> None:
    user, password, port = chart_redis
    redis_url = f"redis://{user}:{password}@127.0.0.1:{port}/0"
    await migrate(chart_postgres)  # the operator's init container, as Stampede's role
    settings = load(
        ApiSettings, env={}, redis_url=redis_url, database_url=chart_postgres, jwt_secret=SECRET, sale_namespace=""
    )
    stock = StockEngine.from_url(redis_url)
    ledger = await Ledger.open(settings)
    units, buyers = 40, 120
    try:
        await stock.seed(sale, SaleConfig(total=units, per_user_limit=1), open=True)
        await ledger.ensure_sale(sale, sku="S", stock=units, per_user_limit=1, window_start=None, window_end=None)
        accepted: list[str] = []
        async with testing.ASGIConductor(build(settings, stock, ledger)[0]) as api:

            async def buy(i: int) -> None:
                headers = {"Authorization": f"Bearer {tokens.mint(SECRET, f'buyer-{i}')}", "Idempotency-Key": f"k{i}"}
                r = await api.simulate_post(f"/v1/sales/{sale}/reservations", json={"quantity": 1}, headers=headers)
                assert r.status_code in (202, 409), r.text
                if r.status_code == 202:
                    accepted.append(r.json["reservation_id"])

            await asyncio.gather(*(buy(i) for i in range(buyers)))
        assert len(accepted) == units
        env = {
            **os.environ, "STAMPEDE_REDIS_URL": redis_url, "STAMPEDE_DATABASE_URL": chart_postgres,
            "STAMPEDE_WORKER_METRICS_PORT": "0", "STAMPEDE_WORKER_POLL_S": "0.5", "STAMPEDE_DB_POOL_MAX": "4",
        }  # fmt: skip
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stampede_worker", env=env, cwd=REPO_ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            report, _lag, _ = await audit_sale(ledger, stock, sale, accepted=accepted, settle_timeout=60)
        finally:
            worker.terminate()
            await asyncio.wait_for(worker.wait(), 20)
        assert report.ok, report.render()
        assert report.confirmed_units == units
        # What the operator does to a sale also passes the ACL: healing reads, a rebuild, deleting the sale.
        assert len(await stock.reservations(sale)) == units
        assert await stock.pending_older_than(sale, await stock.now_ms()) == []
        assert await stock.delete(sale) > 0
    finally:
        await stock.close()
        await ledger.close()
