"""Helpers shared by test modules: a real server on loopback and the constants tests agree on.

Fixtures live in ``tests/conftest.py``, which pytest discovers on its own; what a test imports by
name lives here, so conftest holds fixtures only and no test module imports it.
"""

from __future__ import annotations

import ast
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from serving.app import create_app
from serving.http_server import uvicorn_options
from serving.settings import Settings

TEST_SEGMENTS = 20  # 3,360 keys: big enough for real distributions, quick to train
SERVER_START_TIMEOUT_S = 20.0
ADMIN_TOKEN = "test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
"""Headers of an admin call to a server built from the ``make_settings`` fixture."""
LOCUSTFILE = Path(__file__).resolve().parents[1] / "loadtests" / "locustfile.py"


def locustfile_constant(name: str) -> float:
    """A numeric constant of the locustfile (module or class level), read from its source.

    Tests never import the locustfile: locust monkey-patches the standard library with gevent on
    import, which would break the test process.
    """
    for node in ast.walk(ast.parse(LOCUSTFILE.read_text())):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return float(ast.literal_eval(node.value))
    raise LookupError(f"{name} not found in {LOCUSTFILE}")


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
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def app(self):  # type: ignore[no-untyped-def]
        """The app being served (as created: uvicorn's own wrappers left out)."""
        return self.server.config.app

    def start(self) -> ServerThread:
        """Start serving; returns once the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def running(settings: Settings) -> Iterator[tuple[ServerThread, httpx.Client]]:
    """A started server and an HTTP client bound to it; both closed afterwards.

    Example::

        with running(make_settings(mode="hybrid")) as (server, client):
            client.get("/v1/predict/3:17").json()
    """
    server = ServerThread(settings).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            yield server, client
    finally:
        server.stop()
