"""The whole platform as local processes: the API under gunicorn, settle workers, the operator.

The demo, the end-to-end and fault-injection tests and the benchmarks all start the same real commands a
Pod would run (by command line, never by import, so the core still imports no component), each with its
own log file under ``.run/``, wait until each answers its health endpoint, and can stop or SIGKILL any of
them mid-sale.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (as hack/free_ports.py picks them): a port
    from bind(0) can be taken as the source port of an outgoing connection before the server binds it."""
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Polls ``url`` until it answers 200; fails early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s ({last})")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass
class Process:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Path
    url: str | None = None
    log_offset: int = 0  # where this process's lines start (the file keeps earlier runs' lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """What this process has logged so far."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


@dataclass
class LocalStack:
    """Starts and stops the platform's processes; use as a context manager so nothing outlives it."""

    run_dir: Path
    env: Mapping[str, str]
    procs: dict[str, Process] = field(default_factory=dict)
    _previous_sigterm: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> LocalStack:
        # SIGTERM would end this process without unwinding, orphaning every child in its own session:
        # turn it into SystemExit so __exit__ stops them (main thread only, where handlers can be set).
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        ready_url: str | None = None,
        timeout: float = 60,
    ) -> Process:
        if name in self.procs and self.procs[name].alive():
            raise RuntimeError(f"{name} already runs (pid {self.procs[name].pid})")
        log = self.run_dir / f"{name}.log"
        full_env = {**os.environ, **self.env, **(env or {})}
        with log.open("ab") as out:
            offset = out.tell()
            proc = subprocess.Popen(
                list(argv),
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        p = Process(name, list(argv), proc, log, ready_url, offset)
        self.procs[name] = p
        if ready_url:
            try:
                wait_http(ready_url, timeout, proc)
            except (RuntimeError, TimeoutError) as exc:
                self.stop(name)
                raise RuntimeError(f"{name} did not become ready: {exc}\n--- {log} ---\n{p.tail()}") from exc
        return p

    def api(
        self,
        name: str = "api",
        port: int | None = None,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> Process:
        """The buy API as a Pod runs it: gunicorn with uvicorn workers serving the Falcon ASGI app; returns
        once it answers /readyz (within ``timeout`` seconds)."""
        port = port or free_port()
        return self.start(
            name,
            [str(BIN / "gunicorn"), "-c", "python:stampede_api.gunicorn_conf", "stampede_api.asgi:app"],
            {
                "STAMPEDE_BIND": f"127.0.0.1:{port}",
                "STAMPEDE_WORKERS": str(workers),
                # A metrics port of its own: gunicorn binds with SO_REUSEPORT, so two local APIs on the
                # default port would share it silently.
                "STAMPEDE_METRICS_HOST": "127.0.0.1",
                "STAMPEDE_METRICS_PORT": str(free_port()),
                **(env or {}),
            },
            ready_url=f"http://127.0.0.1:{port}/readyz",
            timeout=timeout,
        )

    def worker(
        self,
        name: str = "worker",
        concurrency: int = 8,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> Process:
        """A settle worker (``python -m stampede_worker``); returns once it answers /healthz (within
        ``timeout`` seconds)."""
        port = port or free_port()
        return self.start(
            name,
            [sys.executable, "-m", "stampede_worker"],
            {
                "STAMPEDE_WORKER_CONCURRENCY": str(concurrency),
                "STAMPEDE_WORKER_METRICS_HOST": "127.0.0.1",
                "STAMPEDE_WORKER_METRICS_PORT": str(port),
                **(env or {}),
            },
            ready_url=f"http://127.0.0.1:{port}/healthz",
            timeout=timeout,
        )

    def operator(
        self,
        kubeconfig: Path,
        name: str = "operator",
        namespace: str = "default",
        priority: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """The kopf operator; standalone unless a peering ``priority`` is given (leader election)."""
        argv = [
            str(BIN / "kopf"),
            "run",
            "-m",
            "stampede_operator.main",
            f"--namespace={namespace}",
            "--verbose" if os.environ.get("STAMPEDE_OPERATOR_VERBOSE") else "--quiet",
        ]
        # Several operators may share this host (leader election tests): no fixed metrics port by default.
        extra = {"KUBECONFIG": str(kubeconfig), "STAMPEDE_OPERATOR_METRICS_PORT": "0"}
        if priority is None:
            argv.append("--standalone")
            extra["STAMPEDE_STANDALONE"] = "true"
        else:
            extra["STAMPEDE_PEERING_PRIORITY"] = str(priority)
        return self.start(name, argv, {**extra, **(env or {})})

    def signal(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to the whole process group (gunicorn's workers die with their master)."""
        p = self.procs[name]
        if p.alive():
            os.killpg(p.pid, sig)
            if sig == signal.SIGKILL:
                p.proc.wait(10)

    def stop(self, name: str, timeout: float = 20) -> int | None:
        p = self.procs.get(name)
        if p is None or not p.alive():
            return None if p is None else p.proc.returncode
        os.killpg(p.pid, signal.SIGTERM)
        try:
            return p.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            return p.proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            with contextlib.suppress(ProcessLookupError):
                self.stop(name)
