"""The ledger against the real PostgreSQL: record_batch is one atomic write of rows + one job, a
reservation gets one row, and a status moves only out of pending (enforced by SQL, not only callers)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from stampede import errors
from stampede.domain import Settlement
from stampede.ledger import Ledger, PendingReservation
from stampede.names import QUEUE_SETTLE, TASK_SETTLE_BATCH
from stampede.settings import Common, load
from stampede.vocabulary import Dependency, Reason, Status
from tests.stores import ledger_pool

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
async def ledger(migrated_database_url: str) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(load(Common, env={}, database_url=migrated_database_url))
    yield lg
    await lg.close()


def _batch(sale: str, n: int, qty: int = 1) -> list[PendingReservation]:
    return [PendingReservation(str(uuid.uuid4()), sale, f"u{i}", qty, 1_700_000_000_000 + i) for i in range(n)]


async def _job(ledger: Ledger, job_id: int) -> tuple[str, str, str, dict[str, Any]]:
    async with ledger_pool(ledger).connection() as conn:
        cur = await conn.execute(
            "SELECT queue_name, task_name, status::text, args FROM procrastinate_jobs WHERE id = %s", (job_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


async def test_record_batch_writes_rows_and_one_job_per_sale(ledger: Ledger, sale: str) -> None:
    other = sale + "-x"
    batch = _batch(sale, 5) + _batch(other, 2)
    job_id = (await ledger.record_batch(batch)).job
    queue, task, status, args = await _job(ledger, job_id)
    assert (queue, task, status) == (QUEUE_SETTLE, TASK_SETTLE_BATCH, "todo")
    assert args["v"] == 2 and args["sale"] == sale and 0 <= args["shard"] < ledger.settle_shards
    row = await ledger.get_reservation(batch[0].reservation_id)
    assert row is not None
    assert (row.sale, row.user, row.quantity, row.status, row.job_id, row.reason, row.settled_at) == (
        sale,
        "u0",
        1,
        Status.PENDING,
        job_id,
        None,
        None,
    )
    other_row = await ledger.get_reservation(batch[5].reservation_id)
    assert other_row is not None and other_row.job_id not in (None, job_id)
    _, _, _, other_args = await _job(ledger, other_row.job_id)
    assert (other_args["sale"], other_args["shard"]) == (other, args["shard"])  # one shard per batch
    assert await ledger.counts(sale) == {status: 0 for status in Status} | {Status.PENDING: 5}
    assert len(await ledger.rows(other)) == 2


async def test_batches_join_the_waiting_job_of_their_shard(ledger: Ledger, sale: str) -> None:
    """However many batches arrive, a sale has at most one job waiting per shard."""
    jobs = [(await ledger.record_batch(_batch(sale, 3))).job for _ in range(5 * ledger.settle_shards)]
    assert len(set(jobs)) == ledger.settle_shards
    async with ledger_pool(ledger).connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND args->>'sale' = %s", (sale,)
        )
        assert (await cur.fetchone() or [0])[0] == ledger.settle_shards


async def test_a_reservation_never_gets_a_second_row(ledger: Ledger, sale: str) -> None:
    batch = _batch(sale, 3)
    first = await ledger.record_batch(batch)
    assert first.inserted == {r.reservation_id for r in batch}
    fresh = _batch(sale, 1)
    for _ in range(ledger.settle_shards):  # whichever shard the repeat lands in
        again = await ledger.record_batch([*batch, batch[0], *fresh])
        # Only a new id counts as inserted: the writer must not acknowledge the ids another row holds.
        assert again.inserted == {fresh[0].reservation_id}
        fresh = _batch(sale, 1)
    assert len(await ledger.rows(sale)) == 3 + ledger.settle_shards
    row = await ledger.get_reservation(batch[0].reservation_id)
    assert row is not None and row.job_id == first.job  # the first write stays


async def test_record_batch_is_all_or_nothing(ledger: Ledger, sale: str) -> None:
    async with ledger_pool(ledger).connection() as conn:
        before = (await (await conn.execute("SELECT count(*) FROM procrastinate_jobs")).fetchone() or [0])[0]
    bad = [*_batch(sale, 3), PendingReservation(str(uuid.uuid4()), sale, "u", 0, 1)]  # quantity 0
    with pytest.raises(errors.InvalidArgument):
        await ledger.record_batch(bad)
    with pytest.raises(errors.InvalidArgument):
        await ledger.record_batch([PendingReservation("not-a-uuid", sale, "u", 1, 1)])
    with pytest.raises(errors.InvalidArgument):
        await ledger.record_batch([])
    async with ledger_pool(ledger).connection() as conn:
        after = (await (await conn.execute("SELECT count(*) FROM procrastinate_jobs")).fetchone() or [0])[0]
    assert after == before
    assert await ledger.rows(sale) == []


async def test_status_moves_only_out_of_pending(ledger: Ledger, sale: str) -> None:
    a, b = _batch(sale, 2)
    await ledger.record_batch([a, b])
    moved = await ledger.settle(
        [
            Settlement(a.reservation_id, sale, Status.CONFIRMED),
            Settlement(b.reservation_id, None, Status.COMPENSATED, Reason.SETTLE_ERROR),
        ],
        attempt=1,
    )
    assert {(s.reservation_id, s.status, s.moved) for s in moved} == {
        (a.reservation_id, Status.CONFIRMED, True),
        (b.reservation_id, Status.COMPENSATED, True),
    }
    # A second writer with the opposite opinion decides nothing.
    again = await ledger.settle(
        [
            Settlement(a.reservation_id, sale, Status.COMPENSATED, Reason.JOB_FAILED),
            Settlement(b.reservation_id, sale, Status.CONFIRMED),
        ],
        attempt=2,
    )
    assert {(s.reservation_id, s.status, s.moved) for s in again} == {
        (a.reservation_id, Status.CONFIRMED, False),
        (b.reservation_id, Status.COMPENSATED, False),
    }
    # Even a hand-written UPDATE or DELETE is refused by the schema.
    async with ledger_pool(ledger).connection() as conn:
        for stmt in (
            "UPDATE stampede_ledger SET status = 'compensated', reason = 'x' WHERE reservation_id = %s",
            "UPDATE stampede_ledger SET status = 'pending', settled_at = NULL WHERE reservation_id = %s",
            "UPDATE stampede_ledger SET quantity = 5 WHERE reservation_id = %s",
            "DELETE FROM stampede_ledger WHERE reservation_id = %s",
        ):
            with pytest.raises(psycopg.errors.CheckViolation):
                await conn.execute(stmt, (a.reservation_id,))
    row = await ledger.get_reservation(b.reservation_id)
    assert row is not None and (row.status, row.reason, row.attempts) == (Status.COMPENSATED, Reason.SETTLE_ERROR, 1)


async def test_settle_with_a_wrong_sale_moves_nothing(ledger: Ledger, sale: str) -> None:
    [a] = _batch(sale, 1)
    await ledger.record_batch([a])
    [got] = await ledger.settle([Settlement(a.reservation_id, sale + "-other", Status.CONFIRMED)], attempt=1)
    assert (got.status, got.moved, got.sale) == (Status.PENDING, False, sale)


async def test_ensure_sale_upserts(ledger: Ledger, sale: str) -> None:
    start = datetime(2026, 11, 27, 10, tzinfo=UTC)
    end = datetime(2026, 11, 27, 11, tzinfo=UTC)
    await ledger.ensure_sale(sale, sku="SNKR-1", stock=10, per_user_limit=1, window_start=start, window_end=end)
    await ledger.ensure_sale(sale, sku="SNKR-1", stock=12, per_user_limit=2, window_start=None, window_end=None)
    async with ledger_pool(ledger).connection() as conn:
        cur = await conn.execute(
            "SELECT stock, per_user_limit, window_start FROM stampede_sales WHERE sale = %s", (sale,)
        )
        assert await cur.fetchone() == (12, 2, None)


async def test_reading_and_ping(ledger: Ledger) -> None:
    await ledger.ping()
    assert await ledger.get_reservation(str(uuid.uuid4())) is None
    assert await ledger.get_reservation("not-a-uuid") is None


async def test_unreachable_database_is_dependency_unavailable(unused_tcp_port: int) -> None:
    settings = load(Common, env={}, database_url=f"postgresql://x@127.0.0.1:{unused_tcp_port}/x", db_timeout_s=0.5)
    with pytest.raises(errors.DependencyUnavailable) as exc:
        await Ledger.open(settings)
    assert exc.value.dependency == Dependency.POSTGRESQL


def test_payload_is_compact_json() -> None:
    from stampede.ledger import batch_payload

    batch = _batch("s", 2)
    assert json.loads(json.dumps(batch_payload(batch))) == {"v": 1, "sales": {"s": [r.reservation_id for r in batch]}}
