"""Prometheus metric definitions, in one place so names and labels never drift between processes.

Each process imports only its section. The API runs under gunicorn with several worker processes, so it
uses prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR); definitions here are plain and
work in both modes.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE = "stampede"

# --- worker --------------------------------------------------------------------------------------
# Labels are bounded: `outcome` and `reason` come from fixed sets in stampede_worker.settle.

WORKER_JOBS = Counter(
    "stampede_worker_jobs_total",
    "settle_batch jobs run, by outcome (succeeded, retried, failed)",
    ["outcome"],
)
WORKER_RESERVATIONS = Counter(
    "stampede_worker_reservations_total",
    "reservations settled by this worker, by outcome (confirmed, compensated)",
    ["outcome"],
)
WORKER_COMPENSATED = Counter(
    "stampede_worker_compensated_total",
    "reservations compensated (stock returned), by reason",
    ["reason"],
)
WORKER_REPLAYED = Counter(
    "stampede_worker_replayed_total",
    "reservations already final in the ledger whose outcome was replayed to Redis (redelivered job)",
)
WORKER_DISAGREEMENTS = Counter(
    "stampede_worker_redis_disagreements_total",
    "ledger outcomes Redis refused (left for the reconciler), by what Redis answered",
    ["answer"],
)
WORKER_JOB_SECONDS = Histogram(
    "stampede_worker_job_seconds",
    "time to run one settle_batch job",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
WORKER_CLAIM_SIZE = Histogram(
    "stampede_worker_claim_size",
    "pending rows one claim of a coalesced settle job took (grows with load, up to the claim limit)",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
WORKER_SETTLE_LAG = Histogram(
    "stampede_worker_settle_lag_seconds",
    "ledger write (the 202) to settled, per reservation",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
WORKER_QUEUE_DEPTH = Gauge(
    "stampede_worker_queue_depth",
    "settle jobs in the queue by status (todo, doing), as last read by this worker",
    ["status"],
)
WORKER_HOLDS = Counter(
    "stampede_worker_holds_total",
    "checkout holds by what this worker did to them: held (a reservation settled as a hold), expired (moved "
    "held -> expired by the sweep), returned (units given back in Redis after an expiry, including one a dead "
    "sweeper left)",
    ["outcome"],
)
WORKER_HOLD_SWEEP_SECONDS = Histogram(
    "stampede_worker_hold_sweep_seconds",
    "time of one expiry sweep (ledger, then Redis), by the rows it moved",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
WORKER_STALLED_RECOVERED = Counter(
    "stampede_worker_stalled_recovered_total",
    "jobs of dead workers put back to todo",
)

# --- API -----------------------------------------------------------------------------------------
# Labels are bounded: `route` is the route template (never the raw path), `sale` comes only from sales
# that exist (an unknown sale is refused before any sale-labelled metric is touched).

API_REQUESTS = Counter(
    "stampede_api_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
API_LATENCY = Histogram(
    "stampede_api_request_duration_seconds",
    "HTTP request latency from first byte read to response ready, by route template and method",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
API_RESERVATIONS = Counter(
    "stampede_api_reservations_total",
    "reservation attempts by outcome (accepted, replayed, sold_out, limit_reached, sale_closed, rate_limited, "
    "idempotency_conflict, not_admitted, unavailable)",
    ["sale", "outcome"],
)
API_STOCK_REMAINING = Gauge(
    "stampede_api_stock_remaining",
    "units left in the sale as last seen by any API process",
    ["sale"],
    multiprocess_mode="mostrecent",
)
API_DEFER_FAILURES = Counter(
    "stampede_api_defer_failures_total",
    "reservations whose durable batch write failed (released, answered 503)",
    ["sale"],
)
API_BATCH_SIZE = Histogram(
    "stampede_api_batch_size",
    "reservations per ledger transaction (micro-batch)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
API_BATCH_SECONDS = Histogram(
    "stampede_api_batch_seconds",
    "time of one ledger transaction (pending rows + settle job)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
API_CHECKOUTS = Counter(
    "stampede_api_checkouts_total",
    "checkout attempts by outcome (paid, replayed, hold_expired, already_paid, not_held, reservation_pending, "
    "idempotency_conflict)",
    ["sale", "outcome"],
)
API_STRATEGY_ACCEPTED = Counter(
    "stampede_api_strategy_accepted_total", "buys accepted by each demonstration strategy", ["strategy"]
)

# --- operator ------------------------------------------------------------------------------------
# `sale` is a FlashSale name: bounded by the sales that exist. `action` is one of the reconciler's
# healing kinds (stampede.healing.Action.kind).

OPERATOR_DRIFT = Gauge(
    "stampede_operator_drift_units",
    "units by which Redis and the ledger disagree after the last reconcile, unexplained",
    ["sale"],
)
OPERATOR_HEALED = Counter(
    "stampede_operator_healed_total",
    "reservations (or, for rebuild, sales) healed by the reconciler, by action",
    ["sale", "action"],
)
OPERATOR_COMPENSATIONS = Counter(
    "stampede_operator_compensations_total",
    "reservations the reconciler compensated (stock returned), by reason",
    ["sale", "reason"],
)
OPERATOR_RECONCILE_SECONDS = Histogram(
    "stampede_operator_reconcile_seconds",
    "time of one reconcile pass of one sale (observe, heal, write status)",
    ["sale"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
OPERATOR_RECONCILE_ERRORS = Counter(
    "stampede_operator_reconcile_errors_total",
    "reconcile passes that failed (a dependency down, a bug), by error code",
    ["sale", "code"],
)
OPERATOR_STOCK = Gauge(
    "stampede_operator_stock_units",
    "units of a sale by state as last reconciled (remaining, reserved, confirmed, compensated, and with checkout "
    "holds held, paid, expired)",
    ["sale", "state"],
)
OPERATOR_QUEUE = Gauge(
    "stampede_operator_queue_tickets",
    "tickets of a sale's waiting room as last reconciled (tickets, early, admitted, served, waiting)",
    ["sale", "state"],
)
OPERATOR_SETTLE_BACKLOG = Gauge(
    "stampede_operator_settle_backlog_reservations",
    "reservations of a sale pending in the ledger (accepted, not yet settled), as of the last pass",
    ["sale"],
)
OPERATOR_SETTLE_OLDEST = Gauge(
    "stampede_operator_settle_oldest_pending_seconds",
    "how long the sale's oldest pending reservation has waited to be settled, as of the last pass",
    ["sale"],
)

SALE_LABELLED = (
    API_RESERVATIONS,
    API_STOCK_REMAINING,
    API_DEFER_FAILURES,
    API_CHECKOUTS,
    OPERATOR_DRIFT,
    OPERATOR_HEALED,
    OPERATOR_COMPENSATIONS,
    OPERATOR_RECONCILE_SECONDS,
    OPERATOR_RECONCILE_ERRORS,
    OPERATOR_STOCK,
    OPERATOR_QUEUE,
    OPERATOR_SETTLE_BACKLOG,
    OPERATOR_SETTLE_OLDEST,
)


def forget_sale(sale: str) -> int:
    """Removes every series labelled with ``sale`` from this process's metrics (a deleted sale must not be
    scraped for ever, nor keep its label children in memory). Returns the series removed."""
    removed = 0
    for metric in SALE_LABELLED:
        names = metric._labelnames  # prometheus-client keeps the label order only here
        for family in metric.collect():
            seen = set()
            for sample in family.samples:
                if sample.labels.get("sale") != sale:
                    continue
                values = tuple(sample.labels[n] for n in names)
                if values not in seen:
                    seen.add(values)
                    metric.remove(*values)
                    removed += 1
    return removed


__all__ = ["NAMESPACE", "SALE_LABELLED", "Counter", "Gauge", "Histogram", "forget_sale"]
