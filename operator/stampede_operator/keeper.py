"""Keeps a sale's children as the operator built them, and reports whether they serve.

kopf watches the Deployments, Services and PodDisruptionBudgets labelled ``managed-by: stampede-operator``
and hands every event to ``on_child_event``: a deleted child is created again, a hand-edited one is brought
back (replicas, images, env, labels, selectors, ports, budget) with an Event on the FlashSale saying what was
put back; a Deployment's replica counts are kept in ``Deps.workloads`` (so the sale's loop reads them without
an API call) and, when they change, written into ``status.api`` / ``status.workers`` with the ``Ready``
condition. The replicas each Deployment should run are the operator's own decision for the sale
(``Deps.intents``: spec, phase, autoscaler), or, before this process decided anything (a restart), what the
FlashSale's spec and status say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from stampede import errors, names

from . import builders, children, handlers
from .builders import InvalidSpec, SaleSpec
from .children import Replicas
from .handlers import Deps, Emit

log = logging.getLogger(__name__)

# emitter(flashsale body) -> emit: Events are posted on the FlashSale, not on the child.
Emitter = Callable[[Mapping[str, Any]], Emit]
DELETED = "DELETED"


def wanted(deps: Deps, sale: SaleSpec, kind: str, component: str, owner: Mapping[str, Any], replicas: Replicas) -> (
    dict[str, Any] | None
):  # fmt: skip
    """The child of ``kind`` and ``component`` as the operator builds it now, or None if it builds none."""
    s, ns = deps.settings, sale.namespace
    if kind == children.DEPLOYMENT and component == names.COMPONENT_API:
        return builders.build_api_deployment(sale, ns, s, owner, replicas.api)
    if kind == children.DEPLOYMENT and component == names.COMPONENT_WORKER:
        return builders.build_worker_deployment(sale, ns, s, owner, replicas.workers)
    if kind == children.SERVICE and component == names.COMPONENT_API:
        return builders.build_api_service(sale, ns, s, owner)
    if kind == children.PDB and component == names.COMPONENT_API and s.api_pdb_max_unavailable:
        return builders.build_api_pdb(sale, ns, s, owner)
    scaling = builders.api_autoscale(sale, s)
    if kind == children.HPA and component == names.COMPONENT_API and scaling is not None:
        return builders.build_api_hpa(sale, ns, s, scaling, owner)
    return None


def replicas_of(deps: Deps, sale: SaleSpec, flashsale: Mapping[str, Any]) -> Replicas:
    """What this process decided for the sale's generation, else what the FlashSale's spec and status say."""
    generation = flashsale["metadata"].get("generation")
    decided = deps.intents.get(sale.id)
    if decided is not None and decided[0] == generation:
        return decided[1]
    status = flashsale.get("status") or {}
    workers = sale.worker_replicas
    scaled = (status.get("workers") or {}).get("desired")
    if sale.autoscale is not None and isinstance(scaled, int):
        workers = max(sale.autoscale.min, min(sale.autoscale.max, scaled))
    api_scaling = builders.api_autoscale(sale, deps.settings)
    api = sale.api_replicas if api_scaling is None else max(api_scaling.min, min(api_scaling.max, sale.api_replicas))
    return children.replicas_for(
        status.get("phase"),
        api=api,
        workers=workers,
        reserved=status.get("reserved"),
        api_autoscaled=api_scaling is not None,
    )


async def _read_flashsale(deps: Deps, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = await deps.custom.get_namespaced_custom_object(
            names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return obj


def _client(deps: Deps, kind: str) -> tuple[Any, Any]:
    """(create, patch) of the API for ``kind``; the generated client's signatures want its model classes,
    a manifest dict is what it sends."""
    if kind == children.DEPLOYMENT:
        return deps.apps.create_namespaced_deployment, deps.apps.patch_namespaced_deployment
    if kind == children.SERVICE:
        return deps.core.create_namespaced_service, deps.core.patch_namespaced_service
    if kind == children.HPA:
        hpa = deps.autoscaling
        return hpa.create_namespaced_horizontal_pod_autoscaler, hpa.patch_namespaced_horizontal_pod_autoscaler
    return deps.policy.create_namespaced_pod_disruption_budget, deps.policy.patch_namespaced_pod_disruption_budget


async def _create(deps: Deps, namespace: str, manifest: Mapping[str, Any]) -> None:
    create, _ = _client(deps, manifest["kind"])
    await create(namespace, manifest)


async def _patch(deps: Deps, namespace: str, name: str, patch: Mapping[str, Any], kind: str) -> None:
    _, patch_ = _client(deps, kind)
    await patch_(name, namespace, patch, _content_type=handlers.MERGE)


async def on_child_event(deps: Deps, event_type: str | None, child: Mapping[str, Any], emitter: Emitter) -> None:
    """One watch event of a child: keep its replica counts, put it back if it was deleted or edited, and
    report the sale's readiness when a Deployment's counts changed."""
    ident = children.sale_of(child)
    if ident is None:
        return
    name, component = ident
    kind = child.get("kind") or ""
    meta = child.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    sale_id = names.sale_id(namespace, name)
    changed = False
    if kind == children.DEPLOYMENT:
        key = (sale_id, component)
        before = deps.workloads.get(key)
        if event_type == DELETED:
            deps.workloads.pop(key, None)
        else:
            deps.workloads[key] = children.workload(child)
        changed = deps.workloads.get(key) != before
    flashsale = await _read_flashsale(deps, namespace, name)
    if flashsale is None or flashsale["metadata"].get("deletionTimestamp"):
        return  # the sale is gone or going: its children go with it
    try:
        sale = builders.parse_spec(name, flashsale.get("spec") or {}, namespace)
    except InvalidSpec:
        return  # reported by the sale's own handlers
    replicas = replicas_of(deps, sale, flashsale)
    want = wanted(deps, sale, kind, component, flashsale, replicas)
    if want is not None:
        # A Deployment scaled by its HPA is kept without its replicas (created again with them if deleted).
        kept = (
            children.unscaled(want)
            if kind == children.DEPLOYMENT and replicas.api_autoscaled and (component == names.COMPONENT_API)
            else want
        )
        await _keep(deps, sale, kept, child, event_type, emitter(flashsale), create=want)
    if changed:
        await report_readiness(deps, sale, flashsale)


async def _keep(
    deps: Deps, sale: SaleSpec, want: Mapping[str, Any], child: Mapping[str, Any], event_type: str | None,
    emit: Emit, create: Mapping[str, Any] | None = None,
) -> None:  # fmt: skip
    """Puts ``child`` back to ``want`` (or creates ``create``, default ``want``, if it was deleted)."""
    kind, name = want["kind"], want["metadata"]["name"]
    extra = {"sale": sale.id, "kind": kind, "object": name}
    try:
        if event_type == DELETED:
            try:
                await _create(deps, sale.namespace, create or want)
            except ApiException as exc:
                if exc.status != 409:  # 409: already created again (by ensure, or an earlier event)
                    raise
                return
            emit("Normal", "Recreated", f"{kind} {name} was deleted; created it again")
            log.warning("a deleted child was created again", extra=extra)
            return
        diff = children.changes(want, child)
        if not diff:
            return
        await _patch(deps, sale.namespace, name, children.restore_patch(want), kind)
        emit("Normal", "Restored", f"{kind} {name}: put back {', '.join(diff)}")
        log.warning("a child edited by hand was put back", extra={**extra, "changes": diff})
    except ApiException as exc:  # a terminating namespace refuses creates; report, the next event retries
        log.warning("could not keep a child", extra={**extra, "status": exc.status, "detail": exc.reason})


async def report_readiness(deps: Deps, sale: SaleSpec, flashsale: Mapping[str, Any]) -> None:
    """Writes status.api, status.workers and the Ready condition from the Deployments' counts."""
    try:
        seeded = await deps.stock.snapshot(sale.id) is not None
    except errors.SaleNotFound:
        seeded = False
    except errors.DependencyUnavailable:
        return  # the sale's loop reports it; readiness is written again on its next pass
    phase = (flashsale.get("status") or {}).get("phase")
    fields, cond = handlers.serving_status(deps, sale, phase, replicas_of(deps, sale, flashsale), seeded=seeded)
    await handlers.write_status(deps, sale.name, sale.namespace, fields, [cond])
