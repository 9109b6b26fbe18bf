"""uvicorn's httptools protocol with a bound on the request head: its size (431) and the time to send it (408).

httptools (llhttp) has no limit of its own: it buffers a header value for as long as it grows, so a 32 MB
header was read whole into a worker (RSS 58 → 122 MB in a 512 Mi pod) and a client trickling a head kept
its connection forever (uvicorn's keep-alive timer is cancelled by the first byte). uvicorn's other parser,
h11, has ``h11_max_incomplete_event_size`` but no head timeout either, and it is pure Python: it served
0.42-0.46 of httptools' rate in ``make bench-protocols`` (bench/results/http-*.md), while this subclass
stayed within the run-to-run noise of plain httptools. So the fast parser stays, with two bounds around it:

* **size** — bytes received while a head is open are counted before they are parsed; past
  ``max_header_bytes`` the connection is answered ``431`` and closed, so at most one read (≤ 256 KiB)
  beyond the limit is ever held. A completed head is measured exactly as well (request line + headers).
* **time** — a deadline of ``header_timeout_s`` starts with the connection and with the first byte of each
  later request and ends when the head is complete (a timer is set only when a head spans reads). A head
  still open then is answered ``408`` and closed. A new connection that sends no byte within
  ``idle_timeout_s`` is just closed. A request being answered is never cut.

The answers use the API's error shape (``{"error": {"code", "message"}}``) and ``Connection: close``.

Two changes to how a keep-alive connection ends, because a client cannot retry a POST the server closed under it
(k6 and Go's client report ``EOF``; a buyer sees a failed purchase):

* **graceful stop** — uvicorn closes every idle connection at once on SIGTERM, racing the client's next request
  on it (a deleted API pod cost buyers requests mid-spike). Here an idle connection stays open until its
  keep-alive timeout: a request arriving meanwhile is answered with ``Connection: close``, and the client opens
  its next connection elsewhere (the pod has left the Service by then: the API pod's preStop pause).
* **keep-alive timeout after a stall** — a timer that came due while the loop was starved is checked again one
  turn later, after the poll, as the head deadline is: a request that already arrived is served, not cut.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Set by the gunicorn worker before it builds uvicorn's config (one pair per process).
LIMITS = {"max_header_bytes": 16384, "header_timeout_s": 10.0, "idle_timeout_s": 60.0}

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _answer(status: int, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses an oversized request head (431) and a slow one (408)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head = int(LIMITS["max_header_bytes"])
        self._head_timeout = float(LIMITS["header_timeout_s"])
        self._idle_timeout = float(LIMITS["idle_timeout_s"])
        self._in_head = True  # between the end of one request's body and the end of the next head
        self._head_bytes = 0
        self._too_large = False
        self._head_open = False  # a request's first byte was parsed, its head not yet complete
        self._head_began = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._draining = False  # the server is stopping: the next answer closes the connection

    # --- connection ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Until its first byte a new connection costs only a socket, and a CPU-starved client may take a
        # while to write after connecting (seen at 10 s on a shared 2-core box): a longer leash than a head.
        self._arm_head_timer(self._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._too_large or (self._in_head and self._head_bytes > self._max_head):
            self._refuse(431, "headers_too_large", f"the request line and headers must fit in {self._max_head} bytes")
        elif self._head_open and self._head_timer is None:
            # A head began but did not end in this read: its deadline counts from its first byte. (A head
            # that arrives whole, the usual case, never costs a timer.)
            self._arm_head_timer(self._head_began + self._head_timeout - self.loop.time())

    # --- parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_open = True
        self._head_began = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._disarm_head_timer()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self._max_head:
            self._too_large = True  # answered once the parser returns; no request cycle is started
            return
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    # --- the end of a keep-alive connection ----------------------------------------------------------------

    def shutdown(self) -> None:
        """The server stops: a request in progress is answered, then the connection closed; an idle one is left
        to its keep-alive timer, and a request arriving before it fires is answered with ``Connection: close``."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif self.timeout_keep_alive_task is None and not self.transport.is_closing():
            # No request yet on this connection: it gets the same keep-alive period as an idle one.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def timeout_keep_alive_handler(self) -> None:
        # Bytes that arrived during a stall of the loop are read by the next poll, which cancels this timer
        # (data_received); look again one turn after it.
        self.timeout_keep_alive_task = self.loop.call_later(0.05, self._keep_alive_expired)

    def _keep_alive_expired(self) -> None:
        self.timeout_keep_alive_task = None
        if not self.transport.is_closing():
            self.transport.close()

    # --- the bounds --------------------------------------------------------------------------------

    def _arm_head_timer(self, delay: float | None = None) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(
            self._head_timeout if delay is None else max(0.0, delay), self._head_timed_out
        )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        # libuv runs due timers before it polls for input: after a stall of the loop (a starved CPU) the
        # deadline may come up before bytes that already arrived are read. Look again one turn later, after
        # that poll (50 ms on: a timer due at once could still run in this same timer pass), and judge then.
        self._head_timer = self.loop.call_later(0.05, self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # let the request in progress finish, then close
            return
        if self._head_bytes:
            self._refuse(408, "request_timeout", f"the request head must arrive within {self._head_timeout:g} s")
        else:
            self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self.logger.warning("refused a request head: %s", message, extra={"status": status})
            self.transport.write(_answer(status, code, message))
            self.transport.close()
