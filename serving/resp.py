"""A small pipelined Redis client for the serving hot path (GET, MGET, pipelined SET).

Profiling the Redis-hit path showed redis-py's asyncio client spending more than the rest of the
request on each command: a pool checkout and release, a task per read timeout (``wait_for``) and
observability hooks. This client keeps one connection per server process and pipelines every
request's command over it: a command is one ``write`` of bytes packed by hiredis, a reply is parsed
by hiredis' Reader, and replies resolve waiting futures in order. A timeout is a timer on the
future, not a task. A timed-out or broken connection is dropped and the next command reconnects,
so a Redis restart heals without intervention. Admin and batch jobs keep using redis-py.

Understands ``redis://`` and ``rediss://`` URLs (TLS, with ``ssl_ca_certs`` / ``ssl_cert_reqs``
query parameters as redis-py reads them), user and password, and the database number.

Example::

    client = RespClient("redis://127.0.0.1:6379/0", timeout_s=0.25)
    [value] = await client.execute([("GET", "hs:traffic-light:abc:17:42")])
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

Command = Sequence[str | bytes | int]


class RespError(Exception):
    """Base of this client's errors."""


class RespConnectionError(RespError, ConnectionError):
    """Redis could not be reached, timed out, or the connection broke: an outage."""


class RespTimeoutError(RespConnectionError, TimeoutError):
    """No reply (or no connection) within the timeout; the connection was dropped."""


class RespReplyError(RespError):
    """Redis answered with an error reply (``-OOM``, ``-WRONGTYPE``, ``-MOVED``, ``-NOAUTH``...).

    Redis is up and talking: this is not an outage, and callers must not count it as one.
    """


class _Protocol(asyncio.Protocol):
    """One connection: writes commands, feeds replies to the futures waiting in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            future = self._waiting.popleft()  # replies come in command order, late ones included
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RespReplyError(f"Redis replied with an error: {reply}"))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def fail(self, error: RespError) -> None:
        """Mark the connection dead and fail every reply still awaited with ``error``."""
        self.closed = True
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, payload: bytes, replies: int) -> list[asyncio.Future[Any]]:
        """Write packed commands; one future per expected reply."""
        if self.closed or self._transport is None:
            raise RespConnectionError("connection to Redis is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._waiting.extend(futures)
        self._transport.write(payload)
        return futures

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _ssl_context(params: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
    if str(params.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class RespClient:
    """Pipelined commands over one lazily (re)connected connection, each bounded by ``timeout_s``."""

    def __init__(self, url: str, timeout_s: float) -> None:
        params = parse_url(url)
        self._host = params.get("host", "127.0.0.1")
        self._port = int(params.get("port", 6379))
        self._ssl = _ssl_context(params) if params.get("connection_class") is SSLConnection else None
        self._handshake = self._handshake_commands(params)
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @staticmethod
    def _handshake_commands(params: dict[str, Any]) -> list[Command]:
        commands: list[Command] = []
        if params.get("password"):
            user = params.get("username")
            commands.append(("AUTH", user, params["password"]) if user else ("AUTH", params["password"]))
        if int(params.get("db", 0)):
            commands.append(("SELECT", int(params["db"])))
        return commands

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        # One connect at a time, and every request waiting for it shares its outcome: when Redis
        # is down, the requests queued behind a failed connect fail with it at once, instead of
        # each paying another connect timeout in turn.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect_bounded())
            self._connecting.add_done_callback(_retrieve)  # waiters may all have been cancelled
        return await asyncio.shield(self._connecting)

    async def _connect_bounded(self) -> _Protocol:
        try:
            self._protocol = await asyncio.wait_for(self._connect(), self._timeout_s)
        except TimeoutError as exc:
            raise RespTimeoutError(f"no connection to Redis within {self._timeout_s}s") from exc
        return self._protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl)
        except (OSError, ssl.SSLError) as exc:
            raise RespConnectionError(f"cannot connect to Redis: {type(exc).__name__}") from exc
        try:
            if self._handshake:
                await self._send(protocol, self._handshake)
        except RespReplyError as exc:
            # A refused AUTH (wrong password) leaves a connection nobody can use: close it, or every
            # retry leaks one socket on both ends.
            protocol.close()
            raise RespConnectionError(f"Redis refused the connection handshake: {exc}") from exc
        except BaseException:
            protocol.close()  # a timeout or cancellation mid-handshake: never keep a half-open link
            raise
        return protocol

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one write and return their replies, in order."""
        protocol = await self._connection()
        return await self._send(protocol, commands)

    async def execute_each(self, commands: Sequence[Command]) -> list[Any]:
        """Like :meth:`execute`, but an error reply takes its command's place as a
        :class:`RespReplyError` instead of raising, so one refused command (a cluster's ``MOVED``)
        does not hide the others' replies. Connection failures still raise."""
        protocol = await self._connection()
        return await self._send(protocol, commands, inline_errors=True)

    async def _send(self, protocol: _Protocol, commands: Sequence[Command], inline_errors: bool = False) -> list[Any]:
        payload = b"".join(hiredis.pack_command(tuple(c)) for c in commands)
        futures = protocol.send(payload, len(commands))
        last = futures[-1]
        timer = asyncio.get_running_loop().call_later(self._timeout_s, self._expire, protocol, last)
        try:
            for future in futures:
                try:
                    await future
                except RespReplyError:
                    if not inline_errors:
                        raise
        finally:
            timer.cancel()
        if inline_errors:
            return [f.exception() or f.result() for f in futures]
        return [f.result() for f in futures]

    def _expire(self, protocol: _Protocol, future: asyncio.Future[Any]) -> None:
        """A reply overdue: fail its waiters and drop the connection (it may be wedged)."""
        if not future.done():
            protocol.close()
            protocol.fail(RespTimeoutError(f"no reply from Redis within {self._timeout_s}s"))

    async def close(self) -> None:
        """Close the connection."""
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
