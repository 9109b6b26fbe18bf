"""Workers scaled by the queue: ``spec.workers.autoscale: {min, max, targetLagMs}``.

Each pass of the sale's loop reads the sale's settle backlog from the ledger (pending rows and the age of the
oldest, through the partial index of pending rows) and decides the worker replicas:

- the oldest pending row has waited longer than ``targetLagMs``: scale up at once, in proportion to how far
  over the target the lag is (at least one more), up to ``max``;
- nothing is pending: scale down to ``min``, but only once ``STAMPEDE_AUTOSCALE_COOLDOWN_S`` has passed since
  the last change, so a sale between two bursts keeps its workers;
- otherwise: hold.

Each change is an Event (``WorkersScaled``) and ``status.workers.desired`` / ``status.workers.reason``. This
runs in the operator, not in an HPA or KEDA, so a cluster without either still scales; the decision reads the
ledger the operator already reads, and needs no metrics pipeline in between.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from stampede.ledger import Backlog

from .builders import Autoscale, SaleSpec

if TYPE_CHECKING:
    from .handlers import Deps, Emit, SaleMemo


def decide(
    current: int, backlog: Backlog, spec: Autoscale, *, since_change_s: float, cooldown_s: float
) -> tuple[int, str]:
    """(worker replicas, why) for ``backlog`` with ``current`` replicas running."""
    current = max(spec.min, min(spec.max, current))
    if backlog.oldest_ms > spec.target_lag_ms:
        want = max(current + 1, math.ceil(max(current, 1) * backlog.oldest_ms / spec.target_lag_ms))
        want = min(spec.max, want)
        why = (
            f"settle lag {backlog.oldest_ms} ms over the target {spec.target_lag_ms} ms "
            f"({backlog.rows} reservations pending)"
        )
        return (want, f"scaled up: {why}") if want > current else (current, f"at max {spec.max}: {why}")
    if backlog.rows == 0 and current > spec.min:
        if since_change_s < cooldown_s:
            return current, f"backlog drained; cooling down ({since_change_s:.0f}/{cooldown_s:.0f} s)"
        return spec.min, f"scaled down: backlog drained for the cool-down ({cooldown_s:.0f} s)"
    return current, ""


def step(deps: Deps, memo: SaleMemo, sale: SaleSpec, backlog: Backlog, emit: Emit) -> None:
    """One autoscaling decision for the sale on its ``backlog`` (read by the pass through
    ``Ledger.settle_backlog``); the decision is kept in ``memo`` for ``decide_replicas``."""
    spec = sale.autoscale
    assert spec is not None
    now = time.monotonic()
    current = memo.autoscaled if memo.autoscaled is not None else spec.min
    since = now - memo.autoscaled_at if memo.autoscaled_at else math.inf
    want, why = decide(current, backlog, spec, since_change_s=since, cooldown_s=deps.settings.autoscale_cooldown_s)
    if memo.autoscaled is None or want != current:
        memo.autoscaled = want
        if want != current:
            memo.autoscaled_at = now
            memo.autoscale_reason = why
            emit("Normal", "WorkersScaled", f"workers {current} -> {want}: {why}")
        elif not memo.autoscale_reason:
            memo.autoscale_reason = f"autoscale between {spec.min} and {spec.max}, target lag {spec.target_lag_ms} ms"
