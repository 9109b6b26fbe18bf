"""Fixtures for the Helm chart's tests: the pinned helm and kubectl of ``hack/tools.sh``, rendering the chart, and
the local control plane of ``hack/cluster.sh`` (etcd + kube-apiserver, like envtest) to validate what it renders.

The control plane is started the way tests/controller/conftest.py starts it (``hack/cluster.sh up``, which is a
no-op when it already runs) and is stopped at the end only if this session started it and no other pytest worker
may be using it. Rendering needs only helm; tests that talk to the API server carry the ``k8s`` marker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from tests.conftest import ControlPlane
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "stampede"
TEMPLATED_CRDS = CHART / "files" / "crds"  # the CRDs templates/crds.yaml installs and upgrades (FlashSale)
HELM_CRDS = CHART / "crds"  # the CRDs Helm installs before the release (kopf's peerings)
CHART_CRDS = (TEMPLATED_CRDS, HELM_CRDS)
CLUSTER_SH = REPO_ROOT / "hack" / "cluster.sh"
TOOLS_SH = REPO_ROOT / "hack" / "tools.sh"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASE = "stampede"


def _tools_available(*names: str) -> bool:
    """Whether the binaries are built, or there is a Go toolchain to build them."""
    bin_dir = Path(os.environ.get("STAMPEDE_TOOLS_DIR") or REPO_ROOT / ".tools") / "bin"
    built = all((bin_dir / name).exists() for name in names)
    return built or bool(os.environ.get("GO") or shutil.which("go") or Path("/usr/local/go/bin/go").exists())


def _tool(name: str) -> Path:
    if not _tools_available(name):
        pytest.skip(f"no Go toolchain to build {name} (hack/tools.sh)")
    out = subprocess.run([str(TOOLS_SH), "path", name], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        pytest.fail(f"hack/tools.sh path {name} failed (exit {out.returncode})")
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The pinned helm (built by hack/tools.sh on first use)."""
    return _tool("helm")


@pytest.fixture(scope="session")
def promtool_bin() -> Path:
    """The pinned promtool, Prometheus's rule checker (built by hack/tools.sh on first use)."""
    return _tool("promtool")


@dataclass(frozen=True)
class Rendered:
    """The outcome of `helm template`: the process result and, when it succeeded, the parsed documents."""

    result: subprocess.CompletedProcess[str]

    @property
    def ok(self) -> bool:
        return self.result.returncode == 0

    @property
    def text(self) -> str:
        return self.result.stdout

    @property
    def docs(self) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.result.stdout) if d]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        raise AssertionError(
            f"no {kind} {name!r} rendered; have {[(d['kind'], d['metadata']['name']) for d in self.docs]}"
        )


class Render(Protocol):
    """The ``render`` fixture."""

    def __call__(
        self,
        *values: str | Path,
        set: Sequence[str] = ...,
        namespace: str = ...,
        release: str = ...,
        check: bool = ...,
        extra: Sequence[str] = ...,
    ) -> Rendered: ...


@pytest.fixture(scope="session")
def render(helm_bin: Path) -> Render:
    """``render(*values_files, set=[...], namespace=..., release=..., check=True)`` runs ``helm template`` of the
    chart; with check (the default) a failure fails the test with helm's message."""

    def _render(
        *values: str | Path,
        set: Sequence[str] = (),  # mirrors helm --set
        namespace: str = "stampede",
        release: str = RELEASE,
        check: bool = True,
        extra: Sequence[str] = (),
    ) -> Rendered:
        cmd = [str(helm_bin), "template", release, str(CHART), "--namespace", namespace, *extra]
        for v in values:
            cmd += ["-f", str(v)]
        for s in set:
            cmd += ["--set", s]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        rendered = Rendered(result)
        if check and not rendered.ok:
            pytest.fail(f"helm template failed: {result.stderr.strip()}")
        return rendered

    return _render


# --- on the local control plane (the `control_plane` fixture of tests/conftest.py) ------------------------------


@pytest.fixture(scope="session")
def chart_crds(control_plane: ControlPlane) -> list[str]:
    """The chart's CRDs (files/crds/: FlashSale; crds/: kopf's peerings), applied for real and Established, so
    FlashSale and KopfPeering objects validate against them. Releases installed by the tests leave them to this
    fixture (``crds.install=false``): the cluster's CRDs are shared by every test."""
    for folder in CHART_CRDS:
        control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder), check=True)
    names = [
        doc["metadata"]["name"]
        for folder in CHART_CRDS
        for path in sorted(folder.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    control_plane.established(*names)
    return names


@pytest.fixture(scope="session")
def monitoring_crds(control_plane: ControlPlane) -> None:
    """Stand-ins for the Prometheus Operator's ServiceMonitor and PodMonitor CRDs (fixtures/), so the monitors of
    metrics.serviceMonitor.enabled can be applied; their schemas accept any spec."""
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(FIXTURES / "monitoring-crds.yaml"), check=True
    )
    control_plane.established("servicemonitors.monitoring.coreos.com", "podmonitors.monitoring.coreos.com")


class NewNamespace(Protocol):
    """The ``new_namespace`` fixture."""

    def __call__(self, name: str | None = ...) -> str: ...


@pytest.fixture
def new_namespace(control_plane: ControlPlane) -> Iterator[NewNamespace]:
    """``new_namespace(name=None)`` creates a namespace (a fresh name unless given; an existing one is reused).
    They are deleted without waiting at the end: with no controller-manager a deleted namespace stays
    Terminating until the control plane restarts on empty storage."""
    made: list[str] = []

    def _new(name: str | None = None) -> str:
        ns = name or f"chart-{uuid.uuid4().hex[:8]}"
        if control_plane.kubectl("get", "namespace", ns).returncode != 0:
            control_plane.kubectl("create", "namespace", ns, check=True)
            made.append(ns)
        return ns

    yield _new
    for ns in made:
        control_plane.kubectl("delete", "namespace", ns, "--wait=false")
