"""Shared fixtures: a trained registry, a real embedded Redis, and real servers on loopback.

Chain: registry -> redis -> settings -> running server (uvicorn in a thread, real HTTP) -> client.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from models.registry import ModelArtifact
from models.publish import build_and_publish
from serving.app import create_app
from serving.http_server import uvicorn_options
from loadtests.harness.redis_server import EmbeddedRedis
from serving.settings import Settings

TEST_SEGMENTS = 20  # 3,360 keys: big enough for real distributions, quick to train
SERVER_START_TIMEOUT_S = 20.0


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with both profiles trained on a small key space."""
    root = tmp_path_factory.mktemp("registry")
    build_and_publish("light", root, segments=TEST_SEGMENTS)
    build_and_publish("heavy", root, segments=TEST_SEGMENTS)
    return root


@pytest.fixture(scope="session")
def light_artifact(registry: Path) -> ModelArtifact:
    from models.registry import resolve

    return resolve(registry, "traffic-light")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session; tests use distinct namespaces or flush it."""
    with EmbeddedRedis() as server:
        yield server


class ServerThread:
    """uvicorn serving one app on a free loopback port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, loop="asyncio", lifespan="on", **uvicorn_options(settings))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def app(self):  # type: ignore[no-untyped-def]
        return self.server.config.loaded_app

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def running(settings: Settings) -> Iterator[tuple[ServerThread, httpx.Client]]:
    """A started server and an HTTP client bound to it; both closed afterwards."""
    server = ServerThread(settings).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            yield server, client
    finally:
        server.stop()


_namespace_counter = iter(range(1_000_000))


@pytest.fixture
def make_settings(registry: Path, redis_server: EmbeddedRedis):  # type: ignore[no-untyped-def]
    """Factory of Settings on the shared registry and Redis, each in a fresh Redis namespace."""

    def make(**fields: object) -> Settings:
        base: dict[str, object] = {
            "registry": registry,
            "redis_url": redis_server.url,
            "redis_namespace": f"t{next(_namespace_counter)}",
            "admin_token": "test-token",
        }
        base.update(fields)
        return Settings(**base)  # type: ignore[arg-type]

    return make


ADMIN = {"Authorization": "Bearer test-token"}
