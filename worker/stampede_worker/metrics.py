"""The settle worker's Prometheus metrics, defined once so names and labels never drift."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
