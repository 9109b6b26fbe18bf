"""Buyer authentication: HS256 bearer tokens verified with PyJWT.

The buyer of a reservation is the token's subject and nothing else, so one buyer cannot spend another's
per-user limit by naming them in a body. Tokens must carry ``exp`` and ``iat`` with a short life, the
expected issuer and audience, and the ``buy`` scope; a missing or bad token is 401, a good token
without the scope is 403. Tokens are minted by ``stampede.tokens`` (CLI ``stampede mint-token``).

A buyer in a spike sends the same token many times (retries, polling), and a full PyJWT decode costs
about 30 µs of a worker's CPU, so each process keeps the tokens it verified, with their expiry, in a
least-recently-used map of at most ``STAMPEDE_TOKEN_CACHE_ENTRIES`` tokens (measured with tracemalloc at
about 0.5 KB each with its 219-character token: 16,384 entries are ~8.5 MB of a worker, the former
unordered 100,000 were ~52 MB), so a long sale with many buyers neither grows the worker nor empties
the whole cache at once. A cached token is accepted only until its own ``exp``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import falcon.asgi
import jwt

from stampede.identifiers import BUYER_ID_RULE, is_buyer_id
from stampede.tokens import SCOPE_BUY
from stampede_api.settings import ApiSettings

from .errors import ApiError, unauthorized


@dataclass(frozen=True, slots=True)
class Buyer:
    id: str


class Authenticator:
    def __init__(self, settings: ApiSettings) -> None:
        self._key = settings.jwt_secret
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_s
        self._max_ttl = settings.jwt_max_ttl_s
        self._options = {"require": ["exp", "iat", "sub"]}
        self._cache_entries = settings.token_cache_entries
        self._verified: OrderedDict[str, tuple[Buyer, float]] = OrderedDict()

    def verify(self, token: str) -> Buyer:
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() <= hit[1] + self._leeway:
                self._verified.move_to_end(token)
                return hit[0]
            del self._verified[token]
            raise unauthorized("token expired")
        buyer, exp = self._decode(token)
        if self._cache_entries:
            self._verified[token] = (buyer, exp)
            if len(self._verified) > self._cache_entries:
                self._verified.popitem(last=False)  # the least recently used
        return buyer

    def _decode(self, token: str) -> tuple[Buyer, float]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not is_buyer_id(sub):
            # The subject becomes Redis keys and ledger rows: a NUL, a lone surrogate or a control
            # character there would break the micro-batch this buyer shares with others.
            raise unauthorized(f"invalid token: the subject must be {BUYER_ID_RULE}")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float) or exp - iat > self._max_ttl:
            raise unauthorized("invalid token: lifetime too long")
        scope = claims.get("scope", "")
        if not isinstance(scope, str) or SCOPE_BUY not in scope.split():
            raise ApiError(403, "forbidden", f"token lacks the {SCOPE_BUY!r} scope")
        return Buyer(sub), float(exp)

    def buyer(self, req: falcon.asgi.Request) -> Buyer:
        """The authenticated buyer of a request, or 401/403."""
        header = req.get_header("Authorization")
        if not header:
            raise unauthorized("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("expected 'Authorization: Bearer <token>'")
        return self.verify(token.strip())
