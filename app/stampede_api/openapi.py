"""The OpenAPI 3.1 document of the API, built from the settings it runs with (body size, quantity bound,
whether the strategies are mounted), so ``/openapi.json`` describes exactly what this process does.
The schemathesis test holds it to that: every answer must match a documented status, header and schema.
"""

from __future__ import annotations

from typing import Any

from stampede.vocabulary import SalePhase
from stampede_api.settings import ApiSettings

from . import openapi_queue

# The phases the sale read can answer (Pending and Failed are the operator's alone).
_READ_PHASES = (SalePhase.SCHEDULED, SalePhase.LIVE, SalePhase.SOLD_OUT, SalePhase.ENDED)

SALE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
    }
    if retry_after:
        out["headers"]["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return out


def _ok(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    h = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    h.update(headers or {})
    return {"description": description, "content": {"application/json": {"schema": schema}}, "headers": h}


def _common_errors() -> dict[str, Any]:
    return {
        "500": _error("an unexpected error (logged with the request id; no details are returned)"),
        "503": _error(
            "Redis or PostgreSQL unavailable, or the sale being restored from the ledger after Redis lost it "
            "(`sale_restoring`); retry after Retry-After",
            retry_after=True,
        ),
    }


def _live_paths(sale_param: dict[str, Any], demo_buyers: bool) -> dict[str, Any]:
    """The live sale page (``STAMPEDE_LIVE_PAGE``): HTML, its assets and its Server-Sent Event streams."""

    def page(op: str, summary: str, media: str, params: list[Any]) -> dict[str, Any]:
        return {
            "get": {
                "operationId": op,
                "summary": summary,
                "parameters": params,
                "responses": {
                    "200": {"description": summary, "content": {media: {"schema": {"type": "string"}}}},
                    "404": _error("unknown sale or asset"),
                    "429": _error("too many reads from this address, or too many streams open", retry_after=True),
                    **_common_errors(),
                },
            }
        }

    asset = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    out = {
        "/live": page("liveOverview", "The live page of every sale", "text/html", []),
        "/live/events": page("liveOverviewEvents", "The overview's samples (event `sales`)", "text/event-stream", []),
        "/live/sales/{sale}": page("liveSale", "The live page of one sale", "text/html", [sale_param]),
        "/live/sales/{sale}/events": page(
            "liveSaleEvents", "The sale's samples (event `sale`)", "text/event-stream", [sale_param]
        ),
        "/live/assets/{name}": page("liveAsset", "The page's script or style sheet", "text/plain", [asset]),
    }
    if demo_buyers:
        out["/live/demo-token"] = {
            "post": {
                "operationId": "liveDemoToken",
                "summary": "A new demo buyer and its 10-minute token (development only)",
                "responses": {
                    "200": _ok(
                        "the demo buyer",
                        {
                            "type": "object",
                            "required": ["buyer", "token", "expires_in"],
                            "properties": {
                                "buyer": {"type": "string"},
                                "token": {"type": "string"},
                                "expires_in": {"type": "integer"},
                            },
                        },
                    ),
                    "429": _error("too many reads from this address", retry_after=True),
                    **_common_errors(),
                },
            }
        }
    return out


def document(settings: ApiSettings) -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    reservation_properties = {
        "reservation_id": {"type": "string", "format": "uuid"},
        "status": {
            "type": "string",
            "enum": ["pending", "confirmed", "compensated", "held", "paid", "expired"],
            "description": (
                "pending -> confirmed | compensated; in a sale with checkout holds pending -> held | compensated, "
                "then held -> paid (checkout) | expired (the hold ran out; its units went back on sale)"
            ),
        },
        "sale": {"type": "string"},
        "quantity": {"type": "integer", "minimum": 1},
        "reason": {"type": "string"},
    }
    sale_param = {
        "name": "sale",
        "in": "path",
        "required": True,
        "description": "the FlashSale name (a Kubernetes name); anything else is an unknown sale (404)",
        "schema": {"type": "string", "maxLength": 63},
    }
    json_body = {"application/json": {"schema": _ref("BuyRequest")}}
    paths: dict[str, Any] = {
        "/v1/sales/{sale}/reservations": {
            "post": {
                "operationId": "reserve",
                "summary": "Reserve units of a sale for the token's buyer",
                "description": (
                    "202: the reservation is committed in the ledger (pending) and will be confirmed or "
                    "compensated; poll its Location. 200: an idempotent replay (same buyer, same "
                    "Idempotency-Key, same quantity) answering with the original reservation and its "
                    "current status. 409 idempotency_in_flight: the first request with this key is still "
                    "being recorded; retry after Retry-After."
                ),
                "security": bearer,
                "parameters": [
                    sale_param,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
                    },
                    openapi_queue.ADMISSION_HEADER,
                ],
                "requestBody": {"required": True, "content": json_body},
                "responses": {
                    "200": _ok(
                        "idempotent replay of an earlier reservation",
                        _ref("Reservation"),
                        {
                            "Location": {"schema": {"type": "string"}},
                            "Idempotent-Replayed": {"schema": {"type": "string", "const": "true"}},
                        },
                    ),
                    "202": _ok(
                        "reserved and durably recorded",
                        _ref("Reservation"),
                        {"Location": {"schema": {"type": "string"}}},
                    ),
                    "400": _error("invalid body, quantity or header (error.field names it)"),
                    "401": _error("missing, malformed, expired or badly signed token"),
                    "403": _error(
                        "token without the buy scope; admission_required / admission_expired: the sale's waiting "
                        "room is on and no valid Admission-Token of this buyer was shown, or its time is up"
                    ),
                    "404": _error("unknown sale"),
                    "409": _error(
                        "sold_out, limit_reached, sale_closed, idempotency_conflict or idempotency_in_flight",
                        retry_after=True,
                    ),
                    "413": _error(f"body larger than {settings.max_body_bytes} bytes"),
                    "415": _error("body is not application/json"),
                    "429": _error("rate limited (per buyer or per client IP)", retry_after=True),
                    **_common_errors(),
                },
            }
        },
        "/v1/reservations/{reservation_id}": {
            "get": {
                "operationId": "getReservation",
                "summary": "A reservation of the token's buyer (others' reservations are 404)",
                "security": bearer,
                "parameters": [
                    {"name": "reservation_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _ok("the reservation as the ledger holds it", _ref("ReservationRecord")),
                    "401": _error("missing or invalid token"),
                    "403": _error("token without the buy scope"),
                    "404": _error("no such reservation for this buyer"),
                    "429": _error("too many polls by this buyer", retry_after=True),
                    **_common_errors(),
                },
            }
        },
        "/v1/reservations/{reservation_id}/checkout": {
            "post": {
                "operationId": "checkout",
                "summary": "Pay for a checkout hold of the token's buyer (a sale with spec.checkout.holdSeconds)",
                "description": (
                    "held -> paid, decided by the ledger: a checkout and the expiry of the hold never both win. "
                    "200: paid by this call, or an idempotent replay (same Idempotency-Key, same "
                    "payment_reference) with Idempotent-Replayed: true. 409 hold_expired: the hold ended unpaid "
                    "and its units are back on sale; already_paid: another checkout paid it; "
                    "idempotency_conflict: this key paid it with another payment_reference; not_held: the "
                    "reservation is confirmed (a sale without holds) or compensated; reservation_pending: not "
                    "settled yet, retry after Retry-After."
                ),
                "security": bearer,
                "parameters": [
                    {"name": "reservation_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CheckoutRequest")}},
                },
                "responses": {
                    "200": _ok(
                        "paid (the reservation as the ledger holds it)",
                        _ref("ReservationRecord"),
                        {
                            "Location": {"schema": {"type": "string"}},
                            "Idempotent-Replayed": {"schema": {"type": "string", "const": "true"}},
                        },
                    ),
                    "400": _error("invalid or missing Idempotency-Key, body or payment_reference (error.field)"),
                    "401": _error("missing or invalid token"),
                    "403": _error("another buyer's reservation, or a token without the buy scope"),
                    "404": _error("no such reservation"),
                    "409": _error(
                        "hold_expired, already_paid, idempotency_conflict, not_held or reservation_pending",
                        retry_after=True,
                    ),
                    "413": _error(f"body larger than {settings.max_body_bytes} bytes"),
                    "415": _error("body is not application/json"),
                    "429": _error("too many requests by this buyer", retry_after=True),
                    **_common_errors(),
                },
            }
        },
        "/v1/sales/{sale}": {
            "get": {
                "operationId": "getSale",
                "summary": "Phase and live counts of a sale",
                "parameters": [sale_param],
                "responses": {
                    "200": _ok("the sale", _ref("Sale")),
                    "400": _error("the trusted proxy's client-address header holds no IP address"),
                    "404": _error("unknown sale"),
                    "429": _error("too many reads from this client address", retry_after=True),
                    **_common_errors(),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process serves",
                "responses": {"200": _ok("up", _ref("Status"))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Redis and PostgreSQL answer",
                "responses": {
                    "200": _ok("ready", _ref("Status")),
                    "503": _error("not ready", retry_after=True),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _ok("OpenAPI 3.1", {"type": "object"})},
            }
        },
    }
    paths.update(openapi_queue.paths(settings, sale_param, _ok, _error, _common_errors()))
    if settings.live_page:
        paths.update(_live_paths(sale_param, settings.demo_buyers))
    if settings.strategies_enabled:
        version = {
            "name": "version",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": ["v1", "v2", "v3", "v4"]},
        }
        paths["/api/{version}/buy"] = {
            "post": {
                "operationId": "strategyBuy",
                "summary": "Demonstration strategy buy (v1 oversells on purpose)",
                "parameters": [version],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("StrategyBuy")}}},
                "responses": {
                    "201": _ok("order written (v1-v3)", {"type": "object"}),
                    "202": _ok("reservation durable (v4)", {"type": "object"}),
                    "400": _error("invalid body"),
                    "404": _error("unknown product or strategy"),
                    "409": _error("sold out or per-user limit reached"),
                    "413": _error("body too large"),
                    "415": _error("body is not application/json"),
                    "429": _error("rate limited", retry_after=True),
                    **_common_errors(),
                },
            }
        }
        paths["/api/{version}/stats"] = {
            "get": {
                "operationId": "strategyStats",
                "summary": "What a strategy accepted for a product, against its stock",
                "parameters": [
                    version,
                    {
                        "name": "productId",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": SALE_PATTERN},
                    },
                ],
                "responses": {
                    "200": _ok("counts", _ref("StrategyStats")),
                    "400": _error("productId missing or invalid"),
                    "404": _error("unknown product or strategy"),
                    **_common_errors(),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stampede buy API",
            "version": "1.0.0",
            "description": "Flash-sale reservations that never oversell; a 202 is durable in the ledger.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "headers": {
                "X-Request-ID": {"description": "request id (echoed or generated)", "schema": {"type": "string"}},
                "Retry-After": {
                    "description": "seconds to wait before retrying",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": "string"},
                            },
                        }
                    },
                },
                "BuyRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "quantity": {"type": "integer", "minimum": 1, "maximum": settings.max_quantity, "default": 1}
                    },
                },
                "Reservation": {
                    "type": "object",
                    "required": ["reservation_id", "status", "sale", "quantity"],
                    "properties": reservation_properties,
                },
                "ReservationRecord": {
                    "type": "object",
                    "required": ["reservation_id", "status", "sale", "quantity", "created_at", "settled_at"],
                    "properties": {
                        **reservation_properties,
                        "created_at": {"type": ["string", "null"]},
                        "settled_at": {"type": ["string", "null"]},
                        "hold_expires_at": {"type": "string", "description": "held, paid, expired: the hold's end"},
                        "paid_at": {"type": ["string", "null"]},
                        "payment_reference": {"type": ["string", "null"]},
                        "expired_at": {"type": ["string", "null"]},
                    },
                },
                "CheckoutRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["payment_reference"],
                    "properties": {
                        "payment_reference": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 256,
                            "description": "the payment provider's reference for this payment",
                        }
                    },
                },
                "Sale": {
                    "type": "object",
                    "required": ["sale", "phase", "open", "stock", "remaining", "pending", "confirmed"],
                    "properties": {
                        "sale": {"type": "string"},
                        "phase": {"type": "string", "enum": [str(p) for p in _READ_PHASES]},
                        "open": {"type": "boolean"},
                        "stock": {"type": "integer"},
                        "remaining": {"type": "integer"},
                        "pending": {"type": "integer"},
                        "confirmed": {"type": "integer"},
                        "released": {"type": "integer"},
                        "per_user_limit": {"type": "integer"},
                    },
                },
                **openapi_queue.SCHEMAS,
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}, "checks": {"type": "object"}},
                },
                "StrategyBuy": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["productId", "userId"],
                    "properties": {
                        "productId": {"type": "string", "pattern": SALE_PATTERN},
                        "userId": {"type": "string", "minLength": 1, "maxLength": 256},
                    },
                },
                "StrategyStats": {
                    "type": "object",
                    "required": ["strategy", "productId", "initial", "stock", "accepted", "oversold"],
                    "properties": {
                        "strategy": {"type": "string"},
                        "productId": {"type": "string"},
                        "initial": {"type": "integer"},
                        "stock": {"type": "integer"},
                        "accepted": {"type": "integer"},
                        "oversold": {"type": "integer"},
                    },
                },
            },
        },
    }
