"""A real hybridserve server for calibration and verification: embedded Redis + uvicorn subprocess.

The server runs in its own process (``python -m serving.cli serve``) so its CPU time can be read
from its pid without counting the client that drives it. The head is precomputed here, before the
server starts, so the caller chooses exactly which keys it holds (the ones the simulation chose).

Example::

    with LiveServer(settings, head_keys=["17:42", "3:8"]) as live:
        live.client.get("/v1/predict/17:42").json()
        live.server_cpu_s(), live.redis_cpu_s(), live.bytes_per_entry
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from serving.precompute import precompute
from serving.redis_server import EmbeddedRedis, free_port
from serving.settings import Settings

SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 10.0
_REPO_ROOT = Path(__file__).resolve().parents[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """``HYBRIDSERVE_*`` variables that reproduce ``settings`` in another process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"HYBRIDSERVE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class LiveServer:
    """Embedded Redis, the head precomputed into it, and a server subprocess on a free port."""

    def __init__(self, settings: Settings, head_keys: Sequence[str] = ()) -> None:
        self.settings = settings
        self.head_keys = list(head_keys)
        self.redis = EmbeddedRedis()
        self.process: subprocess.Popen[bytes] | None = None
        self.client: httpx.Client
        self.bytes_per_entry = 0.0
        self.precompute_cpu_s_per_key = 0.0

    def start(self) -> LiveServer:
        """Start Redis, precompute the head, start the server and wait until it is ready."""
        self.redis.start()
        port = free_port()
        self.settings = self.settings.model_copy(update={"redis_url": self.redis.url, "port": port, "host": "127.0.0.1"})
        if self.head_keys:
            report = precompute(self.settings, self.head_keys, progress=False)
            # used_memory delta per key: the key, the value and Redis' per-entry overhead.
            self.bytes_per_entry = report.redis_bytes_added / report.keys
            self.precompute_cpu_s_per_key = report.cpu_seconds / report.keys
        env = {**os.environ, **settings_env(self.settings)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--redis-url", self.redis.url],
            cwd=_REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=REQUEST_TIMEOUT_S)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                detail = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"server exited with status {self.process.returncode}: {detail[-2000:]}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready within {SERVER_START_TIMEOUT_S:.0f}s")

    def server_cpu_s(self) -> float:
        """CPU seconds (user + system) the server process and its children have used so far."""
        assert self.process is not None
        return _cpu_s(self.process.pid)

    def redis_cpu_s(self) -> float:
        """CPU seconds the Redis process has used so far."""
        assert self.redis.pid is not None
        return _cpu_s(self.redis.pid)

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
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(SERVER_STOP_TIMEOUT_S)
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


def _cpu_s(pid: int) -> float:
    process = psutil.Process(pid)
    total = process.cpu_times()
    cpu = total.user + total.system
    for child in process.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        cpu += times.user + times.system
    return cpu
