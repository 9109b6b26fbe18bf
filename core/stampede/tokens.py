"""Buyer tokens: compact JWTs signed with HMAC-SHA256 (HS256).

Minting lives in the core so the CLI (`stampede mint-token`), the tests, the benchmarks and the k6 jobs
all produce exactly the tokens the API accepts. It needs only the standard library, so minting works in
any image; the API verifies with PyJWT, which checks the same claims independently.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Iterator

from .identifiers import BUYER_ID_RULE, is_buyer_id

SCOPE_BUY = "buy"
DEFAULT_TTL_S = 900


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(
    secret: str,
    subject: str,
    *,
    ttl_s: int = DEFAULT_TTL_S,
    issuer: str = "stampede",
    audience: str = "stampede-api",
    scope: str = SCOPE_BUY,
    now: int | None = None,
) -> str:
    """An HS256 token for buyer ``subject`` valid ``ttl_s`` seconds from ``now`` (default: the clock)."""
    if not is_buyer_id(subject):
        raise ValueError(f"subject must be {BUYER_ID_RULE} (the API refuses any other)")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be > 0")
    iat = int(time.time()) if now is None else now
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": subject, "iss": issuer, "aud": audience, "scope": scope, "iat": iat, "exp": iat + ttl_s}
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


def mint_many(
    secret: str,
    subjects: Iterable[str],
    *,
    ttl_s: int = DEFAULT_TTL_S,
    issuer: str = "stampede",
    audience: str = "stampede-api",
    scope: str = SCOPE_BUY,
) -> Iterator[tuple[str, str]]:
    """(subject, token) for each subject, all with the same issue time (bulk minting for load tests)."""
    now = int(time.time())
    for subject in subjects:
        yield subject, mint(secret, subject, ttl_s=ttl_s, issuer=issuer, audience=audience, scope=scope, now=now)
