"""settle_batch end to end with an in-process procrastinate worker over the real Redis and PostgreSQL:
every test ends with the audit of the invariants in docs/architecture.md (and Redis agreeing with the ledger)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from stampede import errors
from stampede.domain import Settled, Settlement
from stampede.ledger import Ledger, batch_payload
from stampede.stock import Outcome, StockEngine
from stampede.vocabulary import Dependency, Reason, Status
from stampede_worker import metrics, settle
from tests.stores import ledger_pool, redis_client

if TYPE_CHECKING:
    from tests.worker.conftest import Harness

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


async def test_happy_path_confirms_every_reservation(harness: Harness, sale: str) -> None:
    other = sale + "-b"
    a = await harness.reservations(sale, 150)
    b = await harness.reservations(other, 60)
    # One batch spans both sales, as an API process's micro-batch does.
    jobs = await harness.record(a[:100]) + await harness.record(a[100:] + b)
    await harness.drain()
    assert await harness.job_statuses(jobs) == ["succeeded"] * len(jobs)
    assert (await harness.ledger.counts(sale))[Status.CONFIRMED] == 150
    await harness.audit(sale, total=150, accepted=[r.reservation_id for r in a])
    await harness.audit(other, total=60, accepted=[r.reservation_id for r in b])
    row = await harness.ledger.get_reservation(a[0].reservation_id)
    assert row is not None and row.status == Status.CONFIRMED and row.attempts == 1 and row.settled_at is not None


async def test_duplicate_delivery_settles_each_reservation_once(harness: Harness, sale: str) -> None:
    res = await harness.reservations(sale, 80)
    await harness.record(res, batch=80)
    # The same batch delivered again by another job (a producer retry, a replayed message), and a
    # second record_batch of the same reservations: no second row, no second outcome.
    await harness.defer_raw(**batch_payload(res))
    await harness.ledger.record_batch(res[:10])
    await harness.drain()
    rows = await harness.ledger.rows(sale)
    assert len(rows) == 80 and {r.status for r in rows} == {Status.CONFIRMED}
    snap = await harness.stock.snapshot(sale)
    assert (snap.confirmed, snap.pending, snap.released) == (80, 0, 0)
    await harness.audit(sale, total=80, accepted=[r.reservation_id for r in res])


class FlakyStock(StockEngine):
    """Redis that drops the first ``failures`` confirm calls, after the ledger already moved."""

    def __init__(self, base: StockEngine, failures: int) -> None:
        super().__init__(redis_client(base))
        self.failures = failures
        self.calls = 0

    async def confirm(self, sale: str, reservation_ids: Iterable[str]) -> dict[str, Outcome]:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise errors.DependencyUnavailable(Dependency.REDIS, "injected: connection reset")
        return await super().confirm(sale, reservation_ids)


async def test_transient_failure_is_retried_then_succeeds(harness: Harness, sale: str) -> None:
    res = await harness.reservations(sale, 50)
    [job] = await harness.record(res, batch=50)
    flaky = FlakyStock(harness.stock, failures=2)
    await harness.drain(stock=flaky)
    assert flaky.calls == 3
    [status] = await harness.job_statuses([job])
    assert status == "succeeded"
    jobs = await harness.app.job_manager.list_jobs_async(id=job)
    assert next(iter(jobs)).attempts == 3  # three runs: two retried, one succeeded
    # The ledger moved on the first attempt; the retries only replayed the outcome to Redis.
    rows = await harness.ledger.rows(sale)
    assert {r.status for r in rows} == {Status.CONFIRMED}
    await harness.audit(sale, total=50, accepted=[r.reservation_id for r in res])


class BrokenLedger(Ledger):
    """A ledger whose confirm path fails: permanently (a bug) or transiently (always unreachable)."""

    def __init__(self, base: Ledger, error: Exception) -> None:
        super().__init__(ledger_pool(base))
        self.error = error

    async def settle(self, settlements: Sequence[Settlement], *, attempt: int, **kw: Any) -> list[Settled]:
        if any(s.outcome == Status.CONFIRMED for s in settlements):
            raise self.error
        return await super().settle(settlements, attempt=attempt, **kw)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError("injected: a bug"), Reason.SETTLE_ERROR),
        (errors.DependencyUnavailable(Dependency.POSTGRESQL, "injected"), Reason.RETRIES_EXHAUSTED),
    ],
    ids=["permanent", "retries-exhausted"],
)
async def test_failure_for_good_compensates_and_returns_stock_once(
    harness: Harness, sale: str, error: Exception, reason: Reason
) -> None:
    res = await harness.reservations(sale, 40)
    [job] = await harness.record(res, batch=40)
    await harness.drain(ledger=BrokenLedger(harness.ledger, error))
    assert await harness.job_statuses([job]) == ["failed"]
    rows = await harness.ledger.rows(sale)
    assert {r.status for r in rows} == {Status.COMPENSATED}
    row = await harness.ledger.get_reservation(res[0].reservation_id)
    assert row is not None and row.reason == reason
    snap = await harness.stock.snapshot(sale)
    assert (snap.remaining, snap.pending, snap.released) == (40, 0, 40)
    # The same job delivered again (and a good worker this time): outcomes stay, stock is not returned twice.
    # procrastinate annotates retry_at as a datetime; None (retry at once) is what its SQL takes.
    await harness.app.job_manager.retry_job_by_id_async(job, retry_at=None)  # type: ignore[arg-type]
    await harness.drain()
    snap = await harness.stock.snapshot(sale)
    assert (snap.remaining, snap.released, snap.confirmed) == (40, 40, 0)
    assert {r.status for r in await harness.ledger.rows(sale)} == {Status.COMPENSATED}
    await harness.audit(sale, total=40, accepted=[r.reservation_id for r in res])


async def test_bad_reservations_are_compensated_alone(harness: Harness, sale: str) -> None:
    res = await harness.reservations(sale, 30)
    released = res[0]
    await harness.stock.release(sale, [released.reservation_id])  # Redis gave it back already
    ghost = res[1].__class__(str(uuid.uuid4()), sale, "ghost", 1, res[1].reserved_at_ms)  # not in Redis
    unknown_sale = res[1].__class__(str(uuid.uuid4()), sale + "-nope", "who", 1, res[1].reserved_at_ms)
    [job] = await harness.record(res)
    [ghost_job] = await harness.record([ghost])
    [bad_job] = await harness.record([unknown_sale])  # a batch naming a sale Redis does not know
    await harness.drain()
    assert await harness.job_statuses([job, ghost_job, bad_job]) == ["succeeded", "succeeded", "failed"]
    statuses = {r.reservation_id: r.status for r in await harness.ledger.rows(sale)}
    assert statuses.pop(released.reservation_id) == Status.COMPENSATED
    assert statuses.pop(ghost.reservation_id) == Status.COMPENSATED
    assert set(statuses.values()) == {Status.CONFIRMED} and len(statuses) == 29
    reasons = {
        rid: (await harness.row(rid)).reason
        for rid in (released.reservation_id, ghost.reservation_id, unknown_sale.reservation_id)
    }
    assert reasons == {
        released.reservation_id: Reason.RELEASED_IN_REDIS,
        ghost.reservation_id: Reason.NOT_IN_REDIS,
        unknown_sale.reservation_id: Reason.UNKNOWN_SALE,
    }
    await harness.audit(sale, total=30, accepted=[r.reservation_id for r in res] + [ghost.reservation_id])


async def test_malformed_payloads_fail_alone_and_never_stop_the_worker(harness: Harness, sale: str) -> None:
    res = await harness.reservations(sale, 20)
    await harness.record(res[:10], batch=10)
    # A job whose payload names a bad sale but real ledger ids: compensated by id, stock returned.
    stray = res[10:12]
    await harness.ledger.record_batch(stray)
    bad_jobs = [
        await harness.defer_raw(),
        await harness.defer_raw(v=1, sales="nope"),
        await harness.defer_raw(v=1, sales={sale: "not-a-list"}),
        await harness.defer_raw(v=1, sales={sale: [1, None, "zzz"]}),
        await harness.defer_raw(v=99, sales={}),
        await harness.defer_raw(v=1, sales={"Bad Sale!": [r.reservation_id for r in stray]}),
        await harness.defer_raw(v=1, sales={sale: [str(uuid.uuid4())]}),  # not in the ledger
        await harness.defer_raw(v=2, sale="Bad Sale!", shard=0),
        await harness.defer_raw(v=2, sale=sale, shard=-1),
        await harness.defer_raw(v=2, sale=sale, shard="0"),
        await harness.defer_raw(v=2, shard=0),
    ]
    good = await harness.record(res[12:], batch=8)
    await harness.drain()
    assert await harness.job_statuses(bad_jobs) == ["failed"] * len(bad_jobs)
    assert await harness.job_statuses(good) == ["succeeded"]
    # The stray rows were settled by whichever job got them first: their own (confirmed) or the bad one.
    rows = {r.reservation_id: r.status for r in await harness.ledger.rows(sale)}
    assert len(rows) == 20 and all(s in (Status.CONFIRMED, Status.COMPENSATED) for s in rows.values())
    await harness.audit(sale, total=20, accepted=[r.reservation_id for r in res])


async def test_parse_payload_keeps_the_good_entries() -> None:
    good = str(uuid.uuid4())
    batch = settle.parse_payload({"v": 1, "sales": {"s-1": [good, good, "x", 3], "Nope!": [good], "s-2": "x"}})
    assert batch.by_sale == {"s-1": [good]}
    assert batch.bad_sale == []  # a duplicate id is settled once, whatever sale it came with
    assert len(batch.problems) == 4


async def test_racing_runs_of_one_batch_decide_each_reservation_once(harness: Harness, sale: str) -> None:
    # A job recovered from a worker that was only slow, running twice at once, plus a duplicate: the
    # row locks serialise the ledger moves; the losers see the winner's outcome and only replay it.
    res = await harness.reservations(sale, 300)
    payload = batch_payload(res)
    with pytest.raises(settle.SettleFailed, match="not in the ledger"):  # never recorded: nothing to decide
        await settle.settle_batch(payload, ledger=harness.ledger, stock=harness.stock)
    await harness.ledger.record_batch(res)
    reports = await asyncio.gather(
        *(settle.settle_batch(payload, ledger=harness.ledger, stock=harness.stock, attempt=1) for _ in range(3))
    )
    assert sum(r.confirmed for r in reports) == 300
    assert sum(r.replayed for r in reports) == 600
    await harness.drain()  # the recorded job itself finds everything decided
    snap = await harness.stock.snapshot(sale)
    assert (snap.confirmed, snap.pending, snap.released) == (300, 0, 0)
    await harness.audit(sale, total=300, accepted=[r.reservation_id for r in res])


async def test_a_sale_redis_lost_is_restored_and_its_reservations_confirmed(harness: Harness, sale: str) -> None:
    """Redis lost the sale after 60 reservations were recorded: the worker restores it from the ledger
    (every pending row counted as reserved) and confirms them all; nothing is compensated."""
    res = await harness.reservations(sale, 60, total=100)
    await harness.ledger.ensure_sale(sale, sku="S", stock=100, per_user_limit=1, window_start=None, window_end=None)
    jobs = await harness.record(res, batch=10)
    await harness.stock.delete(sale)
    await harness.drain()
    assert set(await harness.job_statuses(jobs)) == {"succeeded"}
    assert {r.status for r in await harness.ledger.rows(sale)} == {Status.CONFIRMED}
    snap = await harness.stock.snapshot(sale)
    assert (snap.total, snap.remaining, snap.pending, snap.confirmed, snap.released) == (100, 40, 0, 60, 0)
    await harness.audit(sale, total=100, accepted=[r.reservation_id for r in res])


async def test_while_another_process_restores_the_sale_the_job_waits(harness: Harness, sale: str) -> None:
    """Another process holds the sale's restore lock: the job is retried later (not compensated) and
    confirms once the sale is back."""
    res = await harness.reservations(sale, 5, total=5)
    await harness.ledger.ensure_sale(sale, sku="S", stock=5, per_user_limit=1, window_start=None, window_end=None)
    [job] = await harness.record(res)
    await harness.stock.delete(sale)
    assert await harness.stock.lock_restore(sale, "another-process", 60_000)

    async def retried() -> bool:
        async with harness.pool.connection() as conn:
            cur = await conn.execute("SELECT attempts FROM procrastinate_jobs WHERE id = %s", (job,))
            row = await cur.fetchone()
        return row is not None and row[0] >= 1

    await harness.drain(until=retried)
    assert {r.status for r in await harness.ledger.rows(sale)} == {"pending"}
    assert await harness.stock.unlock_restore(sale, "another-process")
    await harness.drain()
    assert await harness.job_statuses([job]) == ["succeeded"]
    assert {r.status for r in await harness.ledger.rows(sale)} == {Status.CONFIRMED}
    await harness.audit(sale, total=5, accepted=[r.reservation_id for r in res])


def test_each_claim_adds_only_its_own_rows_to_the_metrics() -> None:
    # A job settles several claims into one running report; the counters must grow by each claim's rows, not
    # by the report's running total.
    def row(status: Status, moved: bool = True) -> Settled:
        return Settled(str(uuid.uuid4()), "s", 1, status, moved, 0.01 if moved else None)

    def count(status: Status) -> float:
        return float(metrics.WORKER_RESERVATIONS.labels(status)._value.get())

    before = {s: count(s) for s in (Status.CONFIRMED, Status.COMPENSATED)}
    report = settle.Report()
    settle._account([row(Status.CONFIRMED), row(Status.CONFIRMED), row(Status.COMPENSATED)], report)
    settle._account([row(Status.CONFIRMED), row(Status.CONFIRMED, moved=False)], report)
    assert (report.confirmed, report.compensated, report.replayed) == (3, 1, 1)
    assert count(Status.CONFIRMED) - before[Status.CONFIRMED] == 3
    assert count(Status.COMPENSATED) - before[Status.COMPENSATED] == 1
