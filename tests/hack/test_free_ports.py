"""hack/free_ports.py: ports outside the kernel's ephemeral range, and a probe that sees a port the way a server
restarting on it does (a listener takes it; the half-closed connections of a killed server do not)."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "free_ports.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("free_ports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(port: int) -> int:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", str(port)], check=False).returncode


def test_printed_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "8"], capture_output=True, text=True, check=True).stdout
    ports = [int(p) for p in out.split()]
    low, high = _module().ephemeral_range()
    assert len(set(ports)) == 8
    assert all(1024 <= p <= 65535 and not low <= p <= high for p in ports), (ports, low, high)


@pytest.mark.parametrize(
    ("ephemeral", "window"),
    [
        ((32768, 60999), (20768, 32768)),  # Linux's default: just below it
        ((1024, 40000), (40001, 65536)),  # starts at the bottom: above it
        ((1024, 65535), (20000, 32000)),  # covers everything: the old fixed window
    ],
)
def test_the_window_avoids_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch, ephemeral: tuple[int, int], window: tuple[int, int]
) -> None:
    module = _module()
    monkeypatch.setattr(module, "ephemeral_range", lambda: ephemeral)
    assert module.window() == window
    assert all(window[0] <= p < window[1] for p in module.free_ports(20))


def test_a_listener_takes_a_port_and_a_killed_servers_leftover_connections_do_not() -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Redis and PostgreSQL listen
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert _check(port) == 1

    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    # The server goes away first, as a killed one does: its side of the connection lingers half-closed.
    accepted.close()
    server.close()
    try:
        with socket.socket() as plain, pytest.raises(OSError, match="in use"):
            plain.bind(("127.0.0.1", port))  # what the old probe did: the port looked taken
        assert _check(port) == 0
    finally:
        client.close()
