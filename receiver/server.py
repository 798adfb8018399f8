"""uvicorn's httptools protocol with what it lacks against slow and hostile clients.

uvicorn (0.54) with httptools sets no limit on the size of a request's head and no deadline for
reading a head or a body: its keep-alive timeout runs only between requests. h11 bounds the head
but has no deadlines either, and is slower (README, "Availability"). So this subclass adds, per
connection:

- a cap on the request line and headers together (`RECEIVER_MAX_HEADER_BYTES`): past it, 431
  and the connection is closed, the head never read whole;
- a deadline for the head (`RECEIVER_HEADER_TIMEOUT`), from the connection's opening, or from
  a kept-alive request's first byte, and one for the body from the end of the head
  (`RECEIVER_BODY_TIMEOUT`): past either the connection is closed. VINR gives up after 10 s,
  so holding a delivery longer serves nobody;
- a bound on open connections (`RECEIVER_MAX_CONNECTIONS`): one more is answered 503 and
  closed as it is accepted, never queued.

The bytes of bodies in flight are bounded by the endpoint (receiver.limits, receiver.webhooks).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vinr_recon.settings import Settings

# What the connection is reading: a request's head, its body, nothing (the app answers, or it
# waits for a next request), or what follows a head refused with 431.
_HEAD, _BODY, _DONE, _REFUSED = 0, 1, 2, 3
_END_OF_HEAD = b"\r\n\r\n"
_EMPTY_LINE_BYTES = (b"\r", b"\n")


def _answer(status: str, message: str, *headers: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status}", "content-type: application/json", f"content-length: {len(body)}",
            *headers, "connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a head cap, head and body deadlines and a connection bound.

    The limits are class attributes: `protocol_for(settings)` makes the subclass of a process.
    """

    max_head = 16 * 1024
    head_timeout = 5.0
    body_timeout = 5.0
    max_connections = 1000
    # The answers to a head over the cap and to a connection over the bound: set with the limits.
    _too_large: bytes
    _refused: bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self.transport = transport  # what connection_lost closes
            transport.write(self._refused)
            transport.close()
            return
        super().connection_made(transport)
        self._phase = _HEAD
        self._head_read = 0  # bytes of the present head received so far
        self._head_tail = b""  # its last 3 bytes, for an end of head split between two reads
        self._head_begun = False  # whether its request line has begun (past any empty lines)
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout, self._expired)
        self._timed = _HEAD  # the phase the timer runs for

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == _REFUSED:
            return
        if self._phase != _BODY:
            self._count_head(data)
            if self._head_read > self.max_head:
                self._refuse_head()
                return
        HttpToolsProtocol.data_received(self, data)
        if self._phase != self._timed:
            self._time(self._phase)

    def _count_head(self, data: bytes) -> None:
        """Count the head's bytes in `data`: all of it, or up to the blank line that ends it.

        Empty lines before a request line (which the parser skips) count, but their CRLFs do not
        end the head. A head that ends in this read and a next pipelined request's head that
        begins in it: that next one's first bytes go uncounted, so a head may pass the cap by
        one read.
        """
        window = self._head_tail + data
        self._head_tail = window[-3:]
        start = 0
        if not self._head_begun:
            if window[:1] in _EMPTY_LINE_BYTES:  # rare: spare the usual request a copy
                start = len(window) - len(window.lstrip(b"\r\n"))
            self._head_begun = start < len(window)
        end = window.find(_END_OF_HEAD, start)
        self._head_read += len(data) if end < 0 else end + len(_END_OF_HEAD) - (len(window) - len(data))

    def _refuse_head(self) -> None:
        """431, then a lingering close: the rest of the head is read and dropped until the client
        closes or the head's deadline passes, so that closing with unread bytes (a reset) cannot
        destroy the answer before the client reads it."""
        if self.transport.is_closing():  # the parser refused the request already (400)
            return
        self._phase = _REFUSED
        if self._timer is None:  # a pipelined request's head: no deadline was running
            self._timer = self.loop.call_later(self.head_timeout, self._expired)
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if in_flight or not self.transport.can_write_eof():
            self.transport.close()  # a previous request's answer still to come: no room for this one
            return
        self.transport.write(self._too_large)
        self.transport.write_eof()

    def _time(self, phase: int) -> None:
        """Run the deadline of `phase` (none while the app answers or between requests)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if phase != _DONE:
            timeout = self.head_timeout if phase == _HEAD else self.body_timeout
            self._timer = self.loop.call_later(timeout, self._expired)
        self._timed = phase

    def _expired(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()  # an app still reading the body gets http.disconnect

    # Parser callbacks: where a request's head and body begin and end.
    def on_message_begin(self) -> None:
        self._phase = _HEAD
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._phase = _DONE
        self._head_read = 0
        self._head_tail = b""
        self._head_begun = False
        HttpToolsProtocol.on_message_complete(self)


def protocol_for(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class of a receiver with `settings`' limits."""
    attributes: dict[str, Any] = {
        "max_head": settings.receiver_max_header_bytes,
        "head_timeout": settings.receiver_header_timeout,
        "body_timeout": settings.receiver_body_timeout,
        "max_connections": settings.receiver_max_connections,
        "_too_large": _answer("431 Request Header Fields Too Large",
                              f"request line and headers over the limit of {settings.receiver_max_header_bytes} bytes"),
        "_refused": _answer("503 Service Unavailable", "too many connections", "retry-after: 5"),
    }
    return type("ReceiverHttpProtocol", (GuardedHttpToolsProtocol,), attributes)
