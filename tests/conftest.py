"""Session fixtures that start the project's own Redis and PostgreSQL once (hack/services.sh) and hand
each test worker its own Redis database and PostgreSQL database, so tests run in parallel without
seeing each other's sales."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stampede.stock import StockEngine

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "hack" / "services.sh"
# hack/services.sh keeps its state in STAMPEDE_SERVICES_DIR when set (relative to the repository), else here.
ENV_FILE = ROOT / (os.environ.get("STAMPEDE_SERVICES_DIR") or ".run/services") / "env"
CLUSTER_SH = ROOT / "hack" / "cluster.sh"
TOOLS_SH = ROOT / "hack" / "tools.sh"
VERSIONS_ENV = ROOT / "hack" / "tools" / "versions.env"
CRD_PATH = ROOT / "crds" / "flashsale.yaml"
CRD_NAME = "flashsales.stampede.dev"


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def _run_tag() -> str:
    """Unique per pytest run (shared by its xdist workers), so two runs on one machine never share state."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID", f"p{os.getpid()}")[:8]


def _read_env() -> dict[str, str]:
    return dict(line.split("=", 1) for line in ENV_FILE.read_text().split() if "=" in line)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-cluster",
        action="store_true",
        default=os.environ.get("STAMPEDE_TEST_REDIS") == "cluster",
        help="run against the local 6-node Redis Cluster instead of the single Redis (or STAMPEDE_TEST_REDIS=cluster)",
    )


def redis_cluster_mode(config: pytest.Config) -> bool:
    """Whether this run's Redis is the local Redis Cluster (``make test-cluster``)."""
    return bool(config.getoption("--redis-cluster"))


@pytest.fixture(scope="session")
def services(pytestconfig: pytest.Config) -> Iterator[dict[str, str]]:
    """Starts Redis and PostgreSQL if they are not up (and the Redis Cluster with --redis-cluster); stops
    them at the end only if this session started them and is not one of several parallel workers (then
    `make test` stops them)."""
    was_up = (
        "postgres: up" in subprocess.run([SERVICES, "status"], capture_output=True, text=True, check=False).stdout
        and "redis: up" in subprocess.run([SERVICES, "status"], capture_output=True, text=True, check=False).stdout
    )
    subprocess.run([SERVICES, "up"], check=True)
    if redis_cluster_mode(pytestconfig):
        subprocess.run([SERVICES, "redis-cluster-up"], check=True)
    yield _read_env()
    if not was_up and "PYTEST_XDIST_WORKER" not in os.environ:
        subprocess.run([SERVICES, "down"], check=False)


@pytest.fixture(scope="session")
def redis_cluster_url(services: dict[str, str]) -> str:
    """The local Redis Cluster (started for this run when it is not up), whatever Redis the run uses."""
    if "STAMPEDE_REDIS_CLUSTER_URL" not in services:
        subprocess.run([SERVICES, "redis-cluster-up"], check=True)
        services.update(_read_env())
    return services["STAMPEDE_REDIS_CLUSTER_URL"]


@pytest.fixture(scope="session")
def redis_url(services: dict[str, str], pytestconfig: pytest.Config) -> str:
    """A Redis database per test worker (db 1..15), or with --redis-cluster the Redis Cluster (database 0
    only). Not flushed: every test names its own sales, so their keys never meet."""
    if redis_cluster_mode(pytestconfig):
        return services["STAMPEDE_REDIS_CLUSTER_URL"]
    db = 1 + _worker_index() % 15
    return f"redis://127.0.0.1:{services['STAMPEDE_REDIS_PORT']}/{db}"


@pytest.fixture(scope="session")
def database_url(services: dict[str, str]) -> Iterator[str]:
    """A fresh PostgreSQL database of this test worker's own, in this run only; dropped at the end."""
    port = services["STAMPEDE_PG_PORT"]
    name = f"stampede_test_{_run_tag()}_{_worker_index()}"
    admin = f"postgresql://stampede@127.0.0.1:{port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://stampede@127.0.0.1:{port}/{name}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.OperationalError:
        pass  # the services are already gone


@pytest.fixture
def fresh_database_url(database_url: str) -> Iterator[str]:
    """An empty database of this test's own (no other test's tables, jobs or rows), dropped after it."""
    base, _, _ = database_url.rpartition("/")
    name = f"stampede_own_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_database_url(database_url: str) -> str:
    """This test worker's database with the ledger and procrastinate schema applied (`stampede migrate`)."""
    import asyncio

    from stampede.migrate import migrate

    asyncio.run(migrate(database_url))
    return database_url


@pytest.fixture(scope="session")
async def stock(redis_url: str) -> AsyncIterator[StockEngine]:
    engine = StockEngine.from_url(redis_url)
    yield engine
    await engine.close()


@pytest.fixture
def sale() -> str:
    """A sale name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


# --- the local control plane (hack/cluster.sh): shared by controller, chart, e2e and fault tests ---


@pytest.fixture(scope="session")
def tool_versions() -> dict[str, str]:
    """The tool versions pinned in hack/tools/versions.env (KEY=VALUE lines)."""
    versions: dict[str, str] = {}
    for line in VERSIONS_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("'\"")
    return versions


@dataclass(frozen=True)
class ControlPlane:
    """A running control plane: its admin kubeconfig and a kubectl bound to it."""

    kubeconfig: Path
    kubectl_path: Path

    @property
    def env(self) -> dict[str, str]:
        """The process environment with KUBECONFIG pointing at this control plane."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane; text stdout/stderr are captured. With
        ``check`` a failure fails the test with kubectl's own message."""
        result = subprocess.run(
            [str(self.kubectl_path), *args], input=input, capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def established(self, *crds: str, timeout: float = 30) -> None:
        """Waits until each CRD is Established and then served: Established comes first, and discovery (how
        kubectl maps a kind to the resource) may lag it a moment, so objects of the kind can be applied next."""
        for crd in crds:
            waited = self.kubectl(
                "wait", "--for=condition=Established", f"crd/{crd}", f"--timeout={timeout:.0f}s", timeout=timeout + 15
            )
            if waited.returncode != 0:
                pytest.fail(f"CRD {crd} not Established: {waited.stderr.strip()}")
            deadline = time.monotonic() + timeout
            while self.kubectl("get", crd, "-A").returncode != 0:
                if time.monotonic() > deadline:
                    pytest.fail(f"CRD {crd} Established but not served after {timeout:.0f} s")
                time.sleep(0.2)

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        """Run ``kubectl ... -o json`` and parse the output, failing the test on an error."""
        result = self.kubectl(*args, "-o", "json")
        if result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed


def _can_build_tools() -> bool:
    """Whether the binaries are built, or there is a Go toolchain to build them."""
    bin_dir = Path(os.environ.get("STAMPEDE_TOOLS_DIR") or ROOT / ".tools") / "bin"
    built = all((bin_dir / name).exists() for name in ("etcd", "kube-apiserver", "kubectl"))
    return built or bool(os.environ.get("GO") or shutil.which("go") or Path("/usr/local/go/bin/go").exists())


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """The local control plane, started for the session unless it already runs."""
    if not _can_build_tools():
        pytest.skip("no Go toolchain to build etcd, kube-apiserver and kubectl (hack/tools.sh)")
    was_up = subprocess.run([str(CLUSTER_SH), "status"], capture_output=True).returncode == 0
    # stderr is left to pytest's capture: the progress (and a first build's long output) shows with -s, and
    # in the report when the set-up fails.
    up = subprocess.run([str(CLUSTER_SH), "up"], stdout=subprocess.PIPE, text=True)
    if up.returncode != 0:
        pytest.fail(f"hack/cluster.sh up failed (exit {up.returncode}); its stderr is captured below")
    kubeconfig = Path(up.stdout.strip().splitlines()[-1])
    try:
        kubectl = subprocess.run(
            [str(TOOLS_SH), "path", "kubectl"], stdout=subprocess.PIPE, text=True, check=True
        ).stdout.strip()
        yield ControlPlane(kubeconfig=kubeconfig, kubectl_path=Path(kubectl))
    finally:
        # Parallel workers share one control plane: only a lone session stops it (`make test` does otherwise).
        if not was_up and "PYTEST_XDIST_WORKER" not in os.environ:
            subprocess.run([str(CLUSTER_SH), "down"], check=False)


@pytest.fixture(scope="session")
def flashsale_crd(control_plane: ControlPlane) -> str:
    """The FlashSale CRD of crds/flashsale.yaml, applied and Established; returns its name."""
    applied = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    if applied.returncode != 0:
        pytest.fail(f"applying {CRD_PATH.name} failed: {applied.stderr.strip()}")
    control_plane.established(CRD_NAME)
    return CRD_NAME


@pytest.fixture(scope="session")
def kopf_peering_crds(control_plane: ControlPlane) -> None:
    """kopf's peering CRDs (as stampede_operator.peering builds them, the same the chart ships), Established."""
    from stampede_operator.peering import build_peering_crds

    docs = "\n".join(json.dumps(d) for d in build_peering_crds())
    applied = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=docs)
    if applied.returncode != 0:
        pytest.fail(f"applying kopf's peering CRDs failed: {applied.stderr.strip()}")
    control_plane.established("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")


@pytest.fixture(scope="session")
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace for the session's objects.

    At the end the session deletes the FlashSales it made, then the namespace without waiting: with no
    controller-manager to empty it, a deleted namespace stays Terminating until the control plane is restarted
    (``hack/cluster.sh up`` starts on empty storage).
    """
    name = f"stampede-test-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name, check=True)
    yield name
    control_plane.kubectl("delete", "flashsales.stampede.dev", "--all", "-n", name, "--wait=false")
    control_plane.kubectl("delete", "namespace", name, "--wait=false")
