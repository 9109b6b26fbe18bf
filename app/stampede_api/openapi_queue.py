"""The waiting room's part of the OpenAPI document (``openapi.py`` merges it in): the ticket and poll
routes, the ``Admission-Token`` header of the buy route, and their schemas."""

from __future__ import annotations

from typing import Any

from stampede.waitroom import TicketStatus
from stampede_api.settings import ApiSettings

ADMISSION_HEADER = {
    "name": "Admission-Token",
    "in": "header",
    "required": False,
    "description": (
        "the admission token of GET /v1/sales/{sale}/queue/{ticket}; required while the sale's waiting room is "
        "on (403 admission_required without it, 403 admission_expired after its time)"
    ),
    "schema": {"type": "string", "maxLength": 2048},
}


def paths(
    settings: ApiSettings,
    sale_param: dict[str, Any],
    ok: Any,
    error: Any,
    common_errors: dict[str, Any],
) -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    retry = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    ticket_ref = {"$ref": "#/components/schemas/QueueTicket"}
    return {
        "/v1/sales/{sale}/queue": {
            "post": {
                "operationId": "joinQueue",
                "summary": "A ticket in the sale's waiting room for the token's buyer (one per buyer)",
                "description": (
                    "Buyers who join in the openQueueSeconds before the start are shuffled at the start (arrival "
                    "order carries no advantage); later buyers queue behind in arrival order. Buyers are then "
                    "admitted at the sale's ratePerSecond. 201: a new ticket; 200: the buyer's existing ticket."
                ),
                "security": bearer,
                "parameters": [sale_param],
                "responses": {
                    "200": ok("the buyer's existing ticket", ticket_ref, {"Location": {"schema": {"type": "string"}}}),
                    "201": ok("a new ticket", ticket_ref, {"Location": {"schema": {"type": "string"}}}),
                    "401": error("missing or invalid token"),
                    "403": error("token without the buy scope"),
                    "404": error("unknown sale, or a sale without a waiting room (no_waiting_room)"),
                    "409": error(
                        "queue_not_open (the room opens openQueueSeconds before the start; Retry-After), "
                        "sold_out or sale_closed",
                        retry_after=True,
                    ),
                    "429": error("joined again sooner than the poll interval (it counts as a poll)", retry_after=True),
                    **common_errors,
                },
            }
        },
        "/v1/sales/{sale}/queue/{ticket}": {
            "get": {
                "operationId": "pollQueue",
                "summary": "The ticket's place, estimated wait and, once admitted, its admission token",
                "description": (
                    "Retry-After (and retry_after_ms) say when asking again is worth it. Polling sooner than "
                    f"{settings.queue_poll_interval_ms} ms after the ticket's last poll answers 429 and changes "
                    "nothing: the place never depends on how often anyone asks. The admission token is given once "
                    f"per buyer and lets them buy for {settings.admission_token_ttl_s} s from their admission."
                ),
                "security": bearer,
                "parameters": [
                    sale_param,
                    {"name": "ticket", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}},
                ],
                "responses": {
                    "200": ok("the ticket", ticket_ref, retry),
                    "401": error("missing or invalid token"),
                    "403": error("token without the buy scope"),
                    "404": error("unknown sale, no waiting room, or no such ticket of this buyer"),
                    "409": error("sold_out: nothing is left to queue for"),
                    "429": error("polled again too soon (the place is unchanged)", retry_after=True),
                    **common_errors,
                },
            }
        },
    }


SCHEMAS: dict[str, Any] = {
    "QueueTicket": {
        "type": "object",
        "required": ["ticket", "sale", "status", "position", "ahead", "tickets", "estimated_wait_seconds"],
        "properties": {
            "ticket": {"type": "string"},
            "sale": {"type": "string"},
            "status": {"type": "string", "enum": [str(s) for s in TicketStatus]},
            "position": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "1-based place in the queue; null before the start (the early order is drawn then)",
            },
            "ahead": {"type": ["integer", "null"], "minimum": 0, "description": "buyers ahead not yet admitted"},
            "tickets": {"type": "integer", "minimum": 0},
            "estimated_wait_seconds": {"type": "number", "minimum": 0},
            "retry_after_ms": {"type": "integer", "minimum": 0},
            "admission_token": {"type": "string", "description": "send as the Admission-Token header of the buy"},
            "admission_expires_ms": {"type": "integer", "description": "Redis time (Unix ms) the token expires"},
        },
    }
}
