"""loadtests/harness/redis_server.py: a real redis-server starts, answers, restarts and is cleaned up;
it is locked down (random password, no CONFIG/SAVE/..., loopback only)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import socket

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from loadtests.harness.redis_server import DISABLED_COMMANDS, EmbeddedRedis, PortTakenError, find_redis_server, free_port


def test_binary_found() -> None:
    assert os.access(find_redis_server(), os.X_OK)


def test_start_ping_stop() -> None:
    server = EmbeddedRedis().start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.info("persistence")["rdb_changes_since_last_save"] >= 1  # counted, never saved
        listening = [c.laddr for c in psutil.Process(server.pid).net_connections() if c.status == psutil.CONN_LISTEN]
        assert listening and all(address.ip == "127.0.0.1" for address in listening)
        pid = server.pid
    finally:
        server.close()
    assert not server.ping()
    assert pid is not None and not _alive(pid)


def test_kill_and_restart_on_same_port() -> None:
    with EmbeddedRedis() as server:
        port = server.port
        server.kill()
        assert not server.ping()
        server.start()
        assert server.port == port and server.ping()


def test_a_drawn_port_taken_before_the_start_is_drawn_again() -> None:
    """CI: a port drawn free was taken before redis-server bound it, and the cluster fixture died
    with an empty message."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        draws = iter([taken, taken])
        server = EmbeddedRedis(pick_port=lambda: next(draws, None) or free_port())
        with server:
            assert server.port != taken and server.ping()
            port = server.port
            server.kill()
            server.start()
            assert server.port == port  # a server that has run comes back on its port


def test_a_given_port_that_is_taken_fails_with_the_servers_own_words() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = EmbeddedRedis(port=taken)
        try:
            with pytest.raises(PortTakenError, match=f"(?s)port {taken} exited with 1: .*Address already in use"):
                server.start()
            assert server.pid is None
        finally:
            server.close()


def test_password() -> None:
    with EmbeddedRedis(password="s3cret") as server:
        assert redis.Redis.from_url(server.url).ping()
        try:
            # No retries: redis-py retries an authentication error with backoff by default (3 s).
            redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0)).get("x")
            raise AssertionError("unauthenticated access worked")
        except redis.AuthenticationError:
            pass
        except redis.ResponseError as exc:
            assert "NOAUTH" in str(exc)


def test_random_password_by_default() -> None:
    with EmbeddedRedis() as first, EmbeddedRedis() as second:
        assert first.password and second.password and first.password != second.password
        assert len(first.password) >= 32
        assert redis.Redis.from_url(first.url).ping()
        with pytest.raises((redis.AuthenticationError, redis.ResponseError), match="(?i)auth"):
            redis.Redis(host="127.0.0.1", port=first.port).set("x", "1")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=first.port, password=second.password).ping()


def test_password_never_on_the_command_line_or_in_repr() -> None:
    """/proc/PID/cmdline is readable by every local user; repr and address end up in logs."""
    with EmbeddedRedis() as server:
        assert server.password not in Path(f"/proc/{server.pid}/cmdline").read_text()
        assert server.password not in repr(server) and server.password not in server.address
        assert server.password in server.url


def test_config_set_and_file_writing_commands_are_refused(tmp_path: Path) -> None:
    """The red-team attack: CONFIG SET dir + dbfilename, then SAVE, wrote authorized_keys."""
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.config_set("dir", str(tmp_path))
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.config_get("dir")
        for command in DISABLED_COMMANDS:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(command, "HELP")
        assert list(tmp_path.iterdir()) == []
        assert client.ping()  # the server itself is untouched


def test_dies_with_parent() -> None:
    code = "from loadtests.harness.redis_server import EmbeddedRedis; s = EmbeddedRedis().start(); print(s.pid, flush=True); import os; os._exit(0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
