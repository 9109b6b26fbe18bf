"""Pure builders of what the operator writes: the parsed sale spec and the Kubernetes manifests of a sale's
API and worker Deployments and Service. Each ``build_*`` takes values and returns a dict, so every manifest
is tested by value and the handlers only send what these return.

A spec the API server accepted can still be unusable here (a sale name too long for its Service, a window
that is not a time); ``parse_spec`` says so with an ``InvalidSpec`` carrying a CamelCase reason, which the
handlers turn into ``Ready=False`` and an Event instead of a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stampede import names
from stampede.stock import SaleConfig
from stampede_operator.settings import POD_TEMPLATE_FIELDS, OperatorSettings, pod_template

# A Service name is a DNS-1035 label: a letter first, at most 63 characters.
MAX_COMPONENT_NAME = 63
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9-]{1,64}")


class InvalidSpec(ValueError):
    """The FlashSale cannot be run as written; ``reason`` is the condition/Event reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class AdmissionSpec:
    """``spec.admission``: the sale's waiting room."""

    open_queue_s: int
    rate_per_s: float


@dataclass(frozen=True, slots=True)
class Autoscale:
    """``spec.workers.autoscale``: the workers' replicas follow the settle backlog between ``min`` and ``max``,
    aiming at a 202 -> settled lag under ``target_lag_ms``."""

    min: int
    max: int
    target_lag_ms: int


@dataclass(frozen=True, slots=True)
class ApiAutoscale:
    """``spec.api.autoscale`` (or the chart's ``api.autoscale``): a HorizontalPodAutoscaler keeps the API pods
    between ``min`` and ``max`` at ``target_cpu_percent`` of their CPU request."""

    min: int
    max: int
    target_cpu_percent: int


@dataclass(frozen=True, slots=True)
class SaleSpec:
    """A FlashSale's spec as the operator uses it, defaults applied (the CRD defaults them too)."""

    name: str
    sku: str
    stock: int
    per_user_limit: int
    window_start: datetime
    window_end: datetime
    api_replicas: int = 2
    worker_replicas: int = 1
    worker_concurrency: int = 8
    interval_s: int = 10
    grace_s: int = 30
    buyer_rate: int = 5
    buyer_burst: int = 10
    ip_rate: int = 50
    ip_burst: int = 100
    namespace: str = ""
    trusted_proxy_hops: int | None = None  # None: the operator's STAMPEDE_API_TRUSTED_PROXY_HOPS
    client_ip_header: str | None = None  # None: the operator's STAMPEDE_API_CLIENT_IP_HEADER
    admission: AdmissionSpec | None = None  # None: no waiting room
    hold_seconds: int = 0  # spec.checkout.holdSeconds: settled reservations are held this long for checkout
    stock_buckets: int = 1  # spec.stockBuckets: stock buckets (hash tags) the sale's units are split over
    autoscale: Autoscale | None = None  # None: spec.workers.replicas, fixed
    api_autoscale: ApiAutoscale | None = None  # None: the operator's default (STAMPEDE_API_AUTOSCALE), if any
    # spec.api.template / spec.workers.template: what the user sets of POD_TEMPLATE_FIELDS (over the chart's).
    api_template: Mapping[str, Any] = field(default_factory=dict)
    worker_template: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The sale's identity in Redis, the ledger, metrics and logs: namespace and name (names.sale_id)."""
        return names.sale_id(self.namespace, self.name)

    @property
    def sale_config(self) -> SaleConfig:
        return SaleConfig(
            total=self.stock,
            per_user_limit=self.per_user_limit,
            buyer_rate=float(self.buyer_rate),
            buyer_burst=self.buyer_burst,
            ip_rate=float(self.ip_rate),
            ip_burst=self.ip_burst,
            buckets=self.stock_buckets,
        )


def _time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidSpec("InvalidWindow", f"spec.window.{field} must be an RFC 3339 time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidSpec("InvalidWindow", f"spec.window.{field} is not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise InvalidSpec("InvalidWindow", f"spec.window.{field} needs a time zone: {value!r}")
    return parsed


def _int(node: Mapping[str, Any], key: str, default: int, path: str, minimum: int) -> int:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSpec("InvalidSpec", f"{path}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _obj(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    node = spec.get(key) or {}
    if not isinstance(node, Mapping):
        raise InvalidSpec("InvalidSpec", f"spec.{key} must be an object")
    return node


def parse_spec(name: str, spec: Mapping[str, Any], namespace: str = "") -> SaleSpec:
    """The usable spec of FlashSale ``name`` in ``namespace``, or InvalidSpec saying what is wrong."""
    if not names.SALE_NAME_RE.match(name) or not name[0].isalpha():
        raise InvalidSpec("InvalidName", f"sale name {name!r} must be a DNS-1035 label (a letter first)")
    longest = names.component_name(name, names.COMPONENT_WORKER)
    if len(longest) > MAX_COMPONENT_NAME:
        raise InvalidSpec(
            "NameTooLong",
            f"sale name {name!r} is too long: {longest!r} must fit in {MAX_COMPONENT_NAME} characters",
        )
    product = _obj(spec, "product")
    sku = product.get("sku")
    if not isinstance(sku, str) or not sku:
        raise InvalidSpec("InvalidSpec", "spec.product.sku is required")
    window = _obj(spec, "window")
    start, end = _time(window.get("start"), "start"), _time(window.get("end"), "end")
    if end <= start:
        raise InvalidSpec("InvalidWindow", "spec.window.end must be after spec.window.start")
    api, workers, reconcile = _obj(spec, "api"), _obj(spec, "workers"), _obj(spec, "reconcile")
    checkout = _obj(spec, "checkout")
    rate = _obj(spec, "rateLimit")
    buyer = rate.get("perBuyer") or {}
    ip = rate.get("perIp") or {}
    return SaleSpec(
        name=name,
        sku=sku,
        stock=_int(spec, "stock", -1, "spec", 0),
        per_user_limit=_int(spec, "perUserLimit", 1, "spec", 1),
        window_start=start,
        window_end=end,
        api_replicas=_int(api, "replicas", 2, "spec.api", 0),
        worker_replicas=_int(workers, "replicas", 2, "spec.workers", 0),
        worker_concurrency=_int(workers, "concurrency", 8, "spec.workers", 1),
        interval_s=_int(reconcile, "intervalSeconds", 10, "spec.reconcile", 1),
        grace_s=_int(reconcile, "graceSeconds", 30, "spec.reconcile", 1),
        buyer_rate=_int(buyer, "rate", 5, "spec.rateLimit.perBuyer", 1),
        buyer_burst=_int(buyer, "burst", 10, "spec.rateLimit.perBuyer", 1),
        ip_rate=_int(ip, "rate", 50, "spec.rateLimit.perIp", 1),
        ip_burst=_int(ip, "burst", 100, "spec.rateLimit.perIp", 1),
        namespace=namespace,
        trusted_proxy_hops=None
        if api.get("trustedProxyHops") is None
        else _int(api, "trustedProxyHops", 0, "spec.api", 0),
        client_ip_header=_header(api),
        admission=_admission(spec),
        hold_seconds=_int(checkout, "holdSeconds", 0, "spec.checkout", 0),
        stock_buckets=_int(spec, "stockBuckets", 1, "spec", 1),
        autoscale=_autoscale(workers),
        api_autoscale=api_autoscale_of(api.get("autoscale"), "spec.api.autoscale"),
        api_template=_template(api, "spec.api"),
        worker_template=_template(workers, "spec.workers"),
    )


def _admission(spec: Mapping[str, Any]) -> AdmissionSpec | None:
    if spec.get("admission") is None:
        return None
    node = _obj(spec, "admission")
    rate = node.get("ratePerSecond")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0 or rate != rate:
        raise InvalidSpec("InvalidSpec", f"spec.admission.ratePerSecond must be a number > 0, got {rate!r}")
    return AdmissionSpec(_int(node, "openQueueSeconds", 600, "spec.admission", 0), float(rate))


# The JSON type each template field must have: resources, nodeSelector and affinity are objects, tolerations and
# topologySpreadConstraints lists of objects, priorityClassName a name.
_TEMPLATE_TYPES: dict[str, type] = {
    "resources": Mapping,
    "nodeSelector": Mapping,
    "affinity": Mapping,
    "tolerations": list,
    "topologySpreadConstraints": list,
    "priorityClassName": str,
}


def _template(node: Mapping[str, Any], path: str) -> dict[str, Any]:
    template = node.get("template") or {}
    if not isinstance(template, Mapping):
        raise InvalidSpec("InvalidSpec", f"{path}.template must be an object")
    out: dict[str, Any] = {}
    for key, value in template.items():
        if key not in _TEMPLATE_TYPES:
            raise InvalidSpec("InvalidSpec", f"{path}.template.{key} is not one of {', '.join(POD_TEMPLATE_FIELDS)}")
        if value in (None, "", [], {}):
            continue
        if not isinstance(value, _TEMPLATE_TYPES[key]) or (
            isinstance(value, list) and not all(isinstance(v, Mapping) for v in value)
        ):
            raise InvalidSpec("InvalidSpec", f"{path}.template.{key} has the wrong type")
        out[key] = value
    return out


def _autoscale(workers: Mapping[str, Any]) -> Autoscale | None:
    node = workers.get("autoscale")
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise InvalidSpec("InvalidSpec", "spec.workers.autoscale must be an object")
    path = "spec.workers.autoscale"
    low, high = _int(node, "min", 1, path, 0), _int(node, "max", 4, path, 1)
    if high < low:
        raise InvalidSpec("InvalidSpec", f"{path}.max ({high}) must be >= min ({low})")
    return Autoscale(low, high, _int(node, "targetLagMs", 1000, path, 1))


def api_autoscale_of(node: Any, path: str) -> ApiAutoscale | None:
    """The API's HPA settings in ``node`` (``spec.api.autoscale``, or the operator's default), or None."""
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise InvalidSpec("InvalidSpec", f"{path} must be an object")
    low, high = _int(node, "min", 2, path, 1), _int(node, "max", 0, path, 1)
    if high < low:
        raise InvalidSpec("InvalidSpec", f"{path}.max ({high}) must be >= min ({low})")
    return ApiAutoscale(low, high, _int(node, "targetCPUPercent", 70, path, 1))


def api_autoscale(spec: SaleSpec, settings: OperatorSettings) -> ApiAutoscale | None:
    """The sale's API autoscaling: its own ``spec.api.autoscale``, else the chart's default, else none."""
    if spec.api_autoscale is not None:
        return spec.api_autoscale
    if not settings.api_autoscale.strip():
        return None
    return api_autoscale_of(json.loads(settings.api_autoscale), "STAMPEDE_API_AUTOSCALE")


def _header(api: Mapping[str, Any]) -> str | None:
    value = api.get("clientIpHeader")
    if value is None:
        return None
    if not isinstance(value, str) or not HEADER_NAME_RE.fullmatch(value):
        raise InvalidSpec("InvalidSpec", f"spec.api.clientIpHeader must be an HTTP header name, got {value!r}")
    return value


# --- manifests -------------------------------------------------------------------------------------


def build_labels(sale: str, component: str) -> dict[str, str]:
    """Labels of everything a sale owns; the selector is the subset that never changes."""
    return {
        names.LABEL_NAME: names.APP_NAME,
        names.LABEL_INSTANCE: sale,
        names.LABEL_COMPONENT: component,
        names.LABEL_MANAGED_BY: names.MANAGER,
        names.LABEL_SALE: sale,
    }


def build_selector(sale: str, component: str) -> dict[str, str]:
    return {names.LABEL_SALE: sale, names.LABEL_COMPONENT: component}


def build_owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """An owner reference to the FlashSale ``owner`` (its body), so deleting the sale deletes its objects."""
    meta = owner["metadata"]
    return {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.CRD_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(sale: str, component: str, namespace: str, owner: Mapping[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": names.component_name(sale, component),
        "namespace": namespace,
        "labels": build_labels(sale, component),
    }
    if owner is not None:
        meta["ownerReferences"] = [build_owner_reference(owner)]
    return meta


# The Secret keys each component of a sale reads: the data stores for both, the token secret for the API only
# (a worker never checks a buyer's token, so it never holds the key that signs them).
WORKER_SECRET_KEYS = ("STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL")
API_SECRET_KEYS = (*WORKER_SECRET_KEYS, "STAMPEDE_JWT_SECRET")


def _secret_env(settings: OperatorSettings, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """One variable per Secret key, named like the key: a pod gets exactly the secrets it uses (``envFrom``
    would hand it every key of the Secret)."""
    return [{"name": k, "valueFrom": {"secretKeyRef": {"name": settings.secret_name, "key": k}}} for k in keys]


def _http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


DEFAULT_RESOURCES = {
    names.COMPONENT_API: {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    names.COMPONENT_WORKER: {"requests": {"cpu": "250m", "memory": "192Mi"}, "limits": {"memory": "384Mi"}},
}


def pod_placement(spec: SaleSpec, component: str, settings: OperatorSettings) -> dict[str, Any]:
    """The template fields of a sale's ``component`` pods: the FlashSale's own, else the operator's defaults
    (the chart's ``api.template`` / ``worker.template``), field by field; resources default to
    ``DEFAULT_RESOURCES``."""
    if component == names.COMPONENT_API:
        defaults, own = pod_template("api_pod_template", settings.api_pod_template), spec.api_template
    else:
        defaults, own = pod_template("worker_pod_template", settings.worker_pod_template), spec.worker_template
    return {"resources": DEFAULT_RESOURCES[component], **defaults, **own}


def _deployment(
    spec: SaleSpec,
    component: str,
    namespace: str,
    settings: OperatorSettings,
    owner: Mapping[str, Any] | None,
    replicas: int,
    pod: dict[str, Any],
    **deployment_spec: Any,
) -> dict[str, Any]:
    """The Deployment shape both of a sale's workloads share: labels, selector, scrape annotation, the
    pod's ServiceAccount, security context, pull Secrets and placement (``pod_placement``); ``pod`` holds what
    differs (containers, grace period, volumes). Placement fields left unset are sent as null, so a field
    removed from the template is removed from the Deployment by the operator's patch."""
    placement = pod_placement(spec, component, settings)
    for c in pod["containers"]:
        c["resources"] = placement["resources"]
    pull = [{"name": n} for n in settings.pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec.name, component, namespace, owner),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": build_selector(spec.name, component)},
            **deployment_spec,
            "template": {
                "metadata": {
                    "labels": build_labels(spec.name, component),
                    "annotations": {"prometheus.io/scrape": "true"},
                },
                "spec": {
                    # A ServiceAccount of their own and no token: sale pods never call the Kubernetes API.
                    "serviceAccountName": settings.sale_service_account,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": _pod_security(),
                    "imagePullSecrets": pull or None,
                    **{k: placement.get(k) for k in POD_TEMPLATE_FIELDS if k != "resources"},
                    **pod,
                },
            },
        },
    }


def build_api_deployment(
    spec: SaleSpec,
    namespace: str,
    settings: OperatorSettings,
    owner: Mapping[str, Any] | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The sale's API: gunicorn serving the buy API, ``replicas`` pods (None: ``spec.api.replicas``; the
    operator passes fewer for a sale that has ended)."""
    component = names.COMPONENT_API
    container = {
        "name": component,
        "image": settings.api_image,
        "imagePullPolicy": settings.image_pull_policy,
        # Two ports: buyers (the Service targets `http`) and metrics (scraped from the pod, never in the Service).
        "ports": [
            {"name": "http", "containerPort": settings.api_port},
            {"name": "metrics", "containerPort": settings.api_metrics_port},
        ],
        "envFrom": None,  # null: a patch removes the envFrom of Deployments written before per-key secrets
        "env": [
            *_secret_env(settings, API_SECRET_KEYS),
            {"name": "STAMPEDE_BIND", "value": f"0.0.0.0:{settings.api_port}"},
            # The API addresses the sales of its own namespace: /v1/sales/<name> is <namespace>/<name>.
            {"name": "STAMPEDE_SALE_NAMESPACE", "value": namespace},
            {"name": "STAMPEDE_METRICS_PORT", "value": str(settings.api_metrics_port)},
            {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/metrics"},
            # Who the client is: the header the ingress appends to and how many proxies append to it.
            {
                "name": "STAMPEDE_TRUSTED_PROXY_HOPS",
                "value": str(
                    settings.api_trusted_proxy_hops if spec.trusted_proxy_hops is None else spec.trusted_proxy_hops
                ),
            },
            {"name": "STAMPEDE_CLIENT_IP_HEADER", "value": spec.client_ip_header or settings.api_client_ip_header},
        ],
        "readinessProbe": _http_probe("/readyz", "http", 5, 3),
        "livenessProbe": _http_probe("/healthz", "http", 10, 3),
        "startupProbe": _http_probe("/healthz", "http", 2, 30),
        # A deleted pod keeps serving for a few seconds before gunicorn's graceful stop: endpoints and
        # kube-proxy's rules forget the pod asynchronously, and until they do new connections still reach it.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return _deployment(
        spec,
        component,
        namespace,
        settings,
        owner,
        spec.api_replicas if replicas is None else replicas,
        {
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
    )


def build_worker_deployment(
    spec: SaleSpec,
    namespace: str,
    settings: OperatorSettings,
    owner: Mapping[str, Any] | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The sale's workers: ``replicas`` procrastinate workers (None: ``spec.workers.replicas``; the
    operator's autoscaler or an ended sale decide otherwise), each running ``spec.workers.concurrency``
    settle jobs at once."""
    component = names.COMPONENT_WORKER
    container = {
        "name": component,
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "ports": [{"name": "metrics", "containerPort": settings.worker_metrics_port}],
        "envFrom": None,  # as above
        "env": [
            *_secret_env(settings, WORKER_SECRET_KEYS),
            {"name": "STAMPEDE_WORKER_CONCURRENCY", "value": str(spec.worker_concurrency)},
            {"name": "STAMPEDE_WORKER_METRICS_HOST", "value": "0.0.0.0"},
            {"name": "STAMPEDE_WORKER_METRICS_PORT", "value": str(settings.worker_metrics_port)},
        ],
        "readinessProbe": _http_probe("/healthz", "metrics", 10, 3),
        "livenessProbe": _http_probe("/healthz", "metrics", 15, 4),
        "securityContext": _container_security(),
    }
    # SIGTERM lets in-flight jobs finish; give them the worker's own shutdown budget and more.
    return _deployment(
        spec,
        component,
        namespace,
        settings,
        owner,
        spec.worker_replicas if replicas is None else replicas,
        {"terminationGracePeriodSeconds": 40, "containers": [container]},
    )


def build_api_service(
    spec: SaleSpec, namespace: str, settings: OperatorSettings, owner: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """ClusterIP Service in front of the sale's API pods."""
    sale, component = spec.name, names.COMPONENT_API
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(sale, component, namespace, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": build_selector(sale, component),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_api_pdb(
    spec: SaleSpec, namespace: str, settings: OperatorSettings, owner: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The sale's own PodDisruptionBudget over its API pods: a node drain never takes more than
    ``STAMPEDE_API_PDB_MAX_UNAVAILABLE`` of them at once, and selects no other sale's pods."""
    sale, component = spec.name, names.COMPONENT_API
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(sale, component, namespace, owner),
        "spec": {
            "maxUnavailable": _int_or_percent(settings.api_pdb_max_unavailable),
            "selector": {"matchLabels": build_selector(sale, component)},
        },
    }


def _int_or_percent(value: str) -> int | str:
    """An IntOrString as Kubernetes wants it: ``"1"`` is the integer 1, ``"25%"`` stays a string."""
    return int(value) if value.isdigit() else value


def build_api_hpa(
    spec: SaleSpec,
    namespace: str,
    settings: OperatorSettings,
    autoscale: ApiAutoscale,
    owner: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The HorizontalPodAutoscaler of the sale's API Deployment, on the pods' CPU (``spec.api.autoscale``). It
    owns the Deployment's replicas while it runs; the operator sets them only to start and when the sale ends."""
    sale, component = spec.name, names.COMPONENT_API
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(sale, component, namespace, owner),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": names.component_name(sale, component),
            },
            "minReplicas": autoscale.min,
            "maxReplicas": autoscale.max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": autoscale.target_cpu_percent},
                    },
                }
            ],
        },
    }
