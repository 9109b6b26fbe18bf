"""The operator's work, as plain async functions that ``main.py`` routes kopf's events to.

- ``ensure``: create/resume/spec update of a FlashSale: ledger sale row, Redis seed or restock by delta,
  the sale's Deployments and Service, status.
- ``run_sale``: the sale's long-lived loop (a kopf daemon): moves the phase with the window (opening and
  closing the gate in Redis), runs the reconciler every ``spec.reconcile.intervalSeconds``, writes status,
  emits Events. It never dies on an error: it reports it and tries again next tick.
- ``finalize``: deletion: close the sale, wait (bounded) for its queue to drain, compensate what is still
  pending, remove its Redis keys; the ledger keeps every row.

Errors drive flow: a dependency that is down raises ``kopf.TemporaryError`` (kopf retries with the delay);
a spec that cannot run is reported as ``Ready=False`` with its reason and an Event, and not retried (kopf
calls ``ensure`` again when the spec changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from stampede import compensation, errors, names, restore
from stampede.ledger import Ledger
from stampede.stock import SeedResult, StockEngine
from stampede.vocabulary import Reason, SalePhase
from stampede_operator import metrics
from stampede_operator.settings import OperatorSettings

from . import autoscale, builders, children, reconcile, waitroom
from .builders import InvalidSpec, SaleSpec
from .children import Replicas, Workload
from .status import (
    FALSE,
    TRUE,
    Phase,
    get_condition,
    phase_for,
    rfc3339,
    set_condition,
    set_phase,
)

log = logging.getLogger(__name__)

# emit(type, reason, message): posts a Kubernetes Event about the FlashSale being handled.
Emit = Callable[[str, str, str], None]

RETRY_DELAY_S = 5.0
STATUS_WRITE_ATTEMPTS = 5
ENSURE_WAIT_S = 0.5
# A pass that changes nothing in the status writes it again (its lastReconcileTime) only this often: an idle
# sale costs no API write, and no watch event for every replica, on each pass. At 60 s the refresh of 100 idle
# sales was still a third of the operator's idle CPU (GET + PATCH + the watch event each).
STATUS_REFRESH_S = 300.0
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


@dataclass
class Deps:
    """The collaborators every handler shares, opened once at start-up."""

    settings: OperatorSettings
    stock: StockEngine
    ledger: Ledger
    api: k8s.ApiClient
    # (sale id, component) -> the Deployment's replica counts, kept by the children's watch (stampede_operator.keeper).
    workloads: dict[tuple[str, str], Workload] = field(default_factory=dict)
    # sale id -> (FlashSale generation, the replicas this process decided for it): what the keeper restores.
    intents: dict[str, tuple[int | None, Replicas]] = field(default_factory=dict)

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api)

    @property
    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.api)

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def policy(self) -> k8s.PolicyV1Api:
        return k8s.PolicyV1Api(self.api)

    @property
    def autoscaling(self) -> k8s.AutoscalingV2Api:
        return k8s.AutoscalingV2Api(self.api)


@dataclass
class SaleMemo:
    """Per-sale state kept between a sale's handler calls and daemon ticks (in kopf's per-object memo)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    phase: str | None = None
    drift_streak: int = 0
    invalid: str | None = None  # the last InvalidSpec message reported, so it is reported once
    deleting: bool = False  # set by finalize: the loop must not rebuild what deletion removes
    ensured: bool = False  # set by ensure: the loop starts once the sale has been seeded by this process
    passes: reconcile.PassState = field(default_factory=reconcile.PassState)  # carried between reconcile passes
    # What the loop last wrote into the status (without its time) and when (monotonic); None: write next time.
    status_written: tuple[str, float] | None = None
    autoscaled: int | None = None  # the autoscaler's last decision of worker replicas (None: none yet)
    autoscale_reason: str = ""  # why, in a sentence (status.workers.reason)
    autoscaled_at: float = 0.0  # monotonic time of the last scale change (the cool-down counts from it)
    done: bool = False  # Ended with nothing pending at the last pass
    series_dropped: bool = False  # the sale's metric series were removed since it was done


async def open_deps(settings: OperatorSettings) -> Deps:
    from kubernetes_asyncio import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]  # untyped upstream
    except config.ConfigException:
        await config.load_kube_config()
    stock = StockEngine.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        ack_replicas=settings.ack_replicas,
        ack_timeout_ms=settings.redis_ack_timeout_ms,
    )
    ledger = await Ledger.open(settings)
    return Deps(settings, stock, ledger, k8s.ApiClient())


async def close_deps(deps: Deps) -> None:
    await deps.stock.close()
    await deps.ledger.close()
    await deps.api.close()


# --- status ------------------------------------------------------------------------------------------


async def write_status(
    deps: Deps,
    name: str,
    namespace: str,
    fields: Mapping[str, Any],
    conditions: Sequence[tuple[str, str, str, str]] = (),
) -> None:
    """Merges ``fields`` into the FlashSale's status and sets each (type, status, reason, message)
    condition, keeping transition times of unchanged ones. Conditions are a list, which a merge patch
    replaces whole, so the patch is computed from a fresh read and carries its resourceVersion: a write
    in between (another replica during a hand-over) makes it fail with 409 and it is computed again."""
    for attempt in range(STATUS_WRITE_ATTEMPTS):
        try:
            obj = await deps.custom.get_namespaced_custom_object(
                names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise
        meta = obj["metadata"]
        conds = (obj.get("status") or {}).get("conditions") or []
        for type_, status, reason, message in conditions:
            conds = set_condition(conds, type_, status, reason, message, generation=meta.get("generation"))
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": {**fields, "conditions": conds}}
        try:
            await deps.custom.patch_namespaced_custom_object_status(
                # _content_type goes through **kwargs; the generated signature does not list it.
                names.CRD_GROUP,
                names.CRD_VERSION,
                namespace,
                names.CRD_PLURAL,
                name,
                body,
                _content_type=MERGE,  # type: ignore[call-arg]
            )
            return
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status != 409 or attempt == STATUS_WRITE_ATTEMPTS - 1:
                raise


async def report_invalid(deps: Deps, memo: SaleMemo, name: str, namespace: str, exc: InvalidSpec, emit: Emit) -> None:
    """Ready=False with the reason, and one Warning Event per distinct problem."""
    memo.status_written = None
    await write_status(
        deps,
        name,
        namespace,
        {"phase": SalePhase.FAILED, "phaseReason": exc.message},
        [(names.COND_READY, FALSE, exc.reason, exc.message)],
    )
    if memo.invalid != exc.message:
        emit("Warning", exc.reason, exc.message)
        memo.invalid = exc.message
    log.warning(
        "invalid FlashSale spec", extra={"sale": f"{namespace}/{name}", "reason": exc.reason, "detail": exc.message}
    )


# --- Kubernetes objects -------------------------------------------------------------------------------


async def _ensure_object(
    create: Any,
    patch: Any,
    namespace: str,
    manifest: dict[str, Any],
    existing: dict[str, Any] | None = None,
    *,
    merge: bool = False,
) -> None:
    """Creates the object, or brings an existing one to ``existing`` (default: ``manifest``) by a strategic merge
    patch (a JSON merge patch with ``merge``: for kinds without strategic merge, such as the HPA, whose lists are
    then replaced whole)."""
    name = manifest["metadata"]["name"]
    try:
        await create(namespace, manifest)
    except ApiException as exc:
        if exc.status != 409:
            raise
        await patch(name, namespace, existing or manifest, _content_type=MERGE if merge else STRATEGIC)


async def ensure_workloads(
    deps: Deps, spec: SaleSpec, namespace: str, owner: Mapping[str, Any], replicas: Replicas
) -> None:
    """The sale's API and worker Deployments (with ``replicas``), its API Service, its API PDB and, with
    ``spec.api.autoscale`` (or the chart's default), its API HPA; an HPA the sale no longer asks for is deleted."""
    s = deps.settings
    apps, core, policy = deps.apps, deps.core, deps.policy
    api = builders.build_api_deployment(spec, namespace, s, owner, replicas.api)
    # An HPA owns the replicas of an existing Deployment: a new one starts with ``replicas.api``, an existing one
    # keeps what the HPA chose.
    await _ensure_object(
        apps.create_namespaced_deployment,
        apps.patch_namespaced_deployment,
        namespace,
        api,
        children.unscaled(api) if replicas.api_autoscaled else None,
    )
    await _ensure_object(
        apps.create_namespaced_deployment,
        apps.patch_namespaced_deployment,
        namespace,
        builders.build_worker_deployment(spec, namespace, s, owner, replicas.workers),
    )
    await _ensure_object(
        core.create_namespaced_service,
        core.patch_namespaced_service,
        namespace,
        builders.build_api_service(spec, namespace, s, owner),
    )
    if s.api_pdb_max_unavailable:
        await _ensure_object(
            policy.create_namespaced_pod_disruption_budget,
            policy.patch_namespaced_pod_disruption_budget,
            namespace,
            builders.build_api_pdb(spec, namespace, s, owner),
        )
    hpa = deps.autoscaling
    scaling = builders.api_autoscale(spec, s)
    if scaling is not None:
        await _ensure_object(
            hpa.create_namespaced_horizontal_pod_autoscaler,
            hpa.patch_namespaced_horizontal_pod_autoscaler,
            namespace,
            builders.build_api_hpa(spec, namespace, s, scaling, owner),
            merge=True,
        )
    else:
        try:
            await hpa.delete_namespaced_horizontal_pod_autoscaler(
                names.component_name(spec.name, names.COMPONENT_API), namespace
            )
            log.info("API autoscaler removed", extra={"sale": spec.id})
        except ApiException as exc:
            if exc.status != 404:
                raise


def decide_replicas(
    deps: Deps, memo: SaleMemo, sale: SaleSpec, phase: str, reserved: int | None, generation: int | None
) -> Replicas:
    """The replicas the sale's Deployments should run now (spec or autoscaler, and phase), remembered for the
    keeper so it restores this decision and not the spec's number."""
    workers, reason = sale.worker_replicas, ""
    api_scaling = builders.api_autoscale(sale, deps.settings)
    api = sale.api_replicas if api_scaling is None else max(api_scaling.min, min(api_scaling.max, sale.api_replicas))
    if sale.autoscale is not None:
        workers = memo.autoscaled if memo.autoscaled is not None else sale.autoscale.min
        workers = max(sale.autoscale.min, min(sale.autoscale.max, workers))
        reason = memo.autoscale_reason or f"autoscale: starting at min {sale.autoscale.min}"
    replicas = children.replicas_for(
        phase,
        api=api,
        workers=workers,
        reserved=reserved,
        workers_reason=reason,
        api_autoscaled=api_scaling is not None,
    )
    deps.intents[sale.id] = (generation, replicas)
    return replicas


async def apply_replicas(deps: Deps, sale: SaleSpec, replicas: Replicas) -> None:
    """Scales a Deployment whose replicas (as the watch last saw them) differ from the decision."""
    for component, n in ((names.COMPONENT_API, replicas.api), (names.COMPONENT_WORKER, replicas.workers)):
        seen = deps.workloads.get((sale.id, component))
        if seen is None or seen.desired == n or (component == names.COMPONENT_API and replicas.api_autoscaled):
            continue  # the API's HPA, when it has one, sets its replicas
        patch: Any = deps.apps.patch_namespaced_deployment  # the generated signature omits _content_type
        try:
            await patch(
                names.component_name(sale.name, component),
                sale.namespace,
                {"spec": {"replicas": n}},
                _content_type=MERGE,
            )
        except ApiException as exc:
            if exc.status != 404:  # 404: deleted; the keeper creates it again with these replicas
                raise
        log.info("scaled", extra={"sale": sale.id, "component": component, "from": seen.desired, "to": n})


def serving_status(
    deps: Deps, sale: SaleSpec, phase: str | None, replicas: Replicas, *, seeded: bool
) -> tuple[dict[str, Any], tuple[str, str, str, str]]:
    """status.api / status.workers (the decided replicas; ready and available as the Deployments report them)
    and the Ready condition."""
    api = deps.workloads.get((sale.id, names.COMPONENT_API))
    workers = deps.workloads.get((sale.id, names.COMPONENT_WORKER))
    api_desired = api.desired if replicas.api_autoscaled and api is not None else replicas.api  # the HPA's choice
    fields = {
        "api": {"desired": api_desired, "ready": api.ready if api else 0, "available": api.available if api else 0},
        "workers": {
            "desired": replicas.workers,
            "ready": workers.ready if workers else 0,
            "available": workers.available if workers else 0,
            "reason": replicas.workers_reason[:1000],
        },
    }
    status, reason, message = children.readiness(phase, api, workers, seeded=seeded)
    return fields, (names.COND_READY, status, reason, message)


# --- create / resume / update ---------------------------------------------------------------------------


async def seed_or_rebuild(
    deps: Deps, sale: SaleSpec, phase: Phase, *, known: bool
) -> tuple[SeedResult | None, errors.RestockBelowSold | None, int]:
    """Seeds the sale or restocks it by delta; returns (seed result, refusal, units in Redis).

    When Redis does not know the sale (``known`` False) but the ledger does, Redis lost it: seeding afresh
    would sell again what is sold, so the sale is restored from the ledger first (``stampede.restore``:
    atomic, one at a time), then seeded as usual, which restocks by delta to the spec."""
    name = sale.id
    try:
        if not known and (await restore.restore_sale(deps.ledger, deps.stock, name)).outcome == restore.BUSY:
            raise errors.SaleRestoring(name)  # another process restores it right now: retry shortly
        seeded = await deps.stock.seed(name, sale.sale_config, open=phase.open)
        return seeded, None, seeded.total
    except errors.RestockBelowSold as refused:
        return None, refused, (await deps.stock.snapshot(name)).total


def _now() -> datetime:
    return datetime.now(UTC)


async def ensure(
    deps: Deps,
    memo: SaleMemo,
    *,
    body: Mapping[str, Any],
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    emit: Emit,
) -> None:
    """Brings the sale to its spec: ledger row, Redis seed/restock, workloads, status."""
    try:
        sale = builders.parse_spec(name, spec, namespace)
    except InvalidSpec as exc:
        await report_invalid(deps, memo, name, namespace, exc, emit)
        return
    memo.invalid = None
    extra = {"sale": sale.id}
    try:
        async with memo.lock:
            snap, remaining, reserved = await reconcile.phase_counts(deps.ledger, deps.stock, sale)
            phase = phase_for(_now(), sale.window_start, sale.window_end, remaining=remaining, reserved=reserved)
            seeded, refused, total = await seed_or_rebuild(deps, sale, phase, known=snap is not None)
            await deps.ledger.ensure_sale(
                sale.id,
                sku=sale.sku,
                stock=total,
                per_user_limit=sale.per_user_limit,
                window_start=sale.window_start,
                window_end=sale.window_end,
                buyer_rate=float(sale.buyer_rate),
                buyer_burst=sale.buyer_burst,
                ip_rate=float(sale.ip_rate),
                ip_burst=sale.ip_burst,
                hold_seconds=sale.hold_seconds,
                buckets=sale.stock_buckets,
            )
            await waitroom.apply(deps.stock, sale)
            if sale.autoscale is not None and memo.autoscaled is None:  # a restart resumes the last decision
                prior = ((body.get("status") or {}).get("workers") or {}).get("desired")
                if isinstance(prior, int):
                    memo.autoscaled, memo.autoscaled_at = prior, time.monotonic()
            replicas = decide_replicas(deps, memo, sale, phase.phase, reserved, body["metadata"].get("generation"))
            await ensure_workloads(deps, sale, namespace, body, replicas)

            conds: list[tuple[str, str, str, str]] = []
            if refused is not None:
                msg = f"stock {refused.requested} is below the {refused.sold} units already sold; kept {total}"
                conds.append((names.COND_SEEDED, FALSE, "RestockBelowSold", msg))
                emit("Warning", "RestockRefused", msg)
                log.warning("restock refused", extra={**extra, "requested": refused.requested, "sold": refused.sold})
            else:
                assert seeded is not None
                conds.append((names.COND_SEEDED, TRUE, "Seeded", f"{seeded.total} units in Redis"))
                if seeded.outcome == "restocked":
                    emit("Normal", "Restocked", f"stock is now {seeded.total} ({seeded.remaining} remaining)")
                    log.info("restocked", extra={**extra, "total": seeded.total})
                elif seeded.outcome == "created":
                    emit("Normal", "Seeded", f"seeded {seeded.total} units")
                    log.info("seeded", extra={**extra, "total": seeded.total})
            serving, ready = serving_status(deps, sale, phase.phase, replicas, seeded=True)
            conds.append(ready)
            fields = set_phase(
                {"stock": total, "observedGeneration": body["metadata"].get("generation"), **serving}, phase
            )
            await write_status(deps, name, namespace, fields, conds)
            memo.status_written = None
            memo.phase = phase.phase
            memo.ensured = True
    except errors.DependencyUnavailable as exc:
        log.warning("dependency unavailable, will retry", extra={**extra, "detail": str(exc)})
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from exc


# --- the sale's loop ---------------------------------------------------------------------------------------


async def tick(
    deps: Deps,
    memo: SaleMemo,
    *,
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    emit: Emit,
    generation: int | None = None,
) -> float:
    """One pass of the sale's loop. Returns seconds until the next one."""
    try:
        sale = builders.parse_spec(name, spec, namespace)
    except InvalidSpec as exc:
        await report_invalid(deps, memo, name, namespace, exc, emit)
        return 10.0
    # Up to a tenth sooner than asked, at random: sales created together do not keep reconciling in step,
    # contending for the same connections at the same instant.
    interval = float(sale.interval_s) * random.uniform(0.9, 1.0)
    sale_id = sale.id
    extra = {"sale": sale_id}
    try:
        async with memo.lock:
            if memo.deleting:
                return interval
            if not memo.ensured:
                return ENSURE_WAIT_S  # create/resume has not seeded the sale yet: nothing to reconcile
            # While Redis lost the sale, the phase follows the ledger (the reconciler restores it below).
            snap, remaining, reserved = await reconcile.phase_counts(deps.ledger, deps.stock, sale)
            now = _now()
            phase = phase_for(now, sale.window_start, sale.window_end, remaining=remaining, reserved=reserved)
            if snap is not None and snap.open != phase.open:
                await deps.stock.set_open(sale_id, phase.open)
            done = phase.phase == SalePhase.ENDED and memo.done  # ended and settled at the last pass: series dropped
            outcome = await reconcile.reconcile_once(
                deps.ledger,
                deps.stock,
                sale,
                open_=phase.open,
                batch_max=deps.settings.reconcile_batch_max,
                state=memo.passes,
                record=not done,
            )
            if outcome.snapshot is not None and outcome.snapshot.open != phase.open:
                await deps.stock.set_open(sale_id, phase.open)  # a rebuild or a restart may have reset it
            await waitroom.apply(deps.stock, sale)  # back within a pass if Redis lost it
            queue = await waitroom.report(deps.stock, sale)
            pending = outcome.tally.pending if outcome.snapshot is None else outcome.snapshot.pending
            backlog = await deps.ledger.settle_backlog(sale_id)
            if not done:
                metrics.OPERATOR_SETTLE_BACKLOG.labels(sale_id).set(backlog.rows)
                metrics.OPERATOR_SETTLE_OLDEST.labels(sale_id).set(backlog.oldest_ms / 1000)
            _drop_series_once_done(memo, sale_id, phase.phase == SalePhase.ENDED and pending == 0, outcome.drift)
            if sale.autoscale is not None:
                autoscale.step(deps, memo, sale, backlog, emit)
            replicas = decide_replicas(deps, memo, sale, phase.phase, pending, generation)
            await _report(deps, memo, sale, namespace, phase, outcome, emit, replicas, backlog.oldest_ms, queue)
            await apply_replicas(deps, sale, replicas)
    except errors.DependencyUnavailable as exc:
        metrics.OPERATOR_RECONCILE_ERRORS.labels(sale_id, exc.code).inc()
        memo.status_written = None
        log.warning("reconcile postponed: dependency unavailable", extra={**extra, "detail": str(exc)})
        await _safe_status(deps, name, namespace, "DependencyUnavailable", str(exc))
        return min(interval, RETRY_DELAY_S)
    except Exception as exc:  # the loop must outlive any bug: report and try again next tick
        metrics.OPERATOR_RECONCILE_ERRORS.labels(sale_id, type(exc).__name__).inc()
        memo.status_written = None
        log.exception("reconcile failed", extra=extra)
        await _safe_status(deps, name, namespace, "ReconcileError", f"{type(exc).__name__}: {exc}")
        return interval
    if phase.next_change is not None:
        interval = max(0.2, min(interval, (phase.next_change - _now()).total_seconds() + 0.05))
    return interval


def _drop_series_once_done(memo: SaleMemo, sale_id: str, done: bool, drift: int) -> None:
    """An ended sale with nothing left to settle has no figure that moves: its series are dropped, so a
    scrape carries only the sales that run. A drift found later is still exported (its alert must fire)."""
    memo.done = done
    if not done:
        memo.series_dropped = False
    elif drift:
        metrics.OPERATOR_DRIFT.labels(sale_id).set(drift)
        memo.series_dropped = False
    elif not memo.series_dropped:
        metrics.forget_sale(sale_id)
        memo.series_dropped = True


async def _safe_status(deps: Deps, name: str, namespace: str, reason: str, message: str) -> None:
    try:
        await write_status(deps, name, namespace, {}, [(names.COND_RECONCILED, FALSE, reason, message[:1000])])
    except Exception:
        log.exception("could not write status", extra={"sale": f"{namespace}/{name}"})


async def _report(
    deps: Deps,
    memo: SaleMemo,
    sale: SaleSpec,
    namespace: str,
    phase: Phase,
    outcome: reconcile.Outcome,
    emit: Emit,
    replicas: Replicas,
    lag_ms: int = 0,
    queue: Mapping[str, Any] | None = None,
) -> None:
    name = sale.name
    extra = {"sale": sale.id}
    snap = outcome.snapshot
    fields: dict[str, Any] = set_phase(
        {
            "reserved": outcome.tally.pending if snap is None else snap.pending,
            "confirmed": outcome.tally.taken if snap is None else snap.confirmed,
            "compensated": outcome.tally.compensated,
            "drift": outcome.drift,
            "settleLagMs": lag_ms,
            "lastReconcileTime": rfc3339(_now()),
        },
        phase,
    )
    if sale.hold_seconds or outcome.tally.held or outcome.tally.paid or outcome.tally.expired:
        fields.update(held=outcome.tally.held, paid=outcome.tally.paid, expired=outcome.tally.expired)
    if snap is not None:
        fields["remaining"] = snap.remaining
        fields["stock"] = snap.total
    if queue is not None:
        fields["queue"] = dict(queue)
    serving, ready = serving_status(deps, sale, phase.phase, replicas, seeded=snap is not None)
    fields.update(serving)
    conds: list[tuple[str, str, str, str]] = [ready]
    if outcome.healed:
        summary = ", ".join(f"{kind} {n}" for kind, n in sorted(outcome.healed.items()))
        conds.append((names.COND_RECONCILED, TRUE, "Healed", f"healed: {summary}"))
        emit("Normal", "Healed", f"reconciler healed: {summary}")
        log.warning("reconciler healed the sale", extra={**extra, "healed": outcome.healed})
    else:
        conds.append((names.COND_RECONCILED, TRUE, "InSync", "Redis agrees with the ledger"))
    memo.drift_streak = memo.drift_streak + 1 if outcome.drift else 0
    if outcome.drift and memo.drift_streak >= deps.settings.drift_confirmations:
        sample = "; ".join(f"{u.reservation_id}: {u.detail}" for u in outcome.unexplained[:3])
        msg = f"drift {outcome.drift} units" + (f" ({sample})" if sample else "")
        prev = get_condition(await _conditions(deps, name, namespace), names.COND_DRIFTED)
        if prev is None or prev.get("status") != TRUE:
            emit("Warning", "Drifted", msg)
            log.error("drift the reconciler cannot explain", extra={**extra, "drift": outcome.drift})
        conds.append((names.COND_DRIFTED, TRUE, "Unexplained", msg[:1000]))
    elif not outcome.drift:
        conds.append((names.COND_DRIFTED, FALSE, "NoDrift", "Redis and the ledger agree"))
    if memo.phase != phase.phase:
        if memo.phase is not None:
            emit("Normal", "PhaseChanged", f"{memo.phase} -> {phase.phase}: {phase.reason}")
        log.info("phase", extra={**extra, "phase": phase.phase})
        memo.phase = phase.phase
    written = json.dumps([{k: v for k, v in fields.items() if k != "lastReconcileTime"}, conds], sort_keys=True)
    now = time.monotonic()
    last = memo.status_written
    if last is not None and last[0] == written and now - last[1] < STATUS_REFRESH_S:
        return  # nothing changed: no write, no watch event
    await write_status(deps, name, namespace, fields, conds)
    memo.status_written = (written, now)


async def _conditions(deps: Deps, name: str, namespace: str) -> list[Mapping[str, Any]]:
    try:
        obj = await deps.custom.get_namespaced_custom_object(
            names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL, name
        )
    except ApiException:
        return []
    return list((obj.get("status") or {}).get("conditions") or [])


async def run_sale(
    deps: Deps,
    memo: SaleMemo,
    *,
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    stopped: Any,
    emit: Emit,
    body: Mapping[str, Any] | None = None,
) -> None:
    """The sale's loop until kopf stops it (deletion, operator pause or exit). ``spec`` and ``body`` are kopf's
    live views, so a changed interval or window takes effect at the next tick."""
    while not stopped:
        generation = None if body is None else body["metadata"].get("generation")
        delay = await tick(deps, memo, name=name, namespace=namespace, spec=spec, emit=emit, generation=generation)
        await stopped.wait(delay)


# --- delete ----------------------------------------------------------------------------------------------


async def finalize(deps: Deps, memo: SaleMemo, *, name: str, namespace: str, emit: Emit) -> None:
    """Closes the sale, waits up to ``delete_drain_timeout_s`` for its jobs, compensates what is still
    pending (reason ``sale_deleted``), removes its Redis keys. The ledger keeps every row. Only this
    namespace's sale of that name is touched."""
    sale_id = names.sale_id(namespace, name)
    extra = {"sale": sale_id}
    try:
        async with memo.lock:
            memo.deleting = True
            await deps.ledger.mark_sale_deleted(sale_id)  # from now on nobody restores it in Redis
            with contextlib.suppress(errors.SaleNotFound):
                await deps.stock.set_open(sale_id, False)
            deadline = time.monotonic() + deps.settings.delete_drain_timeout_s
            while (left := await deps.ledger.unfinished_jobs(sale_id)) and time.monotonic() < deadline:
                log.info("waiting for the sale's jobs to drain", extra={**extra, "jobs": left})
                await asyncio.sleep(1.0)
            pending = await deps.ledger.pending_ids(sale_id)
            if pending:
                done = await compensation.compensate(
                    deps.ledger, deps.stock, pending, Reason.SALE_DELETED, sale=sale_id
                )
                won = done.won
                metrics.OPERATOR_COMPENSATIONS.labels(sale_id, Reason.SALE_DELETED).inc(len(won))
                emit("Warning", "CompensatedOnDelete", f"{len(won)} pending reservations compensated")
                log.warning("compensated pending reservations of a deleted sale", extra={**extra, "count": len(won)})
            deleted = await deps.stock.delete(sale_id)
            log.info("sale removed from Redis; the ledger keeps its rows", extra={**extra, "keys": deleted})
    except errors.DependencyUnavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from exc
    deps.intents.pop(sale_id, None)
    for component in (names.COMPONENT_API, names.COMPONENT_WORKER):
        deps.workloads.pop((sale_id, component), None)
    metrics.forget_sale(sale_id)  # every sale-labelled series, not only drift
