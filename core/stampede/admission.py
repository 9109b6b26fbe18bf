"""Admission tokens of the waiting room: what a buyer shows the buy endpoint to prove it was admitted.

A token binds a buyer, a sale and a ticket to an expiry (Redis time, ms) and is signed with HMAC-SHA256
under a key derived from the API's ``STAMPEDE_JWT_SECRET`` (a label keeps it apart from buyer tokens, so
one can never pass for the other, and no second secret has to be distributed to the sale's API pods).
It is deterministic: a buyer who polls again after admission receives the same token, never a second
admission. The API checks the signature and the binding; the expiry is checked by ``reserve.lua`` against
Redis's clock in the same atomic step that takes the stock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

VERSION = "a1"
_LABEL = b"stampede admission token v1"
MAX_TOKEN_CHARS = 2048


class InvalidAdmission(ValueError):
    """A token that is malformed, badly signed, or of another buyer or sale."""


@dataclass(frozen=True, slots=True)
class Admission:
    sale: str
    buyer: str
    ticket: str
    expires_ms: int


def derive_key(secret: str) -> bytes:
    """The signing key of admission tokens, derived from the buyer-token secret."""
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(key: bytes, admission: Admission) -> str:
    payload = json.dumps(
        {"s": admission.sale, "b": admission.buyer, "t": admission.ticket, "e": admission.expires_ms},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    body = f"{VERSION}.{_b64(payload)}"
    return f"{body}.{_b64(hmac.new(key, body.encode('ascii'), hashlib.sha256).digest())}"


def verify(key: bytes, token: str, *, sale: str, buyer: str) -> Admission:
    """The admission ``token`` carries, if it is well signed and names this ``sale`` and ``buyer``; its expiry
    is not checked here (Redis's clock decides it)."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidAdmission("malformed admission token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise InvalidAdmission("malformed admission token")
    body = f"{parts[0]}.{parts[1]}"
    try:
        sig = _unb64(parts[2])
        claims = json.loads(_unb64(parts[1]))
    except (binascii.Error, ValueError):
        raise InvalidAdmission("malformed admission token") from None
    if not hmac.compare_digest(sig, hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()):
        raise InvalidAdmission("admission token is not signed by this sale's API")
    if not isinstance(claims, dict):
        raise InvalidAdmission("malformed admission token")
    s, b, t, e = claims.get("s"), claims.get("b"), claims.get("t"), claims.get("e")
    if not isinstance(s, str) or not isinstance(b, str) or not isinstance(t, str):
        raise InvalidAdmission("malformed admission token")
    if isinstance(e, bool) or not isinstance(e, int):
        raise InvalidAdmission("malformed admission token")
    if s != sale or b != buyer:
        raise InvalidAdmission("admission token of another buyer or sale")
    return Admission(s, b, t, e)
