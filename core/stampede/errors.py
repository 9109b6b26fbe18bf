"""Typed domain errors. The processes map them to their own world in one place each: the API to HTTP
statuses, the worker to retry-or-compensate, the operator to conditions and Events."""

from __future__ import annotations

from .vocabulary import Dependency


class StampedeError(Exception):
    """Base of every domain error; ``code`` is the stable machine-readable name."""

    code = "stampede_error"


class InvalidArgument(StampedeError):
    code = "invalid_argument"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SaleNotFound(StampedeError):
    code = "sale_not_found"

    def __init__(self, sale: str) -> None:
        super().__init__(f"sale {sale!r} does not exist")
        self.sale = sale


class SaleClosed(StampedeError):
    code = "sale_closed"

    def __init__(self, sale: str) -> None:
        super().__init__(f"sale {sale!r} is not open")
        self.sale = sale


class SoldOut(StampedeError):
    code = "sold_out"

    def __init__(self, sale: str, remaining: int) -> None:
        super().__init__(f"sale {sale!r} has {remaining} units left")
        self.sale = sale
        self.remaining = remaining


class LimitReached(StampedeError):
    code = "limit_reached"

    def __init__(self, sale: str, held: int) -> None:
        super().__init__(f"per-user limit reached in sale {sale!r} ({held} units held)")
        self.sale = sale
        self.held = held


class IdempotencyConflict(StampedeError):
    code = "idempotency_conflict"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"idempotency key already used with a different request (reservation {reservation_id})")
        self.reservation_id = reservation_id


class RateLimited(StampedeError):
    code = "rate_limited"

    def __init__(self, scope: str, retry_after_ms: int) -> None:
        super().__init__(f"too many requests per {scope}; retry in {retry_after_ms} ms")
        self.scope = scope
        self.retry_after_ms = retry_after_ms


class RestockBelowSold(StampedeError):
    code = "restock_below_sold"

    def __init__(self, sale: str, requested: int, sold: int) -> None:
        super().__init__(f"sale {sale!r}: stock {requested} is below the {sold} units already sold")
        self.sale = sale
        self.requested = requested
        self.sold = sold


class ReservationNotFound(StampedeError):
    code = "reservation_not_found"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"reservation {reservation_id!r} does not exist")
        self.reservation_id = reservation_id


class NotYourReservation(StampedeError):
    """A checkout of a reservation that belongs to another buyer."""

    code = "not_your_reservation"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"reservation {reservation_id!r} belongs to another buyer")
        self.reservation_id = reservation_id


class CheckoutRefused(StampedeError):
    """Base of the checkout refusals decided by the reservation's state (each a distinct code)."""

    code = "checkout_refused"

    def __init__(self, reservation_id: str, message: str) -> None:
        super().__init__(f"reservation {reservation_id!r}: {message}")
        self.reservation_id = reservation_id


class HoldExpired(CheckoutRefused):
    """The hold ended unpaid (expired, or its time passed by the ledger's clock): its units are back on sale."""

    code = "hold_expired"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, "the hold expired before checkout; its units are back on sale")


class AlreadyPaid(CheckoutRefused):
    """The hold was paid by another checkout (another Idempotency-Key)."""

    code = "already_paid"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, "already paid by another checkout")


class NotHeld(CheckoutRefused):
    """The reservation is not a hold: confirmed (a sale without checkout holds) or compensated."""

    code = "not_held"

    def __init__(self, reservation_id: str, status: str) -> None:
        super().__init__(reservation_id, f"is {status}, not held for checkout")
        self.status = status


class ReservationPending(CheckoutRefused):
    """The reservation is not settled yet: a hold begins when it is (retry in a second)."""

    code = "reservation_pending"
    retry_after_s = 1

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, "not settled yet; retry shortly")


class DependencyUnavailable(StampedeError):
    """Redis or PostgreSQL cannot be reached; callers answer 503 / retry, never guess."""

    code = "dependency_unavailable"

    def __init__(self, dependency: Dependency, detail: str = "") -> None:
        super().__init__(f"{dependency} unavailable{': ' + detail if detail else ''}")
        self.dependency = dependency


class SaleRestoring(DependencyUnavailable):
    """Redis lost the sale's counters and they are being restored from the ledger: retry in a second."""

    code = "sale_restoring"
    retry_after_s = 1

    def __init__(self, sale: str) -> None:
        super().__init__(Dependency.REDIS, f"sale {sale!r} is being restored from the ledger")
        self.sale = sale


class ScriptError(StampedeError):
    """A Lua script failed in a way its contract does not describe (a bug, not a buyer's mistake)."""

    code = "script_error"


# --- the waiting room (stampede.waitroom) -----------------------------------------------------------------


class AdmissionRequired(StampedeError):
    """The sale's waiting room is on and the buy carries no valid admission token of this buyer and sale."""

    code = "admission_required"

    def __init__(self, sale: str, detail: str = "this sale admits buyers through its waiting room") -> None:
        super().__init__(f"{detail}: join POST /v1/sales/<sale>/queue and buy once admitted")
        self.sale = sale


class AdmissionExpired(StampedeError):
    """The buyer was admitted, but the admission token's time is up (admission is given once per buyer)."""

    code = "admission_expired"

    def __init__(self, sale: str) -> None:
        super().__init__(f"the admission to sale {sale!r} has expired")
        self.sale = sale


class QueueNotOpen(StampedeError):
    """The waiting room opens ``openQueueSeconds`` before the start; it is earlier than that."""

    code = "queue_not_open"

    def __init__(self, sale: str, retry_after_ms: int) -> None:
        super().__init__(f"the waiting room of sale {sale!r} opens in {retry_after_ms} ms")
        self.sale = sale
        self.retry_after_ms = retry_after_ms


class NoWaitingRoom(StampedeError):
    """The sale has no waiting room (``spec.admission`` is not set): buy directly."""

    code = "no_waiting_room"

    def __init__(self, sale: str) -> None:
        super().__init__(f"sale {sale!r} has no waiting room; buy directly")
        self.sale = sale


class TicketNotFound(StampedeError):
    """No such ticket in the sale's waiting room, or it is another buyer's."""

    code = "ticket_not_found"

    def __init__(self, ticket: str) -> None:
        super().__init__(f"ticket {ticket!r} does not exist")
        self.ticket = ticket
