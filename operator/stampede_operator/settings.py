"""The operator's settings: what it puts into the sale's pods, its leader election and its waits, over the
``Common`` ones every process reads."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from stampede.settings import HEADER_NAME, Common, SettingsError, positive, setting

_INT_OR_PERCENT = re.compile(r"[0-9]{1,9}%?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# What a sale's pod template may set (spec.api.template, spec.workers.template and the operator's defaults).
POD_TEMPLATE_FIELDS = (
    "resources",
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "priorityClassName",
)


def pod_template(name: str, raw: str) -> dict[str, Any]:
    """The pod template defaults held in setting ``name`` (JSON), or SettingsError naming the variable."""
    if not raw.strip():
        return {}
    var = f"STAMPEDE_{name.upper()}"
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"{var} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{var} must be a JSON object")
    unknown = sorted(set(value) - set(POD_TEMPLATE_FIELDS))
    if unknown:
        raise SettingsError(f"{var} may hold only {', '.join(POD_TEMPLATE_FIELDS)}; not {', '.join(unknown)}")
    return {k: v for k, v in value.items() if v not in (None, "", [], {})}


@dataclass(frozen=True)
class OperatorSettings(Common):
    """The kopf operator (``kopf run -m stampede_operator.main``): what it puts into the sale's pods, how it
    elects a leader among its replicas, and how long it waits for things."""

    secret_name: str = setting(
        "stampede-env",
        "Secret in the sale's namespace holding STAMPEDE_REDIS_URL and STAMPEDE_DATABASE_URL (API and worker pods) "
        "and STAMPEDE_JWT_SECRET (API pods only)",
    )
    sale_service_account: str = setting(
        "stampede-sale", "ServiceAccount of the sale's API and worker pods (no token is mounted; it needs no rights)"
    )
    api_image: str = setting("stampede-api:latest", "image of the sale's API Deployment")
    worker_image: str = setting("stampede-worker:latest", "image of the sale's worker Deployment")
    image_pull_policy: str = setting("IfNotPresent", "imagePullPolicy of the sale's pods")
    api_port: int = setting(8000, "port the API container listens on (and the Service targets)")
    api_metrics_port: int = setting(
        9101, "port of the API pods' /metrics (container port `metrics`, not in the Service)"
    )
    api_trusted_proxy_hops: int = setting(
        0,
        "proxies in front of the sales' API pods that append the client address (a FlashSale's spec.api may override)",
    )
    api_client_ip_header: str = setting(
        "X-Forwarded-For", "the header those proxies append to (a FlashSale's spec.api may override)"
    )
    worker_metrics_port: int = setting(9102, "port of the worker's /metrics and /healthz endpoint in its pods")
    peering_name: str = setting("stampede", "kopf peering object the replicas elect their leader in")
    peering_priority: int = setting(0, "this replica's priority; 0: derived from the pod name so replicas differ")
    peering_lifetime_s: int = setting(60, "seconds a silent leader is still believed alive by the standbys")
    standalone: bool = setting(False, "run without peering (a single replica, development)")
    delete_drain_timeout_s: float = setting(30.0, "longest a deleted sale waits for its queued jobs to settle")
    reconcile_batch_max: int = setting(1000, "most reservations one healing action (job, release) carries")
    drift_confirmations: int = setting(2, "consecutive passes a drift must persist before Drifted=True + Event")
    operator_metrics_port: int = setting(9103, "port of the operator's Prometheus /metrics (0: none)")
    api_pod_template: str = setting(
        "",
        "JSON object: defaults for every sale's API pods (resources, nodeSelector, affinity, tolerations, "
        "topologySpreadConstraints, priorityClassName); a FlashSale's spec.api.template overrides each field",
    )
    worker_pod_template: str = setting(
        "", "JSON object: the same defaults for every sale's worker pods (spec.workers.template overrides them)"
    )
    image_pull_secrets: str = setting("", "comma-separated Secrets every sale pod pulls its image with")
    autoscale_cooldown_s: float = setting(
        60.0, "least seconds between an autoscaler's change of a sale's workers and a scale-down after it"
    )
    api_autoscale: str = setting(
        "",
        'JSON object {"min": 2, "max": 10, "targetCPUPercent": 70}: every sale\'s API gets a HorizontalPodAutoscaler '
        "on CPU unless its spec.api.autoscale says otherwise (empty: only sales that ask for one)",
    )
    api_pdb_max_unavailable: str = setting(
        "1", "maxUnavailable of each sale's API PodDisruptionBudget (an integer or a percentage; empty: no PDB)"
    )

    @property
    def pull_secrets(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.image_pull_secrets.split(",") if n.strip())

    def validate(self) -> None:
        super().validate()
        for name in (
            "api_port",
            "api_metrics_port",
            "worker_metrics_port",
            "peering_lifetime_s",
            "delete_drain_timeout_s",
            "autoscale_cooldown_s",
        ):
            positive(name, getattr(self, name))
        if self.api_trusted_proxy_hops < 0:
            raise SettingsError("STAMPEDE_API_TRUSTED_PROXY_HOPS must be >= 0")
        if not HEADER_NAME.fullmatch(self.api_client_ip_header):
            raise SettingsError("STAMPEDE_API_CLIENT_IP_HEADER must be an HTTP header name")
        positive("reconcile_batch_max", self.reconcile_batch_max)
        positive("drift_confirmations", self.drift_confirmations)
        if not 0 <= self.operator_metrics_port <= 65535:
            raise SettingsError("STAMPEDE_OPERATOR_METRICS_PORT must be a port number (0: none)")
        if self.peering_priority < 0:
            raise SettingsError("STAMPEDE_PEERING_PRIORITY must be >= 0 (0: derived from the pod name)")
        if self.api_autoscale.strip():
            _check_api_autoscale(self.api_autoscale)
        for name in ("api_pod_template", "worker_pod_template"):
            pod_template(name, getattr(self, name))
        if any(not _DNS_LABEL.fullmatch(n) for n in self.pull_secrets):
            raise SettingsError("STAMPEDE_IMAGE_PULL_SECRETS must be Secret names separated by commas")
        if self.api_pdb_max_unavailable and not _INT_OR_PERCENT.fullmatch(self.api_pdb_max_unavailable):
            raise SettingsError("STAMPEDE_API_PDB_MAX_UNAVAILABLE must be an integer or a percentage such as 25%")
        if not self.secret_name:
            raise SettingsError("STAMPEDE_SECRET_NAME must name the Secret of the sale's pods")
        if not self.sale_service_account:
            raise SettingsError("STAMPEDE_SALE_SERVICE_ACCOUNT must name the ServiceAccount of the sale's pods")


def _check_api_autoscale(raw: str) -> None:
    """STAMPEDE_API_AUTOSCALE must be a JSON object of min, max (>= min) and targetCPUPercent, all positive."""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"STAMPEDE_API_AUTOSCALE must be a JSON object: {exc}") from None
    keys = ("min", "max", "targetCPUPercent")
    if not isinstance(value, dict) or set(value) - set(keys) or "max" not in value:
        raise SettingsError(f"STAMPEDE_API_AUTOSCALE must be a JSON object of {', '.join(keys)} (max required)")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SettingsError(f"STAMPEDE_API_AUTOSCALE.{k} must be an integer >= 1")
    if value["max"] < value.get("min", 2):
        raise SettingsError("STAMPEDE_API_AUTOSCALE.max must be at least min")
