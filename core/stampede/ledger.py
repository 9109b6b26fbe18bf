"""The ledger: PostgreSQL rows that decide every reservation's outcome (docs/architecture.md, "Order of truth").

``record_batch`` is the durable write behind every 202: in ONE statement (hence one transaction and one
round trip) it inserts the batch's ``pending`` rows into one shard of their sale and stamps them with the
settle job of that (sale, shard): the one already waiting, or a new one deferred through procrastinate's
own SQL function. Either rows and job both exist or neither does, and a sale never has more than one job
waiting per shard, however many batches arrive (docs/architecture.md, "Coalesced settling").

A settle job takes the shard's pending rows in chunks with ``claim`` (``FOR UPDATE SKIP LOCKED`` inside a
transaction, so a job killed mid-chunk leaves its rows pending and unlocked) and moves them with
``Claim.settle``, the same statement as ``settle``. ``settle`` is the one statement that moves rows: a
status moves only out of ``pending``, enforced by its WHERE clause and by a trigger in the schema.

The pool is opened with ``Ledger.open`` after the process forks (gunicorn worker, ASGI lifespan, the
procrastinate worker) and never shared across processes.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import procrastinate
import psycopg
import psycopg_pool

from . import audit, errors, pgerrors, queue, sqlfiles
from .domain import Settled, Settlement
from .healing import LedgerEntry, Tally
from .names import QUEUE_SETTLE, TASK_SETTLE_BATCH
from .settings import Common
from .vocabulary import Reason, Status

# Versions of the settle_batch job payload; the worker refuses (and compensates) versions it does not know.
# v1 lists reservation ids by sale (the reconciler's re-deferrals); v2 names one shard of one sale, whose
# pending rows the job claims (the API's writes).
PAYLOAD_VERSION = 1
PAYLOAD_SHARD_VERSION = 2


@dataclass(frozen=True, slots=True)
class PendingReservation:
    """A reservation Redis accepted, about to be recorded ``pending``."""

    reservation_id: str  # uuid string from stock.Reservation.reservation_id
    sale: str
    user: str
    quantity: int
    reserved_at_ms: int  # Redis clock ms (stock.StockEngine.now_ms / the reservation record)


class LostReservation(Protocol):
    """A Redis reservation the ledger never recorded, as ``Ledger.record_lost`` reads it (a
    ``stock.ReservationRecord`` is one)."""

    @property
    def reservation_id(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def quantity(self) -> int: ...
    @property
    def reserved_at_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RecordedBatch:
    """What ``record_batch`` wrote. ``inserted`` holds the ids recorded ``pending`` by this write; an id of the
    batch that is missing from it already had a row (the reconciler recorded it ``lost_before_ack`` and gave
    its stock back while the write waited), so its request must not be answered 202."""

    job: int  # the settle job of the first reservation's sale
    inserted: frozenset[str]


@dataclass(frozen=True, slots=True)
class LedgerRow:
    reservation_id: str
    sale: str
    user: str
    quantity: int
    status: Status
    reason: str | None
    job_id: int | None
    attempts: int
    created_at: datetime
    settled_at: datetime | None
    hold_expires_at: datetime | None = None  # held, paid, expired: when the hold ends (or ended)
    closed_at: datetime | None = None  # paid, expired: when the hold ended
    checkout_key: str | None = None  # paid: the Idempotency-Key of the checkout that paid it
    payment_ref: str | None = None  # paid: the buyer's payment reference


@dataclass(frozen=True, slots=True)
class HoldWork:
    """What the expiry sweep has to do (``Ledger.hold_work``)."""

    due: bool  # a held reservation whose hold has passed
    unreturned: bool  # an expired reservation whose units Redis has not taken back in time


@dataclass(frozen=True, slots=True)
class Expired:
    """A reservation whose hold the ledger expired: its units go back on sale in Redis, and its buyer's
    allowance (Redis may keep the reservation only as a compact settled entry, which has no buyer)."""

    reservation_id: str
    sale: str
    quantity: int
    user: str


@dataclass(frozen=True, slots=True)
class RestoreSource:
    """What the ledger holds of a sale for restoring it in Redis: its spec as the operator mirrored it,
    whether it was deleted, and every reservation (``rows`` as (id, user, quantity, status, reserved_at_ms))."""

    sale: str
    stock: int
    per_user_limit: int
    window_start: datetime | None
    window_end: datetime | None
    buyer_rate: float
    buyer_burst: int
    ip_rate: float
    ip_burst: int
    deleted: bool
    rows: list[tuple[str, str, int, str, int]]
    buckets: int = 1  # the sale's stock buckets


@dataclass(frozen=True, slots=True)
class LiveLedger:
    """What the live sale page reads of a sale in the ledger, cheaply (``Ledger.live``): units by status as
    the reconciler counts them, the age of the oldest pending row, and the sale's mirror row (None where the
    operator never mirrored the sale)."""

    pending: int
    confirmed: int
    compensated: int
    oldest_pending_s: float | None  # None: nothing pending
    sku: str | None
    stock: int | None
    window_start: datetime | None
    window_end: datetime | None


@dataclass(frozen=True, slots=True)
class LiveSale:
    """One sale of the live page's overview, as the operator mirrored it."""

    sale: str
    sku: str
    stock: int
    window_start: datetime | None
    window_end: datetime | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A pending row a settle job holds locked until its claim ends."""

    reservation_id: str
    sale: str
    quantity: int


class Claim:
    """Rows of one shard locked by one transaction (``Ledger.claim``): pass it to ``Ledger.settle`` to
    move them on that transaction."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], rows: list[Claimed]) -> None:
        self.conn = conn
        self.rows = rows


def batch_payload(reservations: Sequence[PendingReservation]) -> dict[str, Any]:
    """The settle_batch job's arguments: reservation ids grouped by sale (the worker needs the sale to
    reach the reservation in Redis before it moves the ledger; everything else is in the ledger)."""
    sales: dict[str, list[str]] = {}
    for r in reservations:
        sales.setdefault(r.sale, []).append(r.reservation_id)
    return {"v": PAYLOAD_VERSION, "sales": sales}


@dataclass(frozen=True, slots=True)
class Backlog:
    """A sale's settle backlog: its pending rows, their units, and how long the oldest has waited (ms)."""

    rows: int
    units: int
    oldest_ms: int


class Ledger:
    """Typed access to the ledger tables over one async psycopg pool (per process)."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool, *, settle_shards: int = 4) -> None:
        if settle_shards < 1:
            raise errors.InvalidArgument("settle_shards", "at least one shard")
        self._pool = pool
        self.settle_shards = settle_shards
        # Batches of this process go round the shards, starting at a random one so processes spread.
        self._shard = random.randrange(settle_shards)
        self._q = sqlfiles.queries("ledger.sql")
        self._hq = sqlfiles.queries("healing.sql")
        self._aq = sqlfiles.queries("audit.sql")
        self._live = sqlfiles.queries("live.sql")

    @classmethod
    async def open(cls, settings: Common) -> Ledger:
        """Opens a pool of ``settings.db_pool_min..db_pool_max`` autocommit connections and waits until
        the first is ready (raises DependencyUnavailable if PostgreSQL cannot be reached in time)."""
        pool = psycopg_pool.AsyncConnectionPool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            timeout=settings.db_timeout_s,
            kwargs={"autocommit": True},
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=settings.db_timeout_s)
        except pgerrors.UNAVAILABLE as exc:
            await pool.close()
            raise pgerrors.unavailable(exc) from exc
        return cls(pool, settle_shards=settings.settle_shards)

    async def close(self) -> None:
        await self._pool.close()

    async def open_queue(self, app: procrastinate.App) -> None:
        """Opens procrastinate's App on this ledger's pool (the job queue lives in the same database)."""
        await queue.open_app(app, self._pool)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; connection trouble becomes DependencyUnavailable (``pgerrors``). SQL errors
        that are not about the connection (a violated constraint: a bug) pass through unchanged."""
        with pgerrors.mapped():
            async with self._pool.connection() as conn:
                yield conn

    # --- the API's write --------------------------------------------------------------------------

    async def record_batch(self, reservations: Sequence[PendingReservation]) -> RecordedBatch:
        """Records the batch ``pending`` in one shard, joined to that shard's waiting settle job,
        atomically, in one statement. Returns the job of the first reservation's sale (a batch of several
        sales joins one job per sale) and the ids it inserted. A reservation id already in the ledger keeps
        its first row and is not among the inserted ids."""
        if not reservations:
            raise errors.InvalidArgument("reservations", "a batch holds at least one reservation")
        self._shard = (self._shard + 1) % self.settle_shards
        params = {
            "queue": QUEUE_SETTLE,
            "task": TASK_SETTLE_BATCH,
            "shard": self._shard,
            "ids": [r.reservation_id for r in reservations],
            "sales": [r.sale for r in reservations],
            "users": [r.user for r in reservations],
            "quantities": [r.quantity for r in reservations],
            "reserved_at_ms": [r.reserved_at_ms for r in reservations],
        }
        try:
            async with self._conn() as conn:
                cur = await conn.execute(self._q["record_batch"], params)
                result = await cur.fetchall()
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            raise errors.InvalidArgument("reservations", f"refused by the ledger: {exc}") from exc
        jobs = {sale: int(job) for sale, job, _ in result}
        inserted = frozenset(rid for _, _, ids in result for rid in ids)
        return RecordedBatch(jobs[reservations[0].sale], inserted)

    # --- reading ----------------------------------------------------------------------------------

    async def get_reservation(self, reservation_id: str) -> LedgerRow | None:
        try:
            async with self._conn() as conn:
                cur = await conn.execute(self._q["get_reservation"], {"reservation_id": reservation_id})
                row = await cur.fetchone()
        except psycopg.errors.InvalidTextRepresentation:
            return None  # not a uuid: no such reservation
        if row is None:
            return None
        rid, sale, user, qty, status, reason, job_id, attempts, created, settled, *hold = row
        return LedgerRow(rid, sale, user, qty, Status(status), reason, job_id, attempts, created, settled, *hold)

    async def rows(self, sale: str) -> list[audit.Row]:
        """Every reservation of the sale, as the audit reads them."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["rows"], {"sale": sale})
            return [
                audit.Row(rid, user, int(qty), status, reason)
                for rid, user, qty, status, reason in await cur.fetchall()
            ]

    async def counts(self, sale: str) -> dict[str, int]:
        """Units by status, every status present (0 when none)."""
        out = {status.value: 0 for status in Status}
        async with self._conn() as conn:
            cur = await conn.execute(self._q["counts"], {"sale": sale})
            for status, units in await cur.fetchall():
                out[status] = int(units)
        return out

    async def settle_backlog(self, sale: str) -> Backlog:
        """What the sale's workers still have to settle, read through the partial index of pending rows (its
        cost follows the backlog, not the sale)."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["settle_backlog"], {"sale": sale})
            row = await cur.fetchone()
        assert row is not None
        return Backlog(int(row[0]), int(row[1]), max(0, int(row[2])))

    async def tally(self, sale: str) -> Tally:
        """Units of the sale by status, without reading its settled rows: pending through the partial
        index of pending rows, confirmed and compensated from the totals every settling statement keeps
        (migration 0010). ``counts`` reads the rows themselves: the audit's independent view."""
        return (await self.suspects(sale, cutoff_ms=0, limit=0))[0]

    async def checkout(self, reservation_id: str, *, user: str, key: str, payment_ref: str) -> bool:
        """Pays for a held reservation of ``user``: ``held -> paid`` with the payment reference, if and only if
        its hold has not expired by the ledger's clock and neither the expiry sweep nor another checkout moved
        it first (one conditional UPDATE). Returns whether this call paid it; read the row to say why not."""
        try:
            async with self._conn() as conn:
                cur = await conn.execute(
                    self._q["checkout"],
                    {"reservation_id": reservation_id, "user": user, "key": key, "payment_ref": payment_ref},
                )
                row = await cur.fetchone()
        except psycopg.errors.InvalidTextRepresentation:
            return False  # not a uuid: no such reservation
        assert row is not None
        return int(row[0]) == 1

    async def expire_due(self, limit: int) -> list[Expired]:
        """Expires up to ``limit`` held reservations whose hold has passed, earliest first, in one statement
        (rows a checkout or another sweeper holds are skipped). Returns the rows this call expired: their
        units are owed back to the sale in Redis (``StockEngine.expire``, then ``mark_returned``)."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["expire_due"], {"limit": limit})
            return [Expired(rid, sale, int(qty), user) for rid, sale, qty, user in await cur.fetchall()]

    async def hold_work(self, *, older_s: float) -> HoldWork:
        """Whether any held reservation is due and whether any expired one has waited ``older_s`` seconds for
        Redis to take its units back, in one statement over the partial indexes of such rows: what the expiry
        sweep asks first, so a ledger without holds costs it one cheap read."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["hold_work"], {"older_s": older_s})
            row = await cur.fetchone()
        assert row is not None
        return HoldWork(due=bool(row[0]), unreturned=bool(row[1]))

    async def expired_unreturned(self, *, older_s: float, limit: int, sale: str | None = None) -> list[Expired]:
        """Expired reservations whose units Redis has not taken back ``older_s`` seconds after their expiry
        (the sweeper died in between), oldest first; of one sale, or of every sale."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["expired_unreturned"], {"sale": sale, "older_s": older_s, "limit": limit})
            return [Expired(rid, s, int(qty), user) for rid, s, qty, user in await cur.fetchall()]

    async def expired_of(self, reservation_ids: Sequence[str]) -> list[Expired]:
        """The listed reservations the ledger expired (others are absent), with buyer and quantity: what
        ``StockEngine.expire`` needs for each."""
        if not reservation_ids:
            return []
        async with self._conn() as conn:
            cur = await conn.execute(self._q["expired_of"], {"ids": list(reservation_ids)})
            return [Expired(rid, s, int(qty), user) for rid, s, qty, user in await cur.fetchall()]

    async def mark_returned(self, reservation_ids: Sequence[str]) -> None:
        """Records that Redis has taken back the units of these expired reservations."""
        if not reservation_ids:
            return
        async with self._conn() as conn:
            await conn.execute(self._q["mark_returned"], {"ids": list(reservation_ids)})

    async def suspects(self, sale: str, *, cutoff_ms: int, limit: int) -> tuple[Tally, list[tuple[Any, ...]]]:
        """The sale's counts (as ``tally``) and, in the same snapshot, up to ``limit`` of its pending rows
        reserved at or before ``cutoff_ms`` (Redis clock) whose job will not settle them, oldest first: what
        the reconciler looks at. Rows are (reservation_id, user, quantity, status, job_id, reserved_at_ms,
        reason, job_status, settled_age_ms)."""
        async with self._conn() as conn:
            cur = await conn.execute(
                self._q["tally_and_suspects"], {"sale": sale, "cutoff_ms": cutoff_ms, "limit": limit}
            )
            got = await cur.fetchall()
        head = got[0]
        tally = Tally(int(head[0]), int(head[1]), int(head[2]), int(head[3]), int(head[4]), int(head[5]))
        return tally, [row[6:] for row in got if row[6] is not None]

    async def import_settled(
        self, sale: str, reservations: Sequence[PendingReservation], status: Status, reason: Reason | None = None
    ) -> int:
        """Benchmark and test data only: records reservations that are already final (``confirmed``, or
        ``compensated`` with a reason) with the sale's totals, in one statement. Returns rows written."""
        if status not in (Status.CONFIRMED, Status.COMPENSATED):
            raise errors.InvalidArgument("status", "only settled rows are imported")
        params = {
            "sale": sale,
            "status": status,
            "reason": reason,
            "ids": [r.reservation_id for r in reservations],
            "users": [r.user for r in reservations],
            "quantities": [r.quantity for r in reservations],
            "reserved_at_ms": [r.reserved_at_ms for r in reservations],
        }
        async with self._conn() as conn:
            cur = await conn.execute(self._q["import_settled"], params)
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def live(self, sale: str) -> LiveLedger:
        """The sale as the live page shows it, in one statement that reads no settled row."""
        async with self._conn() as conn:
            cur = await conn.execute(self._live["live_sale"], {"sale": sale})
            row = await cur.fetchone()
        assert row is not None  # the statement always answers one row
        pending, confirmed, compensated, oldest, sku, stock, start, end = row
        return LiveLedger(
            int(pending),
            int(confirmed),
            int(compensated),
            None if oldest is None else max(0.0, float(oldest)),
            sku,
            None if stock is None else int(stock),
            start,
            end,
        )

    async def live_sales(self, namespace: str, *, limit: int = 50) -> list[LiveSale]:
        """The namespace's sales the ledger knows, newest window first (at most ``limit``)."""
        async with self._conn() as conn:
            cur = await conn.execute(self._live["live_sales"], {"namespace": namespace, "limit": limit})
            return [
                LiveSale(sale, sku, int(stock), start, end) for sale, sku, stock, start, end in await cur.fetchall()
            ]

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.execute(self._q["ping"])

    # --- sales ------------------------------------------------------------------------------------

    async def sale_exists(self, sale: str) -> bool:
        """Whether the ledger knows the sale (and it was not deleted): when Redis does not, its counters
        are lost, not absent."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["sale_exists"], {"sale": sale})
            return await cur.fetchone() is not None

    async def ensure_sale(
        self,
        sale: str,
        *,
        sku: str,
        stock: int,
        per_user_limit: int,
        window_start: datetime | None,
        window_end: datetime | None,
        buyer_rate: float = 0.0,
        buyer_burst: int = 0,
        ip_rate: float = 0.0,
        ip_burst: int = 0,
        hold_seconds: int = 0,
        buckets: int = 1,
    ) -> None:
        """Creates or updates the sale's mirror row (a no-op write when nothing changed). It holds all a
        restore needs to put the sale back in Redis, rate limits included, and the sale's checkout hold
        (0: none), which the settling statement reads."""
        if isinstance(hold_seconds, bool) or not isinstance(hold_seconds, int) or hold_seconds < 0:
            raise errors.InvalidArgument("holdSeconds", "must be an integer >= 0")
        async with self._conn() as conn:
            await conn.execute(
                self._q["ensure_sale"],
                {
                    "sale": sale,
                    "sku": sku,
                    "stock": stock,
                    "per_user_limit": per_user_limit,
                    "window_start": window_start,
                    "window_end": window_end,
                    "buyer_rate": buyer_rate,
                    "buyer_burst": buyer_burst,
                    "ip_rate": ip_rate,
                    "ip_burst": ip_burst,
                    "hold_seconds": hold_seconds,
                    "buckets": buckets,
                },
            )

    async def mark_sale_deleted(self, sale: str) -> None:
        """Records that the FlashSale is being deleted, so no process restores it in Redis again."""
        async with self._conn() as conn:
            await conn.execute(self._q["mark_sale_deleted"], {"sale": sale})

    async def restore_source(self, sale: str, *, settle_writes_s: float = 1.0) -> RestoreSource | None:
        """The sale's row and all its reservations, read in one snapshot; None if the ledger does not know
        the sale. It first waits (at most ``settle_writes_s``) until the writes in progress when it was
        called have ended: a reservation the lost Redis accepted whose row is being committed right now must
        be counted, or its unit would be sold a second time."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["write_horizon"])
            horizon = await cur.fetchone()
            deadline = time.monotonic() + settle_writes_s
            while horizon is not None and time.monotonic() < deadline:
                cur = await conn.execute(self._q["writes_before"], {"horizon": horizon[0]})
                done = await cur.fetchone()
                if done is not None and done[0]:
                    break
                await asyncio.sleep(0.005)
            cur = await conn.execute(self._q["restore_source"], {"sale": sale})
            found = await cur.fetchall()
        if not found:
            return None
        stock, limit, start, end, brate, bburst, irate, iburst, deleted, buckets = found[0][:10]
        rows = [
            (str(rid), str(user), int(qty), str(status), int(ts))
            for *_, rid, user, qty, status, ts in found
            if rid is not None
        ]
        return RestoreSource(
            sale,
            int(stock),
            int(limit),
            start,
            end,
            float(brate),
            int(bburst),
            float(irate),
            int(iburst),
            bool(deleted),
            rows,
            int(buckets),
        )

    # --- settling (the worker, the reconciler) ----------------------------------------------------

    async def settle(
        self,
        settlements: Sequence[Settlement],
        *,
        attempt: int,
        job_id: int | None = None,
        claim: Claim | None = None,
    ) -> list[Settled]:
        """Moves each listed reservation still ``pending`` to its wanted outcome in ONE statement and
        returns the status of every listed reservation the ledger holds (ids it does not hold are
        absent). Rows already final keep their outcome: the first writer decided. ``job_id``, when
        given, is stamped on the rows moved (the settle job that decided them); ``claim`` runs the
        statement on that claim's transaction (the rows it holds locked)."""
        if not settlements:
            return []
        params = {
            "ids": [s.reservation_id for s in settlements],
            "sales": [s.sale for s in settlements],
            "outcomes": [s.outcome for s in settlements],
            "reasons": [s.reason for s in settlements],
            "attempt": attempt,
            "job_id": job_id,
        }
        if claim is not None:
            cur = await claim.conn.execute(self._q["settle"], params)
            rows = await cur.fetchall()
        else:
            async with self._conn() as conn:
                cur = await conn.execute(self._q["settle"], params)
                rows = await cur.fetchall()
        return [
            Settled(rid, sale, int(qty), Status(status), bool(moved), lag)
            for rid, sale, qty, status, moved, lag in rows
        ]

    async def settle_barrier(self, sale: str, shard: int) -> None:
        """Waits until every writer that joined a waiting settle job of (sale, shard) has committed: a
        settle job calls this once before its first ``claim``, so it sees every row that joined it."""
        async with self._conn() as conn:
            await conn.execute(self._q["settle_barrier"], {"sale": sale, "shard": shard})

    @asynccontextmanager
    async def claim(self, sale: str, shard: int, limit: int) -> AsyncIterator[Claim]:
        """Up to ``limit`` pending rows of (sale, shard), oldest first, locked by a transaction that
        commits when the block ends (rolls back on an exception or when the process dies, leaving the
        rows pending and free for the next claim). Rows another claim holds are skipped."""
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(self._q["claim"], {"sale": sale, "shard": shard, "limit": limit})
            rows = [Claimed(rid, s, int(qty)) for rid, s, qty in await cur.fetchall()]
            yield Claim(conn, rows)

    async def settled_of_job(self, job_id: int) -> list[Settled]:
        """The rows a settle job moved (``moved`` False): what a re-run of the job replays to Redis."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["settled_of_job"], {"job_id": job_id})
            rows = await cur.fetchall()
        return [Settled(rid, sale, int(qty), Status(status), False, None) for rid, sale, qty, status in rows]

    async def current(self, reservation_ids: Sequence[str]) -> list[Settled]:
        """The status of each listed reservation now (``moved`` False): what another writer decided."""
        if not reservation_ids:
            return []
        async with self._conn() as conn:
            cur = await conn.execute(self._q["current"], {"ids": list(reservation_ids)})
            rows = await cur.fetchall()
        return [Settled(rid, sale, int(qty), Status(status), False, None) for rid, sale, qty, status in rows]

    async def pending_of_job(self, job_id: int) -> list[tuple[str, str, int]]:
        """(reservation_id, sale, quantity) of the job's rows still pending: what a failed job left."""
        async with self._conn() as conn:
            cur = await conn.execute(self._q["pending_of_job"], {"job_id": job_id})
            return [(rid, sale, int(qty)) for rid, sale, qty in await cur.fetchall()]

    # --- the reconciler's reads and writes (healing.sql) ------------------------------------------

    async def _fetch(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            return list(await cur.fetchall())

    async def sale_entries(self, sale: str) -> tuple[dict[str, LedgerEntry], dict[int, str]]:
        """Every row of the sale as healing reads it, and the status of every job they point at (a vanished
        job stays absent), in one snapshot. Only a rebuild needs this: it writes every row back into Redis."""
        jobs: dict[int, str] = {}
        return entries(await self._fetch(self._hq["sale_rows"], {"sale": sale}), jobs), jobs

    async def entries_by_id(
        self, sale: str, reservation_ids: Sequence[str]
    ) -> tuple[dict[str, LedgerEntry], dict[int, str]]:
        """The listed reservations of the sale the ledger holds, as healing reads them, with their jobs' statuses."""
        jobs: dict[int, str] = {}
        rows = await self._fetch(self._hq["rows_by_id"], {"sale": sale, "ids": list(reservation_ids)})
        return entries(rows, jobs), jobs

    @asynccontextmanager
    async def settled_entries(self, sale: str, chunk: int) -> AsyncIterator[AsyncIterator[dict[str, LedgerEntry]]]:
        """The sale's settled rows in chunks of ``chunk``, through a server-side cursor of one transaction
        (memory stays one chunk): only when a quiet sale's counts disagree."""
        async with self._conn() as conn, conn.transaction():
            cur = conn.cursor(name="stampede_explain")
            await cur.execute(self._hq["settled_rows"], {"sale": sale})

            async def chunks() -> AsyncIterator[dict[str, LedgerEntry]]:
                while rows := await cur.fetchmany(chunk):
                    yield entries(rows, {})

            try:
                yield chunks()
            finally:
                await cur.close()

    async def recorded_ids(self, reservation_ids: Sequence[str]) -> set[str]:
        """Which of the listed reservations the ledger holds."""
        return {str(r[0]) for r in await self._fetch(self._hq["recorded_ids"], {"ids": list(reservation_ids)})}

    async def record_lost(self, sale: str, records: Sequence[LostReservation], reason: Reason) -> list[str]:
        """Records Redis reservations the ledger never heard of as ``compensated`` with ``reason`` (the API
        died before its durable write, so no 202 was sent), with the sale's totals, in one statement. Returns
        the ids this call recorded: only those may be released in Redis (a row written meanwhile keeps its
        own story)."""
        params = {
            "sale": sale,
            "reason": reason,
            "ids": [r.reservation_id for r in records],
            "users": [r.user for r in records],
            "quantities": [r.quantity for r in records],
            "reserved_at_ms": [r.reserved_at_ms for r in records],
        }
        return [str(r[0]) for r in await self._fetch(self._hq["record_lost"], params)]

    async def redefer(self, sale: str, reservation_ids: Sequence[str]) -> tuple[int, int]:
        """Defers one new settle job (payload v1) for the listed rows still pending and points them at it,
        in one statement: their job vanished or finished without settling them. Returns (job id, rows)."""
        ids = list(reservation_ids)
        payload = batch_payload([PendingReservation(rid, sale, "", 1, 0) for rid in ids])
        args = json.dumps(payload, separators=(",", ":"))
        ((job_id, n),) = await self._fetch(
            self._hq["redefer"], {"queue": QUEUE_SETTLE, "task": TASK_SETTLE_BATCH, "args": args, "ids": ids}
        )
        return int(job_id), int(n)

    async def pending_ids(self, sale: str) -> list[str]:
        """The sale's pending reservations (through the partial index: what is pending, not the sale)."""
        return [str(r[0]) for r in await self._fetch(self._hq["pending_ids"], {"sale": sale})]

    async def unfinished_jobs(self, sale: str) -> int:
        """Jobs still waiting or running for the sale's pending rows: what a deleted sale waits for."""
        ((n,),) = await self._fetch(self._hq["sale_jobs_unfinished"], {"sale": sale})
        return int(n)

    # --- the sale audit (audit.sql) ---------------------------------------------------------------

    async def settle_lag(self, sale: str) -> tuple[int, float, float, float, float]:
        """(count, p50, p95, p99, max) in seconds of the 202 -> confirmed lag of the sale's confirmed rows;
        all zero when none is confirmed."""
        rows = await self._fetch(self._aq["lag_percentiles"], {"sale": sale})
        if not rows or not rows[0][0]:
            return 0, 0.0, 0.0, 0.0, 0.0
        n, p50, p95, p99, top = rows[0]
        return int(n), float(p50), float(p95), float(p99), float(top)

    async def sale_limits(self, sale: str) -> tuple[int, int] | None:
        """(stock, per-user limit) as the ledger's sales table mirrors the FlashSale; None if unknown."""
        rows = await self._fetch(self._aq["sale_row"], {"sale": sale})
        return None if not rows else (int(rows[0][0]), int(rows[0][1]))

    # --- benchmarks -------------------------------------------------------------------------------

    async def record_pending_deferred(
        self,
        reservations: Sequence[PendingReservation],
        defer: Callable[[psycopg.AsyncConnection[Any]], Awaitable[int]],
    ) -> None:
        """Benchmark only: the two-step form ``record_batch`` replaced. In one transaction ``defer`` defers
        the job on the connection given (procrastinate's deferrer with ``connection=``), then the rows are
        inserted pending, joined to it."""
        async with self._conn() as conn, conn.transaction():
            job_id = await defer(conn)
            await conn.execute(
                self._q["insert_pending"],
                {
                    "job_id": job_id,
                    "ids": [r.reservation_id for r in reservations],
                    "sales": [r.sale for r in reservations],
                    "users": [r.user for r in reservations],
                    "quantities": [r.quantity for r in reservations],
                    "reserved_at_ms": [r.reserved_at_ms for r in reservations],
                },
            )


def entries(rows: Iterable[Sequence[Any]], jobs: dict[int, str]) -> dict[str, LedgerEntry]:
    """Rows of healing.sql's shape (and ``tally_and_suspects``'s suspects) as entries; the status of each job
    they point at goes to ``jobs`` (a vanished job stays absent)."""
    out: dict[str, LedgerEntry] = {}
    for rid, user, qty, status, job, ts, reason, job_status, age in rows:
        job_id = None if job is None else int(job)
        out[rid] = LedgerEntry(
            rid, user, int(qty), Status(status), job_id, int(ts), reason, None if age is None else int(age)
        )
        if job_id is not None and job_status is not None:
            jobs[job_id] = str(job_status)
    return out


__all__ = [
    "PAYLOAD_SHARD_VERSION",
    "PAYLOAD_VERSION",
    "Backlog",
    "Claim",
    "Claimed",
    "Expired",
    "HoldWork",
    "Ledger",
    "LedgerRow",
    "LiveLedger",
    "LiveSale",
    "LostReservation",
    "PendingReservation",
    "RestoreSource",
    "Settled",
    "Settlement",
    "batch_payload",
    "entries",
]
