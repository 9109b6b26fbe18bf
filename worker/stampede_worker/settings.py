"""The settle worker's settings (``STAMPEDE_WORKER_*``) over the ``Common`` ones every process reads."""

from __future__ import annotations

from dataclasses import dataclass

from stampede.settings import Common, SettingsError, positive, setting


@dataclass(frozen=True)
class WorkerSettings(Common):
    """The procrastinate worker that settles batches of reservations (``python -m stampede_worker``)."""

    worker_concurrency: int = setting(8, "settle_batch jobs run at once by one worker process")
    worker_metrics_host: str = setting("0.0.0.0", "address of the /metrics and /healthz endpoint")
    worker_metrics_port: int = setting(9102, "port of the /metrics and /healthz endpoint (0: none)")
    worker_max_retries: int = setting(5, "retries of a job after a transient error before compensating")
    worker_retry_base_s: float = setting(0.5, "first retry delay; doubles each retry (exponential backoff)")
    worker_retry_max_s: float = setting(30.0, "longest retry delay")
    worker_heartbeat_s: float = setting(5.0, "how often a worker tells PostgreSQL it is alive")
    worker_stalled_s: float = setting(30.0, "a worker silent this long is dead: its running jobs are retried")
    worker_shutdown_timeout_s: float = setting(20.0, "on SIGTERM, seconds in-flight jobs get to finish")
    worker_delete_jobs: str = setting("never", "delete finished jobs: never | successful | always")
    worker_fetch_pace_s: float = setting(
        0.1,
        "a worker asks for settle jobs this often and no oftener, so batches written meanwhile join the job that "
        "waits (fewer, larger jobs under load; adds up to this much to the 202->settled lag); 0: fetch at every "
        "LISTEN/NOTIFY wake-up",
    )
    worker_poll_s: float = setting(2.0, "with STAMPEDE_WORKER_FETCH_PACE_S=0: polling besides LISTEN/NOTIFY wake-ups")
    worker_depth_interval_s: float = setting(5.0, "how often the queue depth gauge is refreshed")
    worker_claim_max: int = setting(1000, "most pending rows a settle job claims and settles in one transaction")
    worker_hold_sweep_s: float = setting(1.0, "how often a worker expires the checkout holds that are due")
    worker_hold_sweep_max: int = setting(1000, "most holds one sweep statement expires (a sweep repeats while full)")
    worker_hold_return_after_s: float = setting(
        10.0, "an expired hold whose units Redis has not taken back this long after is given back again"
    )
    worker_fault_sleep_ms: int = setting(0, "fault injection for tests: sleep between ledger and Redis writes")
    worker_fault_expire_sleep_ms: int = setting(
        0, "fault injection for tests: sleep between a sweep's ledger expiry and its Redis write"
    )
    worker_fault_claim_sleep_ms: int = setting(0, "fault injection for tests: sleep inside a claim, rows locked")

    def validate(self) -> None:
        super().validate()
        for name in (
            "worker_concurrency",
            "worker_claim_max",
            "worker_retry_base_s",
            "worker_heartbeat_s",
            "worker_stalled_s",
            "worker_hold_sweep_s",
            "worker_hold_sweep_max",
            "worker_hold_return_after_s",
        ):
            positive(name, getattr(self, name))
        if not 0 <= self.worker_fetch_pace_s <= 5:
            raise SettingsError("STAMPEDE_WORKER_FETCH_PACE_S must be between 0 and 5 seconds")
        if self.worker_max_retries < 0:
            raise SettingsError("STAMPEDE_WORKER_MAX_RETRIES must be >= 0")
        if self.worker_stalled_s <= self.worker_heartbeat_s:
            raise SettingsError("STAMPEDE_WORKER_STALLED_S must exceed STAMPEDE_WORKER_HEARTBEAT_S")
        if self.worker_delete_jobs not in ("never", "successful", "always"):
            raise SettingsError("STAMPEDE_WORKER_DELETE_JOBS must be never, successful or always")
