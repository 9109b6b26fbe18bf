#!/usr/bin/env python3
"""Free loopback TCP ports for the project's local servers.

    free_ports.py [N]          print N distinct free ports, one a line (default 1)
    free_ports.py --check P    exit 0 when a server could listen on 127.0.0.1:P now, 1 when one already does

Ports come from outside the kernel's ephemeral range (read from net.ipv4.ip_local_port_range), by preference
just below it: a port the kernel hands out for bind(0) can be taken as the source port of any outgoing
connection before the server that was meant to bind it starts, which under a busy test suite happens.

The probe binds with SO_REUSEADDR, as Redis and PostgreSQL bind their listening sockets: a port whose only
users are connections in TIME_WAIT or FIN_WAIT (the leftovers of a server killed moments ago) is free for
the server's restart, and must not look taken, or a restart would move the server to a new address.
"""

from __future__ import annotations

import random
import socket
import sys
from pathlib import Path

LOWEST = 1024
WIDTH = 12000  # how many ports below the ephemeral range to draw from
DEFAULT_EPHEMERAL = (32768, 60999)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when it cannot be read)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def window() -> tuple[int, int]:
    """The half-open range ports are drawn from: below the ephemeral range, else above it, else (a range
    that covers nearly everything) the old fixed window, accepting the race."""
    low, high = ephemeral_range()
    if low - LOWEST >= 1000:
        return max(LOWEST, low - WIDTH), low
    if 65535 - high >= 1000:
        return high + 1, 65536
    return 20000, 32000


def bindable(port: int) -> bool:
    """Whether a listening server could bind 127.0.0.1:``port`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    rng = random.SystemRandom()
    low, high = window()
    out: list[int] = []
    while len(out) < n:
        port = rng.randrange(low, high)
        if port not in out and bindable(port):
            out.append(port)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"] and len(argv) == 2:
        return 0 if bindable(int(argv[1])) else 1
    print("\n".join(str(p) for p in free_ports(int(argv[0]) if argv else 1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
