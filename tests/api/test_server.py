"""The API as deployed — gunicorn with the project's uvicorn worker — against what a hostile client sends
below HTTP's application layer: a huge request head (431, and the worker does not read it), a head
trickled byte by byte or never sent (408 / closed after STAMPEDE_HEADER_TIMEOUT_S), and where metrics and
gunicorn's control socket live."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stampede_api.settings import ApiSettings
from stampede_dev.devstack import free_port

from .conftest import SECRET
from .test_e2e import ROOT

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

BIN = Path(sys.executable).parent
HEADER_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 16384


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True)
class Served:
    port: int
    metrics_port: int
    home: Path
    pid: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the gunicorn workers), KiB."""
    total = 0
    pids = [pid] + [
        int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def _server_env(api_settings: ApiSettings, home: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of one gunicorn API worker on ``port`` with its own HOME and metrics folder (created),
    plus ``settings``."""
    (home / "metrics").mkdir()
    return {
        **{k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"},
        "HOME": str(home),
        "STAMPEDE_REDIS_URL": api_settings.redis_url,
        "STAMPEDE_DATABASE_URL": api_settings.database_url,
        "STAMPEDE_JWT_SECRET": SECRET,
        "STAMPEDE_BIND": f"127.0.0.1:{port}",
        "STAMPEDE_WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(home / "metrics"),
        **settings,
    }


@pytest.fixture(scope="module")
def served(api_settings: ApiSettings) -> Iterator[Served]:
    port, metrics_port = free_port(), free_port()
    home = Path(tempfile.mkdtemp(prefix="stampede-home-"))
    env = _server_env(
        api_settings,
        home,
        port,
        STAMPEDE_METRICS_HOST="127.0.0.1",
        STAMPEDE_METRICS_PORT=str(metrics_port),
        STAMPEDE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        STAMPEDE_IDLE_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        STAMPEDE_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        STAMPEDE_LOG_LEVEL="WARNING",
    )
    log = open(home / "api.log", "wb")  # noqa: SIM115
    api = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "python:stampede_api.gunicorn_conf", "stampede_api.asgi:app"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                log.flush()
                pytest.fail("server did not become ready:\n" + (home / "api.log").read_text()[-3000:])
            time.sleep(0.2)
        yield Served(port, metrics_port, home, api.pid)
    finally:
        _stop(api)
        log.close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_all(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def _read_response(s: socket.socket, timeout: float) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length, however the server split it into segments (its head
    and body may arrive apart), leaving the connection open for the next request."""
    s.settimeout(timeout)
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        assert chunk, out
        out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    (length,) = [
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    ]
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, out
        body += chunk
    assert len(body) == length, out
    return head + b"\r\n\r\n" + body


def test_an_oversized_header_is_431_and_never_read_whole(served: Served) -> None:
    before = _rss_kib(served.pid)
    s = _connect(served.port)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    sent = 0

    def push() -> None:
        nonlocal sent
        try:
            s.sendall(head)
            chunk = b"a" * 65536
            for _ in range(32 * 16):  # 32 MiB, as the review sent
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server closed the connection: what we want

    t = threading.Thread(target=push, daemon=True)
    t.start()
    answer = _read_all(s, 15)
    t.join(15)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"headers_too_large"' in answer
    assert sent < 8 * 1024 * 1024, f"the server read {sent} bytes of the header"
    assert _rss_kib(served.pid) - before < 16 * 1024  # KiB: nowhere near the 32 MiB sent
    assert httpx.get(served.base + "/healthz").status_code == 200


def test_a_complete_head_over_the_limit_is_431(served: Served) -> None:
    headers = {f"X-H{i}": "v" * 1000 for i in range(MAX_HEADER_BYTES // 1000 + 2)}
    r = httpx.get(served.base + "/healthz", headers=headers)
    assert r.status_code == 431, r.text
    assert r.json()["error"]["code"] == "headers_too_large"
    ok = httpx.get(served.base + "/healthz", headers={"X-H": "v" * 8000})
    assert ok.status_code == 200


def test_a_trickled_head_is_cut_after_the_header_timeout(served: Served) -> None:
    s = _connect(served.port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    answer = b""
    s.settimeout(0.3)
    while time.monotonic() - started < HEADER_TIMEOUT_S * 4:
        try:
            s.sendall(b"X")  # one byte of a header name at a time, never finishing the head
        except OSError:
            break
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        answer += chunk
    elapsed = time.monotonic() - started
    s.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert elapsed < HEADER_TIMEOUT_S * 3, elapsed


def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    s = _connect(served.port)
    started = time.monotonic()
    answer = _read_all(s, HEADER_TIMEOUT_S * 4)
    elapsed = time.monotonic() - started
    s.close()
    assert answer == b""
    assert elapsed < HEADER_TIMEOUT_S * 3, elapsed


def test_keep_alive_requests_are_not_cut_by_the_head_timeout(served: Served) -> None:
    with httpx.Client(base_url=served.base) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(HEADER_TIMEOUT_S / 2)  # idle, but below the keep-alive timeout
        assert client.get("/healthz").status_code == 200


def test_metrics_are_served_on_their_own_port_only(served: Served) -> None:
    assert httpx.get(served.base + "/metrics").status_code == 404
    r = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics")
    assert r.status_code == 200
    assert "stampede_api_requests_total" in r.text


def test_gunicorn_creates_no_control_socket(served: Served) -> None:
    found = [p for p in served.home.rglob("*") if p.name.endswith(".ctl") or p.is_socket()]
    assert found == []


def test_a_stopping_server_answers_a_request_on_an_idle_keep_alive_connection(api_settings: ApiSettings) -> None:
    """SIGTERM (a deleted API pod) must not close a kept-alive connection under a client that is about to use
    it: a request sent on it after the stop began is answered, with ``Connection: close``, and only then closed.
    (uvicorn closed every idle connection at once: such a request got no answer, EOF for Go's client.)"""
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="stampede-home-"))
    env = _server_env(
        api_settings,
        home,
        port,
        STAMPEDE_METRICS_PORT="0",
        STAMPEDE_KEEPALIVE_S="30",  # the idle connection outlives the test's pauses, however slow the box
        STAMPEDE_LOG_LEVEL="INFO",
    )
    log_path = home / "api.log"
    with open(log_path, "wb") as log:
        api = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "python:stampede_api.gunicorn_conf", "stampede_api.asgi:app"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            deadline = time.monotonic() + 60
            while True:
                try:
                    s = _connect(port)
                    break
                except OSError:
                    if time.monotonic() > deadline or api.poll() is not None:
                        pytest.fail("server did not start:\n" + log_path.read_text()[-3000:])
                    time.sleep(0.2)
            s.sendall(request)
            first = _read_response(s, 10)
            assert first.startswith(b"HTTP/1.1 200 "), first[:200]
            assert b"connection: close" not in first.lower()

            api.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while "Shutting down" not in log_path.read_text():  # the worker began its graceful stop
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            time.sleep(0.5)  # past uvicorn's own pause after asking connections to shut down

            s.sendall(request)
            answer = _read_all(s, 10)
            s.close()
            assert answer.startswith(b"HTTP/1.1 200 "), (answer[:200], log_path.read_text()[-2000:])
            assert b"connection: close" in answer.lower()
            assert api.wait(30) == 0
        finally:
            _stop(api)
