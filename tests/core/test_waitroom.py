"""The waiting room on the project's own Redis: a fair order for early arrivals (a statistical test that
can fail), admission at the configured rate whatever the polling, one ticket per buyer under concurrency,
state that outlives the process, and the reserve step refusing buyers the room has not admitted."""

from __future__ import annotations

import asyncio
import math
import random
import uuid

import pytest

from stampede import errors
from stampede.names import sale_keys
from stampede.stock import SaleConfig, StockEngine
from stampede.vocabulary import RedisState
from stampede.waitroom import TicketStatus
from tests.stores import redis_client

pytestmark = pytest.mark.redis

TTL_MS = 60_000


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, x/2), by its series
    (exact to ~1e-12 for the sizes used here; no statistics package is needed)."""
    a, z = df / 2, x / 2
    if z <= 0:
        return 1.0
    term = total = 1.0 / a
    n = 1
    while term > total * 1e-15:
        term *= z / (a + n)
        total += term
        n += 1
    lower = math.exp(-z + a * math.log(z) - math.lgamma(a)) * total
    return max(0.0, 1.0 - lower)


def position_statistic(counts: list[list[int]], trials: int) -> tuple[float, int]:
    """Pearson's statistic of an arrival x position count matrix against a uniform shuffle, rescaled to its
    chi-square law. Each trial adds a permutation matrix, whose centred covariance is 1/(n-1) times the
    projection on the (n-1)^2 matrices with zero row and column sums; so sum (O-E)^2/E with E = trials/n is
    n/(n-1) times a chi-square with (n-1)^2 degrees of freedom."""
    n = len(counts)
    expected = trials / n
    pearson = sum((o - expected) ** 2 / expected for row in counts for o in row)
    return pearson * (n - 1) / n, (n - 1) ** 2


def test_chi2_helpers_match_known_values() -> None:
    # chi-square(1) at 3.841 is the 5% point; chi-square(49) at 85.35 is about the 0.1% point.
    assert chi2_sf(3.841, 1) == pytest.approx(0.05, abs=1e-3)
    assert chi2_sf(85.35, 49) == pytest.approx(0.001, rel=0.05)


def test_the_statistic_rejects_biased_orders() -> None:
    """The fairness test has power: orders a little biased towards arrival are rejected at the same level."""
    rng = random.Random(7)
    n, trials = 6, 1000
    counts = [[0] * n for _ in range(n)]
    for _ in range(trials):
        order = list(range(n))
        rng.shuffle(order)
        if rng.random() < 0.15:  # 15% of the draws keep the first arrival in front
            order.remove(0)
            order.insert(0, 0)
        for pos, arrival in enumerate(order):
            counts[arrival][pos] += 1
    stat, df = position_statistic(counts, trials)
    assert chi2_sf(stat, df) < 0.001


async def _room(stock: StockEngine, sale: str, *, start_in_ms: int, rate: float, total: int = 100) -> int:
    await stock.seed(sale, SaleConfig(total=total), open=True)
    now = await stock.now_ms()
    start = now + start_in_ms
    await stock.room.configure(sale, on=True, open_ms=start - 600_000, start_ms=start, end_ms=0, rate_per_s=rate)
    return start


async def _early_order(stock: StockEngine, n: int) -> list[int]:
    """One trial: n buyers join, in order, before the start; the start is then moved to now, and the room's
    positions give each arrival's place."""
    sale = f"t-{uuid.uuid4().hex[:12]}"  # a room needs no stock to order its buyers
    now = await stock.now_ms()
    await stock.room.configure(sale, on=True, open_ms=now, start_ms=now + 600_000, end_ms=0, rate_per_s=1000)
    tickets = [(await stock.room.join(sale, f"b{i}", token_ttl_ms=TTL_MS)).ticket for i in range(n)]
    now = await stock.now_ms()
    await stock.room.configure(sale, on=True, open_ms=now - 1000, start_ms=now, end_ms=0, rate_per_s=0.001)
    places = []
    for i, t in enumerate(tickets):
        view = await stock.room.poll(sale, f"b{i}", t, min_interval_ms=0, token_ttl_ms=TTL_MS)
        assert view.position is not None
        places.append(view.position)
    # Only the room's keys: StockEngine.delete also SCANs the whole database for rate-limit buckets, which a
    # thousand trials would do a thousand times while other tests share this Redis.
    await redis_client(stock).delete(*sale_keys(sale).room_all()[:-1])
    return places


async def test_early_arrivals_are_admitted_in_a_uniformly_shuffled_order(stock: StockEngine) -> None:
    """1,000 rooms of 6 early buyers each: the place of every arrival is uniform and independent of when it
    came. Chi-square over the 6 x 6 arrival/position table (25 degrees of freedom, see position_statistic);
    the test fails if p < 0.001, so a fair room fails it once in a thousand runs (its false-alarm rate), and
    the order 'first come first served', or one with a 15% bias to it, fails it always."""
    n, trials = 6, 1000
    counts = [[0] * n for _ in range(n)]
    sem = asyncio.Semaphore(16)

    async def one() -> list[int]:
        async with sem:
            return await _early_order(stock, n)

    for places in await asyncio.gather(*(one() for _ in range(trials))):
        assert sorted(places) == list(range(n))
        for arrival, pos in enumerate(places):
            counts[arrival][pos] += 1
    stat, df = position_statistic(counts, trials)
    p = chi2_sf(stat, df)
    assert p >= 0.001, f"chi-square {stat:.1f} on {df} df, p = {p:.2e}: the early order is not a uniform shuffle"


async def test_late_arrivals_queue_behind_the_early_ones_in_arrival_order(stock: StockEngine, sale: str) -> None:
    await _room(stock, sale, start_in_ms=600_000, rate=0.001)
    early = [await stock.room.join(sale, f"e{i}", token_ttl_ms=TTL_MS) for i in range(5)]
    assert all(v.status == TicketStatus.WAITING_FOR_START and v.position is None for v in early)
    now = await stock.now_ms()
    await stock.room.configure(sale, on=True, open_ms=now - 1000, start_ms=now, end_ms=0, rate_per_s=0.001)
    late = [await stock.room.join(sale, f"l{i}", token_ttl_ms=TTL_MS) for i in range(5)]
    assert [v.position for v in late] == [5, 6, 7, 8, 9]
    assert all(v.status == TicketStatus.QUEUED for v in late)


async def _admitted(stock: StockEngine, sale: str) -> int:
    status = await stock.room.status(sale)
    assert status is not None
    return status.admitted


async def test_admission_rate_does_not_depend_on_polling(stock: StockEngine) -> None:
    """Two rooms with the same arrivals and rate, one polled as fast as the room allows by every buyer, one
    never: both have admitted exactly rate x elapsed time of Redis's clock (read before and after)."""
    rate = 20.0
    polled, quiet = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}"
    now = await stock.now_ms()
    for sale in (polled, quiet):
        await stock.seed(sale, SaleConfig(total=100), open=True)
        await stock.room.configure(sale, on=True, open_ms=now - 1000, start_ms=now + 600_000, end_ms=0, rate_per_s=rate)
    tickets = {}
    for sale in (polled, quiet):
        for i in range(60):
            tickets[(sale, i)] = (await stock.room.join(sale, f"b{i}", token_ttl_ms=TTL_MS)).ticket
    start = await stock.now_ms() + 200  # both rooms start at the same instant, all their buyers early
    for sale in (polled, quiet):
        await stock.room.configure(sale, on=True, open_ms=now - 1000, start_ms=start, end_ms=0, rate_per_s=rate)
    while await stock.now_ms() < start + 1500:
        for i in range(60):
            await stock.room.poll(polled, f"b{i}", tickets[(polled, i)], min_interval_ms=0, token_ttl_ms=TTL_MS)
    before = await stock.now_ms()
    a_polled, a_quiet = await _admitted(stock, polled), await _admitted(stock, quiet)
    after = await stock.now_ms()
    # Between the two clock reads the cursor of either room is rate x elapsed (at most the 60 tickets).
    lo, hi = (min(60, math.floor(rate * (t - start) / 1000)) for t in (before, after))
    assert lo <= a_polled <= hi
    assert lo <= a_quiet <= hi


async def test_an_empty_room_banks_no_admissions_for_a_later_crowd(stock: StockEngine, sale: str) -> None:
    """Started a second ago with nobody queued: a burst that arrives now is admitted at the rate from now,
    not all at once on the credit of the empty second."""
    await _room(stock, sale, start_in_ms=-1000, rate=5)
    views = [await stock.room.join(sale, f"b{i}", token_ttl_ms=TTL_MS) for i in range(20)]
    assert [v.position for v in views] == list(range(20))
    assert await _admitted(stock, sale) <= 2
    assert all(v.status == TicketStatus.QUEUED for v in views[3:])


async def test_one_ticket_per_buyer_under_concurrent_joins(stock: StockEngine, sale: str) -> None:
    await _room(stock, sale, start_in_ms=600_000, rate=1)
    views = await asyncio.gather(*(stock.room.join(sale, f"b{i % 50}", token_ttl_ms=TTL_MS) for i in range(400)))
    by_buyer: dict[str, set[str]] = {}
    for i, v in enumerate(views):
        by_buyer.setdefault(f"b{i % 50}", set()).add(v.ticket)
    assert all(len(t) == 1 for t in by_buyer.values())
    assert sum(v.new for v in views) == 50
    status = await stock.room.status(sale)
    assert status is not None and status.tickets == 50 and status.early == 50


async def test_polls_too_soon_are_refused_and_change_nothing(stock: StockEngine, sale: str) -> None:
    await _room(stock, sale, start_in_ms=-10, rate=0.01)
    for i in range(3):
        await stock.room.join(sale, f"a{i}", token_ttl_ms=TTL_MS)
    mine = await stock.room.join(sale, "me", token_ttl_ms=TTL_MS)
    first = await stock.room.poll(sale, "me", mine.ticket, min_interval_ms=0, token_ttl_ms=TTL_MS)
    for _ in range(20):
        with pytest.raises(errors.RateLimited) as refused:
            await stock.room.poll(sale, "me", mine.ticket, min_interval_ms=60_000, token_ttl_ms=TTL_MS)
        assert 0 < refused.value.retry_after_ms <= 60_000
        with pytest.raises(errors.RateLimited):  # joining again is a poll too
            await stock.room.join(sale, "me", token_ttl_ms=TTL_MS, min_interval_ms=60_000)
    again = await stock.room.poll(sale, "me", mine.ticket, min_interval_ms=0, token_ttl_ms=TTL_MS)
    assert again.position == first.position == 3
    with pytest.raises(errors.TicketNotFound):  # another buyer's ticket is not theirs to poll
        await stock.room.poll(sale, "a0", mine.ticket, min_interval_ms=0, token_ttl_ms=TTL_MS)


async def test_the_room_outlives_the_process(redis_url: str, sale: str) -> None:
    """A new engine (an API process started again) finds the tickets, the places and the admissions."""
    first = StockEngine.from_url(redis_url)
    await _room(first, sale, start_in_ms=-10_000, rate=1000)
    view = await first.room.join(sale, "b1", token_ttl_ms=TTL_MS)
    await asyncio.sleep(0.05)  # the cursor (1000/s) passes the newcomer's place a millisecond after it joined
    admitted = await first.room.poll(sale, "b1", view.ticket, min_interval_ms=0, token_ttl_ms=TTL_MS)
    assert admitted.status == TicketStatus.ADMITTED
    await first.close()
    second = StockEngine.from_url(redis_url)
    try:
        again = await second.room.join(sale, "b1", token_ttl_ms=TTL_MS)
        assert (again.ticket, again.new, again.admitted_ms) == (view.ticket, False, admitted.admitted_ms)
    finally:
        await second.close()


async def test_the_room_refuses_before_it_opens_after_the_end_and_when_sold_out(stock: StockEngine) -> None:
    sale = f"t-{uuid.uuid4().hex[:12]}"
    await stock.seed(sale, SaleConfig(total=1), open=True)
    now = await stock.now_ms()
    await stock.room.configure(sale, on=True, open_ms=now + 5000, start_ms=now + 9000, end_ms=0, rate_per_s=1)
    with pytest.raises(errors.QueueNotOpen) as early:
        await stock.room.join(sale, "b", token_ttl_ms=TTL_MS)
    assert 3000 < early.value.retry_after_ms <= 5000
    await stock.room.configure(sale, on=True, open_ms=now - 9000, start_ms=now - 5000, end_ms=now, rate_per_s=1)
    with pytest.raises(errors.SaleClosed):
        await stock.room.join(sale, "b", token_ttl_ms=TTL_MS)
    await stock.room.configure(sale, on=True, open_ms=now - 9000, start_ms=now - 5000, end_ms=0, rate_per_s=1)
    await stock.reserve(sale, "x", admission_expires_ms=now + 60_000)
    with pytest.raises(errors.SoldOut):
        await stock.room.join(sale, "b", token_ttl_ms=TTL_MS)
    await stock.room.disable(sale)
    with pytest.raises(errors.NoWaitingRoom):
        await stock.room.join(sale, "b", token_ttl_ms=TTL_MS)


async def test_reserve_requires_an_unexpired_admission_while_the_room_is_on(stock: StockEngine, sale: str) -> None:
    await _room(stock, sale, start_in_ms=-10, rate=1)
    now = await stock.now_ms()
    with pytest.raises(errors.AdmissionRequired):
        await stock.reserve(sale, "b1")
    with pytest.raises(errors.AdmissionExpired):
        await stock.reserve(sale, "b1", admission_expires_ms=now - 1)
    assert (await stock.reserve(sale, "b1", admission_expires_ms=now + 60_000)).state == RedisState.PENDING
    await stock.room.disable(sale)  # off: buyers buy directly again
    assert (await stock.reserve(sale, "b2")).state == RedisState.PENDING
    snap = await stock.snapshot(sale)
    assert snap.balanced and snap.pending == 2


async def test_delete_removes_the_room(stock: StockEngine, sale: str) -> None:
    await _room(stock, sale, start_in_ms=-10, rate=1)
    await stock.room.join(sale, "b", token_ttl_ms=TTL_MS)
    await stock.delete(sale)
    assert await redis_client(stock).keys(f"{sale_keys(sale).base}*") == []
