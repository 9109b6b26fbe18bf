"""The one place where errors become HTTP answers.

Domain errors (``stampede.errors``), the API's own refusals (token, body, content type) and Falcon's
routing errors all leave as the same JSON shape, ``{"error": {"code", "message", "field"?}}``, with
Retry-After where waiting helps. Anything unexpected is logged with the request id and answered as a
plain 500 with no traceback, so a bug never leaks internals to a buyer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, TypeAlias

import falcon
import falcon.asgi

from stampede import errors

# The ASGI app with Falcon's own request and response types (its type parameters).
AsgiApp: TypeAlias = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]

log = logging.getLogger("stampede_api.errors")


class ApiError(Exception):
    """A refusal the API itself decides (not a domain outcome): token, body, headers, in-flight replay."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="stampede"'})


def bad_request(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_argument", message, field=field)


# Domain error -> (status, code). The code is the error's own stable name unless noted.
_DOMAIN: dict[type[errors.StampedeError], int] = {
    errors.InvalidArgument: 400,
    errors.SaleNotFound: 404,
    errors.ReservationNotFound: 404,
    errors.SaleClosed: 409,
    errors.SoldOut: 409,
    errors.LimitReached: 409,
    errors.IdempotencyConflict: 409,
    errors.RestockBelowSold: 409,
    errors.AdmissionRequired: 403,
    errors.AdmissionExpired: 403,
    errors.QueueNotOpen: 409,
    errors.NoWaitingRoom: 404,
    errors.TicketNotFound: 404,
    errors.NotYourReservation: 403,
    errors.CheckoutRefused: 409,
    errors.RateLimited: 429,
    errors.DependencyUnavailable: 503,
}

# Falcon's own errors (routing, method) -> our code names.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def _body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return {"error": err}


def _request_id(req: falcon.asgi.Request) -> str | None:
    return getattr(req.context, "request_id", None)


def map_domain(exc: errors.StampedeError, retry_after_s: int) -> ApiError:
    """The HTTP answer for a domain error (also used by code that answers without raising)."""
    status = 500
    for cls in type(exc).__mro__:
        if cls in _DOMAIN:
            status = _DOMAIN[cls]
            break
    headers: dict[str, str] = {}
    field = None
    message = str(exc)
    if isinstance(exc, errors.InvalidArgument):
        field, message = exc.field, exc.message
    elif isinstance(exc, errors.RateLimited | errors.QueueNotOpen):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_ms / 1000)))
    elif isinstance(exc, errors.ReservationPending):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, errors.SaleRestoring):
        headers["Retry-After"] = str(exc.retry_after_s)  # a restore takes milliseconds: come back soon
        message = "the sale is being restored, retry in a second"
    elif isinstance(exc, errors.DependencyUnavailable):
        headers["Retry-After"] = str(retry_after_s)
        message = "temporarily unavailable, retry later"  # never name internals to a buyer
    if status == 500:
        return ApiError(500, "internal", "internal error")
    return ApiError(status, exc.code, message, field=field, headers=headers)


def install(app: AsgiApp, retry_after_s: int) -> None:
    """Registers the handlers; Falcon picks the most specific one for each exception."""

    async def on_api_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: ApiError, params: Any) -> None:
        resp.status = ex.status
        resp.media = _body(ex.code, ex.message, ex.field)
        for k, v in ex.headers.items():
            resp.set_header(k, v)

    async def on_domain(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: errors.StampedeError, params: Any
    ) -> None:
        mapped = map_domain(ex, retry_after_s)
        if mapped.status == 500:
            log.error(
                "domain error without an HTTP mapping",
                exc_info=ex,
                extra={"request_id": _request_id(req), "path": req.path},
            )
        await on_api_error(req, resp, mapped, params)

    async def on_http_error(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError, params: Any
    ) -> None:
        status = ex.status_code
        code = _HTTP_CODES.get(status, "error")
        message = ex.description or ex.title or code
        resp.status = status
        resp.media = _body(code, message)
        headers = ex.headers or {}
        for k, v in headers.items() if isinstance(headers, Mapping) else headers:
            resp.set_header(k, v)

    async def on_unexpected(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any) -> None:
        log.error(
            "unhandled error",
            exc_info=ex,
            extra={"request_id": _request_id(req), "path": req.path, "method": req.method},
        )
        resp.status = 500
        resp.media = _body("internal", "internal error")

    app.add_error_handler(Exception, on_unexpected)
    app.add_error_handler(falcon.HTTPError, on_http_error)
    app.add_error_handler(errors.StampedeError, on_domain)
    app.add_error_handler(ApiError, on_api_error)
