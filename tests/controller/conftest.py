"""Fixtures for the operator's tests: kopf's peering CRDs and operator subprocesses.

The control plane itself (``control_plane``, ``flashsale_crd``, ``namespace``) is shared with the chart,
e2e and fault suites and lives in tests/conftest.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

if TYPE_CHECKING:
    from tests.conftest import ControlPlane

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "hack" / "cluster.sh"
TOOLS_SH = REPO_ROOT / "hack" / "tools.sh"
VERSIONS_ENV = REPO_ROOT / "hack" / "tools" / "versions.env"
CRD_PATH = REPO_ROOT / "crds" / "flashsale.yaml"
CRD_NAME = "flashsales.stampede.dev"


# --- the operator under test ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kopf_peering_crds(control_plane: ControlPlane) -> None:
    """kopf's peering CRDs (as stampede_operator.peering builds them, the same the chart ships), Established."""
    from stampede_operator.peering import build_peering_crds

    docs = "\n".join(json.dumps(d) for d in build_peering_crds())
    applied = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=docs)
    if applied.returncode != 0:
        pytest.fail(f"applying kopf's peering CRDs failed: {applied.stderr.strip()}")
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s", check=True)


@dataclass
class OperatorProcess:
    """One ``kopf run -m stampede_operator.main`` subprocess and its log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class OperatorStarter(Protocol):
    """The ``start_operator`` fixture: ``start(namespace, name, **env)``."""

    def __call__(
        self, namespace: str | tuple[str, ...], name: str = ..., wait_for: str = ..., **env: str
    ) -> OperatorProcess: ...


@pytest.fixture(scope="module")
def start_operator(
    control_plane: ControlPlane, flashsale_crd: str, redis_url: str, migrated_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorStarter]:  # fmt: skip
    """A factory of operator subprocesses watching one namespace, on this test worker's Redis database and
    migrated PostgreSQL database; ``start(namespace, name, **env)`` returns once the operator has started
    (``namespace`` may be a tuple of namespaces to watch).
    Every operator started is stopped (SIGTERM) at the end of the module."""
    started: list[OperatorProcess] = []
    folder = tmp_path_factory.mktemp("operators")

    def start(
        namespace: str | tuple[str, ...], name: str = "operator", wait_for: str = "operator started", **env: str
    ) -> OperatorProcess:
        log_path = folder / f"{name}.log"
        environ = {
            **control_plane.env,
            "STAMPEDE_REDIS_URL": redis_url,
            "STAMPEDE_DATABASE_URL": migrated_database_url,
            "STAMPEDE_DB_POOL_MAX": "4",
            "STAMPEDE_LOG_LEVEL": "INFO",
            "STAMPEDE_OPERATOR_METRICS_PORT": "0",  # several operators share this host
            **{f"STAMPEDE_{k.upper()}": v for k, v in env.items()},
        }
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "-m", "stampede_operator.main",
                 *(f"--namespace={ns}" for ns in ((namespace,) if isinstance(namespace, str) else namespace))],
                stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=REPO_ROOT,
            )  # fmt: skip
        op = OperatorProcess(proc, log_path)
        started.append(op)
        deadline = time.monotonic() + 30
        while wait_for not in op.log():
            if not op.alive() or time.monotonic() > deadline:
                op.stop()
                pytest.fail(f"operator {name} did not start:\n{op.log()[-4000:]}")
            time.sleep(0.1)
        return op

    yield start
    for op in started:
        op.stop()
