"""The Redis stock engine: a thin typed wrapper over the Lua scripts in ``lua/``.

Every state change of a sale's counters is one script, so it is atomic on a single Redis and, because
all of a sale's keys share the ``{sale}`` hash tag, on a Redis Cluster too. Scripts are registered once
per client (EVALSHA, reloaded on NOSCRIPT by redis-py). Arguments are checked here before any round trip
and again inside the scripts; a script's answer becomes a typed result or a typed domain error, never a
raw Redis string.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from . import errors
from .domain import Outcome, ReservationRecord
from .identifiers import BUYER_ID_RULE, IDEMPOTENCY_KEY_RULE, is_buyer_id, is_idempotency_key
from .names import SaleKeys, sale_keys
from .vocabulary import Dependency, RedisState

SCRIPTS = ("reserve", "confirm", "release", "seed", "gate", "snapshot", "restore", "unlock", "suspects")


@cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` as shipped inside the package."""
    return (resources.files("stampede") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class SaleConfig:
    """What Redis must know of a sale to take reservations on its own."""

    total: int
    per_user_limit: int = 1
    buyer_rate: float = 0.0  # tokens per second per buyer; 0 disables the bucket
    buyer_burst: int = 0
    ip_rate: float = 0.0
    ip_burst: int = 0


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


# Fields of a sale's meta hash that configure it rather than count anything.
CONFIG_FIELDS = frozenset({"open", "limit", "buyer_rate", "buyer_burst", "ip_rate", "ip_burst", "run"})


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


def parse_record(reservation_id: str, raw: str) -> ReservationRecord:
    state, qty, ts, user = raw.split("|", 3)
    return ReservationRecord(reservation_id, RedisState(state), int(qty), int(ts), user)


def format_record(record: ReservationRecord) -> str:
    """A reservation as the ``res`` hash holds it (what the Lua scripts write)."""
    return f"{record.state}|{record.quantity}|{record.reserved_at_ms}|{record.user}"


_CONFIRM = {
    "confirmed": Outcome.CONFIRMED,
    "already": Outcome.ALREADY,
    "released": Outcome.RELEASED,
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
        if code == "rate_limited":
            raise errors.RateLimited(_s(state), number)
        if code == "idem_conflict":
            raise errors.IdempotencyConflict(_s(rid_out))
        if code == "bad_args":
            raise errors.InvalidArgument(_s(state), "refused by the stock engine")
        raise errors.ScriptError(f"reserve.lua answered {code!r}")


def reserve_call(
    sale: str,
    user: str,
    quantity: int = 1,
    *,
    idempotency_key: str | None = None,
    reservation_id: str | None = None,
    client_ip: str | None = None,
) -> ReserveCall:
    """Checks a reserve's arguments (InvalidArgument naming the field) and builds its call."""
    k = _keys(sale)
    _check_user(user)
    _check_quantity(quantity)
    if idempotency_key is not None and not is_idempotency_key(idempotency_key):
        raise errors.InvalidArgument("Idempotency-Key", f"must be {IDEMPOTENCY_KEY_RULE}")
    rid = reservation_id or new_reservation_id()
    keys = [
        k.meta,
        k.reservations,
        k.pending,
        k.holds,
        k.idempotency,
        k.buyer_bucket(user),
        k.ip_bucket(client_ip) if client_ip else "",
    ]
    return ReserveCall(sale, user, quantity, rid, keys, [rid, user, quantity, idempotency_key or ""])


class StockEngine:
    """Atomic stock operations over one ``redis.asyncio`` client (pooled, shared per process)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}

    @classmethod
    def from_url(cls, url: str, max_connections: int = 64, pool_timeout: float = 5.0) -> StockEngine:
        """A client whose pool makes callers wait for a free connection (up to ``pool_timeout``)
        instead of failing: a burst of buyers must queue for Redis, not be refused by our own pool."""
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_timeout)
        return cls(aioredis.Redis(connection_pool=pool))

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        """One round trip to Redis (readiness); raises DependencyUnavailable when it cannot be made."""
        await self._read(self._client.ping())

    def reserve_pipe(self) -> ReservePipe:
        """A pipe of reserve calls over one connection of this engine's pool, for one flusher task."""
        return ReservePipe(self._client, self._scripts["reserve"])

    async def flush_database(self) -> None:
        """Benchmarks and tests only: empties the whole Redis database this engine uses."""
        await self._read(self._client.flushdb())

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._scripts[name](keys=list(keys), args=list(args))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc
        except ResponseError as exc:
            raise errors.ScriptError(f"{name}.lua: {exc}") from exc

    # --- sale lifecycle ---------------------------------------------------------------------------

    async def seed(self, sale: str, config: SaleConfig, open: bool | None = None) -> SeedResult:
        """Creates the sale, or moves its total to ``config.total`` by delta without touching pending
        or confirmed units. Raises RestockBelowSold if the new total is below what is sold."""
        k = _keys(sale)
        if isinstance(config.total, bool) or not isinstance(config.total, int) or config.total < 0:
            raise errors.InvalidArgument("stock", "must be an integer >= 0")
        if not isinstance(config.per_user_limit, int) or config.per_user_limit < 1:
            raise errors.InvalidArgument("perUserLimit", "must be an integer >= 1")
        gate = "" if open is None else ("1" if open else "0")
        run_id = await self.run_id()
        code, total, remaining, sold = await self._run(
            "seed",
            [k.meta],
            [
                config.total,
                config.per_user_limit,
                gate,
                config.buyer_rate,
                config.buyer_burst,
                config.ip_rate,
                config.ip_burst,
                run_id,
            ],
        )
        code = _s(code)
        if code == "below_sold":
            raise errors.RestockBelowSold(sale, config.total, int(sold))
        if code == "bad_args":
            raise errors.ScriptError("seed.lua refused arguments that passed validation")
        return SeedResult(code, int(total), int(remaining), int(sold))

    async def set_open(self, sale: str, open: bool) -> bool:
        """Opens or closes the sale; returns whether it was open before."""
        prev = _s(await self._run("gate", [_keys(sale).meta], ["1" if open else "0"]))
        if prev == "unknown_sale":
            raise errors.SaleNotFound(sale)
        return prev == "1"

    async def run_id(self) -> str:
        """The Redis server's ``run_id``: it changes with every restart (and differs on a failover), so a
        sale restored under another run_id may have lost what that run held."""
        try:
            info = await self._client.info("server")
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc
        return str(info.get("run_id", ""))

    async def restored_run(self, sale: str) -> str | None:
        """The run_id the sale was last restored under ('' if never), or None if Redis does not know it."""
        try:
            meta_total, run = await self._client.hmget(_keys(sale).meta, ["total", "run"])
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc
        if meta_total is None:
            return None
        return "" if run is None else _s(run)

    async def lock_restore(self, sale: str, token: str, ttl_ms: int) -> bool:
        """Takes the sale's restore lock for ``ttl_ms`` unless another holds it: one restore at a time."""
        try:
            return bool(await self._client.set(_keys(sale).restore_lock, token, nx=True, px=ttl_ms))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc

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
        (see ``lua/restore.lua``). ``config`` and ``open`` apply only if the sale's meta is gone. Raises
        RestockBelowSold if the merged reservations hold more than the total."""
        k = _keys(sale)
        args: list[Any] = [
            token,
            run_id,
            config.total,
            config.per_user_limit,
            "1" if open else "0",
            config.buyer_rate,
            config.buyer_burst,
            config.ip_rate,
            config.ip_burst,
        ]
        for r in records:
            if r.state not in (RedisState.PENDING, RedisState.CONFIRMED, RedisState.RELEASED):
                raise errors.InvalidArgument("state", f"cannot restore a reservation in state {r.state!r}")
            args += [r.reservation_id, r.state, _check_quantity(r.quantity), r.reserved_at_ms, _check_user(r.user)]
        code, total, remaining, pending, confirmed = await self._run(
            "restore", [k.meta, k.reservations, k.pending, k.holds, k.restore_lock], args
        )
        code = _s(code)
        if code == "below_sold":
            raise errors.RestockBelowSold(sale, int(total), int(pending) + int(confirmed))
        if code == "bad_args":
            raise errors.ScriptError("restore.lua refused arguments that passed validation")
        return RestoreResult(code, int(total), int(remaining), int(pending), int(confirmed))

    async def delete(self, sale: str) -> int:
        """Removes every key of the sale (the ledger keeps the orders). Returns keys deleted."""
        k = _keys(sale)
        deleted = int(await self._client.delete(*k.all_static()))
        async for key in self._client.scan_iter(match=f"{k.base}:rl:*", count=1000):
            deleted += int(await self._client.delete(key))
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
    ) -> Reservation:
        """Takes ``quantity`` units for ``user`` in one atomic step, or raises the domain error that
        says why not (SaleNotFound, RateLimited, SaleClosed, LimitReached, SoldOut,
        IdempotencyConflict). A replayed idempotency key returns the original reservation."""
        call = reserve_call(
            sale, user, quantity, idempotency_key=idempotency_key, reservation_id=reservation_id, client_ip=client_ip
        )
        return call.answer(await self._run("reserve", call.keys, call.args))

    # --- settling ---------------------------------------------------------------------------------

    async def confirm(self, sale: str, reservation_ids: Iterable[str]) -> dict[str, Outcome]:
        """pending -> confirmed for each id (one script call for the batch); idempotent."""
        ids = list(reservation_ids)
        if not ids:
            return {}
        k = _keys(sale)
        codes = await self._run("confirm", [k.meta, k.reservations, k.pending], ids)
        return {rid: _CONFIRM[_s(c)] for rid, c in zip(ids, codes, strict=True)}

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
        k = _keys(sale)
        keys = [k.meta, k.reservations, k.pending, k.holds]
        args = ids
        if forget is not None:
            keys.append(k.idempotency)
            args = ids + [idempotency_field(*forget[rid]) if rid in forget else "" for rid in ids]
        codes = await self._run("release", keys, args)
        return {rid: _RELEASE[_s(c)] for rid, c in zip(ids, codes, strict=True)}

    # --- reading ----------------------------------------------------------------------------------

    async def snapshot(self, sale: str) -> Snapshot:
        k = _keys(sale)
        flat = await self._run("snapshot", [k.meta, k.pending, k.reservations], [])
        if not flat:
            raise errors.SaleNotFound(sale)
        return _snapshot(sale, flat)

    async def counters(self, sale: str) -> tuple[Snapshot, dict[str, int]]:
        """The sale's snapshot and, read in the same atomic step, every counter Redis keeps of it by name
        (``counter_fields``): what the live page lists, so counters of features it does not know still show."""
        k = _keys(sale)
        flat = await self._run("snapshot", [k.meta, k.pending, k.reservations], [])
        if not flat:
            raise errors.SaleNotFound(sale)
        return _snapshot(sale, flat), counter_fields(flat)

    async def reservation(self, sale: str, reservation_id: str) -> ReservationRecord | None:
        raw = await self._client.hget(_keys(sale).reservations, reservation_id)
        return None if raw is None else parse_record(reservation_id, _s(raw))

    async def reservations(self, sale: str) -> list[ReservationRecord]:
        """Every reservation Redis holds for the sale (HSCAN, so a large sale does not block Redis)."""
        out = []
        async for rid, raw in self._client.hscan_iter(_keys(sale).reservations, count=1000):
            out.append(parse_record(_s(rid), _s(raw)))
        return out

    async def records(self, sale: str, reservation_ids: Sequence[str]) -> dict[str, ReservationRecord]:
        """The listed reservations Redis holds (one HMGET); an id Redis does not hold is absent."""
        ids = list(reservation_ids)
        if not ids:
            return {}
        raws = await self._read(self._client.hmget(_keys(sale).reservations, ids))
        return {rid: parse_record(rid, _s(raw)) for rid, raw in zip(ids, raws, strict=True) if raw is not None}

    async def scan_reservations(self, sale: str, count: int = 5000) -> AsyncIterator[list[ReservationRecord]]:
        """Every reservation of the sale in chunks of about ``count`` (HSCAN: Redis is never blocked, and
        the caller holds one chunk at a time)."""
        key, cursor = _keys(sale).reservations, 0
        while True:
            cursor, chunk = await self._read(self._client.hscan(key, cursor, count=count))
            yield [parse_record(_s(rid), _s(raw)) for rid, raw in chunk.items()]
            if cursor == 0:
                return

    async def states(self, by_sale: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str | None] | None]:
        """{sale: ids} -> {sale: {id: Redis state, None if Redis does not hold it}}, or {sale: None} for a sale
        Redis does not know. One pipelined round trip (no MULTI) for every sale."""
        sales = list(by_sale)
        pipe = self._client.pipeline(transaction=False)
        for sale in sales:
            k = _keys(sale)
            pipe.exists(k.meta)
            pipe.hmget(k.reservations, list(by_sale[sale]))
        answers = await self._read(pipe.execute())
        out: dict[str, dict[str, str | None] | None] = {}
        for n, sale in enumerate(sales):
            exists, raws = answers[2 * n], answers[2 * n + 1]
            out[sale] = (
                {
                    rid: None if raw is None else parse_record(rid, _s(raw)).state
                    for rid, raw in zip(by_sale[sale], raws, strict=True)
                }
                if exists
                else None
            )
        return out

    async def suspects(self, sale: str, grace_ms: int, after: tuple[int, str] | None, limit: int) -> SuspectView:
        """What a reconcile pass reads of the sale, in one atomic step (``suspects.lua``): the clock, the
        counters (None: Redis does not know the sale), the pending reservations younger than ``grace_ms``
        (counted) and up to ``limit`` older ones (id, reserved_at_ms), in the set's order (time, then id),
        after the entry ``after`` = (reserved_at_ms, id) (None: from the oldest)."""
        k = _keys(sale)
        score, member = ("", "") if after is None else (str(after[0]), after[1])
        now, young, window, flat = await self._run(
            "suspects", [k.meta, k.pending, k.reservations], [grace_ms, score, member, limit]
        )
        pairs = [(_s(window[i]), int(float(_s(window[i + 1])))) for i in range(0, len(window), 2)]
        return SuspectView(int(now), _snapshot(sale, flat) if flat else None, int(young), pairs)

    async def _read(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc

    async def import_settled(self, sale: str, records: Sequence[ReservationRecord]) -> None:
        """Benchmark and test data only: writes reservations that are already settled (``confirmed`` or
        ``released``) into a seeded sale with the counters they imply (remaining, confirmed, released, the
        buyers' holdings), pipelined, so a sale of a million settled reservations is made in seconds. Not
        atomic and not for a sale that is taking reservations."""
        k = _keys(sale)
        confirmed = released = 0
        holds: dict[str, int] = {}
        pipe = self._client.pipeline(transaction=False)
        for r in records:
            if r.state == RedisState.CONFIRMED:
                confirmed += r.quantity
                holds[r.user] = holds.get(r.user, 0) + r.quantity
            elif r.state == RedisState.RELEASED:
                released += r.quantity
            else:
                raise errors.InvalidArgument("state", f"only settled reservations are imported, not {r.state!r}")
        mapping: dict[FieldT, EncodableT] = {r.reservation_id: format_record(r) for r in records}
        if mapping:
            pipe.hset(k.reservations, mapping=mapping)
        for user, units in holds.items():
            pipe.hincrby(k.holds, user, units)
        pipe.hincrby(k.meta, "remaining", -confirmed)
        pipe.hincrby(k.meta, "confirmed", confirmed)
        pipe.hincrby(k.meta, "released", released)
        await self._read(pipe.execute())

    async def pending_older_than(self, sale: str, cutoff_ms: int, limit: int = 10_000) -> list[str]:
        """Pending reservation ids reserved before ``cutoff_ms`` (Redis time), oldest first."""
        ids = await self._client.zrangebyscore(_keys(sale).pending, "-inf", cutoff_ms, start=0, num=limit)
        return [_s(i) for i in ids]

    async def now_ms(self) -> int:
        """Redis's clock, the one reserve.lua stamps reservations with."""
        sec, usec = await self._client.time()
        return int(sec) * 1000 + int(usec) // 1000


def resp_command(args: Sequence[Any]) -> bytes:
    """One command in the Redis protocol (RESP). redis-py's general ``pack_command`` costs more than the
    rest of a reserve; every argument here is a str or an int, so a direct encoding is enough."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class ReservePipe:
    """``reserve.lua`` calls written many at a time on one connection of the engine's pool, held by one
    flusher task (``StockEngine.reserve_pipe``): one buffer encoded here (``pack``), one write, one reply
    per call, without redis-py's per-call pool checkout and retry wrapper. A connection that fails, or a
    round trip cancelled half way, is dropped and the next ``send`` takes a fresh one."""

    def __init__(self, client: aioredis.Redis, script: AsyncScript) -> None:
        self._client = client
        self._script = script
        self._conn: Any = None  # redis.asyncio Connection held between sends

    def pack(self, call: ReserveCall) -> bytes:
        """The EVALSHA of one reserve call, encoded."""
        return resp_command(("EVALSHA", self._script.sha, len(call.keys), *call.keys, *call.args))

    async def send(self, commands: list[bytes]) -> list[Any]:
        """One write of every packed call, then one reply per call (an error reply is returned, not raised)."""
        conn = self._conn
        if conn is None:
            # redis-py leaves get_connection untyped.
            get: Callable[[], Awaitable[Any]] = self._client.connection_pool.get_connection
            conn = self._conn = await get()
        try:
            await conn.send_packed_command(b"".join(commands), check_health=False)
            out: list[Any] = []
            for _ in commands:
                try:
                    out.append(await conn.read_response())
                except ResponseError as exc:
                    out.append(exc)
        except BaseException:
            # Half a pipeline may be unread: this connection can never be trusted again.
            self._conn = None
            await conn.disconnect()
            await self._client.connection_pool.release(conn)
            raise
        return out

    async def load_script(self) -> None:
        """Loads the script into Redis again (its script cache was lost: NOSCRIPT)."""
        await self._client.script_load(self._script.script)

    async def close(self) -> None:
        """Gives the held connection back to the pool (the pool itself is the stock engine's)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._client.connection_pool.release(conn)


__all__ = [
    "Outcome",
    "Reservation",
    "ReservationRecord",
    "ReserveCall",
    "ReservePipe",
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
