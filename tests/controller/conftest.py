"""Fixtures for the operator's tests: operator subprocesses.

The control plane itself (``control_plane``, ``flashsale_crd``, ``kopf_peering_crds``, ``namespace``) is shared
with the chart, e2e and fault suites and lives in tests/conftest.py.
"""

from __future__ import annotations

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
STARTUP_LIMIT_S = 120


# --- the operator under test ---------------------------------------------------------------------------


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
        self,
        namespace: str | tuple[str, ...],
        name: str = ...,
        wait_for: str = ...,
        kubeconfig: Path | None = ...,
        **env: str,
    ) -> OperatorProcess: ...


@pytest.fixture(scope="module")
def start_operator(
    control_plane: ControlPlane, flashsale_crd: str, redis_url: str, migrated_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorStarter]:  # fmt: skip
    """A factory of operator subprocesses watching one namespace, on this test worker's Redis database and
    migrated PostgreSQL database; ``start(namespace, name, **env)`` returns once the operator has started
    (``namespace`` may be a tuple of namespaces to watch; ``kubeconfig`` another identity than the admin's).
    Every operator started is stopped (SIGTERM) at the end of the module."""
    started: list[OperatorProcess] = []
    folder = tmp_path_factory.mktemp("operators")

    def start(
        namespace: str | tuple[str, ...],
        name: str = "operator",
        wait_for: str = "operator started",
        kubeconfig: Path | None = None,
        **env: str,
    ) -> OperatorProcess:
        log_path = folder / f"{name}.log"
        environ = {
            **control_plane.env,
            **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}),
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
        # A start-up limit, not a test of speed: importing kopf, the operator and its clients alone costs
        # about 5 s of CPU, which a 2-core machine running the suite's other processes stretches several times.
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while wait_for not in op.log():
            if not op.alive() or time.monotonic() > deadline:
                op.stop()
                pytest.fail(f"operator {name} did not start within {STARTUP_LIMIT_S} s:\n{op.log()[-4000:]}")
            time.sleep(0.1)
        return op

    yield start
    for op in started:
        op.stop()
