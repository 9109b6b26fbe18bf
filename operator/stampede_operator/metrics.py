"""The operator's Prometheus metrics, defined once so names and labels never drift, and how a deleted
sale's series are dropped."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
