#!/usr/bin/env python3
"""Prints N distinct free loopback TCP ports, one a line.

Ports come from below the kernel's ephemeral range (net.ipv4.ip_local_port_range), never from it: a port
the kernel hands out for bind(0) can be taken as the source port of any outgoing connection before the
server that was meant to bind it starts, which under a busy test suite happens.
"""

from __future__ import annotations

import random
import socket
import sys

LOW, HIGH = 20000, 32000


def bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    rng = random.SystemRandom()
    out: list[int] = []
    while len(out) < n:
        port = rng.randrange(LOW, HIGH)
        if port not in out and bindable(port):
            out.append(port)
    return out


if __name__ == "__main__":
    print("\n".join(str(p) for p in free_ports(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
