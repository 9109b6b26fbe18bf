"""The safe sets of identifiers that buyers hand in and that reach Redis keys, Lua arguments or SQL rows.

A buyer id (a token's ``sub``) becomes part of Redis keys (``…:rl:u:<buyer>``), of idempotency fields
(``<buyer>\\0<key>``) and of the ledger's ``user`` column; an idempotency key becomes part of a Redis
field. Anything outside visible ASCII is refused where it enters (401 for a token, 400 for a header or a
body member), so a lone surrogate cannot break a pipeline's encoding, a NUL cannot make PostgreSQL
refuse a whole micro-batch, and a control character never reaches a log line or a key. Visible ASCII
keeps the subjects identity providers issue (opaque ids, UUIDs, e-mail addresses, ``provider|id``).
"""

from __future__ import annotations

import re
from typing import TypeGuard

BUYER_ID_MAX = 256
IDEMPOTENCY_KEY_MAX = 255

# Printable ASCII without space (0x21-0x7e): no NUL, no control character, no non-ASCII code point.
BUYER_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{BUYER_ID_MAX}}}")
IDEMPOTENCY_KEY_RE = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")

BUYER_ID_RULE = f"1-{BUYER_ID_MAX} visible ASCII characters"
IDEMPOTENCY_KEY_RULE = f"1-{IDEMPOTENCY_KEY_MAX} visible ASCII characters"


def is_buyer_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` may name a buyer (a token's subject, a strategy's ``userId``)."""
    return isinstance(value, str) and BUYER_ID_RE.fullmatch(value) is not None


def is_idempotency_key(value: object) -> TypeGuard[str]:
    """Whether ``value`` may be an ``Idempotency-Key``."""
    return isinstance(value, str) and IDEMPOTENCY_KEY_RE.fullmatch(value) is not None
