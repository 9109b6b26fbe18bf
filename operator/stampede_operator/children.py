"""What a sale's children (its API and worker Deployments, API Service and PodDisruptionBudget) should be and
what they are, as pure functions: how many pods each Deployment should run in the sale's phase, what a hand
edit changed (so it is put back and said so), and whether the sale is serving (the ``Ready`` condition).

The operator owns these objects: a deleted child is created again and an edited one brought back to what the
FlashSale asks, within seconds of the watch event, with an Event naming what was put back. Only the fields the
operator decides are compared (replicas, images, env, labels, selectors, ports, the disruption budget);
whatever Kubernetes defaults or adds (status, annotations of other controllers, extra labels) is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stampede import names
from stampede.vocabulary import SalePhase

from .status import FALSE, TRUE

DEPLOYMENT = "Deployment"
SERVICE = "Service"
PDB = "PodDisruptionBudget"
HPA = "HorizontalPodAutoscaler"


@dataclass(frozen=True, slots=True)
class Workload:
    """A Deployment's replicas as the Deployment reports them (``desired`` is its spec, the others its status)."""

    desired: int
    ready: int
    available: int
    current: bool  # the Deployment controller has seen the latest spec (observedGeneration >= generation)

    @property
    def serving(self) -> bool:
        return self.current and self.desired > 0 and self.available >= self.desired

    def as_status(self) -> dict[str, int]:
        return {"desired": self.desired, "ready": self.ready, "available": self.available}


def workload(deployment: Mapping[str, Any]) -> Workload:
    """The replica counts of a Deployment body."""
    spec = deployment.get("spec") or {}
    st = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation") or 0
    return Workload(
        desired=int(spec.get("replicas", 1)),
        ready=int(st.get("readyReplicas") or 0),
        available=int(st.get("availableReplicas") or 0),
        current=int(st.get("observedGeneration") or 0) >= int(generation),
    )


@dataclass(frozen=True, slots=True)
class Replicas:
    """How many pods each of the sale's Deployments should run, and why the workers run that many."""

    api: int
    workers: int
    workers_reason: str
    # The API's HorizontalPodAutoscaler owns its replicas (``api`` is then only what a new Deployment starts with).
    api_autoscaled: bool = False


def replicas_for(
    phase: str | None,
    *,
    api: int,
    workers: int,
    reserved: int | None,
    workers_reason: str = "",
    api_autoscaled: bool = False,
) -> Replicas:
    """The replicas of a sale in ``phase``: ``api`` and ``workers`` (the spec's, or the autoscaler's decision)
    while it runs; zero for both once it has Ended and nothing is left to settle (an API HPA does not scale a
    Deployment at zero back up). An ended sale with pending reservations keeps its workers to settle them and its
    API so buyers can still read their outcome."""
    if phase == SalePhase.ENDED and reserved == 0:
        return Replicas(0, 0, "the sale has ended and everything is settled")
    return Replicas(api, workers, workers_reason or f"spec.workers.replicas is {workers}", api_autoscaled)


def unscaled(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """``deployment`` without ``spec.replicas``: what the operator keeps of a Deployment whose replicas an HPA
    decides (compared and patched without them, so the HPA's choice stands)."""
    spec = {k: v for k, v in deployment["spec"].items() if k != "replicas"}
    return {**deployment, "spec": spec}


def readiness(
    phase: str | None, api: Workload | None, workers: Workload | None, *, seeded: bool
) -> tuple[str, str, str]:
    """The ``Ready`` condition (status, reason, message): True only when the sale's Redis counters are seeded
    and both Deployments have every desired pod available, i.e. the sale is serving."""
    if phase == SalePhase.ENDED:
        return FALSE, "Ended", "the sale has ended"
    if not seeded:
        return FALSE, "NotSeeded", "the sale's counters are not in Redis yet"
    missing = []
    for label, w in (("API", api), ("workers", workers)):
        if w is None:
            missing.append(f"{label}: no Deployment")
        elif not w.serving:
            missing.append(f"{label}: {w.available}/{w.desired} available")
    if missing:
        return FALSE, "WorkloadsUnavailable", "; ".join(missing)
    assert api is not None and workers is not None
    return (
        TRUE,
        "Serving",
        f"API {api.available}/{api.desired} and workers {workers.available}/{workers.desired} available",
    )


# --- what a hand edit changed -------------------------------------------------------------------------


def _labels_changed(where: str, want: Mapping[str, str] | None, got: Mapping[str, str] | None) -> list[str]:
    got, prefix = got or {}, f"{where} label" if where else "label"
    return [f"{prefix} {k}={got.get(k)!r} -> {v!r}" for k, v in sorted((want or {}).items()) if got.get(k) != v]


def _env_changed(container: str, want: Iterable[Mapping[str, Any]], got: Iterable[Mapping[str, Any]]) -> list[str]:
    wanted = {e["name"]: e for e in want}
    have = {e["name"]: e for e in got}
    out = []
    for name, entry in wanted.items():
        theirs = have.get(name)
        if theirs is None:
            out.append(f"{container} env {name} (removed)")
        elif theirs.get("value") != entry.get("value") or (
            "valueFrom" in entry and theirs.get("valueFrom") != entry["valueFrom"]
        ):
            out.append(f"{container} env {name}")
    out.extend(f"{container} env {name} (added by hand)" for name in sorted(set(have) - set(wanted)))
    return out


def _deployment_changes(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    out = []
    ws, gs = want["spec"], got.get("spec") or {}
    if "replicas" in ws and gs.get("replicas") != ws["replicas"]:
        out.append(f"replicas {gs.get('replicas')} -> {ws['replicas']}")
    out += _labels_changed("", want["metadata"].get("labels"), (got.get("metadata") or {}).get("labels"))
    wt, gt = ws["template"], gs.get("template") or {}
    out += _labels_changed("pod", wt["metadata"].get("labels"), (gt.get("metadata") or {}).get("labels"))
    have = {c.get("name"): c for c in (gt.get("spec") or {}).get("containers") or []}
    for c in wt["spec"]["containers"]:
        theirs = have.get(c["name"])
        if theirs is None:
            out.append(f"container {c['name']} (removed)")
            continue
        if theirs.get("image") != c["image"]:
            out.append(f"{c['name']} image {theirs.get('image')!r} -> {c['image']!r}")
        out += _env_changed(c["name"], c.get("env") or [], theirs.get("env") or [])
    out.extend(
        f"container {n} (added by hand)" for n in sorted(set(have) - {c["name"] for c in wt["spec"]["containers"]})
    )
    return out


def _service_changes(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    out = _labels_changed("", want["metadata"].get("labels"), (got.get("metadata") or {}).get("labels"))
    ws, gs = want["spec"], got.get("spec") or {}
    if gs.get("selector") != ws["selector"]:
        out.append(f"selector {gs.get('selector')} -> {ws['selector']}")
    if gs.get("type", "ClusterIP") != ws["type"]:
        out.append(f"type {gs.get('type')} -> {ws['type']}")
    shape = [(p["name"], p["port"], p["targetPort"]) for p in ws["ports"]]
    have = [(p.get("name"), p.get("port"), p.get("targetPort")) for p in gs.get("ports") or []]
    if have != shape:
        out.append("ports")
    return out


def _pdb_changes(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    out = _labels_changed("", want["metadata"].get("labels"), (got.get("metadata") or {}).get("labels"))
    ws, gs = want["spec"], got.get("spec") or {}
    if gs.get("selector") != ws["selector"]:
        out.append("selector")
    if gs.get("maxUnavailable") != ws["maxUnavailable"] or "minAvailable" in gs:
        out.append(f"maxUnavailable {gs.get('maxUnavailable')} -> {ws['maxUnavailable']}")
    return out


def _hpa_changes(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    out = _labels_changed("", want["metadata"].get("labels"), (got.get("metadata") or {}).get("labels"))
    ws, gs = want["spec"], got.get("spec") or {}
    for key in ("scaleTargetRef", "minReplicas", "maxReplicas", "metrics"):
        if gs.get(key) != ws[key]:
            out.append(f"{key} {gs.get(key)} -> {ws[key]}" if key.endswith("Replicas") else key)
    return out


def changes(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    """What in ``got`` (a child as it is) differs from ``want`` (as the operator builds it), in words for the
    Event; empty when the child is as the operator wants it."""
    kind = want["kind"]
    if kind == DEPLOYMENT:
        return _deployment_changes(want, got)
    if kind == SERVICE:
        return _service_changes(want, got)
    if kind == PDB:
        return _pdb_changes(want, got)
    if kind == HPA:
        return _hpa_changes(want, got)
    raise ValueError(f"not a child of a sale: {kind}")


def restore_patch(want: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch bringing a child back to ``want``: labels and the compared fields. Lists (containers,
    ports) are replaced whole, so an env variable or a container added by hand goes too; the Deployment's
    selector is immutable and never sent."""
    meta = {"labels": want["metadata"]["labels"]}
    if "ownerReferences" in want["metadata"]:
        meta["ownerReferences"] = want["metadata"]["ownerReferences"]
    spec = dict(want["spec"])
    if want["kind"] == DEPLOYMENT:
        spec.pop("selector", None)
    if want["kind"] == PDB:
        spec["minAvailable"] = None
    return {"metadata": meta, "spec": spec}


def sale_of(child: Mapping[str, Any]) -> tuple[str, str] | None:
    """(sale name, component) of one of the operator's children, or None. The sale is the FlashSale that
    controls it (its owner reference; its labels when it has none), the component follows from its name
    (``<sale>-api``, ``<sale>-worker``): both survive a hand edit of the labels, which is then put back."""
    meta = child.get("metadata") or {}
    owners = [
        o.get("name")
        for o in meta.get("ownerReferences") or []
        if o.get("kind") == names.CRD_KIND
        and o.get("controller")
        and str(o.get("apiVersion", "")).startswith(names.CRD_GROUP + "/")
    ]
    labels = meta.get("labels") or {}
    sale = owners[0] if owners else labels.get(names.LABEL_SALE)
    if not isinstance(sale, str) or not sale:
        return None
    for component in (names.COMPONENT_API, names.COMPONENT_WORKER):
        if meta.get("name") == names.component_name(sale, component):
            return sale, component
    return None
