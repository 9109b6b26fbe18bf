"""The kopf edge of the operator: decorators and start-up only. Run with ``kopf run -m stampede_operator.main``.

Every handler here routes to a plain async function of ``handlers`` with what it needs, so the work is
testable without kopf. Start-up loads ``OperatorSettings`` from ``STAMPEDE_*`` variables, configures JSON
logs, kopf's peering (leader election with a distinct priority per replica), where kopf keeps its own
bookkeeping (annotations under ``stampede.dev``, since the CRD's structural schema would prune anything
kopf wrote into ``status``), and opens Redis, PostgreSQL and the Kubernetes client once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf
import prometheus_client
from kubernetes_asyncio import client as k8s

from stampede import logs, names
from stampede.settings import load
from stampede_operator.settings import OperatorSettings

from . import handlers, keeper, peering
from .handlers import Deps, SaleMemo

RESOURCE = (names.CRD_GROUP, names.CRD_VERSION, names.CRD_PLURAL)
HANDLER_BACKOFF_S = 10.0
KOPF_DEFAULT_PEERING = "default"
log = logging.getLogger(__name__)


def _deps(memo: kopf.Memo) -> Deps:
    deps: Deps = memo["deps"]
    return deps


def _ns(namespace: str | None) -> str:
    """The FlashSale's namespace: kopf passes None only for cluster-scoped resources, which it is not."""
    if namespace is None:
        raise kopf.PermanentError("a FlashSale is namespaced; kopf gave no namespace")
    return namespace


def _sale_memo(memo: kopf.Memo) -> SaleMemo:
    sale: SaleMemo | None = memo.get("sale")
    if sale is None:
        sale = memo["sale"] = SaleMemo()
    return sale


def _drop_kopf_settings(record: logging.LogRecord) -> bool:
    """kopf attaches its whole settings object to every per-object log record; JSON logs need the object
    reference it also attaches, not a dump of the settings on every line."""
    record.__dict__.pop("settings", None)
    return True


def _emitter(body: Mapping[str, Any]) -> handlers.Emit:
    """Posts Events about the FlashSale ``body`` (kopf's, or one read from the API by the keeper)."""

    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message[:1024])

    return emit


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours = load(OperatorSettings)
    logs.configure(ours.log_level, ours.log_json)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_kopf_settings)
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # Events come from handlers on purpose, not from every log line
    # Events say who wrote them: the operator (and which replica), not the framework it is built on.
    settings.posting.reporting_component = names.MANAGER
    settings.posting.reporting_instance = os.environ.get("HOSTNAME") or names.MANAGER
    settings.posting.event_name_prefix = f"{names.APP_NAME}-"
    # kopf's own flags (--peering, --priority, --standalone) win over the settings when given.
    if settings.peering.name == KOPF_DEFAULT_PEERING:
        settings.peering.name = ours.peering_name
    if not settings.peering.priority:
        settings.peering.priority = peering.priority_for(ours)
    settings.peering.lifetime = ours.peering_lifetime_s
    settings.peering.standalone = settings.peering.standalone or ours.standalone
    settings.peering.mandatory = not settings.peering.standalone
    settings.watching.server_timeout = 300
    memo["deps"] = deps = await handlers.open_deps(ours)
    if not settings.peering.clusterwide and not await _may_follow_namespaces(deps):
        # kopf lists and watches the cluster's namespaces to follow --namespace patterns; refused, it retries for
        # about a minute before it serves the exact names it was given, and serves no sale meanwhile. A namespaced
        # operator (the chart's default: a Role per watched namespace, no cluster-wide namespace access) would be
        # blind that long after every start, a failover included. Without the permission, serve the exact names.
        settings.scanning.disabled = True
    if ours.operator_metrics_port:
        try:
            prometheus_client.start_http_server(ours.operator_metrics_port)
        except OSError as exc:  # a port taken must not keep the sales unattended: run, and say so loudly
            log.error("metrics endpoint not started", extra={"port": ours.operator_metrics_port, "detail": str(exc)})
    log.info(
        "operator started",
        extra={
            "peering": settings.peering.name,
            "priority": settings.peering.priority,
            "standalone": settings.peering.standalone,
            "namespace_scanning": not settings.scanning.disabled,
        },
    )


async def _may_follow_namespaces(deps: Deps) -> bool:
    """Whether this operator may list and watch namespaces cluster-wide, asked of the API server (a
    SelfSubjectAccessReview, which every authenticated identity may create). Unanswered: assume it may, which is
    kopf's own default."""
    api = k8s.AuthorizationV1Api(deps.api)
    try:
        for verb in ("list", "watch"):
            review = await api.create_self_subject_access_review(
                k8s.V1SelfSubjectAccessReview(
                    spec=k8s.V1SelfSubjectAccessReviewSpec(
                        resource_attributes=k8s.V1ResourceAttributes(verb=verb, resource="namespaces")
                    )
                )
            )
            if not review.status.allowed:
                return False
    except Exception as exc:  # a question that cannot be answered must not stop the operator: kopf asks again
        log.warning("could not ask whether namespaces may be listed; kopf will try", extra={"detail": str(exc)})
    return True


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "deps" in memo:
        await handlers.close_deps(_deps(memo))


# An unexpected error (not DependencyUnavailable, which handlers turn into TemporaryError) is retried after
# HANDLER_BACKOFF_S rather than kopf's default minute: a sale waits on it.
@kopf.on.create(*RESOURCE, backoff=HANDLER_BACKOFF_S)
@kopf.on.resume(*RESOURCE, backoff=HANDLER_BACKOFF_S)
@kopf.on.update(*RESOURCE, field="spec", backoff=HANDLER_BACKOFF_S)
async def ensure(body: kopf.Body, name: str, namespace: str | None, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    await handlers.ensure(
        _deps(memo), _sale_memo(memo), body=body, name=name, namespace=_ns(namespace), spec=spec, emit=_emitter(body)
    )


@kopf.daemon(*RESOURCE, cancellation_timeout=10.0, initial_delay=0.5)
async def sale_loop(
    body: kopf.Body, name: str, namespace: str | None, spec: kopf.Spec, memo: kopf.Memo,
    stopped: kopf.DaemonStopped, **_: Any,
) -> None:  # fmt: skip
    await handlers.run_sale(
        _deps(memo), _sale_memo(memo), name=name, namespace=_ns(namespace), spec=spec, stopped=stopped,
        emit=_emitter(body), body=body,
    )  # fmt: skip


@kopf.on.delete(*RESOURCE, backoff=HANDLER_BACKOFF_S)
async def finalize(body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await handlers.finalize(_deps(memo), _sale_memo(memo), name=name, namespace=_ns(namespace), emit=_emitter(body))


# The sale's children: kept as built (a deleted one created again, an edited one put back) and their replica
# counts reported in the sale's status. Only objects labelled as the operator's are handled.
OWNED = {names.LABEL_MANAGED_BY: names.MANAGER}


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("", "v1", "services", labels=OWNED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OWNED)
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=OWNED)
async def child_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    await keeper.on_child_event(_deps(memo), event.get("type"), event["object"], _emitter)
