"""The waiting room of a sale: tickets, a fair order, admission at a fixed rate (``lua/room.lua``).

A sale with ``spec.admission`` lets buyers in through its room. Buyers who join in the ``openQueueSeconds``
before the start are all equal: each ticket gets a score drawn here from the operating system's CSPRNG,
uniform over [0, 2^52), stored in the queue (a Redis sorted set) and not shown before the start. At the
start the queue's order *is* a uniform shuffle of the early tickets, with no step that has to shuffle them
(a Fisher-Yates in Lua at the start would block Redis for the whole crowd at its busiest moment, and would
have to be made to happen exactly once). Later buyers queue behind in arrival order. From the start a
cursor admits ``ratePerSecond`` positions per second of Redis time, never beyond the queue's length, so the
admission rate depends on the clock and the arrivals only, never on how often anyone polls. Everything
lives in Redis under the sale's hash tag, so an API restart loses nothing and any API process answers.

Only this adapter and ``StockEngine`` touch Redis keys; it shares the engine's client
(``StockEngine.room``). The key layout is ``names.SaleKeys.room_*``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from . import errors
from .identifiers import BUYER_ID_RULE, is_buyer_id
from .names import bucket_keys, check_sale, sale_keys
from .redis_errors import UNAVAILABLE
from .vocabulary import Dependency

EARLY_SCORES = 2**52  # early scores are drawn from [0, EARLY_SCORES); late ones start there


class TicketStatus(StrEnum):
    WAITING_FOR_START = "waiting_for_start"  # joined early: the order is drawn at the start
    QUEUED = "queued"
    ADMITTED = "admitted"
    EXPIRED = "expired"  # admitted, but the admission's time is up


@dataclass(frozen=True, slots=True)
class QueueView:
    """A ticket as its buyer sees it."""

    ticket: str
    status: TicketStatus
    position: int | None  # 0-based place in the whole queue; None before the start (not drawn yet)
    ahead: int | None  # buyers ahead of this one not yet admitted; None before the start
    wait_ms: int  # until the start, or until the cursor reaches this position at the current rate
    admitted_ms: int | None  # Redis time of the first answer as admitted
    tickets: int  # tickets in the room
    early: int  # of which joined before the start
    new: bool = False  # join only: this call issued the ticket


@dataclass(frozen=True, slots=True)
class RoomStatus:
    """What the operator reports of a room (``status.queue``)."""

    on: bool
    tickets: int
    early: int
    admitted: int  # positions the cursor has passed
    served: int  # buyers who received their admission
    rate: float
    start_ms: int

    @property
    def waiting(self) -> int:
        return self.tickets - self.admitted


@dataclass(frozen=True, slots=True)
class AdmittedTicket:
    ticket: str
    buyer: str
    position: int  # 0-based place in the queue
    admitted_ms: int  # Redis time of the buyer's first answer as admitted


def admission_violations(held_by: Iterable[str], admitted: Iterable[AdmittedTicket]) -> list[str]:
    """The waiting room's invariants over a sale's records, beside the audit's: every buyer holding units
    (``held_by``: the user of each pending or confirmed record) was admitted, and no buyer was admitted
    twice."""
    out: list[str] = []
    tickets = list(admitted)
    per_buyer = Counter(a.buyer for a in tickets)
    twice = sorted(b for b, n in per_buyer.items() if n > 1)
    if twice:
        out.append(f"{len(twice)} buyers admitted more than once (e.g. {', '.join(twice[:3])})")
    unadmitted = sorted(set(held_by) - per_buyer.keys())
    if unadmitted:
        out.append(f"{len(unadmitted)} buyers hold units without an admission (e.g. {', '.join(unadmitted[:3])})")
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _view(raw: Sequence[Any], *, new: bool = False) -> QueueView:
    ticket, status, rank, ahead, wait, admitted, tickets, early = raw
    r, a = int(rank), int(ahead)
    return QueueView(
        ticket=_s(ticket),
        status=TicketStatus(_s(status)),
        position=None if r < 0 else r,
        ahead=None if a < 0 else a,
        wait_ms=int(wait),
        admitted_ms=int(admitted) or None,
        tickets=int(tickets),
        early=int(early),
        new=new,
    )


def _check(sale: str, buyer: str) -> list[str]:
    try:
        keys = list(sale_keys(check_sale(sale)).room_all())
    except ValueError as exc:
        raise errors.InvalidArgument("sale", str(exc)) from None
    if not is_buyer_id(buyer):
        raise errors.InvalidArgument("user", f"must be {BUYER_ID_RULE}")
    return keys


class WaitingRoom:
    """The room operations over a ``redis.asyncio`` client, one script call each."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        script: str,
        turn: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self._client = client
        self._script = client.register_script(script)
        # The stock engine's slot for one call (``StockEngine._turn``): on a cluster it bounds the calls in
        # flight by the pool and reads the slot map before the first of them.
        self._turn = turn or contextlib.nullcontext

    async def _run(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            async with self._turn():
                return await self._script(keys=list(keys), args=list(args))
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc
        except ResponseError as exc:
            raise errors.ScriptError(f"room.lua: {exc}") from exc

    async def configure(
        self, sale: str, *, on: bool, open_ms: int, start_ms: int, end_ms: int, rate_per_s: float
    ) -> None:
        """Sets the room's settings (the operator, from ``spec.admission`` and the window). Turning it off
        keeps its tickets, so the reconciler still reports them; the buy endpoint stops asking for tokens."""
        try:
            keys = list(sale_keys(check_sale(sale)).room_all())
        except ValueError as exc:
            raise errors.InvalidArgument("sale", str(exc)) from None
        if not rate_per_s > 0:
            raise errors.InvalidArgument("ratePerSecond", "must be > 0")
        if open_ms > start_ms:
            raise errors.InvalidArgument("openQueueSeconds", "the room must open before the start")
        code = _s(
            (await self._run(keys, ["configure", "1" if on else "0", open_ms, start_ms, end_ms, repr(rate_per_s)]))[0]
        )
        if code != "configured":
            raise errors.ScriptError("room.lua refused a configuration that passed validation")
        await self._mirror(sale, on)

    async def _mirror(self, sale: str, on: bool) -> None:
        """The room's on/off flag copied to the sale's other stock buckets, whose reserve reads the flag in
        its own slot (``names.bucket_keys``)."""
        try:
            async with self._turn():
                buckets = int(await self._client.hget(sale_keys(sale).meta, "buckets") or 1)
                for k in bucket_keys(sale, buckets)[1:]:
                    await self._client.hset(k.room_config, "on", "1" if on else "0")
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc

    async def disable(self, sale: str) -> None:
        """Turns the room off if the sale has one (a spec that dropped ``admission``)."""
        key = sale_keys(sale).room_config
        try:
            async with self._turn():
                if await self._client.exists(key):
                    await self._client.hset(key, "on", "0")
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc
        await self._mirror(sale, False)

    async def join(
        self, sale: str, buyer: str, *, token_ttl_ms: int, min_interval_ms: int = 0, ticket: str | None = None
    ) -> QueueView:
        """The buyer's ticket: a new one, or the one the buyer already holds (one per buyer and sale). Joining
        again is a poll of that ticket: sooner than ``min_interval_ms`` after the last one it is refused
        (RateLimited) and changes nothing."""
        keys = _check(sale, buyer)
        ticket = ticket or secrets.token_urlsafe(18)
        entropy = secrets.randbelow(EARLY_SCORES)
        raw = await self._run(keys, ["join", buyer, ticket, entropy, token_ttl_ms, min_interval_ms])
        code = _s(raw[0])
        if code in ("new", "existing"):
            return _view(raw[1:], new=code == "new")
        if code == "too_soon":
            raise errors.RateLimited("ticket", int(raw[1]))
        raise self._refusal(sale, code, raw)

    async def poll(self, sale: str, buyer: str, ticket: str, *, min_interval_ms: int, token_ttl_ms: int) -> QueueView:
        """The ticket's place and wait; admits it if the cursor has passed it. A poll sooner than
        ``min_interval_ms`` after the last one is refused (RateLimited) and changes nothing."""
        keys = _check(sale, buyer)
        raw = await self._run(keys, ["poll", buyer, ticket, min_interval_ms, token_ttl_ms])
        code = _s(raw[0])
        if code == "ok":
            return _view(raw[1:])
        if code == "unknown_ticket":
            raise errors.TicketNotFound(ticket[:64])
        if code == "too_soon":
            raise errors.RateLimited("ticket", int(raw[1]))
        raise self._refusal(sale, code, raw)

    async def status(self, sale: str) -> RoomStatus | None:
        """The room's counts, read without changing anything; None if the sale never had a room."""
        try:
            keys = list(sale_keys(check_sale(sale)).room_all())
        except ValueError as exc:
            raise errors.InvalidArgument("sale", str(exc)) from None
        raw = await self._run(keys, ["status"])
        if not raw:
            return None
        on, tickets, early, cursor, served, rate, start_ms = raw
        return RoomStatus(
            on=_s(on) == "1",
            tickets=int(tickets),
            early=int(early),
            admitted=int(cursor),
            served=int(served),
            rate=float(_s(rate)),
            start_ms=int(start_ms),
        )

    async def admitted(self, sale: str) -> list[AdmittedTicket]:
        """Every admitted ticket in queue order, for audits and tests (several reads: not one instant)."""
        k = sale_keys(sale)
        try:
            async with self._turn():
                admitted = {_s(t): int(ms) async for t, ms in self._client.hscan_iter(k.room_admitted, count=1000)}
                owners = {_s(t): _s(b) async for t, b in self._client.hscan_iter(k.room_tickets, count=1000)}
                order = [_s(t) for t in await self._client.zrange(k.room_queue, 0, -1)]
        except UNAVAILABLE as exc:
            raise errors.DependencyUnavailable(Dependency.REDIS, str(exc)) from exc
        return [AdmittedTicket(t, owners[t], pos, admitted[t]) for pos, t in enumerate(order) if t in admitted]

    @staticmethod
    def _refusal(sale: str, code: str, raw: Sequence[Any]) -> errors.StampedeError:
        if code == "off":
            return errors.NoWaitingRoom(sale)
        if code == "not_open":
            return errors.QueueNotOpen(sale, int(raw[1]))
        if code == "closed":
            return errors.SaleClosed(sale)
        if code == "sold_out":
            return errors.SoldOut(sale, 0)
        return errors.ScriptError(f"room.lua answered {code!r}")
