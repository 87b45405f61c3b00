"""loadtests/harness/redis_server.py: a real redis-server starts, answers, restarts and is cleaned up."""

import os
import subprocess
import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from loadtests.harness.redis_server import EmbeddedRedis, find_redis_server


def test_binary_found() -> None:
    assert os.access(find_redis_server(), os.X_OK)


def test_start_ping_stop() -> None:
    server = EmbeddedRedis().start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("save")["save"] == ""
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
