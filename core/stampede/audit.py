"""The integrity audit of the invariants in docs/architecture.md, as a pure function.

Tests, the k6 runs, the demo and the reconciler all judge a sale with this one function, so "correct"
means the same thing everywhere. It takes what clients were told (the accepted reservation ids), the
final record of every reservation (the ledger when there is one, else Redis) and the Redis snapshot,
and lists every violation it finds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .vocabulary import Reason, RedisState, Status

# A reservation ends as an order or as stock given back. The ledger and Redis spell ``pending`` and
# ``confirmed`` alike (Status.X == RedisState.X); stock given back is ``compensated``, ``released`` or, for a
# checkout hold that ran out, ``expired``. A held or paid reservation is an order (docs/architecture.md,
# "Checkout holds"); a sale with holds settles every accepted reservation held, then paid or expired, or
# compensated.
RETURNED = (Status.COMPENSATED, RedisState.RELEASED, Status.EXPIRED)
TAKEN = (Status.CONFIRMED, Status.HELD, Status.PAID)
HOLD_ENDS = (Status.PAID, Status.HELD, Status.EXPIRED, Status.COMPENSATED)


@dataclass(frozen=True, slots=True)
class Row:
    """One reservation's final record: ledger row, or Redis record when no ledger is involved."""

    reservation_id: str
    user: str
    quantity: int
    status: str
    reason: str | None = None  # why a returned reservation was given back (ledger records only)


@dataclass(frozen=True, slots=True)
class RedisCounts:
    total: int
    remaining: int
    pending: int
    confirmed: int


@dataclass
class AuditReport:
    sale: str
    stock: int
    accepted: int
    rows: int
    confirmed_units: int
    pending_units: int
    returned_units: int
    oversold: int
    lost: int
    duplicates: int
    over_limit_users: int
    drift: int
    unsettled: int
    violations: list[str] = field(default_factory=list)
    held_units: int = 0  # of confirmed_units: held, not paid yet (checkout holds)
    paid_units: int = 0  # of confirmed_units: paid
    expired_units: int = 0  # of returned_units: holds that expired, their units back on sale

    @property
    def ok(self) -> bool:
        return not self.violations

    def render(self) -> str:
        lines = [
            f"audit of sale {self.sale!r}: {'CLEAN' if self.ok else 'VIOLATED'}",
            f"  stock {self.stock}  accepted {self.accepted}  records {self.rows}",
            f"  confirmed {self.confirmed_units}  pending {self.pending_units}  returned {self.returned_units}",
            f"  oversold {self.oversold}  lost {self.lost}  duplicates {self.duplicates}  "
            f"users over limit {self.over_limit_users}  drift {self.drift}  unsettled {self.unsettled}",
        ]
        if self.held_units or self.paid_units or self.expired_units:
            lines.insert(3, f"  holds: paid {self.paid_units}  held {self.held_units}  expired {self.expired_units}")
        lines += [f"  ! {v}" for v in self.violations]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "sale": self.sale,
            "ok": self.ok,
            "stock": self.stock,
            "accepted": self.accepted,
            "rows": self.rows,
            "confirmed_units": self.confirmed_units,
            "pending_units": self.pending_units,
            "returned_units": self.returned_units,
            "oversold": self.oversold,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "over_limit_users": self.over_limit_users,
            "drift": self.drift,
            "unsettled": self.unsettled,
            "held_units": self.held_units,
            "paid_units": self.paid_units,
            "expired_units": self.expired_units,
            "violations": list(self.violations),
        }


def audit(
    sale: str,
    *,
    stock: int,
    per_user_limit: int,
    accepted: Iterable[str],
    rows: Iterable[Row],
    redis: RedisCounts | None = None,
    settled: bool = True,
    acknowledged: int | None = None,
    holds: bool = False,
) -> AuditReport:
    """Checks the invariants. ``settled=True`` also demands that nothing is still pending (the
    after-the-sale check); mid-sale audits pass ``settled=False``. When the clients kept only a count of
    their 202s (a k6 summary), pass it as ``acknowledged`` instead of ids: every 202 must still have a
    record, so fewer records than 202s is a loss.

    ``holds=True`` (a sale with checkout holds) adds, once settled: every accepted reservation ended paid,
    held, expired or compensated (paid + held + expired + compensated = accepted, none merely confirmed); and
    with a Redis snapshot, the units of expired holds are back on sale (Redis's remaining is the stock less
    what the ledger holds sold)."""
    accepted_ids = list(accepted)
    row_list = list(rows)
    violations: list[str] = []

    ids = Counter(r.reservation_id for r in row_list)
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    if duplicates:
        violations.append(f"{duplicates} reservation ids recorded more than once")
    dup_accepted = sum(n - 1 for n in Counter(accepted_ids).values() if n > 1)
    if dup_accepted:
        violations.append(f"{dup_accepted} reservation ids acknowledged to two different requests")

    lost_ids = set(accepted_ids) - ids.keys()
    lost = len(lost_ids)
    if lost_ids:
        sample = ", ".join(sorted(lost_ids)[:3])
        violations.append(f"{lost} acknowledged reservations have no record (e.g. {sample})")
    # `lost_before_ack` says no 202 was sent: the reconciler gave the stock back because the ledger never
    # heard of the reservation. A 202 for such an id is a buyer holding an acknowledgement of a cancelled
    # reservation (the ledger write lost the race against the reconciler and still answered 202).
    acked = set(accepted_ids)
    cancelled_acked = sorted(
        r.reservation_id for r in row_list if r.reason == Reason.LOST_BEFORE_ACK and r.reservation_id in acked
    )
    if cancelled_acked:
        violations.append(
            f"{len(cancelled_acked)} acknowledged reservations were recorded {Reason.LOST_BEFORE_ACK} "
            f"(e.g. {', '.join(cancelled_acked[:3])})"
        )
    if acknowledged is not None and acknowledged > len(ids):
        lost = max(lost, acknowledged - len(ids))
        violations.append(f"{acknowledged} reservations acknowledged but only {len(ids)} recorded")

    by_status: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for r in row_list:
        by_status[r.status] += r.quantity
        if r.status in (*TAKEN, Status.PENDING):
            held[r.user] += r.quantity
    unknown = set(by_status) - {*TAKEN, Status.PENDING, *RETURNED}
    if unknown:
        violations.append(f"records in unknown states: {sorted(unknown)}")

    confirmed = sum(by_status[s] for s in TAKEN)
    pending = by_status[Status.PENDING]
    returned = sum(by_status[s] for s in RETURNED)
    sold = confirmed + pending
    oversold = max(0, sold - stock)
    if oversold:
        violations.append(f"oversold by {oversold} units ({sold} sold of {stock})")

    over = {u: n for u, n in held.items() if n > per_user_limit}
    if over:
        worst = max(over.items(), key=lambda kv: kv[1])
        violations.append(f"{len(over)} users over the limit of {per_user_limit} (worst {worst[0]!r}: {worst[1]})")

    unsettled = sum(1 for r in row_list if r.status == Status.PENDING)
    if settled and unsettled:
        violations.append(f"{unsettled} reservations still pending after the sale settled")

    if holds and settled:
        status_of = {r.reservation_id: r.status for r in row_list}
        ends = Counter(status_of.get(rid) for rid in set(accepted_ids))
        ended = sum(ends[s] for s in HOLD_ENDS)
        if ended != len(set(accepted_ids)):
            others = {str(k): n for k, n in ends.items() if k not in HOLD_ENDS}
            violations.append(
                f"paid {ends[Status.PAID]} + held {ends[Status.HELD]} + expired {ends[Status.EXPIRED]} + compensated "
                f"{ends[Status.COMPENSATED]} = {ended} != accepted {len(set(accepted_ids))} (others: {others})"
            )
        if redis is not None and redis.remaining != stock - sold:
            violations.append(
                f"units not back on sale: redis remaining {redis.remaining} != stock {stock} - sold {sold} "
                f"(expired {by_status[Status.EXPIRED]})"
            )

    drift = 0
    if redis is not None:
        if redis.total != stock:
            violations.append(f"redis total {redis.total} != stock {stock}")
        if redis.remaining + redis.pending + redis.confirmed != redis.total:
            violations.append(
                f"redis unbalanced: remaining {redis.remaining} + pending {redis.pending} + "
                f"confirmed {redis.confirmed} != total {redis.total}"
            )
        drift = abs(redis.confirmed - confirmed) + abs(redis.pending - pending)
        if drift:
            violations.append(
                f"drift {drift}: redis confirmed/pending {redis.confirmed}/{redis.pending}, "
                f"records {confirmed}/{pending}"
            )

    return AuditReport(
        sale=sale,
        stock=stock,
        accepted=len(accepted_ids) if acknowledged is None else acknowledged,
        rows=len(row_list),
        confirmed_units=confirmed,
        pending_units=pending,
        returned_units=returned,
        oversold=oversold,
        lost=lost,
        duplicates=duplicates,
        over_limit_users=len(over),
        drift=drift,
        unsettled=unsettled,
        violations=violations,
        held_units=by_status[Status.HELD],
        paid_units=by_status[Status.PAID],
        expired_units=by_status[Status.EXPIRED],
    )


class HasCounters(Protocol):
    @property
    def total(self) -> int: ...
    @property
    def remaining(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def confirmed(self) -> int: ...


def counts_from(snapshot: HasCounters) -> RedisCounts:
    """RedisCounts from a stock Snapshot (or anything with the four counters)."""
    return RedisCounts(snapshot.total, snapshot.remaining, snapshot.pending, snapshot.confirmed)
