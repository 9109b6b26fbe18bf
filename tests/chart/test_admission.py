"""The operator's admission policy, enforced by a real API server: the chart's RBAC, the sales' ServiceAccount and
its ValidatingAdmissionPolicies are applied for real to the local kube-apiserver; then, as the operator's
ServiceAccount, the Deployments and Service the operator's builders make are admitted, and every write that leaves
their shape (another image, a Secret or host-path volume, envFrom, another ServiceAccount, a token, host namespaces,
privilege, an open Service) is refused. The same writes by another user are not the policy's concern.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from stampede.settings import load
from stampede_operator import builders
from stampede_operator.settings import OperatorSettings

if TYPE_CHECKING:
    from tests.chart.conftest import NewNamespace, Render
    from tests.conftest import ControlPlane

pytestmark = [pytest.mark.k8s, pytest.mark.xdist_group("k8s")]

INSTALLED_KINDS = {
    "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
}  # fmt: skip
SPEC = builders.SaleSpec(
    name="drop", sku="S-1", stock=10, per_user_limit=1,
    window_start=datetime(2026, 1, 1, tzinfo=UTC), window_end=datetime(2026, 1, 2, tzinfo=UTC),
)  # fmt: skip


class Release:
    def __init__(self, cp: ControlPlane, namespace: str, settings: OperatorSettings) -> None:
        self.cp, self.namespace, self.settings = cp, namespace, settings

    def create(self, manifest: dict[str, Any], *, as_operator: bool = True) -> tuple[bool, str]:
        """A server-side dry-run create (admission runs, nothing is stored): (admitted, kubectl's message)."""
        who = [f"--as=system:serviceaccount:{self.namespace}:stampede-operator"] if as_operator else []
        r = self.cp.kubectl("create", "--dry-run=server", *who, "-f", "-", input=json.dumps(manifest))
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def deployment(self, component: str = "api") -> dict[str, Any]:
        build = builders.build_api_deployment if component == "api" else builders.build_worker_deployment
        return build(SPEC, self.namespace, self.settings)

    def service(self) -> dict[str, Any]:
        return builders.build_api_service(SPEC, self.namespace, self.settings)


@pytest.fixture
def release(
    control_plane: ControlPlane, new_namespace: NewNamespace, render: Render
) -> Iterator[Callable[..., Release]]:
    """``release(*sets)``: the chart's RBAC, sale ServiceAccount and admission policies installed for real in a
    fresh release namespace, and OperatorSettings from the environment the chart gives the operator."""
    cluster_objects: list[str] = []

    def _install(*sets: str) -> Release:
        ns = new_namespace()
        rendered = render(set=list(sets), namespace=ns)
        docs = [d for d in rendered.docs if d["kind"] in INSTALLED_KINDS]
        for d in docs:
            if "namespace" not in d["metadata"]:
                cluster_objects.append(
                    f"{d['kind'].lower()}.admissionregistration.k8s.io/{d['metadata']['name']}"
                    if "Admission" in d["kind"]
                    else f"{d['kind'].lower()}/{d['metadata']['name']}"
                )
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=True)
        (op,) = [c for c in rendered.get("StatefulSet", "stampede-operator")["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "operator"]  # fmt: skip
        env = {e["name"]: e["value"] for e in op["env"] if "value" in e and e["name"].startswith("STAMPEDE_")}
        return Release(control_plane, ns, load(OperatorSettings, env=env))

    yield _install
    if cluster_objects:
        control_plane.kubectl("delete", "--ignore-not-found", *cluster_objects)


def _enforced(rel: Release) -> None:
    """Waits until the API server enforces both new policies: each is loaded asynchronously and on its own, so a
    refused Deployment says nothing about the Service policy."""
    bad_deployment = rel.deployment()
    bad_deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:1"
    bad_service = rel.service()
    bad_service["spec"]["type"] = "LoadBalancer"
    deadline = time.monotonic() + 30
    for bad in (bad_deployment, bad_service):
        while rel.create(bad)[0]:
            if time.monotonic() > deadline:
                pytest.fail(f"the admission policy for {bad['kind']} was not enforced within 30 s")
            time.sleep(0.3)


def _pod(d: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = d["spec"]["template"]["spec"]
    return pod


def _labels(d: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = d["spec"]["template"]["metadata"]["labels"]
    return labels


def _container(d: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _pod(d)["containers"][0]
    return container


# Each break edits the Deployment in place (what its expression returns is ignored), and the refusal it meets.
BREAKS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "another image": (lambda d: _container(d).update(image="registry.example.com/miner:1"), "chart's images"),
    "a second container": (
        lambda d: _pod(d)["containers"].append({**copy.deepcopy(_container(d)), "name": "sidecar"}), "one container"
    ),
    "an init container": (
        lambda d: _pod(d).update(initContainers=[{"name": "init", "image": _container(d)["image"]}]), "no init"
    ),
    "a Secret volume": (
        lambda d: _pod(d).setdefault("volumes", []).append({"name": "s", "secret": {"secretName": "other"}}),
        "no volume but an emptyDir",
    ),
    "a host path": (
        lambda d: _pod(d).setdefault("volumes", []).append({"name": "h", "hostPath": {"path": "/"}}),
        "no volume but an emptyDir",
    ),
    "another ServiceAccount": (lambda d: _pod(d).update(serviceAccountName="default"), "no token mounted"),
    "a mounted token": (lambda d: _pod(d).update(automountServiceAccountToken=True), "no token mounted"),
    "envFrom a Secret": (
        lambda d: _container(d).update(envFrom=[{"secretRef": {"name": "other"}}]), "key by key"
    ),
    "another Secret's key": (
        lambda d: _container(d)["env"].append(
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "cloud-credentials", "key": "token"}}}
        ),
        "key by key",
    ),
    "the host network": (lambda d: _pod(d).update(hostNetwork=True), "no host namespace"),
    "a privileged container": (
        lambda d: _container(d)["securityContext"].update(privileged=True, allowPrivilegeEscalation=True),
        "unprivileged",
    ),
    "an added capability": (
        lambda d: _container(d)["securityContext"].update(capabilities={"add": ["NET_ADMIN"]}), "unprivileged"
    ),
    "no sale label": (
        lambda d: [
            x.pop("stampede.dev/sale")
            for x in (d["metadata"]["labels"], _labels(d), d["spec"]["selector"]["matchLabels"])
        ],
        "labelled as its own",
    ),
}  # fmt: skip


@pytest.mark.parametrize("component", ["api", "worker"])
def test_the_operators_own_manifests_are_admitted(release: Callable[..., Release], component: str) -> None:
    rel = release()
    _enforced(rel)
    ok, msg = rel.create(rel.deployment(component))
    assert ok, msg
    ok, msg = rel.create(rel.service())
    assert ok, msg


def test_every_write_outside_the_sale_shape_is_refused(release: Callable[..., Release]) -> None:
    rel = release()
    _enforced(rel)
    for what, (change, message) in BREAKS.items():
        d = rel.deployment()
        change(d)
        ok, msg = rel.create(d)
        assert not ok, f"{what}: admitted"
        assert "ValidatingAdmissionPolicy" in msg and message in msg, f"{what}: {msg}"
        # The policy is about the operator: the same object from another user is not its concern.
        assert "ValidatingAdmissionPolicy" not in rel.create(d, as_operator=False)[1], what


@pytest.mark.parametrize(
    "change",
    [
        {"type": "LoadBalancer"},
        {"type": "NodePort"},
        {"externalIPs": ["203.0.113.7"]},
        {"selector": {"app.kubernetes.io/name": "postgresql"}},
    ],
    ids=["load-balancer", "node-port", "external-ip", "other-pods"],
)
def test_a_service_open_to_the_outside_or_to_other_pods_is_refused(
    release: Callable[..., Release], change: dict[str, Any]
) -> None:
    rel = release()
    _enforced(rel)
    svc = rel.service()
    svc["spec"].update(change)
    ok, msg = rel.create(svc)
    assert not ok and "ValidatingAdmissionPolicy" in msg, msg


def test_without_the_policy_the_operators_rbac_alone_would_admit_it(release: Callable[..., Release]) -> None:
    """What the policy adds: with it disabled, RBAC lets the operator create a Deployment that mounts a host path."""
    rel = release("operator.admissionPolicy.enabled=false")
    d = rel.deployment()
    BREAKS["a host path"][0](d)
    ok, msg = rel.create(d)
    assert ok, msg
