"""The API's Prometheus metrics, defined once so names and labels never drift. The API runs under
gunicorn with several worker processes, so it uses prometheus-client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR); the definitions are plain and work in both modes."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
