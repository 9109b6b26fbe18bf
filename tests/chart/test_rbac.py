"""The operator's RBAC, asked of a real API server: the chart's ServiceAccount, Roles and bindings are applied for
real to the local kube-apiserver, then `kubectl auth can-i --as=system:serviceaccount:<ns>:<sa>` checks every
permission the operator uses (kopf's watching, patching and peering; the sale's Deployments and Service; Events)
and a list of what it must not have (Secrets, pods and exec, deleting, other namespaces, cluster-wide writes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import pytest
import yaml

if TYPE_CHECKING:
    from tests.chart.conftest import NewNamespace, Render
    from tests.conftest import ControlPlane

# One xdist group for every test of the shared control plane, so one worker owns its start and stop.
pytestmark = [pytest.mark.k8s, pytest.mark.xdist_group("k8s")]

RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
SA = "stampede-operator"

# (verb, resource, subresource) the operator needs in each namespace it watches.
NEEDED_IN_NAMESPACE = [
    ("get", "flashsales.stampede.dev", ""),
    ("list", "flashsales.stampede.dev", ""),
    ("watch", "flashsales.stampede.dev", ""),
    ("patch", "flashsales.stampede.dev", ""),
    ("patch", "flashsales.stampede.dev", "status"),
    ("update", "flashsales.stampede.dev", "finalizers"),
    ("create", "deployments.apps", ""),
    ("patch", "deployments.apps", ""),
    ("get", "deployments.apps", ""),
    ("create", "services", ""),
    ("patch", "services", ""),
    ("watch", "deployments.apps", ""),
    ("watch", "services", ""),
    ("create", "poddisruptionbudgets.policy", ""),
    ("patch", "poddisruptionbudgets.policy", ""),
    ("watch", "poddisruptionbudgets.policy", ""),
    ("create", "events", ""),
]
# What it must never be able to do in a namespace it watches.
FORBIDDEN_IN_NAMESPACE = [
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("watch", "secrets", ""),
    ("create", "secrets", ""),
    ("delete", "secrets", ""),
    ("create", "pods", ""),
    ("create", "pods", "exec"),
    ("get", "pods", "log"),
    ("create", "flashsales.stampede.dev", ""),
    ("delete", "flashsales.stampede.dev", ""),
    ("update", "flashsales.stampede.dev", ""),
    ("delete", "deployments.apps", ""),
    ("delete", "services", ""),
    ("delete", "poddisruptionbudgets.policy", ""),
    ("create", "roles.rbac.authorization.k8s.io", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", ""),
    ("create", "configmaps", ""),
    ("delete", "kopfpeerings.kopf.dev", ""),
]
FORBIDDEN_CLUSTER_WIDE = [
    ("list", "secrets", "-A"),
    ("delete", "secrets", "-A"),
    ("create", "pods/exec", "-A"),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("list", "nodes", ""),
    ("delete", "namespaces", ""),
    ("*", "*", "-A"),
]


def _can(cp: ControlPlane, namespace: str, verb: str, resource: str, where: str, sub: str = "") -> bool:
    """`kubectl auth can-i` as the operator's ServiceAccount (of `namespace`); `where` is a namespace or "-A"."""
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{namespace}:{SA}"]
    args += ["--all-namespaces"] if where == "-A" else ([] if where == "" else ["-n", where])
    if sub:
        args.append(f"--subresource={sub}")
    result = cp.kubectl(*args)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


class RbacInstaller(Protocol):
    """The ``install_rbac`` fixture."""

    def __call__(self, *sets: str) -> str: ...


@pytest.fixture
def install_rbac(control_plane: ControlPlane, new_namespace: NewNamespace, render: Render) -> Iterator[RbacInstaller]:
    """``install_rbac(*sets) -> namespace``: the chart's RBAC objects applied for real in a fresh release
    namespace; cluster-scoped ones are deleted afterwards."""
    cluster_objects: list[str] = []

    def _install(*sets: str) -> str:
        ns = new_namespace()
        docs = [d for d in render(set=list(sets), namespace=ns).docs if d["kind"] in RBAC_KINDS]
        for d in docs:
            if d["kind"].startswith("Cluster"):
                cluster_objects.append(f"{d['kind'].lower()}/{d['metadata']['name']}")
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=True)
        return ns

    yield _install
    if cluster_objects:
        control_plane.kubectl("delete", "--ignore-not-found", *cluster_objects)


def test_operator_can_do_what_it_needs_in_its_namespace(
    control_plane: ControlPlane, install_rbac: RbacInstaller
) -> None:
    ns = install_rbac()
    missing = [
        f"{verb} {res}{'/' + sub if sub else ''}"
        for verb, res, sub in NEEDED_IN_NAMESPACE
        if not _can(control_plane, ns, verb, res, ns, sub)
    ]
    assert missing == []
    for verb in ("get", "list", "watch", "patch"):
        assert _can(control_plane, ns, verb, "kopfpeerings.kopf.dev", ns)
    for verb in ("list", "watch"):
        assert _can(control_plane, ns, verb, "customresourcedefinitions.apiextensions.k8s.io", "")


def test_operator_cannot_do_more(
    control_plane: ControlPlane, install_rbac: RbacInstaller, new_namespace: NewNamespace
) -> None:
    ns = install_rbac()
    other = new_namespace()
    granted = [
        f"{verb} {res}{'/' + sub if sub else ''} in {ns}"
        for verb, res, sub in FORBIDDEN_IN_NAMESPACE
        if _can(control_plane, ns, verb, res, ns, sub)
    ]
    granted += [
        f"{verb} {res} {where}"
        for verb, res, where in FORBIDDEN_CLUSTER_WIDE
        if _can(control_plane, ns, verb, res, where)
    ]
    # Namespaced mode: nothing in a namespace it does not watch, and no cluster-wide peering.
    for verb, res in (("list", "flashsales.stampede.dev"), ("create", "deployments.apps"), ("create", "events")):
        if _can(control_plane, ns, verb, res, other):
            granted.append(f"{verb} {res} in unwatched {other}")
    if _can(control_plane, ns, "patch", "clusterkopfpeerings.kopf.dev", ""):
        granted.append("patch clusterkopfpeerings")
    assert granted == []


def test_watched_namespaces_each_get_the_same_permissions(
    control_plane: ControlPlane, install_rbac: RbacInstaller, new_namespace: NewNamespace
) -> None:
    a, b = new_namespace(), new_namespace()
    ns = install_rbac(f"operator.watchNamespaces={{{a},{b}}}")
    for watched in (a, b):
        for verb, res, sub in NEEDED_IN_NAMESPACE:
            assert _can(control_plane, ns, verb, res, watched, sub), f"{verb} {res} {sub} in {watched}"
        assert not _can(control_plane, ns, "get", "secrets", watched)
    # The release namespace is not watched unless listed.
    assert not _can(control_plane, ns, "list", "flashsales.stampede.dev", ns)


def test_cluster_wide_operator_reaches_every_namespace_but_no_secret(
    control_plane: ControlPlane, install_rbac: RbacInstaller, new_namespace: NewNamespace
) -> None:
    ns = install_rbac("operator.clusterWide=true", "redis.enabled=false", "redis.external.url=redis://r:6379/0")
    other = new_namespace()
    for verb, res, sub in NEEDED_IN_NAMESPACE:
        assert _can(control_plane, ns, verb, res, other, sub), f"{verb} {res} {sub} in {other}"
    assert _can(control_plane, ns, "list", "flashsales.stampede.dev", "-A")
    assert _can(control_plane, ns, "watch", "flashsales.stampede.dev", "-A")
    for verb in ("get", "list", "watch", "patch"):
        assert _can(control_plane, ns, verb, "clusterkopfpeerings.kopf.dev", "")
    granted = [
        f"{verb} {res} {where}"
        for verb, res, where in FORBIDDEN_CLUSTER_WIDE
        if _can(control_plane, ns, verb, res, where)
    ]
    granted += [
        f"{verb} {res}{'/' + sub if sub else ''} in {other}"
        for verb, res, sub in FORBIDDEN_IN_NAMESPACE
        if _can(control_plane, ns, verb, res, other, sub)
    ]
    assert granted == []
