"""The words every part must spell the same: reservation statuses in the ledger, reservation states in
Redis, compensation reasons, job statuses, sale phases and the names of the dependencies. Each is a ``StrEnum`` defined
only here; a member is its string, so it goes into SQL, JSON, logs and metric labels unchanged."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A reservation's status in the ledger. It moves only forward (the trigger of migrations 0001 and 0020):
    ``pending -> confirmed | compensated``, and in a sale with checkout holds ``pending -> held | compensated``,
    then ``held -> paid | expired``."""

    PENDING = "pending"
    CONFIRMED = "confirmed"  # an order
    COMPENSATED = "compensated"  # given back, with a ``Reason``
    HELD = "held"  # an order awaiting its buyer's checkout until its hold expires (checkout holds)
    PAID = "paid"  # a hold its buyer paid for
    EXPIRED = "expired"  # a hold that ran out unpaid: its units went back on sale


# Ledger statuses whose units are sold (Redis holds them ``confirmed``), and those whose units went back on sale.
TAKEN = frozenset({Status.CONFIRMED, Status.HELD, Status.PAID})
RETURNED = frozenset({Status.COMPENSATED, Status.EXPIRED})


class RedisState(StrEnum):
    """A reservation's state as Redis records it (written by the Lua scripts: a pending one in the ``res``
    hash, a settled one as the sign of its entry in the compact settled store)."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    RELEASED = "released"  # its units went back to stock


class Reason(StrEnum):
    """Why a reservation was compensated (a fixed set: they label metrics)."""

    # The reconciler and the operator.
    LOST_BEFORE_ACK = "lost_before_ack"  # Redis took it, the ledger never heard of it: no 202 was sent
    JOB_FAILED = "job_failed"  # its settle job failed for good
    SALE_DELETED = "sale_deleted"  # still pending when the FlashSale was deleted and the queue did not drain
    # The settle worker.
    RELEASED_IN_REDIS = "released_in_redis"  # Redis had already given its units back
    NOT_IN_REDIS = "not_in_redis"  # Redis holds no such reservation of a sale it knows
    UNKNOWN_SALE = "unknown_sale"  # neither Redis nor the ledger knows its sale
    INVALID_SALE = "invalid_sale"  # the job named a sale that is not a sale id
    RETRIES_EXHAUSTED = "retries_exhausted"  # its job met transient errors on every attempt
    SETTLE_ERROR = "settle_error"  # its job failed on an error that is not transient


class JobStatus(StrEnum):
    """A procrastinate job's status, as procrastinate names it."""

    TODO = "todo"
    DOING = "doing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABORTING = "aborting"
    ABORTED = "aborted"


class SalePhase(StrEnum):
    """A FlashSale's phase, as its ``status.phase`` (the operator's, the authority) and the API's sale
    read and live feed (read from Redis) spell it."""

    PENDING = "Pending"  # created, not reconciled yet
    SCHEDULED = "Scheduled"  # before ``window.start``: gate closed
    LIVE = "Live"  # in the window: gate open
    SOLD_OUT = "SoldOut"  # every unit sold and confirmed: gate closed
    ENDED = "Ended"  # after ``window.end``: gate closed
    FAILED = "Failed"  # its spec is invalid


class Dependency(StrEnum):
    """What a ``DependencyUnavailable`` names, and the readiness check of each."""

    REDIS = "redis"
    POSTGRESQL = "postgresql"
    API = "api"  # the API process itself: starting up, shutting down, or its flusher broke


__all__ = ["RETURNED", "TAKEN", "Dependency", "JobStatus", "Reason", "RedisState", "SalePhase", "Status"]
