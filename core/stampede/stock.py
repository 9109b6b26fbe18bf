"""The Redis stock engine: a thin typed wrapper over the Lua scripts in ``lua/``.

Every state change of a sale's counters is one script, so it is atomic on a single Redis and, because
all of a sale's keys share the ``{sale}`` hash tag, on a Redis Cluster too (``redis+cluster://`` URLs get
redis-py's cluster client, which sends each script to the master of the sale's slot). Scripts are
registered once per client (EVALSHA, reloaded on NOSCRIPT by redis-py). Arguments are checked here before
any round trip and again inside the scripts; a script's answer becomes a typed result or a typed domain
error, never a raw Redis string.

With ``ack_replicas`` > 0 a reserve is answered only once that many replicas hold it (Redis ``WAIT`` on the
connection that ran the script): a failover then promotes a replica that holds every reservation a buyer
was told about (see "Redis Cluster and failover" in docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

from . import errors
from .domain import Outcome, ReservationRecord
from .identifiers import BUYER_ID_RULE, IDEMPOTENCY_KEY_RULE, is_buyer_id, is_idempotency_key
from .names import BUCKETS_MAX, SaleKeys, bucket_keys, home_bucket, sale_keys
from .redis_errors import UNAVAILABLE
from .redis_url import client_url, is_cluster
from .vocabulary import Dependency, RedisState
from .waitroom import WaitingRoom

# Errors of one reserve in a batch after which it is sent again: nothing ran (a slot that moved, a script
# cache that was emptied, a node busy with a slot migration).
_RESEND = (MovedError, NoScriptError, TryAgainError)

SCRIPTS = (
    "reserve",
    "confirm",
    "release",
    "expire",
    "seed",
    "gate",
    "snapshot",
    "restore",
    "unlock",
    "records",
    "suspects",
    "import",
    "give",
    "take",
    "freeze",
)
FREEZE_MS = 15_000  # how long a restock or a restore stops moves between buckets at most (if it dies)
MOVE_ROUNDS = 64  # moves one reserve may make before it is answered "retry" instead of waiting on others
_INCLUDE = "--#include "
IMPORT_CHUNK = 2000  # reservations per import.lua call: Redis stays responsive between calls


@cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` as shipped inside the package, each ``--#include <lib>`` line
    replaced by ``lua/<lib>.lua`` (Redis scripts cannot load one another)."""
    text = (resources.files("stampede") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    return "".join(
        script_source(line[len(_INCLUDE) :].strip()) if line.startswith(_INCLUDE) else line
        for line in text.splitlines(keepends=True)
    )


@dataclass(frozen=True, slots=True)
class SaleConfig:
    """What Redis must know of a sale to take reservations on its own."""

    total: int
    per_user_limit: int = 1
    buyer_rate: float = 0.0  # tokens per second per buyer; 0 disables the bucket
    buyer_burst: int = 0
    ip_rate: float = 0.0
    ip_burst: int = 0
    buckets: int = 1  # stock buckets (``spec.stock.buckets``): fixed when the sale is created


@dataclass(frozen=True, slots=True)
class SeedResult:
    outcome: str  # created | restocked | unchanged
    total: int
    remaining: int
    sold: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reservation the engine accepted (or replayed for an idempotency key)."""

    sale: str
    reservation_id: str
    user: str
    quantity: int
    state: RedisState
    replay: bool
    remaining: int | None  # units left after this reservation; None on a replay
    reserved_at_ms: int | None = None  # Redis time the script stamped it with; None on a replay


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All counters of a sale read at one instant. ``total == remaining + pending + confirmed`` holds
    after every script; ``released`` is cumulative (units returned to stock)."""

    sale: str
    total: int
    remaining: int
    pending: int
    confirmed: int
    released: int
    open: bool
    per_user_limit: int
    pending_count: int
    reservations: int

    @property
    def balanced(self) -> bool:
        return self.total == self.remaining + self.pending + self.confirmed


def _snapshot(sale: str, flat: Sequence[Any]) -> Snapshot:
    """snapshot.lua's answer ({field, value, ...} of the meta hash and the set sizes) as a Snapshot."""
    d = {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}
    return Snapshot(
        sale=sale,
        total=int(d["total"]),
        remaining=int(d["remaining"]),
        pending=int(d["pending"]),
        confirmed=int(d["confirmed"]),
        released=int(d.get("released", 0)),
        open=d.get("open") == "1",
        per_user_limit=int(d.get("limit", 1)),
        pending_count=int(d["pending_count"]),
        reservations=int(d["reservations"]),
    )


def _summed(sale: str, flats: Sequence[Sequence[Any]]) -> tuple[Snapshot, dict[str, int]]:
    """snapshot.lua's answers of every stock bucket of a sale as one snapshot (counters summed; gate and
    limit are bucket 0's) and its counters by name."""
    snaps = [_snapshot(sale, flat) for flat in flats]
    counts: dict[str, int] = {}
    for flat in flats:
        for name, value in counter_fields(flat).items():
            counts[name] = counts.get(name, 0) + value
    first = snaps[0]
    snap = Snapshot(
        sale=sale,
        total=sum(x.total for x in snaps),
        remaining=sum(x.remaining for x in snaps),
        pending=sum(x.pending for x in snaps),
        confirmed=sum(x.confirmed for x in snaps),
        released=sum(x.released for x in snaps),
        open=first.open,
        per_user_limit=first.per_user_limit,
        pending_count=sum(x.pending_count for x in snaps),
        reservations=sum(x.reservations for x in snaps),
    )
    return snap, counts


# Fields of a sale's meta hash that configure it rather than count anything.
CONFIG_FIELDS = frozenset(
    {"open", "limit", "buyer_rate", "buyer_burst", "ip_rate", "ip_burst", "run", "buckets", "frozen"}
)


def counter_fields(flat: Sequence[Any]) -> dict[str, int]:
    """Every counter in snapshot.lua's answer: the meta hash's integer fields that are not configuration,
    and the set sizes. A counter another script adds to the meta hash appears here without a change."""
    out: dict[str, int] = {}
    for i in range(0, len(flat), 2):
        name, raw = _s(flat[i]), _s(flat[i + 1])
        if name in CONFIG_FIELDS:
            continue
        try:
            out[name] = int(raw)
        except ValueError:
            continue  # not a counter (a token, a timestamp written as text)
    return out


@dataclass(frozen=True, slots=True)
class SuspectView:
    """What a reconcile pass reads of a sale in Redis (``StockEngine.suspects``)."""

    now_ms: int  # Redis's clock
    snapshot: Snapshot | None  # None: Redis does not know the sale
    young: int  # pending reservations younger than the grace period: in flight
    window: list[tuple[str, int]]  # (id, reserved_at_ms) of older pending reservations, oldest first


@dataclass(frozen=True, slots=True)
class RestoreResult:
    outcome: str  # restored | current (already restored on this Redis run) | lost_lock (another took over)
    total: int
    remaining: int
    pending: int
    confirmed: int


def idempotency_field(user: str, idempotency_key: str) -> str:
    """The field of the sale's idempotency hash for a buyer's key, as reserve.lua writes it."""
    return f"{user}\0{idempotency_key}"


def new_reservation_id() -> str:
    return str(uuid.uuid4())


def _check_quantity(quantity: object) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise errors.InvalidArgument("quantity", "must be an integer")
    if quantity < 1:
        raise errors.InvalidArgument("quantity", "must be at least 1")
    return quantity


def _check_user(user: object) -> str:
    if not is_buyer_id(user):
        raise errors.InvalidArgument("user", f"must be {BUYER_ID_RULE}")
    return user


def _keys(sale: object) -> SaleKeys:
    if not isinstance(sale, str):
        raise errors.InvalidArgument("sale", "must be a string")
    try:
        return sale_keys(sale)
    except ValueError as exc:
        raise errors.InvalidArgument("sale", str(exc)) from None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _merged(fan: Sequence[Sequence[Any]]) -> list[str]:
    """Per id, the code of the one stock bucket that holds the reservation ('unknown' where none does): an
    id-only call (confirm, release, expire) goes to every bucket of a sale, and only its bucket knows it."""
    out = [_s(c) for c in fan[0]]
    for codes in fan[1:]:
        for i, c in enumerate(codes):
            if out[i] == "unknown":
                out[i] = _s(c)
    return out


def _code(raw: Any) -> str:
    """A reserve script's answer code ('' for an exception in its place)."""
    return _s(raw[0]) if isinstance(raw, list) and raw else ""


def parse_record(reservation_id: str, raw: str) -> ReservationRecord:
    state, qty, ts, user = raw.split("|", 3)
    return ReservationRecord(reservation_id, RedisState(state), int(qty), int(ts), user)


def _settled_record(reservation_id: str, signed_quantity: int) -> ReservationRecord:
    """A settled reservation as the compact store keeps it (``lua/smallhash.lua``): its outcome by sign, its
    quantity; no time or buyer (the ledger has both)."""
    state = RedisState.CONFIRMED if signed_quantity > 0 else RedisState.RELEASED
    return ReservationRecord(reservation_id, state, abs(signed_quantity), 0, "")


def format_record(record: ReservationRecord) -> str:
    """A reservation as the ``res`` hash holds it (what the Lua scripts write)."""
    return f"{record.state}|{record.quantity}|{record.reserved_at_ms}|{record.user}"


_CONFIRM = {
    "confirmed": Outcome.CONFIRMED,
    "already": Outcome.ALREADY,
    "released": Outcome.RELEASED,
    "unknown": Outcome.UNKNOWN,
}
_EXPIRE = {
    "released": Outcome.RELEASED,
    "already": Outcome.ALREADY,
    "unknown": Outcome.UNKNOWN,
}
_RELEASE = {
    "released": Outcome.RELEASED,
    "already": Outcome.ALREADY,
    "confirmed": Outcome.REFUSED_CONFIRMED,
    "unknown": Outcome.UNKNOWN,
}


@dataclass(frozen=True, slots=True)
class ReserveCall:
    """One ``reserve.lua`` invocation: checked arguments, its KEYS and ARGV, and the reading of its answer.
    Shared by ``StockEngine.reserve`` and callers that pipeline many reserves (the API's coalescer), so
    both send the same call and get the same typed result or domain error."""

    sale: str
    user: str
    quantity: int
    reservation_id: str
    keys: list[str]
    args: list[Any]

    def routed(self, buckets: int) -> ReserveCall:
        """This call sent to the buyer's home bucket of a sale of ``buckets`` stock buckets, telling the
        script the bucket count it was routed by (a sale whose count differs answers ``bad_buckets``)."""
        if buckets == 1:
            keys = self.keys
        else:
            home = bucket_keys(self.sale, buckets)[home_bucket(self.user, buckets)]
            cut = len(SaleKeys(self.sale).base)  # reserve_call checked the sale
            keys = [home.base + key[cut:] for key in self.keys]
        return ReserveCall(self.sale, self.user, self.quantity, self.reservation_id, keys, [*self.args[:6], buckets])

    def answer(self, raw: Sequence[Any]) -> Reservation:
        """The script's answer as a Reservation, or the domain error that says why not."""
        code, rid_out, state, number = _s(raw[0]), raw[1], raw[2], int(raw[3])
        sale = self.sale
        if code == "ok":
            return Reservation(
                sale, self.reservation_id, self.user, self.quantity, RedisState.PENDING, False, number, int(raw[4])
            )
        if code == "replay":
            return Reservation(sale, _s(rid_out), self.user, self.quantity, RedisState(_s(state)), True, None)
        if code == "sold_out":
            raise errors.SoldOut(sale, number)
        if code == "limit":
            raise errors.LimitReached(sale, number)
        if code == "closed":
            raise errors.SaleClosed(sale)
        if code == "unknown_sale":
            raise errors.SaleNotFound(sale)
        if code == "not_admitted":
            raise errors.AdmissionRequired(sale)
        if code == "admission_expired":
            raise errors.AdmissionExpired(sale)
        if code == "rate_limited":
            raise errors.RateLimited(_s(state), number)
        if code == "idem_conflict":
            raise errors.IdempotencyConflict(_s(rid_out))
        if code == "bad_args":
            raise errors.InvalidArgument(_s(state), "refused by the stock engine")
        if code == "bad_buckets":
            raise errors.DependencyUnavailable(Dependency.REDIS, "the sale's stock buckets changed; retry")
        raise errors.ScriptError(f"reserve.lua answered {code!r}")


def reserve_call(
    sale: str,
    user: str,
    quantity: int = 1,
    *,
    idempotency_key: str | None = None,
    reservation_id: str | None = None,
    client_ip: str | None = None,
    admission_expires_ms: int | None = None,
) -> ReserveCall:
    """Checks a reserve's arguments (InvalidArgument naming the field) and builds its call.
    ``admission_expires_ms`` is the expiry of the buyer's verified admission token (None: none shown); the
    script refuses a buyer without one while the sale's waiting room is on."""
    k = _keys(sale)
    _check_user(user)
    _check_quantity(quantity)
    if idempotency_key is not None and not is_idempotency_key(idempotency_key):
        raise errors.InvalidArgument("Idempotency-Key", f"must be {IDEMPOTENCY_KEY_RULE}")
    fresh = reservation_id is None  # a new UUID 4: reserve.lua need not look for it among settled ones
    rid = reservation_id or new_reservation_id()
    keys = [k.meta, k.reservations, k.pending, k.holds, k.idempotency, k.buyer_bucket(user), k.room_config, k.settled]
    if client_ip:
        # No IP, no ninth key: every key of a script must be in the sale's slot (an empty name is not).
        keys.append(k.ip_bucket(client_ip))
    if admission_expires_ms is not None and (
        isinstance(admission_expires_ms, bool) or not isinstance(admission_expires_ms, int)
    ):
        raise errors.InvalidArgument("Admission-Token", "expiry must be an integer")
    admission = "" if admission_expires_ms is None else admission_expires_ms
    return ReserveCall(
        sale, user, quantity, rid, keys, [rid, user, quantity, idempotency_key or "", admission, "1" if fresh else ""]
    )


Client = aioredis.Redis | RedisCluster


class StockEngine:
    """Atomic stock operations over one ``redis.asyncio`` client, or a ``RedisCluster`` client (pooled,
    shared per process). ``ack_replicas``: replicas that must hold a reservation before ``reserve`` (and
    ``reserve_batch``) answers it; ``ack_timeout_ms``: how long to wait for them."""

    def __init__(
        self,
        client: Client,
        *,
        ack_replicas: int = 0,
        ack_timeout_ms: int = 1000,
        max_in_flight: int | None = None,
        wait_timeout: float = 5.0,
    ) -> None:
        self._client = client
        self.cluster = isinstance(client, RedisCluster)
        # redis-py's cluster client refuses a call when a node's pool is exhausted instead of waiting for a
        # free connection as the single client's blocking pool does: the engine queues its callers itself.
        self._gate = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        self._wait_timeout = wait_timeout
        self.ack_replicas = ack_replicas
        self.ack_timeout_ms = ack_timeout_ms
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}
        self._room: WaitingRoom | None = None
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = 0.0
        # The reserve pipe's own connection on a single Redis, kept between batches: taking one from the
        # blocking pool per batch (its condition, timeout and readability probe) cost more client CPU than the
        # batch's own encoding. None while a batch holds it (a concurrent batch then takes one from the pool).
        self._reserve_conn: Any = None
        # Stock buckets per sale as bucket 0's meta says (fixed while the sale exists; reserve.lua answers
        # ``bad_buckets`` to a call routed by a stale count, which drops the entry).
        self._nbuckets: dict[str, int] = {}
        self._nbuckets_reads: dict[str, asyncio.Future[int]] = {}

    @property
    def room(self) -> WaitingRoom:
        """The sale waiting rooms' adapter over this engine's client (``stampede.waitroom``)."""
        if self._room is None:
            self._room = WaitingRoom(self._client, script_source("room"), self._turn)
        return self._room

    @classmethod
    def from_url(
        cls,
        url: str,
        max_connections: int = 64,
        pool_timeout: float = 5.0,
        *,
        ack_replicas: int | None = None,
        ack_timeout_ms: int = 1000,
    ) -> StockEngine:
        """A client whose pool makes callers wait for a free connection (up to ``pool_timeout``)
        instead of failing: a burst of buyers must queue for Redis, not be refused by our own pool.
        A ``redis+cluster://`` URL gives redis-py's cluster client (``max_connections`` per node).
        ``ack_replicas`` None: 1 on a cluster, 0 on a single Redis (the settings' default)."""
        if ack_replicas is None:
            ack_replicas = 1 if is_cluster(url) else 0
        if is_cluster(url):
            # Calls through the engine wait for one of ``max_connections`` slots; the headroom per node is for
            # the few calls that go through the client itself (scans, a worker's pipelined reads).
            cluster = RedisCluster.from_url(client_url(url), max_connections=max_connections + 16)
            return cls(
                cluster,
                ack_replicas=ack_replicas,
                ack_timeout_ms=ack_timeout_ms,
                max_in_flight=max_connections,
                wait_timeout=pool_timeout,
            )
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_timeout)
        return cls(aioredis.Redis(connection_pool=pool), ack_replicas=ack_replicas, ack_timeout_ms=ack_timeout_ms)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """One of the engine's in-flight slots on a cluster (waiting up to the pool timeout, as the single
        client's blocking pool does), once the client knows the slot map; nothing on a single Redis, whose
        pool already waits.

        The slot map first: redis-py's cluster client picks a command's node before it reads a slot map it
        does not have yet, so commands started together on a new client (or right after a failover) go to
        the startup node's connections, which the map's arrival then recycles under them (``Connection
        closed by server``, ``'NoneType' object has no attribute 'writelines'``). ``initialize`` is a no-op
        once the map is read and lets one caller read it while the others wait."""
        if self.cluster:
            try:
                await cast(RedisCluster, self._client).initialize()
            except UNAVAILABLE as exc:
                raise errors.DependencyUnavailable(Dependency.REDIS, str(exc) or type(exc).__name__) from exc
        if self._gate is None:
            yield
            return
        try:
            await asyncio.wait_for(self._gate.acquire(), self._wait_timeout)
        except TimeoutError:
            raise errors.DependencyUnavailable(Dependency.REDIS, "no free connection in time") from None
        try:
            yield
        finally:
            self._gate.release()

    async def close(self) -> None:
        conn, self._reserve_conn = self._reserve_conn, None
        if conn is not None:
            await cast(aioredis.Redis, self._client).connection_pool.release(conn)
        await self._client.aclose()

    async def ping(self) -> None:
        """One round trip to Redis (readiness); raises DependencyUnavailable when it cannot be made."""
        await self._read(self._client.ping())

    async def flush_database(self) -> None:
        """Benchmarks and tests only: empties the whole Redis database this engine uses."""
        await self._read(self._client.flushdb())

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            async with self._turn():
                return await self._scripts[name](keys=list(keys), args=list(args))
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc) or type(exc).__name__) from exc
        except ResponseError as exc:
            raise errors.ScriptError(f"{name}.lua: {exc}") from exc

    async def _node(self, key: str) -> ClusterNode | None:
        """The master of ``key``'s slot on a cluster (None on a single Redis); reads the slot map first if
        the client has not yet."""
        if not self.cluster:
            return None
        client = cast(RedisCluster, self._client)
        try:
            await client.initialize()
            node = client.get_node_from_key(key)
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc) or type(exc).__name__) from exc
        if node is None:  # only asked for a replica; the master is always there while the slot is covered
            raise errors.DependencyUnavailable(Dependency.REDIS, f"no master for the slot of {key}")
        return node

    async def master_of(self, sale: str) -> str | None:
        """``host:port`` of the cluster master holding the sale's slot (None on a single Redis)."""
        node = await self._node(_keys(sale).meta)
        return None if node is None else node.name

    async def masters_of(self, sale: str) -> list[str | None]:
        """``host:port`` of the master of each of the sale's stock buckets (None each on a single Redis)."""
        out: list[str | None] = []
        for k in await self._all(sale):
            node = await self._node(k.meta)
            out.append(None if node is None else node.name)
        return out

    async def refresh_topology(self) -> None:
        """Reads the cluster's slot map again (after a failover or a moved slot), at most every 100 ms."""
        if not self.cluster:
            return
        client = cast(RedisCluster, self._client)
        async with self._refresh_lock:
            if time.monotonic() - self._refreshed_at < 0.1:
                return
            # Every known node down right now: the next failure tries again.
            with contextlib.suppress(*UNAVAILABLE):
                await client.nodes_manager.initialize()
            self._refreshed_at = time.monotonic()

    # --- stock buckets (docs/architecture.md, "Stock buckets") -------------------------------------

    async def buckets(self, sale: str) -> int:
        """The sale's number of stock buckets (1 for a sale Redis does not know: its bucket 0 answers)."""
        n = self._nbuckets.get(sale)
        if n is not None:
            return n
        # One read per sale however many callers miss at once (a burst on a sale this process has not seen).
        task = self._nbuckets_reads.get(sale)
        if task is None:
            task = asyncio.ensure_future(self._read_buckets(sale))
            self._nbuckets_reads[sale] = task
            task.add_done_callback(lambda _: self._nbuckets_reads.pop(sale, None))
        return await asyncio.shield(task)

    async def _read_buckets(self, sale: str) -> int:
        total, raw = await self._read(self._client.hmget(_keys(sale).meta, ["total", "buckets"]))
        n = int(raw or 1)
        if total is not None:
            self._nbuckets[sale] = n
        return n

    async def _all(self, sale: str) -> tuple[SaleKeys, ...]:
        """The keys of each of the sale's buckets (one set for a sale of one bucket)."""
        _keys(sale)
        return bucket_keys(sale, await self.buckets(sale))

    async def _fan(self, name: str, sale: str, keys: Callable[[SaleKeys], list[str]], args: Sequence[Any]) -> list[Any]:
        """``lua/<name>.lua`` on every bucket of the sale, concurrently; the answers in bucket order."""
        return list(await asyncio.gather(*(self._run(name, keys(k), args) for k in await self._all(sale))))

    async def _acked(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, bool]:
        """One script, then (with ``ack_replicas``) ``WAIT`` on the same connection: its answer, and whether
        the replicas hold its writes (a failover cannot lose them)."""
        if self.ack_replicas <= 0:
            return await self._run(name, keys, args), True
        node = await self._node(keys[0])
        sha = self._scripts[name].sha
        packed = [
            resp_command(("EVALSHA", sha, len(keys), *keys, *args)),
            resp_command(("WAIT", self.ack_replicas, self.ack_timeout_ms)),
        ]
        try:
            async with self._turn():
                answer, acked = await self._send(node, packed)
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc) or type(exc).__name__) from exc
        if isinstance(answer, NoScriptError):
            await self._read(self._client.script_load(self._scripts[name].script))
            return await self._acked(name, keys, args)
        if isinstance(answer, ResponseError):
            raise errors.ScriptError(f"{name}.lua: {answer}")
        return answer, not isinstance(acked, BaseException) and int(acked) >= self.ack_replicas

    async def _move(self, sale: str, keys: tuple[SaleKeys, ...], home: int, quantity: int) -> bool:
        """Moves stock into bucket ``home`` from the bucket that has most (half of it, at least
        ``quantity``): give.lua there, then take.lua here, then both forget the move. False when no other
        bucket has any unit left. A move whose give the replicas did not acknowledge is not taken (a
        failover could undo the give after the take counted it) and stays in the giver's outbox, as does
        one whose take was not acknowledged: a restore of the sale finishes both."""
        reads = await asyncio.gather(*(self._read(self._client.hget(k.meta, "remaining")) for k in keys))
        donors = [(int(r or 0), b) for b, r in enumerate(reads) if b != home and int(r or 0) > 0]
        if not donors:
            return False
        units, donor = max(donors)
        move = uuid.uuid4().hex
        given, acked = await self._acked(
            "give", [keys[donor].meta, keys[donor].moves_out], [move, max(quantity, (units + 1) // 2), home]
        )
        if int(given) < 0:
            await asyncio.sleep(0.05)  # a restock or restore holds the buckets still for a moment
            return True
        if int(given) == 0:
            return True  # another buyer emptied it first: read again
        if not acked:
            raise errors.DependencyUnavailable(Dependency.REDIS, "a stock move was not acknowledged by a replica")
        taken, acked = await self._acked("take", [keys[home].meta, keys[home].moves_in], [move, int(given)])
        if _s(taken) != "lost" and acked:
            await self._read(self._client.hdel(keys[donor].moves_out, move))
            await self._read(self._client.hdel(keys[home].moves_in, move))
        return True

    async def _settle_moves(self, keys: tuple[SaleKeys, ...]) -> None:
        """Finishes every move still in an outbox (the buckets frozen: none starts meanwhile): taken by a
        receiver that exists, dropped for one whose meta is gone (its units are in the remainder a restore
        gives the buckets it rebuilds); then the inboxes are emptied, as no outbox names a move any more."""
        for giver in keys:
            moves = await self._read(self._client.hgetall(giver.moves_out))
            for move, value in moves.items():
                to, units = _s(value).split("|")
                receiver = keys[int(to)]
                await self._run("take", [receiver.meta, receiver.moves_in], [_s(move), int(units)])
                await self._read(self._client.hdel(giver.moves_out, move))
        for k in keys:
            await self._read(self._client.delete(k.moves_in))

    async def _moves_seen(self, keys: tuple[SaleKeys, ...]) -> tuple[int, ...]:
        """Moves in the buckets' outboxes, then each bucket's count of units ever given."""
        waiting = sum([int(await self._read(self._client.hlen(k.moves_out))) for k in keys])
        given = [int(await self._read(self._client.hget(k.meta, "moved_out")) or 0) for k in keys]
        return (waiting, *given)

    async def _freeze(self, keys: tuple[SaleKeys, ...], ms: int | None) -> list[bool]:
        """Freezes (for ``ms``) or thaws (None) every bucket's giving; which buckets exist."""
        until = "" if ms is None else str(await self.now_ms() + ms)
        return [bool(await self._run("freeze", [k.meta], [until])) for k in keys]

    # --- sale lifecycle ---------------------------------------------------------------------------

    async def seed(self, sale: str, config: SaleConfig, open: bool | None = None) -> SeedResult:
        """Creates the sale, or moves its total to ``config.total`` by delta without touching pending
        or confirmed units. Raises RestockBelowSold if the new total is below what is sold. A new sale of
        ``config.buckets`` > 1 gets its stock split evenly over its buckets; an existing sale keeps the
        bucket count it was created with."""
        k = _keys(sale)
        if isinstance(config.total, bool) or not isinstance(config.total, int) or config.total < 0:
            raise errors.InvalidArgument("stock", "must be an integer >= 0")
        if not isinstance(config.per_user_limit, int) or config.per_user_limit < 1:
            raise errors.InvalidArgument("perUserLimit", "must be an integer >= 1")
        n = config.buckets
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= BUCKETS_MAX:
            raise errors.InvalidArgument("stock.buckets", f"must be an integer from 1 to {BUCKETS_MAX}")
        gate = "" if open is None else ("1" if open else "0")
        total, have = await self._read(self._client.hmget(k.meta, ["total", "buckets"]))
        if total is not None:
            n = int(have or 1)
        if n == 1:
            code, total_, remaining, sold = await self._seed_bucket(k, config.total, config, gate, 1)
            return self._seeded(sale, config, code, total_, remaining, sold)
        keys = bucket_keys(sale, n)
        if total is None:
            shares = [config.total // n + (1 if b < config.total % n else 0) for b in range(n)]
            # Bucket 0 last: the sale exists for readers (``buckets``) only once every bucket does.
            room = await self._read(self._client.hget(k.room_config, "on"))
            for b in reversed(range(n)):
                if room is not None and b > 0:  # a waiting room set before the sale: every bucket obeys it
                    await self._read(self._client.hset(keys[b].room_config, "on", _s(room)))
                await self._seed_bucket(keys[b], shares[b], config, gate, n)
            self._nbuckets[sale] = n
            return SeedResult("created", config.total, config.total, 0)
        return await self._restock(sale, keys, config, gate)

    def _seeded(self, sale: str, config: SaleConfig, code: str, total: int, remaining: int, sold: int) -> SeedResult:
        if code == "below_sold":
            raise errors.RestockBelowSold(sale, config.total, sold)
        if code == "bad_args":
            raise errors.ScriptError("seed.lua refused arguments that passed validation")
        return SeedResult(code, total, remaining, sold)

    async def _seed_bucket(
        self, k: SaleKeys, total: int | str, config: SaleConfig, gate: str, buckets: int
    ) -> tuple[str, int, int, int]:
        run_id = await self._run_id(k.meta)
        code, total_, remaining, sold = await self._run(
            "seed",
            [k.meta],
            [
                total,
                config.per_user_limit,
                gate,
                config.buyer_rate,
                config.buyer_burst,
                config.ip_rate,
                config.ip_burst,
                run_id,
                buckets if buckets > 1 else "",
            ],
        )
        return _s(code), int(total_), int(remaining), int(sold)

    async def _restock(self, sale: str, keys: tuple[SaleKeys, ...], config: SaleConfig, gate: str) -> SeedResult:
        """Seeds an existing sale of several buckets: its configuration and gate on every bucket, and the
        change of total (added to bucket 0; a cut taken from the buckets' unsold units), read and written
        with the buckets frozen and their moves finished, so no unit is in flight between buckets. When the
        total does not change (every operator pass) nothing is frozen: the buckets' totals, read between two
        reads of their give counters that agree with no move in an outbox, sum to the total, and the
        configuration is written without touching any total."""
        before = await self._moves_seen(keys)
        totals_now = [int(await self._read(self._client.hget(k.meta, "total")) or 0) for k in keys]
        if before[0] == 0 and before == await self._moves_seen(keys) and sum(totals_now) == config.total:
            answers = [await self._seed_bucket(k, "", config, gate, len(keys)) for k in keys]
            if all(code == "unchanged" for code, *_ in answers):
                return SeedResult("unchanged", config.total, sum(a[2] for a in answers), sum(a[3] for a in answers))
        await self._freeze(keys, FREEZE_MS)
        try:
            await self._settle_moves(keys)
            metas = [
                await self._read(self._client.hmget(k.meta, ["total", "remaining", "pending", "confirmed"]))
                for k in keys
            ]
            if any(m[0] is None for m in metas):
                raise errors.SaleRestoring(sale)  # a bucket lost: the restore rebuilds it first
            totals = [int(m[0]) for m in metas]
            remaining = [int(m[1]) for m in metas]
            sold = sum(int(m[2]) + int(m[3]) for m in metas)
            delta = config.total - sum(totals)
            new = list(totals)
            if delta > 0:
                new[0] += delta
            need = -delta
            for b in range(len(keys)):
                cut = min(remaining[b], max(need, 0))
                new[b] -= cut
                need -= cut
            if need > 0:
                raise errors.RestockBelowSold(sale, config.total, sold)
            answers = [await self._seed_bucket(k, new[b], config, gate, len(keys)) for b, k in enumerate(keys)]
        finally:
            await self._freeze(keys, None)
        if any(code == "below_sold" for code, *_ in answers):
            # A reserve took a bucket's units between the read and the write: the next seed finishes the cut.
            raise errors.RestockBelowSold(sale, config.total, sold)
        return SeedResult(
            "unchanged" if delta == 0 else "restocked",
            config.total,
            sum(a[2] for a in answers),
            sum(a[3] for a in answers),
        )

    async def set_open(self, sale: str, open: bool) -> bool:
        """Opens or closes the sale; returns whether it was open before."""
        answers = await self._fan("gate", sale, lambda k: [k.meta], ["1" if open else "0"])
        prev = _s(answers[0])
        if any(_s(a) == "unknown_sale" for a in answers):
            raise errors.SaleNotFound(sale)
        return prev == "1"

    async def run_id(self, sale: str) -> str:
        """The ``run_id`` of the Redis server holding the sale (on a cluster: the master of its slot). It
        changes with every restart and differs on a failover (the promoted replica is another server), so a
        sale restored under another run_id may have lost what that run held."""
        return await self._run_id(_keys(sale).meta)

    async def _run_id(self, key: str) -> str:
        node = await self._node(key)
        try:
            if node is None:
                info = await self._client.info("server")
            else:
                info = await node.execute_command("INFO", "server")
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc) or type(exc).__name__) from exc
        if isinstance(info, bytes | str):  # a node's raw answer: "key:value" lines
            text = info.decode() if isinstance(info, bytes) else info
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            return fields.get("run_id", "").strip()
        return str(info.get("run_id", ""))

    async def restored_run(self, sale: str) -> str | None:
        """The run_id the sale was last restored under ('' if never), or None if Redis does not know it."""
        try:
            meta_total, run = await self._read(self._client.hmget(_keys(sale).meta, ["total", "run"]))
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc) or type(exc).__name__) from exc
        if meta_total is None:
            return None
        return "" if run is None else _s(run)

    async def runs(self, sale: str) -> list[tuple[str | None, str]]:
        """Per stock bucket: the run_id it was last restored (or seeded) under (None: Redis lost the
        bucket), and the run_id of the server holding it now."""
        out: list[tuple[str | None, str]] = []
        for k in await self._all(sale):
            total, run = await self._read(self._client.hmget(k.meta, ["total", "run"]))
            out.append((None if total is None else _s(run or ""), await self._run_id(k.meta)))
        return out

    async def lock_restore(self, sale: str, token: str, ttl_ms: int) -> bool:
        """Takes the sale's restore lock for ``ttl_ms`` unless another holds it: one restore at a time."""
        try:
            return bool(await self._read(self._client.set(_keys(sale).restore_lock, token, nx=True, px=ttl_ms)))
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc) or type(exc).__name__) from exc

    async def unlock_restore(self, sale: str, token: str) -> bool:
        """Gives the restore lock back if it still holds ``token``."""
        return bool(await self._run("unlock", [_keys(sale).restore_lock], [token]))

    async def restore(
        self,
        sale: str,
        token: str,
        run_id: str,
        config: SaleConfig,
        open: bool,
        records: Iterable[ReservationRecord],
    ) -> RestoreResult:
        """Sets the sale's counters and reservations from ``records`` (the ledger's view, compensated rows
        as ``released``) merged with what Redis still holds, atomically, under the restore lock ``token``
        (see ``lua/restore.lua``): pending reservations as full records, settled ones into the compact
        settled store. ``config`` and ``open`` apply only if the sale's meta is gone. Raises
        RestockBelowSold if the merged reservations hold more than the total.

        A sale of several stock buckets (``config.buckets``) is restored bucket by bucket, each reservation
        in its buyer's home bucket, with the buckets frozen and their moves finished: a bucket Redis still
        holds keeps its total, the buckets it lost share what the sale's total leaves (each at least what
        the ledger says its buyers hold); bucket 0, which holds the restore lock, last."""
        rows = list(records)
        for r in rows:
            if r.state not in (RedisState.PENDING, RedisState.CONFIRMED, RedisState.RELEASED):
                raise errors.InvalidArgument("state", f"cannot restore a reservation in state {r.state!r}")
            _check_quantity(r.quantity)
            _check_user(r.user)
        n = config.buckets
        if n <= 1:
            return await self._restore_bucket(sale, _keys(sale), token, run_id, config, config.total, open, rows, 1)
        keys = bucket_keys(sale, n)
        self._nbuckets.pop(sale, None)
        for k in keys[1:]:
            await self._read(self._client.set(k.restore_lock, token, px=FREEZE_MS))
        try:
            alive = await self._freeze(keys, FREEZE_MS)
            await self._settle_moves(keys)
            mine: list[list[ReservationRecord]] = [[] for _ in keys]
            for r in rows:
                mine[home_bucket(r.user, n)].append(r)
            kept = 0
            for k, here in zip(keys, alive, strict=True):
                if here:
                    kept += int(await self._read(self._client.hget(k.meta, "total")) or 0)
            lost = [b for b, here in enumerate(alive) if not here]
            sold = {b: sum(r.quantity for r in mine[b] if r.state != RedisState.RELEASED) for b in lost}
            spare = max(0, config.total - kept - sum(sold.values()))
            totals = {b: sold[b] + spare // len(lost) + (1 if i < spare % len(lost) else 0) for i, b in enumerate(lost)}
            results: list[RestoreResult] = []
            for b in reversed(range(n)):
                run = await self._run_id(keys[b].meta)
                got = await self._restore_bucket(sale, keys[b], token, run, config, totals.get(b, 0), open, mine[b], n)
                if got.outcome == "lost_lock":
                    return got
                results.append(got)
        finally:
            with contextlib.suppress(errors.StampedeError):
                await self._freeze(keys, None)
        outcome = "restored" if any(r.outcome == "restored" for r in results) else "current"
        return RestoreResult(
            outcome,
            sum(r.total for r in results),
            sum(r.remaining for r in results),
            sum(r.pending for r in results),
            sum(r.confirmed for r in results),
        )

    async def _restore_bucket(
        self,
        sale: str,
        k: SaleKeys,
        token: str,
        run_id: str,
        config: SaleConfig,
        total: int,
        open: bool,
        records: list[ReservationRecord],
        buckets: int,
    ) -> RestoreResult:
        args: list[Any] = [
            token,
            run_id,
            total,
            config.per_user_limit,
            "1" if open else "0",
            config.buyer_rate,
            config.buyer_burst,
            config.ip_rate,
            config.ip_burst,
            buckets,
        ]
        for r in records:
            args += [r.reservation_id, r.state, r.quantity, r.reserved_at_ms, r.user]
        code, total_, remaining, pending, confirmed = await self._run(
            "restore", [k.meta, k.reservations, k.pending, k.holds, k.restore_lock, k.settled], args
        )
        code = _s(code)
        if code == "below_sold":
            raise errors.RestockBelowSold(sale, int(total_), int(pending) + int(confirmed))
        if code == "bad_args":
            raise errors.ScriptError("restore.lua refused arguments that passed validation")
        return RestoreResult(code, int(total_), int(remaining), int(pending), int(confirmed))

    async def delete(self, sale: str) -> int:
        """Removes every key of the sale, every stock bucket's (the ledger keeps the orders). Returns keys
        deleted."""
        deleted = 0
        for k in reversed(await self._all(sale)):  # bucket 0 last: the sale is known until all are gone
            buckets = int(await self._client.hget(k.settled, "buckets") or 0)
            for start in range(0, buckets, 1000):
                chunk = [k.bucket(k.settled, i) for i in range(start, min(buckets, start + 1000))]
                deleted += int(await self._client.delete(*chunk))
            deleted += int(await self._client.delete(*k.all_static()))
            # The rate-limit buckets share the bucket's slot: on a cluster only its master is scanned.
            node = await self._node(k.meta)
            scan = (
                self._client.scan_iter(match=f"{k.base}:rl:*", count=1000)
                if node is None
                else self._client.scan_iter(match=f"{k.base}:rl:*", count=1000, target_nodes=node)
            )
            async for key in scan:
                deleted += int(await self._client.delete(key))
        self._nbuckets.pop(sale, None)
        return deleted

    # --- the hot path -----------------------------------------------------------------------------

    async def reserve(
        self,
        sale: str,
        user: str,
        quantity: int = 1,
        *,
        idempotency_key: str | None = None,
        reservation_id: str | None = None,
        client_ip: str | None = None,
        admission_expires_ms: int | None = None,
    ) -> Reservation:
        """Takes ``quantity`` units for ``user`` in one atomic step, or raises the domain error that
        says why not (SaleNotFound, RateLimited, SaleClosed, AdmissionRequired, AdmissionExpired,
        LimitReached, SoldOut, IdempotencyConflict). A replayed idempotency key returns the original
        reservation."""
        call = reserve_call(
            sale,
            user,
            quantity,
            idempotency_key=idempotency_key,
            reservation_id=reservation_id,
            client_ip=client_ip,
            admission_expires_ms=admission_expires_ms,
        )
        n = await self.buckets(call.sale)
        if self.ack_replicas == 0 and n == 1:
            raw = await self._run("reserve", call.keys, call.routed(1).args)
            if _s(raw[0]) != "bad_buckets":
                return call.answer(raw)
        (raw,) = await self.reserve_batch([call])
        if isinstance(raw, BaseException):
            raise raw
        return call.answer(raw)

    async def reserve_batch(self, calls: Sequence[ReserveCall]) -> list[Any]:
        """Runs many reserves at once (``_reserve_routed``), each in its buyer's home stock bucket. A sale of
        several buckets whose home bucket answers sold out gets stock moved there from the bucket that has
        most (``_move``) and the reserve sent again, until it is taken or every bucket is empty: "sold out"
        is answered only when a read of every bucket found none left (units in the middle of a move between
        two other buckets excepted, for the two round trips a move takes)."""
        routed = [c.routed(await self.buckets(c.sale)) for c in calls]
        out = await self._reserve_routed(routed)
        stale = [i for i, raw in enumerate(out) if _code(raw) == "bad_buckets"]
        if stale:
            for i in stale:
                self._nbuckets.pop(calls[i].sale, None)
            for i in stale:
                routed[i] = calls[i].routed(await self.buckets(calls[i].sale))
            for i, raw in zip(stale, await self._reserve_routed([routed[i] for i in stale]), strict=True):
                out[i] = raw
        short = [i for i, raw in enumerate(out) if _code(raw) == "sold_out" and int(routed[i].args[6]) > 1]
        if short:
            answers = await asyncio.gather(*(self._reserve_moving(routed[i], out[i]) for i in short))
            for i, raw in zip(short, answers, strict=True):
                out[i] = raw
        return out

    async def _reserve_moving(self, call: ReserveCall, raw: Any) -> Any:
        """A reserve its home bucket answered sold out, with stock moved home until it is taken or no other
        bucket has any: the last answer (or the error it is answered with)."""
        n = int(call.args[6])
        keys = bucket_keys(call.sale, n)
        home = home_bucket(call.user, n)
        try:
            for _ in range(MOVE_ROUNDS):
                if not await self._move(call.sale, keys, home, call.quantity):
                    return raw
                (raw,) = await self._reserve_routed([call])
                if _code(raw) != "sold_out":
                    return raw
        except errors.StampedeError as exc:
            return exc
        return errors.DependencyUnavailable(Dependency.REDIS, "stock is moving between buckets; retry")

    async def _reserve_routed(self, calls: Sequence[ReserveCall]) -> list[Any]:
        """Runs many reserves at once: one pipeline per Redis master (calls grouped by their sale's slot),
        written as one buffer and read back in order, each script atomic on its own. With ``ack_replicas``
        each pipeline ends with ``WAIT``: a reserve is answered only when the replicas hold it; when they do
        not in time its units are given back (its idempotency key forgotten) and it is answered
        DependencyUnavailable. A reserve that did not run (MOVED after a failover, NOSCRIPT, TRYAGAIN) is
        sent again, twice at most. Returns, per call, the script's raw answer (``ReserveCall.answer`` reads
        it) or the exception it is answered with (DependencyUnavailable, ScriptError)."""
        out: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(3):
            groups: dict[str, tuple[ClusterNode | None, list[int]]] = {}
            lost_slot = False
            if not self.cluster:
                groups[""] = (None, todo)  # one server: no slot to look up
            for i in todo if self.cluster else ():
                try:
                    node = await self._node(calls[i].keys[0])
                except errors.DependencyUnavailable as exc:
                    out[i] = exc
                    lost_slot = True
                    continue
                groups.setdefault("" if node is None else node.name, (node, []))[1].append(i)
            sent = list(groups.values())
            answers: list[Any]
            if len(sent) == 1:  # one pipeline (a single Redis, or one master): no task to gather
                node, idx = sent[0]
                try:
                    answers = [await self._reserve_on(node, [calls[i] for i in idx])]
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    answers = [exc]
            else:
                answers = await asyncio.gather(
                    *(self._reserve_on(node, [calls[i] for i in idx]) for node, idx in sent), return_exceptions=True
                )
            again: list[int] = []
            lost_node, noscript = lost_slot, False
            for (_, idx), got in zip(sent, answers, strict=True):
                if isinstance(got, asyncio.CancelledError):
                    raise got
                if isinstance(got, BaseException):
                    lost_node = True
                    failure = errors.DependencyUnavailable(Dependency.REDIS, str(got) or type(got).__name__)
                    for i in idx:
                        out[i] = failure
                    continue
                for i, raw in zip(idx, got, strict=True):
                    if isinstance(raw, _RESEND):
                        again.append(i)
                        lost_node = lost_node or not isinstance(raw, NoScriptError)
                        noscript = noscript or isinstance(raw, NoScriptError)
                        out[i] = errors.DependencyUnavailable(Dependency.REDIS, f"reserve.lua: {raw}")
                    elif isinstance(raw, ResponseError):
                        out[i] = errors.ScriptError(f"reserve.lua: {raw}")
                    else:
                        out[i] = raw
            if lost_node:
                await self.refresh_topology()
            if noscript:
                try:
                    await self._client.script_load(self._scripts["reserve"].script)
                except UNAVAILABLE:
                    break
            if not again:
                break
            todo = again
        return out

    async def _reserve_on(self, node: ClusterNode | None, calls: list[ReserveCall]) -> list[Any]:
        """One pipeline of reserves on one server (the cluster ``node``, or the single Redis), then
        ``WAIT`` when replicas must acknowledge. Error replies are returned in place, not raised."""
        async with self._turn():
            out = await self._pipeline(node, calls)
        if self.ack_replicas > 0:
            acked = out.pop()
            if isinstance(acked, BaseException) or int(acked) < self.ack_replicas:
                await self._unacknowledged(calls, out, acked)
        return out

    async def _pipeline(self, node: ClusterNode | None, calls: list[ReserveCall]) -> list[Any]:
        sha = self._scripts["reserve"].sha
        buffer = [resp_command(("EVALSHA", sha, len(c.keys), *c.keys, *c.args)) for c in calls]
        if self.ack_replicas > 0:
            buffer.append(resp_command(("WAIT", self.ack_replicas, self.ack_timeout_ms)))
        return await self._send(node, buffer)

    async def _send(self, node: ClusterNode | None, buffer: list[bytes]) -> list[Any]:
        """Packed commands written as one buffer on one connection of ``node`` (the single Redis: None),
        their answers read back in order; error replies returned in place."""
        if node is None:
            pool = cast(aioredis.Redis, self._client).connection_pool
            conn, self._reserve_conn = self._reserve_conn, None
            if conn is None:
                conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        else:
            conn = node.acquire_connection()
        whole = False
        try:
            if not _open(conn):
                await conn.disconnect()  # the server closed it while idle: the write below connects afresh
            await conn.send_packed_command(b"".join(buffer), check_health=False)
            out: list[Any] = []
            for _ in buffer:
                try:
                    out.append(await conn.read_response())
                except ResponseError as exc:
                    out.append(exc)
            whole = True
        except BaseException:
            # Half a pipeline may be unread: this connection can never be trusted again.
            await conn.disconnect()
            raise
        finally:
            if node is not None:
                node.release(conn)
            elif whole and self._reserve_conn is None:
                self._reserve_conn = conn  # every reply read: the next batch writes on it at once
            else:
                await pool.release(conn)
        return out

    async def _unacknowledged(self, calls: list[ReserveCall], out: list[Any], acked: Any) -> None:
        """Reserves that ran but no replica acknowledged in time: a failover now could lose them, so no
        buyer is told about them. Their units are given back (keys forgotten) and each is answered
        DependencyUnavailable; a release that cannot reach Redis leaves them to the reconciler, which
        releases a reservation without a ledger row after its grace period."""
        failure = errors.DependencyUnavailable(
            Dependency.REDIS, f"replicas acknowledged {acked!r} of {self.ack_replicas}"
        )
        by_sale: dict[str, list[int]] = {}
        for i, (call, raw) in enumerate(zip(calls, out, strict=True)):
            if isinstance(raw, list) and raw and _s(raw[0]) == "ok":
                by_sale.setdefault(call.sale, []).append(i)
                out[i] = failure
        for sale, idx in by_sale.items():
            forget = {calls[i].reservation_id: (calls[i].user, str(calls[i].args[3])) for i in idx if calls[i].args[3]}
            with contextlib.suppress(errors.StampedeError):
                await self.release(sale, [calls[i].reservation_id for i in idx], forget=forget)

    # --- settling ---------------------------------------------------------------------------------

    async def confirm(self, sale: str, reservation_ids: Iterable[str]) -> dict[str, Outcome]:
        """pending -> confirmed for each id (one script call for the batch); idempotent."""
        ids = list(reservation_ids)
        if not ids:
            return {}
        fan = await self._fan("confirm", sale, lambda k: [k.meta, k.reservations, k.pending, k.settled], ids)
        return {rid: _CONFIRM[c] for rid, c in zip(ids, _merged(fan), strict=True)}

    async def release(
        self, sale: str, reservation_ids: Iterable[str], *, forget: Mapping[str, tuple[str, str]] | None = None
    ) -> dict[str, Outcome]:
        """pending -> released for each id, returning stock; idempotent, never releases a confirmed
        reservation. ``forget`` maps a released id to its (buyer, idempotency key): in the same atomic step
        that key is forgotten (while it still names that reservation), so a retry reserves afresh and a
        lost connection can never leave the units released but the key pointing at them."""
        ids = list(reservation_ids)
        if not ids:
            return {}
        args = ids
        if forget is not None:
            args = ids + [idempotency_field(*forget[rid]) if rid in forget else "" for rid in ids]

        def keys(k: SaleKeys) -> list[str]:
            listed = [k.meta, k.reservations, k.pending, k.holds, k.settled]
            return [*listed, k.idempotency] if forget is not None else listed

        fan = await self._fan("release", sale, keys, args)
        return {rid: _RELEASE[c] for rid, c in zip(ids, _merged(fan), strict=True)}

    async def expire(self, sale: str, buyers: Mapping[str, str]) -> dict[str, Outcome]:
        """Gives back the units of holds the ledger expired (confirmed, or not yet confirmed, -> released)
        and their buyers' allowance: ``buyers`` maps each reservation id to its buyer, from the ledger row
        (a reservation compacted into the settled store keeps no buyer in Redis). One script call for the
        batch, idempotent (a repeat answers ``already``). Never call it for a reservation the ledger has not
        expired: unlike ``release`` it takes back a confirmed one."""
        if not buyers:
            return {}
        for user in buyers.values():
            if not is_buyer_id(user):
                raise errors.InvalidArgument("user", f"must be {BUYER_ID_RULE}")
        args = [part for rid, user in buyers.items() for part in (rid, user)]
        fan = await self._fan("expire", sale, lambda k: [k.meta, k.reservations, k.pending, k.holds, k.settled], args)
        return {rid: _EXPIRE[c] for rid, c in zip(buyers, _merged(fan), strict=True)}

    # --- reading ----------------------------------------------------------------------------------

    async def snapshot(self, sale: str) -> Snapshot:
        """The sale's counters (``snapshot.lua``). A sale of several stock buckets sums its buckets' (each read
        atomically, the buckets one after another; total and remaining may be short by the units of a move
        in flight for its two round trips); a bucket Redis lost makes the sale unknown (SaleNotFound), so the
        caller restores it."""
        return (await self.counters(sale))[0]

    async def counters(self, sale: str) -> tuple[Snapshot, dict[str, int]]:
        """The sale's snapshot and, read in the same atomic step, every counter Redis keeps of it by name
        (``counter_fields``): what the live page lists, so counters of features it does not know still show.
        Summed over the stock buckets of a sale of several."""
        flats = await self._fan("snapshot", sale, lambda k: [k.meta, k.pending, k.reservations, k.settled], [])
        if not all(flats):
            raise errors.SaleNotFound(sale)
        return _summed(sale, flats)

    async def reservation(self, sale: str, reservation_id: str) -> ReservationRecord | None:
        return (await self.records(sale, [reservation_id])).get(reservation_id)

    async def records(self, sale: str, reservation_ids: Sequence[str]) -> dict[str, ReservationRecord]:
        """The listed reservations Redis holds, pending or settled, in one atomic read (``records.lua``, the
        compact settled store included, so a reservation settled in Redis never looks missing); an id Redis
        does not hold, or any id of a sale Redis does not know, is absent."""
        ids = list(reservation_ids)
        if not ids:
            return {}
        fan = await self._fan("records", sale, lambda k: [k.meta, k.reservations, k.settled], ids)
        out: dict[str, ReservationRecord] = {}
        for raws in fan:
            out |= {rid: parse_record(rid, _s(raw)) for rid, raw in zip(ids, raws, strict=False) if _s(raw)}
        return out

    async def reservations(self, sale: str) -> list[ReservationRecord]:
        """Every reservation Redis holds for the sale, without blocking Redis on a large sale: the pending
        records (HSCAN), then the settled store (compact records: ``reserved_at_ms`` 0, ``user`` ''). Records
        only ever move from pending to settled, so reading in that order misses none that exists throughout."""
        found: dict[str, ReservationRecord] = {}
        for k in await self._all(sale):
            async for rid, raw in self._client.hscan_iter(k.reservations, count=1000):
                found[_s(rid)] = parse_record(_s(rid), _s(raw))
            async for field, value in self._small_hash_items(k.settled):
                found[_s(field)] = _settled_record(_s(field), int(value))
        return list(found.values())

    async def holdings(self, sale: str) -> dict[str, int]:
        """Units each buyer holds (pending + confirmed) as the per-user limit counts them."""
        out: dict[str, int] = {}
        for k in await self._all(sale):
            async for user, units in self._client.hscan_iter(k.holds, count=1000):
                out[_s(user)] = out.get(_s(user), 0) + int(units)
        return out

    async def _small_hash_items(self, directory: str) -> AsyncIterator[tuple[bytes, bytes]]:
        """Every field of a store kept as small hashes (``lua/smallhash.lua``), bucket by bucket, without
        blocking Redis. A bucket split while this runs moves fields to a new bucket, which is read too (the
        loop runs until no bucket appeared), so a field present throughout is seen at least once."""
        done = 0
        while (buckets := int(await self._read(self._client.hget(directory, "buckets")) or 0)) > done:
            for start in range(done, buckets, 100):
                pipe = self._client.pipeline(transaction=False)
                for i in range(start, min(buckets, start + 100)):
                    pipe.hgetall(SaleKeys.bucket(directory, i))
                for bucket in await self._read(pipe.execute()):
                    for item in bucket.items():
                        yield item
            done = buckets

    async def scan_reservations(self, sale: str, count: int = 5000) -> AsyncIterator[list[ReservationRecord]]:
        """Every reservation of the sale in chunks of about ``count``: the full records (HSCAN), then the
        settled store (compact records, as ``reservations``). Redis is never blocked, and the caller holds
        one chunk at a time. Records only move from pending to settled, so none present throughout is
        missed (one settled meanwhile may be seen twice)."""
        for k in await self._all(sale):
            cursor = 0
            while True:
                cursor, chunk = await self._read(self._client.hscan(k.reservations, cursor, count=count))
                yield [parse_record(_s(rid), _s(raw)) for rid, raw in chunk.items()]
                if cursor == 0:
                    break
            settled: list[ReservationRecord] = []
            async for field, value in self._small_hash_items(k.settled):
                settled.append(_settled_record(_s(field), int(value)))
                if len(settled) >= count:
                    yield settled
                    settled = []
            if settled:
                yield settled

    async def states(self, by_sale: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str | None] | None]:
        """{sale: ids} -> {sale: {id: Redis state, None if Redis does not hold it}}, or {sale: None} for a sale
        Redis does not know. ``records.lua``, one atomic read per sale, settled reservations read from the
        compact store: one pipelined round trip (no MULTI) on a single Redis; on a cluster one call per sale,
        concurrently (each sale's keys are on its slot's master, which the cluster client routes to)."""
        sales = [sale for sale in by_sale if by_sale[sale]]
        answers: list[Any]
        if self.cluster or any([await self.buckets(sale) > 1 for sale in sales]):
            answers = list(
                await asyncio.gather(
                    *(
                        self._fan("records", sale, lambda k: [k.meta, k.reservations, k.settled], list(by_sale[sale]))
                        for sale in sales
                    )
                )
            )
            # Per sale, each id's record from the bucket that holds it; a bucket Redis lost: the sale is unknown.
            answers = [
                [next((r for r in col if _s(r)), b"") for col in zip(*fan, strict=True)] if all(fan) else []
                for fan in answers
            ]
        else:
            answers = await self._records_pipelined(sales, by_sale)
        out: dict[str, dict[str, str | None] | None] = {sale: {} for sale in by_sale}
        for sale, raws in zip(sales, answers, strict=True):
            ids = by_sale[sale]
            out[sale] = (
                {rid: parse_record(rid, _s(raw)).state if _s(raw) else None for rid, raw in zip(ids, raws, strict=True)}
                if raws
                else None
            )
        return out

    async def _records_pipelined(self, sales: Sequence[str], by_sale: Mapping[str, Sequence[str]]) -> list[Any]:
        """``records.lua`` for each sale in one pipelined round trip on a single Redis. EVALSHA goes in the
        pipeline as it is (redis-py's script objects would first ask SCRIPT EXISTS, one more round trip per
        call); NOSCRIPT (Redis lost its script cache) loads the script and sends the pipeline once more."""
        script = self._scripts["records"]

        async def send() -> list[Any]:
            pipe = cast(aioredis.Redis, self._client).pipeline(transaction=False)
            for sale in sales:
                k = _keys(sale)
                pipe.evalsha(script.sha, 3, k.meta, k.reservations, k.settled, *by_sale[sale])
            answers: list[Any] = await self._read(pipe.execute(raise_on_error=False))
            return answers

        answers = await send()
        if any(isinstance(a, NoScriptError) for a in answers):
            await self._read(self._client.script_load(script.script))
            answers = await send()
        for a in answers:
            if isinstance(a, ResponseError):
                raise errors.ScriptError(f"records.lua: {a}")
        return answers

    async def suspects(self, sale: str, grace_ms: int, after: tuple[int, str] | None, limit: int) -> SuspectView:
        """What a reconcile pass reads of the sale, in one atomic step (``suspects.lua``): the clock, the
        counters (None: Redis does not know the sale), the pending reservations younger than ``grace_ms``
        (counted) and up to ``limit`` older ones (id, reserved_at_ms), in the set's order (time, then id),
        after the entry ``after`` = (reserved_at_ms, id) (None: from the oldest)."""
        score, member = ("", "") if after is None else (str(after[0]), after[1])
        fan = await self._fan(
            "suspects", sale, lambda k: [k.meta, k.pending, k.reservations, k.settled], [grace_ms, score, member, limit]
        )
        # Several stock buckets: each gives its oldest ``limit`` after the cursor, so the oldest ``limit`` of
        # their merge, in the same (time, id) order, are the sale's.
        pairs = sorted(
            ((_s(w[i]), int(float(_s(w[i + 1])))) for _, _, w, _ in fan for i in range(0, len(w), 2)),
            key=lambda p: (p[1], p[0]),
        )[:limit]
        flats = [flat for *_, flat in fan]
        snap = _summed(sale, flats)[0] if all(flats) else None
        return SuspectView(max(int(now) for now, *_ in fan), snap, sum(int(young) for _, young, *_ in fan), pairs)

    async def _read(self, call: Awaitable[Any]) -> Any:
        try:
            async with self._turn():
                return await call
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc) or type(exc).__name__) from exc

    async def import_settled(self, sale: str, records: Sequence[ReservationRecord]) -> None:
        """Benchmark and test data only: writes reservations that are already settled (``confirmed`` or
        ``released``) into a seeded sale's compact settled store with the counters they imply (remaining,
        confirmed, released, the buyers' holdings), a few thousand per script call (``lua/import.lua``), so a
        sale of a million settled reservations is made in seconds. Not for a sale that is taking
        reservations."""
        keys = await self._all(sale)
        by_bucket: list[list[Any]] = [[] for _ in keys]
        for r in records:
            if r.state not in (RedisState.CONFIRMED, RedisState.RELEASED):
                raise errors.InvalidArgument("state", f"only settled reservations are imported, not {r.state!r}")
            qty = _check_quantity(r.quantity)
            by_bucket[home_bucket(_check_user(r.user), len(keys))] += [
                r.reservation_id,
                qty if r.state == RedisState.CONFIRMED else -qty,
                r.user,
            ]
        for k, args in zip(keys, by_bucket, strict=True):
            for start in range(0, len(args), 3 * IMPORT_CHUNK):
                await self._run("import", [k.meta, k.holds, k.settled], args[start : start + 3 * IMPORT_CHUNK])

    async def pending_older_than(self, sale: str, cutoff_ms: int, limit: int = 10_000) -> list[str]:
        """Pending reservation ids reserved before ``cutoff_ms`` (Redis time), oldest first."""
        found: list[tuple[float, str]] = []
        for k in await self._all(sale):
            got = await self._read(
                self._client.zrangebyscore(k.pending, "-inf", cutoff_ms, start=0, num=limit, withscores=True)
            )
            found += [(float(score), _s(i)) for i, score in got]
        return [i for _, i in sorted(found)[:limit]]

    async def now_ms(self) -> int:
        """Redis's clock, the one reserve.lua stamps reservations with."""
        sec, usec = await self._read(self._client.time())
        return int(sec) * 1000 + int(usec) // 1000


def _open(conn: Any) -> bool:
    """Whether a kept ``redis.asyncio`` connection is still open as far as this process has heard: connected,
    and no end of stream from the server (a restart or an idle kill) seen by its reader. A check without a
    round trip or a wait, unlike the pool's own probe."""
    reader = getattr(conn, "_reader", None)
    return bool(conn.is_connected) and reader is not None and not reader.at_eof()


def resp_command(args: Sequence[Any]) -> bytes:
    """One command in the Redis protocol (RESP). redis-py's general ``pack_command`` costs more than the
    rest of a reserve; every argument here is a str or an int, so a direct encoding is enough."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


__all__ = [
    "Outcome",
    "Reservation",
    "ReservationRecord",
    "ReserveCall",
    "RestoreResult",
    "SaleConfig",
    "SeedResult",
    "Snapshot",
    "StockEngine",
    "SuspectView",
    "format_record",
    "idempotency_field",
    "new_reservation_id",
    "reserve_call",
    "resp_command",
    "script_source",
]
