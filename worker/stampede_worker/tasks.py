"""The ``settle_batch`` task on the project's procrastinate App, with its retry policy.

The task is registered by name (``stampede.names.TASK_SETTLE_BATCH``), which is how the API's ledger
defers it without importing this package. It receives its collaborators (Ledger, StockEngine, settings)
through the worker's ``additional_context`` and delegates to ``settle.settle_batch``.

Retry policy: only ``settle.Transient`` is retried, with exponential backoff (base * 2^attempt, capped);
the last attempt is known from the job's attempt count (procrastinate has no on-final-failure hook), and
then a transient error compensates instead of retrying. A job interrupted by the worker's shutdown is
put back at once whatever its count, so SIGTERM never turns into a compensation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from stampede.ledger import PAYLOAD_SHARD_VERSION
from stampede.names import QUEUE_SETTLE, TASK_SETTLE_BATCH
from stampede_worker import metrics
from stampede_worker.settings import WorkerSettings

from .settle import SettleFailed, Transient, parse_shard, settle_batch, settle_shard

log = logging.getLogger(__name__)

# Keys of the worker's additional_context.
CTX_LEDGER = "ledger"
CTX_STOCK = "stock"
CTX_SETTINGS = "settings"


class SettleRetry(BaseRetryStrategy):
    """Exponential backoff on transient errors, immediate retry after a shutdown, nothing else."""

    def __init__(self, max_retries: int, base_s: float, max_s: float) -> None:
        self.max_retries = max_retries
        self.base_s = base_s
        self.max_s = max_s

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, (asyncio.CancelledError, pexc.JobAborted)):
            return RetryDecision(retry_in={"seconds": 0})
        if not isinstance(exception, Transient) or job.attempts >= self.max_retries:
            return None
        return RetryDecision(retry_in={"seconds": min(self.max_s, self.base_s * 2**job.attempts)})


def register(app: procrastinate.App, settings: WorkerSettings) -> None:
    """Registers settle_batch on ``app`` with the retry policy from ``settings``."""
    retry = SettleRetry(settings.worker_max_retries, settings.worker_retry_base_s, settings.worker_retry_max_s)

    @app.task(name=TASK_SETTLE_BATCH, queue=QUEUE_SETTLE, pass_context=True, retry=retry)
    async def settle_batch_task(context: JobContext, /, **payload: Any) -> dict[str, Any]:
        extra = context.additional_context
        s: WorkerSettings = extra[CTX_SETTINGS]
        job = context.job
        started = time.perf_counter()
        final = job.attempts >= s.worker_max_retries
        try:
            if payload.get("v") == PAYLOAD_SHARD_VERSION:
                shard = parse_shard(payload)
                if isinstance(shard, str):
                    log.error("malformed settle_batch payload", extra={"job_id": job.id, "problem": shard})
                    raise SettleFailed(f"bad input: {shard}")
                report = await settle_shard(
                    shard,
                    ledger=extra[CTX_LEDGER],
                    stock=extra[CTX_STOCK],
                    claim_max=s.worker_claim_max,
                    attempt=job.attempts + 1,
                    final=final,
                    job_id=job.id,
                    fault_sleep_ms=s.worker_fault_sleep_ms,
                    fault_claim_sleep_ms=s.worker_fault_claim_sleep_ms,
                )
            else:
                report = await settle_batch(
                    payload,
                    ledger=extra[CTX_LEDGER],
                    stock=extra[CTX_STOCK],
                    attempt=job.attempts + 1,
                    final=final,
                    job_id=job.id,
                    fault_sleep_ms=s.worker_fault_sleep_ms,
                )
        except Transient as exc:
            metrics.WORKER_JOBS.labels("retried").inc()
            log.warning(
                "settle_batch hit a transient error; will retry",
                extra={"job_id": job.id, "attempt": job.attempts + 1, "error": str(exc)},
            )
            raise
        except SettleFailed:
            metrics.WORKER_JOBS.labels("failed").inc()
            raise
        finally:
            metrics.WORKER_JOB_SECONDS.observe(time.perf_counter() - started)
        metrics.WORKER_JOBS.labels("succeeded").inc()
        return report.as_dict()
