"""Servers in processes of their own, for load tests, calibration, verification and benchmarks.

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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx
import psutil

from loadtests.harness.redis_server import free_port
from serving.settings import ENV_PREFIX, Settings

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_REPO_ROOT = Path(__file__).resolve().parents[2]


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
    """``argv`` run under ``taskset`` on ``cores`` (unchanged when there is nothing to pin: no
    cores asked for, no taskset, or a machine with a single core to pin to)."""
    if not cores or shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        return argv
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def split_cores() -> tuple[int | None, int | None]:
    """The first and last core this process may run on, for a load generator and the process it
    measures; ``(None, None)`` on a single core, where pinning cannot separate them."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return cores[0], cores[-1]


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


class ManagedProcess:
    """A server in a child process: pinned with taskset, stderr to a file (never a pipe nobody
    reads: a chatty server would block on a full pipe), ready once ``ready_path`` answers 200,
    stopped with SIGTERM and then SIGKILL. Used for hybridserve and for the servers it is
    benchmarked against.

    Example::

        with ManagedProcess("prototype", [sys.executable, "proto.py", "8001"], port=8001, ready_path="/healthz") as p:
            p.cpu_s()
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        env: dict[str, str] | None = None,
        cores: list[int] | None = None,
        ready_path: str = "/readyz",
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.env = env or {}
        self.cores = cores
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the server."""
        assert self.process is not None, f"{self.name} not started"
        return self.process.pid

    def launch(self) -> Self:
        """Start the process without waiting (start several, then :meth:`wait_ready` each)."""
        # Only the settings given reach the child: HYBRIDSERVE_* variables of this process stay here.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        self.process = subprocess.Popen(pinned(self.argv, self.cores), cwd=_REPO_ROOT, env={**inherited, **self.env},
                                        stdout=subprocess.DEVNULL, stderr=self._log)
        return self

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> Self:
        """Wait until ``ready_path`` answers 200; stop it and raise ``RuntimeError`` otherwise."""
        assert self.process is not None, f"{self.name} not started"
        try:
            wait_until_ready(f"{self.url}{self.ready_path}", self.process, self._log, timeout_s)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{self.name}: {exc}") from None
        return self

    def start(self) -> Self:
        """Start and wait until ready."""
        return self.launch().wait_ready()

    def cpu_s(self) -> float:
        """CPU seconds the server (and its worker processes) has used so far."""
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

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class ServerProcess(ManagedProcess):
    """``python -m hybridserve serve --no-precompute`` with ``settings`` (passed as ``HYBRIDSERVE_*``
    variables, the way a deployment would), on a free loopback port."""

    def __init__(self, settings: Settings, cores: list[int] | None = None) -> None:
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": free_port()})
        super().__init__("hybridserve", [sys.executable, "-m", "hybridserve", "serve", "--no-precompute"],
                         port=self.settings.port, env=self.settings.as_env(), cores=cores)
