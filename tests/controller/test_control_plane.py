"""The local control plane of hack/cluster.sh and the FlashSale CRD of crds/flashsale.yaml, as served.

These tests pin what the operator and users rely on: the API server is the pinned version with RBAC on, the
CRD is served, a valid FlashSale is stored with its defaults filled in, an invalid one is refused with a
message that says what is wrong, the status subresource keeps its fields, and ``kubectl get fs`` shows the
sale at a glance.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from tests.conftest import ControlPlane

pytestmark = pytest.mark.k8s

EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"


def load_example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def minimal_sale(name: str) -> dict[str, Any]:
    """A FlashSale with only the required fields."""
    return {
        "apiVersion": "stampede.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": name},
        "spec": {
            "product": {"sku": "TEE-42"},
            "stock": 10,
            "window": {"start": "2026-12-01T09:00:00Z", "end": "2026-12-01T09:30:00Z"},
        },
    }


@pytest.fixture(scope="module")
def sneaker_drop(control_plane: ControlPlane, flashsale_crd: str, namespace: str) -> str:
    """The example sale crds/examples/sneaker-drop.yaml, created in the session namespace; its name."""
    control_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "sneaker-drop.yaml"), check=True)
    return "sneaker-drop"


def test_api_server_reports_the_pinned_version(control_plane: ControlPlane, tool_versions: dict[str, str]) -> None:
    version = tool_versions["KUBERNETES_VERSION"]
    info = json.loads(control_plane.kubectl("get", "--raw", "/version", check=True).stdout)
    assert info["gitVersion"] == version
    assert (info["major"], info["minor"]) == ("1", version.split(".")[1])


def test_admin_is_cluster_admin_and_rbac_is_enforced(control_plane: ControlPlane) -> None:
    admin = control_plane.kubectl("auth", "can-i", "*", "*", "--all-namespaces")
    assert (admin.returncode, admin.stdout.strip()) == (0, "yes")
    stranger = control_plane.kubectl(
        "auth", "can-i", "list", "secrets", "-n", "default", "--as=system:serviceaccount:default:nobody"
    )
    assert stranger.stdout.strip() == "no"
    assert stranger.returncode != 0


def test_crd_is_established(control_plane: ControlPlane, flashsale_crd: str) -> None:
    crd = control_plane.kubectl_json("get", "crd", flashsale_crd)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["fs"]
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_example_sale_is_accepted_with_defaults(control_plane: ControlPlane, namespace: str, sneaker_drop: str) -> None:
    spec = control_plane.kubectl_json("get", "fs", sneaker_drop, "-n", namespace)["spec"]
    assert spec["product"] == {"sku": "SNKR-1", "name": "Retro High", "price": "199.00", "currency": "USD"}
    assert spec["stock"] == 5000
    assert spec["api"] == {"replicas": 4}
    assert spec["workers"] == {"replicas": 2, "concurrency": 8}
    assert spec["reconcile"] == {"intervalSeconds": 10, "graceSeconds": 30}
    assert spec["rateLimit"] == {"perBuyer": {"rate": 5, "burst": 10}, "perIp": {"rate": 50, "burst": 100}}


def test_minimal_sale_gets_every_default(control_plane: ControlPlane, flashsale_crd: str, namespace: str) -> None:
    sale = json.dumps(minimal_sale("tee"))
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=sale, check=True)
    spec = control_plane.kubectl_json("get", "flashsale", "tee", "-n", namespace)["spec"]
    assert spec["perUserLimit"] == 1
    assert spec["api"] == {"replicas": 2}
    assert spec["workers"] == {"replicas": 2, "concurrency": 8}
    assert spec["reconcile"] == {"intervalSeconds": 10, "graceSeconds": 30}
    assert spec["rateLimit"] == {"perBuyer": {"rate": 5, "burst": 10}, "perIp": {"rate": 50, "burst": 100}}


def _with(path: str, value: Any) -> dict[str, Any]:
    """A valid minimal sale with the field at dotted ``path`` under spec set to ``value`` (None: removed)."""
    sale = copy.deepcopy(minimal_sale("bad-sale"))
    *parents, leaf = path.split(".")
    node = sale["spec"]
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return sale


INVALID = {
    "window-end-before-start": (
        load_example("invalid-window.yaml"),
        ["spec.window.end", "window.end must be after window.start"],
    ),
    "window-end-equals-start": (
        _with("window.end", "2026-12-01T09:00:00Z"),
        ["window.end must be after window.start"],
    ),
    "negative-stock": (_with("stock", -1), ["spec.stock", "should be greater than or equal to 0"]),
    "zero-per-user-limit": (
        _with("perUserLimit", 0),
        ["spec.perUserLimit", "should be greater than or equal to 1"],
    ),
    "missing-stock": (_with("stock", None), ["spec.stock: Required value"]),
    "missing-sku": (_with("product.sku", None), ["spec.product.sku: Required value"]),
    "bad-sku": (_with("product.sku", "no spaces"), ["spec.product.sku", "should match"]),
    "float-price": (_with("product.price", "19.999999"), ["spec.product.price", "should match"]),
    "lowercase-currency": (_with("product.currency", "usd"), ["spec.product.currency", "should match"]),
    "window-not-a-time": (_with("window.start", "tomorrow"), ["spec.window.start", "date-time"]),
    "too-many-api-replicas": (_with("api.replicas", 101), ["spec.api.replicas", "less than or equal to 100"]),
    "too-much-worker-concurrency": (
        _with("workers.concurrency", 65),
        ["spec.workers.concurrency", "less than or equal to 64"],
    ),
    "zero-reconcile-interval": (
        _with("reconcile.intervalSeconds", 0),
        ["spec.reconcile.intervalSeconds", "greater than or equal to 1"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_sale_is_rejected_with_a_clear_message(
    control_plane: ControlPlane, flashsale_crd: str, namespace: str, case: str
) -> None:
    sale, expected = INVALID[case]
    result = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(sale))
    assert result.returncode != 0, f"{case} was accepted: {result.stdout}"
    assert "is invalid" in result.stderr
    for text in expected:
        assert text in result.stderr, f"{text!r} not in: {result.stderr}"
    name = sale["metadata"]["name"]
    assert control_plane.kubectl("get", "fs", name, "-n", namespace).returncode != 0, f"{name} was stored"


def test_status_subresource_keeps_the_operator_fields(
    control_plane: ControlPlane, namespace: str, sneaker_drop: str
) -> None:
    status = {
        "phase": "Live",
        "phaseReason": "The window is open.",
        "observedGeneration": 1,
        "stock": 5000,
        "remaining": 4990,
        "reserved": 4,
        "confirmed": 6,
        "compensated": 0,
        "drift": 0,
        "lastReconcileTime": "2026-11-27T10:00:05Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "SaleLive",
                "message": "API and workers are up.",
                "lastTransitionTime": "2026-11-27T10:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    control_plane.kubectl(
        "patch", "fs", sneaker_drop, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=True,
    )  # fmt: skip
    assert control_plane.kubectl_json("get", "fs", sneaker_drop, "-n", namespace)["status"] == status

    # The main resource ignores status; the status subresource checks the phase.
    control_plane.kubectl(
        "patch", "fs", sneaker_drop, "-n", namespace, "--type=merge", "-p", '{"status": {"phase": "Ended"}}'
    )
    assert control_plane.kubectl_json("get", "fs", sneaker_drop, "-n", namespace)["status"]["phase"] == "Live"
    bad = control_plane.kubectl(
        "patch", "fs", sneaker_drop, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Paused"}}',
    )  # fmt: skip
    assert bad.returncode != 0
    assert "status.phase" in bad.stderr
    assert "Unsupported value" in bad.stderr


def test_kubectl_get_shows_the_printer_columns(control_plane: ControlPlane, namespace: str, sneaker_drop: str) -> None:
    control_plane.kubectl(
        "patch", "fs", sneaker_drop, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {
            "phase": "Live", "remaining": 4990, "confirmed": 6, "reserved": 4, "drift": 0,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "serving",
                            "lastTransitionTime": "2026-11-27T10:00:00Z"}],
        }}),
        check=True,
    )  # fmt: skip
    lines = control_plane.kubectl("get", "fs", "-n", namespace, check=True).stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "PHASE", "STOCK", "REMAINING", "CONFIRMED", "DRIFT", "AGE"]
    row = next(line.split() for line in lines[1:] if line.split()[0] == sneaker_drop)
    assert row[1:7] == ["True", "Live", "5000", "4990", "6", "0"]

    wide = control_plane.kubectl("get", "fs", sneaker_drop, "-n", namespace, "-o", "wide", check=True)
    header, values = (line.split() for line in wide.stdout.splitlines()[:2])
    assert header == [
        "NAME", "READY", "PHASE", "STOCK", "REMAINING", "CONFIRMED", "DRIFT", "RESERVED", "START", "AGE",
    ]  # fmt: skip
    assert values[7:9] == ["4", "2026-11-27T10:00:00Z"]


# --- what admission refuses before the operator sees it -------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["x" * 57, "9lives", "a" * 40 + "-" + "b" * 16],  # too long for <name>-worker, not a letter first, 57 chars
)
def test_a_name_the_children_cannot_carry_is_refused_at_admission(
    control_plane: ControlPlane, flashsale_crd: str, namespace: str, name: str
) -> None:
    result = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(minimal_sale(name)))
    assert result.returncode != 0, f"{name} was accepted"
    assert "metadata.name" in result.stderr
    assert "DNS-1035 label" in result.stderr and "<name>-worker fits in 63" in result.stderr, result.stderr
    assert control_plane.kubectl("get", "fs", name, "-n", namespace).returncode != 0


def test_the_longest_name_is_accepted(control_plane: ControlPlane, flashsale_crd: str, namespace: str) -> None:
    name = "l" * 56
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(minimal_sale(name)), check=True)
    control_plane.kubectl("delete", "fs", name, "-n", namespace, "--wait=false", check=True)


def test_what_was_sold_is_immutable_once_the_sale_opened(
    control_plane: ControlPlane, flashsale_crd: str, namespace: str
) -> None:
    cp, name = control_plane, "immutable-product"
    sale = minimal_sale(name)
    sale["spec"]["product"].update({"price": "10.00", "currency": "EUR"})
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(sale), check=True)

    def patch(spec: dict[str, Any]) -> Any:
        body = json.dumps({"spec": spec})
        return cp.kubectl("patch", "fs", name, "-n", namespace, "--type=merge", "-p", body)

    # Scheduled: the product may still be corrected.
    cp.kubectl(
        "patch", "fs", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Scheduled"}}', check=True,
    )  # fmt: skip
    assert patch({"product": {"price": "12.00"}}).returncode == 0
    cp.kubectl(
        "patch", "fs", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Live"}}', check=True,
    )  # fmt: skip
    for change in ({"sku": "OTHER-1"}, {"price": "9.00"}, {"currency": "USD"}, {"price": None}):
        refused = patch({"product": change})
        assert refused.returncode != 0, f"{change} was accepted on a Live sale"
        assert "cannot change once the sale has opened" in refused.stderr, refused.stderr
    assert patch({"stock": 20, "product": {"name": "Renamed"}}).returncode == 0  # the rest may change
    product = cp.kubectl_json("get", "fs", name, "-n", namespace)["spec"]["product"]
    assert product == {"sku": "TEE-42", "price": "12.00", "currency": "EUR", "name": "Renamed"}
    cp.kubectl("delete", "fs", name, "-n", namespace, "--wait=false", check=True)


def test_stock_buckets_are_fixed_once_the_sale_exists(
    control_plane: ControlPlane, flashsale_crd: str, namespace: str
) -> None:
    cp, name = control_plane, "fixed-buckets"
    sale = minimal_sale(name)
    sale["spec"]["stockBuckets"] = 4
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(sale), check=True)
    for buckets in (2, None):
        body = json.dumps({"spec": {"stockBuckets": buckets}})
        refused = cp.kubectl("patch", "fs", name, "-n", namespace, "--type=merge", "-p", body)
        assert refused.returncode != 0, f"stockBuckets {buckets} was accepted"
        assert "stockBuckets cannot change" in refused.stderr, refused.stderr
    too_many = minimal_sale("too-many-buckets")
    too_many["spec"]["stockBuckets"] = 65
    refused = cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(too_many))
    assert refused.returncode != 0 and "stockBuckets" in refused.stderr, refused.stderr
    cp.kubectl("delete", "fs", name, "-n", namespace, "--wait=false", check=True)


def test_every_field_is_explained(control_plane: ControlPlane, flashsale_crd: str) -> None:
    crd = control_plane.kubectl_json("get", "crd", flashsale_crd)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def undescribed(node: dict[str, Any], path: str) -> list[str]:
        out = [] if node.get("description") else [path or "."]
        for key, child in (node.get("properties") or {}).items():
            out += undescribed(child, f"{path}.{key}")
        if "items" in node:
            out += undescribed(node["items"], f"{path}[]")
        return out

    # metadata is Kubernetes' ObjectMeta, which a CRD may not describe (kubectl explain shows its own text).
    assert undescribed(schema, "") == [".metadata"]
    explained = control_plane.kubectl("explain", "flashsales.spec.workers.autoscale.targetLagMs", check=True).stdout
    assert "Longest a pending reservation should wait" in explained
