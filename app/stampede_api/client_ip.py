"""The client address a request is counted against (the per-IP token bucket, public-read limits).

Without trusted proxies it is the TCP peer. Behind ``trusted_hops`` proxies it is read from exactly one
header, the one those proxies append to (``X-Forwarded-For`` by default, or RFC 7239 ``Forwarded``),
counting entries from the right: each trusted proxy appends the address it saw, so the entry ``hops``
from the right was written by the outermost trusted proxy and is the client's. Entries further left are
whatever the client sent and are never used; no other header (``Forwarded`` when the proxy sets
``X-Forwarded-For``, ``X-Real-IP``) is consulted, so a buyer cannot pick the bucket they are counted in.
The entry must be an IP address (normalised, so one address is one bucket); anything else is a 400.
"""

from __future__ import annotations

import ipaddress

import falcon.asgi

from .errors import bad_request


def _address(entry: str) -> str | None:
    """The IP address of one entry (``1.2.3.4``, ``1.2.3.4:567``, ``[2001:db8::1]:567``, ``2001:db8::1``)."""
    entry = entry.strip().strip('"')
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` values of an RFC 7239 ``Forwarded`` header, one per element, in order."""
    out = []
    for element in value.split(","):
        found = ""
        for pair in element.split(";"):
            name, _, val = pair.strip().partition("=")
            if name.lower() == "for":
                found = val
        out.append(found)
    return out


def client_ip(req: falcon.asgi.Request, header: str, trusted_hops: int) -> str | None:
    """The client's address as the trusted proxies saw it, or the peer when there are none (or the
    request did not come through them)."""
    if trusted_hops <= 0:
        return req.remote_addr
    raw = req.get_header(header)  # repeated header lines arrive joined by commas, in order
    if not raw:
        return req.remote_addr
    entries = _forwarded_for(raw) if header.lower() == "forwarded" else raw.split(",")
    # Fewer entries than hops: the request entered after the outermost proxy, so the leftmost entry
    # was written by a trusted proxy too.
    address = _address(entries[max(0, len(entries) - trusted_hops)])
    if address is None:
        raise bad_request(header, "the client address written by the proxy is not an IP address")
    return address
