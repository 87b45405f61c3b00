"""A real hybridserve server for calibration and verification: embedded Redis + uvicorn subprocess.

The server runs in its own process (``python -m hybridserve.cli serve``) so its CPU time can be read
from its pid without counting the client that drives it. The head is precomputed here, before the
server starts, so the caller chooses exactly which keys it holds (the ones the simulation chose).

Example::

    with LiveServer(settings, head_keys=["17:42", "3:8"]) as live:
        live.client.get("/v1/predict/17:42").json()
        live.server_cpu_s(), live.redis_cpu_s(), live.bytes_per_entry
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from serving.precompute import precompute
from loadtests.harness.redis_server import EmbeddedRedis
from loadtests.harness.server_process import ServerProcess, process_cpu_s
from serving.settings import Settings

REQUEST_TIMEOUT_S = 10.0


class LiveServer:
    """Embedded Redis, the head precomputed into it, and a server subprocess on a free port."""

    def __init__(self, settings: Settings, head_keys: Sequence[str] = ()) -> None:
        self.settings = settings
        self.head_keys = list(head_keys)
        self.redis = EmbeddedRedis()
        self.server: ServerProcess | None = None
        self.client: httpx.Client
        self.bytes_per_entry = 0.0
        self.precompute_cpu_s_per_key = 0.0

    def start(self) -> LiveServer:
        """Start Redis, precompute the head, start the server and wait until it is ready."""
        self.redis.start()
        self.settings = self.settings.model_copy(update={"redis_url": self.redis.url})
        if self.head_keys:
            report = precompute(self.settings, self.head_keys, progress=False)
            # used_memory delta per key: the key, the value and Redis' per-entry overhead.
            self.bytes_per_entry = report.redis_bytes_added / report.keys
            self.precompute_cpu_s_per_key = report.cpu_seconds / report.keys
        self.server = ServerProcess(self.settings).start()
        self.client = httpx.Client(base_url=self.server.url, timeout=REQUEST_TIMEOUT_S)
        return self

    def server_cpu_s(self) -> float:
        """CPU seconds (user + system) the server process and its children have used so far."""
        return self.server.cpu_s()

    def redis_cpu_s(self) -> float:
        """CPU seconds the Redis process has used so far."""
        assert self.redis.pid is not None
        return process_cpu_s(self.redis.pid)

    def stats(self) -> dict[str, Any]:
        """``GET /v1/cache/stats``."""
        response = self.client.get("/v1/cache/stats")
        response.raise_for_status()
        return response.json()

    def predict(self, key: str) -> dict[str, Any]:
        """``GET /v1/predict/{key}``; raises on a non-200 answer."""
        response = self.client.get(f"/v1/predict/{key}")
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Stop the server and Redis."""
        if self.server is not None:
            self.server.stop()
        if hasattr(self, "client"):
            self.client.close()
        self.redis.close()

    def __enter__(self) -> LiveServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

