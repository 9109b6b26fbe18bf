"""The retry policy of settle_batch, by value: transient errors back off exponentially up to a cap and a
count, a shutdown puts the job straight back, anything else is not retried."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from procrastinate.jobs import Job

from stampede.names import QUEUE_SETTLE, TASK_SETTLE_BATCH
from stampede.settings import SettingsError, load
from stampede_worker.settings import WorkerSettings
from stampede_worker.settle import SettleFailed, Transient
from stampede_worker.tasks import SettleRetry


def _job(attempts: int) -> Job:
    return Job(id=1, queue=QUEUE_SETTLE, lock=None, queueing_lock=None, task_name=TASK_SETTLE_BATCH, attempts=attempts)


def _delay(policy: SettleRetry, exc: BaseException, attempts: int) -> float | None:
    decision = policy.get_retry_decision(exception=exc, job=_job(attempts))
    if decision is None:
        return None
    assert decision.retry_at is not None
    return (decision.retry_at - datetime.now(UTC)).total_seconds()


def test_transient_errors_back_off_exponentially_then_stop() -> None:
    policy = SettleRetry(max_retries=5, base_s=0.5, max_s=3.0)
    delays = [_delay(policy, Transient("x"), a) for a in range(6)]
    assert [round(d, 1) if d is not None else None for d in delays] == [0.5, 1.0, 2.0, 3.0, 3.0, None]


def test_only_transient_and_shutdown_are_retried() -> None:
    policy = SettleRetry(max_retries=5, base_s=0.5, max_s=3.0)
    assert _delay(policy, SettleFailed("x"), 0) is None
    assert _delay(policy, RuntimeError("x"), 0) is None
    shutdown = _delay(policy, asyncio.CancelledError(), 9)  # even past the count: a SIGTERM decides nothing
    assert shutdown is not None and shutdown <= 0.01


@pytest.mark.parametrize(
    "env",
    [
        {"STAMPEDE_WORKER_CONCURRENCY": "0"},
        {"STAMPEDE_WORKER_STALLED_S": "1", "STAMPEDE_WORKER_HEARTBEAT_S": "2"},
        {"STAMPEDE_WORKER_DELETE_JOBS": "sometimes"},
        {"STAMPEDE_WORKER_MAX_RETRIES": "-1"},
    ],
)
def test_bad_worker_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="STAMPEDE_WORKER_"):
        load(WorkerSettings, env=env)
