"""Everything the chart renders, validated by a real API server: `helm template` of each scenario piped into
`kubectl apply --dry-run=server` against the local kube-apiserver, with the chart's CRDs applied for real first
(the templates' own CRDs are dry-run too), so KopfPeering and FlashSale objects are validated too. Strict
field validation refuses any field the API does not know.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from tests.chart.conftest import NewNamespace, Render
    from tests.conftest import ControlPlane

# One xdist group for every test of the shared control plane, so one worker owns its start and stop.
pytestmark = [pytest.mark.k8s, pytest.mark.xdist_group("k8s")]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "stampede"


def _dry_run(cp: ControlPlane, manifests: str) -> subprocess.CompletedProcess[str]:
    """Every namespaced object the chart renders names its namespace (some go to watched namespaces), so no -n."""
    return cp.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifests, timeout=180)


def _assert_all_accepted(result: subprocess.CompletedProcess[str], rendered: str) -> None:
    assert result.returncode == 0, result.stderr
    expected = sum(1 for d in yaml.safe_load_all(rendered) if d)
    accepted = re.findall(r"\(server dry run\)$", result.stdout, re.MULTILINE)
    assert len(accepted) == expected, result.stdout


@pytest.mark.parametrize(
    ("values", "sets"),
    [
        (None, []),
        ("kind-values.yaml", []),
        ("cluster-wide-values.yaml", []),
        ("production-values.yaml", []),
        ("namespaces-values.yaml", ["__NAMESPACES__"]),
    ],
    ids=["default", "kind", "cluster-wide", "production", "namespaces"],
)
def test_every_scenario_is_accepted_by_the_api_server(
    control_plane: ControlPlane,
    chart_crds: list[str],
    monitoring_crds: None,
    new_namespace: NewNamespace,
    render: Render,
    values: str | None,
    sets: list[str],
) -> None:
    ns = new_namespace()
    if sets == ["__NAMESPACES__"]:
        sets = [f"operator.watchNamespaces={{{new_namespace()},{new_namespace()}}}"]
    rendered = render(*([CHART / "ci" / values] if values else []), set=sets, namespace=ns)
    _assert_all_accepted(_dry_run(control_plane, rendered.text), rendered.text)


def test_a_wrong_manifest_would_be_caught(control_plane: ControlPlane, new_namespace: NewNamespace) -> None:
    """The check has teeth: strict server-side validation refuses an unknown field."""
    ns = new_namespace()
    bad = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x, namespace: {ns}}}\ndata: {{a: b}}\nbogus: 1\n"
    result = _dry_run(control_plane, bad)
    assert result.returncode != 0
    assert 'unknown field "bogus"' in result.stderr


def test_flashsales_validate_against_the_chart_crd(
    control_plane: ControlPlane, chart_crds: list[str], new_namespace: NewNamespace
) -> None:
    ns = new_namespace()
    examples = REPO_ROOT / "crds" / "examples"
    ok = control_plane.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(examples / "sneaker-drop.yaml"))
    assert ok.returncode == 0, ok.stderr
    bad = control_plane.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(examples / "invalid-window.yaml"))
    assert bad.returncode != 0
    assert "window.end must be after window.start" in bad.stderr
    # The sale of the end to end test (hack/test-k8s.sh), with its window substituted the way the test does it.
    text = (REPO_ROOT / "hack" / "k8s" / "flashsale.yaml").read_text()
    text = text.replace("SALE_START", "2026-11-27T10:00:00Z").replace("SALE_END", "2026-11-27T11:00:00Z")
    ci = control_plane.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=text)
    assert ci.returncode == 0, ci.stderr


def test_helm_install_dry_run_against_the_server(
    control_plane: ControlPlane, chart_crds: list[str], new_namespace: NewNamespace, helm_bin: Path
) -> None:
    """helm itself against the API server: install --dry-run=server renders, validates and prints the NOTES."""
    ns = new_namespace()
    result = subprocess.run(
        [str(helm_bin), "install", "stampede", str(CHART), "-n", ns, "--dry-run=server", "--set=crds.install=false"],
        capture_output=True,
        text=True,
        env=control_plane.env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"kubectl -n {ns} get flashsales -w" in notes
    assert f"helm test stampede -n {ns} --logs" in notes
    assert "kubectl -n" in notes and "create job spike-" in notes


def test_install_then_upgrade_keeps_generated_secrets(
    control_plane: ControlPlane, chart_crds: list[str], new_namespace: NewNamespace, helm_bin: Path
) -> None:
    """A real `helm install` then `helm upgrade` (objects stored; no pod runs on this control plane): the generated
    JWT secret and data-store passwords survive the upgrade, so running sales keep their tokens and connections."""
    ns = new_namespace()

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm_bin), *args, "-n", ns], capture_output=True, text=True, env=control_plane.env, timeout=180
        )

    def secrets() -> dict[str, dict[str, str]]:
        return {
            name: control_plane.kubectl_json("get", "secret", name, "-n", ns)["data"]
            for name in ("stampede-env", "stampede-datastores")
        }

    installed = helm("install", "stampede", str(CHART), "--set", "crds.install=false")
    assert installed.returncode == 0, installed.stderr
    try:
        before = secrets()
        assert set(before["stampede-env"]) == {"STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL", "STAMPEDE_JWT_SECRET"}
        upgraded = helm("upgrade", "stampede", str(CHART), "--reuse-values", "--set", "operator.replicas=3")
        assert upgraded.returncode == 0, upgraded.stderr
        assert secrets() == before
        sts = control_plane.kubectl_json("get", "statefulset", "stampede-operator", "-n", ns)
        assert sts["spec"]["replicas"] == 3
    finally:
        uninstalled = helm("uninstall", "stampede", "--wait=false")
        assert uninstalled.returncode == 0, uninstalled.stderr


FLASHSALE_CRD = "flashsales.stampede.dev"


def test_crds_upgrade_with_the_chart_and_stay_after_uninstall(
    control_plane: ControlPlane, chart_crds: list[str], new_namespace: NewNamespace, helm_bin: Path, tmp_path: Path
) -> None:
    """The FlashSale CRD is a template of the release: `helm upgrade` changes it (here a copy of the chart whose
    CRD gained a status field), and `helm uninstall` leaves it and kopf's peering CRDs in place
    (helm.sh/resource-policy: keep; Helm never deletes its crds/ folder). The cluster's CRDs already exist (the
    fixture applied them, as an install of an older chart did): the first install takes the FlashSale CRD over with
    --take-ownership. At the end it is replaced by the repository's own again."""
    ns = new_namespace()
    chart = tmp_path / "stampede"
    shutil.copytree(CHART, chart)

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm_bin), *args, "-n", ns], capture_output=True, text=True, env=control_plane.env, timeout=180
        )

    def crd() -> dict[str, Any]:
        got: dict[str, Any] = control_plane.kubectl_json("get", "crd", FLASHSALE_CRD)
        return got

    def status_fields() -> set[str]:
        schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        return set(schema["properties"]["status"]["properties"])

    try:
        installed = helm("install", "stampede", str(chart), "--take-ownership")
        assert installed.returncode == 0, installed.stderr
        notes = control_plane.kubectl_json("get", "crd", FLASHSALE_CRD)["metadata"].get("annotations") or {}
        assert notes.get("helm.sh/resource-policy") == "keep"
        assert notes.get("meta.helm.sh/release-namespace") == ns
        assert "upgradeProbe" not in status_fields()

        path = chart / "files" / "crds" / "flashsale.yaml"
        doc = yaml.safe_load(path.read_text())
        status = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        status["properties"]["upgradeProbe"] = {"type": "string", "description": "added by the next chart version"}
        path.write_text(yaml.safe_dump(doc))
        upgraded = helm("upgrade", "stampede", str(chart), "--reuse-values")
        assert upgraded.returncode == 0, upgraded.stderr
        assert "upgradeProbe" in status_fields()

        uninstalled = helm("uninstall", "stampede", "--wait=false")
        assert uninstalled.returncode == 0, uninstalled.stderr
        assert "upgradeProbe" in status_fields(), "the CRD went with the release"
        for name in chart_crds:
            assert control_plane.kubectl("get", "crd", name).returncode == 0, name
    finally:
        helm("uninstall", "stampede", "--wait=false")
        _restore_crds(control_plane)


def _restore_crds(cp: ControlPlane) -> None:
    """The repository's templated CRDs whole again (no release annotations, no probe field) for the tests that
    follow: each replaced by its source at the live resourceVersion."""
    for path in sorted((CHART / "files" / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            live = cp.kubectl_json("get", "crd", doc["metadata"]["name"])
            doc["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
            cp.kubectl("replace", "-f", "-", input=json.dumps(doc), check=True)
