"""serving/resp.py: the pipelined hot-path client, against a real redis-server."""

from __future__ import annotations

import asyncio
import socket
import time
from urllib.parse import quote

import pytest

from loadtests.harness.redis_server import EmbeddedRedis
from serving.resp import RespClient, RespError


def test_commands_replies_and_order(redis_server: EmbeddedRedis) -> None:
    async def run() -> None:
        client = RespClient(redis_server.url, 1.0)
        assert await client.execute([("SET", "resp:a", b"\x00\xff"), ("GET", "resp:a"), ("MGET", "resp:a", "resp:none")]) == [
            b"OK", b"\x00\xff", [b"\x00\xff", None]]
        # many requests in flight on one connection: each gets its own reply
        for i in range(50):
            await client.execute([("SET", f"resp:k{i}", str(i))])
        replies = await asyncio.gather(*(client.execute([("GET", f"resp:k{i}")]) for i in range(50)))
        assert replies == [[str(i).encode()] for i in range(50)]
        with pytest.raises(RespError, match="error"):
            await client.execute([("INCR", "resp:a")])
        assert await client.execute([("GET", "resp:k7")]) == [b"7"]  # the connection survives an error reply
        await client.close()

    asyncio.run(run())


def test_password_and_database() -> None:
    async def run(server: EmbeddedRedis) -> None:
        url = f"redis://:{quote('p w:@', safe='')}@127.0.0.1:{server.port}/3"
        client = RespClient(url, 1.0)
        await client.execute([("SET", "db3", "x")])
        assert await RespClient(f"redis://:{quote('p w:@', safe='')}@127.0.0.1:{server.port}/0", 1.0).execute([("GET", "db3")]) == [None]
        with pytest.raises(RespError):
            await RespClient(f"redis://127.0.0.1:{server.port}/0", 1.0).execute([("GET", "db3")])

    with EmbeddedRedis(password="p w:@") as server:
        asyncio.run(run(server))


def test_reconnects_after_restart() -> None:
    async def run(server: EmbeddedRedis) -> None:
        client = RespClient(server.url, 1.0)
        await client.execute([("PING",)])
        server.kill()
        with pytest.raises(RespError):
            await client.execute([("GET", "x")])
        server.start()
        assert await client.execute([("PING",)]) == [b"PONG"]

    with EmbeddedRedis() as server:
        asyncio.run(run(server))


def test_timeout_is_bounded_and_drops_the_connection() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never answers

    async def run() -> None:
        client = RespClient(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", 0.2)
        start = time.monotonic()
        with pytest.raises(RespError, match="no reply"):
            await client.execute([("GET", "x")])
        assert time.monotonic() - start < 3  # bounded by the timeout, never a hang
        assert client._protocol is not None and client._protocol.closed  # noqa: SLF001

    try:
        asyncio.run(run())
    finally:
        silent.close()
