"""Fixtures for tests against a local Kubernetes control plane.

The control plane is the one of ``hack/cluster.sh``: etcd and kube-apiserver only, like controller-runtime's
envtest, so objects are stored and validated but no Pod ever runs. It is started once per test session (the
first run builds the pinned binaries through ``hack/tools.sh``, which takes minutes) and stopped at the end of
the session only if this session started it, so a control plane a developer already runs is reused and left
running. Tests that need it carry the ``k8s`` marker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "hack" / "cluster.sh"
TOOLS_SH = REPO_ROOT / "hack" / "tools.sh"
VERSIONS_ENV = REPO_ROOT / "hack" / "tools" / "versions.env"
CRD_PATH = REPO_ROOT / "crds" / "flashsale.yaml"
CRD_NAME = "flashsales.stampede.dev"


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
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane; text stdout/stderr are captured."""
        return subprocess.run(
            [str(self.kubectl_path), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            check=check,
            timeout=timeout,
        )

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        """Run ``kubectl ... -o json`` and parse the output, failing the test on an error."""
        result = self.kubectl(*args, "-o", "json")
        if result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed


def _can_build_tools() -> bool:
    """Whether the binaries are built, or there is a Go toolchain to build them."""
    bin_dir = Path(os.environ.get("STAMPEDE_TOOLS_DIR") or REPO_ROOT / ".tools") / "bin"
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
    waited = control_plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s", timeout=45
    )
    if waited.returncode != 0:
        pytest.fail(f"CRD {CRD_NAME} not Established: {waited.stderr.strip()}")
    # Established means served, but discovery (how kubectl maps `fs` to the resource) may lag a moment.
    deadline = time.monotonic() + 30
    while control_plane.kubectl("get", "flashsales.stampede.dev", "-A").returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"CRD {CRD_NAME} Established but not served after 30 s")
        time.sleep(0.2)
    return CRD_NAME


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


@pytest.fixture(scope="module")
def start_operator(
    control_plane: ControlPlane, flashsale_crd: str, redis_url: str, migrated_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., OperatorProcess]]:  # fmt: skip
    """A factory of operator subprocesses watching one namespace, on this test worker's Redis database and
    migrated PostgreSQL database; ``start(namespace, name, **env)`` returns once the operator has started.
    Every operator started is stopped (SIGTERM) at the end of the module."""
    started: list[OperatorProcess] = []
    folder = tmp_path_factory.mktemp("operators")

    def start(
        namespace: str, name: str = "operator", wait_for: str = "operator started", **env: str
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
                [sys.executable, "-m", "kopf", "run", "-m", "stampede_operator.main", "--namespace", namespace],
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
