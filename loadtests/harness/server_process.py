"""A hybridserve server in a process of its own, for load tests, calibration and verification.

Its own process, so that its CPU time can be read from its pid without counting the client that
drives it, and so that Locust's gevent patching or a test's event loop never share its interpreter.
Settings travel as ``HYBRIDSERVE_*`` environment variables, the way a deployment would pass them.

Example::

    with ServerProcess(settings, cores=[1]) as server:
        httpx.get(f"{server.url}/v1/predict/17:42")
        server.cpu_s()
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
import psutil

from loadtests.harness.redis_server import free_port
from serving.settings import Settings

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_REPO_ROOT = Path(__file__).resolve().parents[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """``HYBRIDSERVE_*`` variables that reproduce ``settings`` in another process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"HYBRIDSERVE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (uvicorn workers are children).

    Linux counts per-process CPU in clock ticks (10 ms) in /proc/PID/stat, too coarse for a
    calibration of a few hundred requests; each thread's /proc/PID/task/TID/schedstat counts
    nanoseconds, so that is read where it exists, and psutil's tick counts elsewhere.
    """
    process = psutil.Process(pid)
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += _schedstat_s(p.pid)
        except (OSError, ValueError):
            try:
                times = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def _schedstat_s(pid: int) -> float:
    """Nanosecond-resolution CPU time of every live thread of ``pid`` (Linux schedstat)."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue  # the thread ended between the listing and the read
    return total_ns / 1e9


def pinned(argv: list[str], cores: list[int] | None) -> list[str]:
    """``argv`` run under ``taskset`` on ``cores`` (unchanged when there is nothing to pin)."""
    if not cores or not os.path.exists("/usr/bin/taskset"):
        return argv
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: IO[bytes], timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``url`` until it answers 200; a clear error with the log's tail if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            detail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"server exited with status {process.returncode}: {detail}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s")


class ServerProcess:
    """``python -m hybridserve.cli serve --no-precompute`` with ``settings``, on a free loopback port."""

    def __init__(self, settings: Settings, cores: list[int] | None = None) -> None:
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": free_port()})
        self.cores = cores
        self.process: subprocess.Popen[bytes] | None = None
        # stderr to a file, never a pipe nobody reads: a chatty server would block on a full pipe.
        self._log: IO[bytes] = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def pid(self) -> int:
        """Process id of the server."""
        assert self.process is not None, "server not started"
        return self.process.pid

    def start(self) -> ServerProcess:
        """Start the server and wait until ``/readyz`` answers 200."""
        argv = pinned([sys.executable, "-m", "hybridserve.cli", "serve", "--no-precompute"], self.cores)
        self.process = subprocess.Popen(argv, cwd=_REPO_ROOT, env={**os.environ, **settings_env(self.settings)},
                                        stdout=subprocess.DEVNULL, stderr=self._log)
        try:
            wait_until_ready(f"{self.url}/readyz", self.process, self._log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far."""
        return process_cpu_s(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
