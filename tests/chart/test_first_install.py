"""A first `helm install` of the chart, with its default values, on a cluster that has never seen it: a control plane
of its own (hack/cluster.sh with its own STAMPEDE_CLUSTER_DIR), so no CRD exists before the install, as on a user's
new cluster. The shared control plane cannot show this: its fixtures apply the CRDs before any test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ControlPlane

pytestmark = [pytest.mark.k8s, pytest.mark.xdist_group("first-install")]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "stampede"
CLUSTER_SH = REPO_ROOT / "hack" / "cluster.sh"
TOOLS_SH = REPO_ROOT / "hack" / "tools.sh"
FLASHSALE_CRD = "flashsales.stampede.dev"
PEERING_CRDS = ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")


@pytest.fixture(scope="module")
def empty_cluster(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A second control plane, empty, stopped at the end. ``control_plane`` first: it builds the tools once."""
    env = {**os.environ, "STAMPEDE_CLUSTER_DIR": str(tmp_path_factory.mktemp("first-install-cluster"))}
    up = subprocess.run([str(CLUSTER_SH), "up"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        if up.returncode != 0:
            pytest.fail(f"hack/cluster.sh up of an empty control plane failed (exit {up.returncode})")
        yield ControlPlane(kubeconfig=Path(up.stdout.strip().splitlines()[-1]), kubectl_path=control_plane.kubectl_path)
    finally:
        subprocess.run([str(CLUSTER_SH), "down"], env=env, check=False)


def test_a_first_install_on_an_empty_cluster_creates_the_crds_and_the_peering_object(
    empty_cluster: ControlPlane, helm_bin: Path
) -> None:
    """`helm install` with the default values succeeds where no CRD exists (it failed with "no matches for kind
    KopfPeering" while the peering CRDs were templates of the release), creates the FlashSale CRD as part of the
    release and the peering CRDs before it, and the peering object the operator's replicas meet in; an upgrade
    follows; `helm uninstall` leaves every CRD in place."""
    cp = empty_cluster
    for name in (FLASHSALE_CRD, *PEERING_CRDS):
        assert cp.kubectl("get", "crd", name).returncode != 0, f"{name} exists before the install"

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm_bin), *args, "-n", "stampede"], capture_output=True, text=True, env=cp.env, timeout=180
        )

    installed = helm("install", "stampede", str(CHART), "--create-namespace")
    assert installed.returncode == 0, installed.stderr
    crd = cp.kubectl_json("get", "crd", FLASHSALE_CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "stampede"
    for peering_crd in PEERING_CRDS:
        cp.kubectl_json("get", "crd", peering_crd)
    peering = cp.kubectl_json("get", "kopfpeering", "-n", "stampede")
    assert [p["metadata"]["name"] for p in peering["items"]] == ["stampede"]

    upgraded = helm("upgrade", "stampede", str(CHART), "--reuse-values", "--set", "operator.replicas=3")
    assert upgraded.returncode == 0, upgraded.stderr

    uninstalled = helm("uninstall", "stampede", "--wait=false")
    assert uninstalled.returncode == 0, uninstalled.stderr
    for name in (FLASHSALE_CRD, *PEERING_CRDS):
        assert cp.kubectl("get", "crd", name).returncode == 0, f"{name} went with the release"
