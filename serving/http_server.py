"""How uvicorn runs the app: connection limits enforced below ASGI, where a slow or huge request
head costs nothing but its bytes.

uvicorn's httptools protocol has no limit on the request head (httptools concatenates a header
value chunk by chunk, so an 80 MB header took seconds of event-loop time) and no deadline for it (a
connection that never finishes its head, or never sends a byte, stays open forever; the keep-alive
timer only runs after a response). :class:`GuardedHttpToolsProtocol` adds, per connection:

- a byte limit on the request line plus headers (``max_head_bytes``): 431, then close;
- a deadline for a complete head (``header_timeout_s``), counted from the connection or from the
  first byte of the next request: 408 then close (a connection that sent nothing is just closed);
- a cap on open connections per worker (``max_connections``): 503 at once, then close;
- and every protocol-level error as the same JSON as the app's (``{"error", "detail"}``).

Idle keep-alive connections are closed by uvicorn's own timer (``keepalive_timeout_s``).

Example::

    uvicorn.run("serving.app:app_from_env", factory=True, **uvicorn_options(settings))
"""

from __future__ import annotations

import asyncio
import http
from asyncio import TimerHandle
from dataclasses import dataclass
from functools import partial
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.errors import HeaderTooLarge, InvalidHTTP, RequestTimeout, ServingError, TooManyConnections
from serving.settings import Settings


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection limits of :class:`GuardedHttpToolsProtocol` (from :class:`Settings`)."""

    max_head_bytes: int
    header_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits configured in ``settings``."""
        return cls(settings.max_head_bytes, settings.header_timeout_s, settings.max_connections)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` that enforce the connection limits.

    The protocol is a ``partial`` of a module-level class, so it pickles into ``--workers`` processes.
    """
    return {
        "http": partial(GuardedHttpToolsProtocol, limits=ConnectionLimits.from_settings(settings)),
        "timeout_keep_alive": settings.keepalive_timeout_s,
    }


def error_response(error: ServingError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with the app's JSON error body."""
    body = orjson.dumps({"error": error.code, "detail": error.detail})
    head = [b"HTTP/1.1 %d %s\r\n" % (error.status, http.HTTPStatus(error.status).phrase.encode())]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(head) + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head byte limit, a head deadline and a connection cap.

    Per request it only stamps the time a head starts and clears it when the head completes: one
    timer per connection checks the stamp, instead of a timer armed and cancelled per request.
    """

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._head_started: float | None = None  # loop time the unfinished head began; None: no head pending
        self._head_bytes = 0  # bytes received in earlier chunks of the unfinished head
        self._measure_head = False  # the head came in big or in pieces: measure it exactly when complete
        self._silent = True  # nothing received yet on this connection
        self._head_timer: TimerHandle | None = None

    # ----- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(TooManyConnections(f"more than {self.limits.max_connections} open connections"))
            return
        # A connection that sends nothing is waiting for a head too: it gets the same deadline.
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._check_head_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        head_pending = self._head_started is not None and not self._silent
        if head_pending or len(data) > self.limits.max_head_bytes:
            self._measure_head = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # As uvicorn does: the request was dispatched already; a WebSocket upgrade switches protocol.
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # an error raised in a parser callback (see on_headers_complete)
            self._refuse(cause if isinstance(cause, ServingError) else InvalidHTTP("invalid HTTP request"))
            return
        if self._head_started is not None and not self._silent:
            # Still inside a head after this chunk: bound the bytes before the parser sees more.
            self._head_bytes += len(data) if head_pending else 0
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(self._too_large())

    # ----- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._silent = False
        self._head_started = self.loop.time()
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        if self._measure_head and self._head_size() > self.limits.max_head_bytes:
            raise self._too_large()  # httptools re-raises it from feed_data as the error's context
        self._head_started = None
        self._measure_head = False
        super().on_headers_complete()

    # ----- helpers ------------------------------------------------------------------------------

    def _head_size(self) -> int:
        """Bytes of the request line and headers as parsed (separators included)."""
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large(self) -> HeaderTooLarge:
        return HeaderTooLarge(f"request line and headers over {self.limits.max_head_bytes} bytes")

    def _check_head_deadline(self) -> None:
        """Runs every ``header_timeout_s`` per connection: close it if its head is overdue."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        started, now = self._head_started, self.loop.time()
        busy = self.cycle is not None and not self.cycle.response_complete  # our delay, not the client's
        if started is not None and not busy and now - started >= self.limits.header_timeout_s:
            if self._silent:
                self.transport.close()
            else:
                self._refuse(RequestTimeout(f"request head not complete within {self.limits.header_timeout_s:g} s"))
            return
        due = self.limits.header_timeout_s - (now - started) if started is not None and not busy else self.limits.header_timeout_s
        self._head_timer = self.loop.call_later(max(due, 0.001), self._check_head_deadline)

    def _refuse(self, error: ServingError) -> None:
        """Answer ``error`` as JSON and close the connection (the parser's state is not reusable)."""
        self.logger.debug("refused a connection: %s %s", error.status, error.detail)
        if not self.transport.is_closing():
            self.transport.write(error_response(error, self.server_state.default_headers))
            self.transport.close()
