"""Redis as the prediction store: key layout, encoding, timeouts and the circuit breaker.

Key layout (``ns`` is ``Settings.redis_namespace``)::

    {ns}:{model}:{version}:{key}   -> 4-byte little-endian float32 prediction
    {ns}:{model}:static            -> version whose static table is complete (the pointer)

Every key carries the model name and version, so a new version never reads an old one's value.
A prediction is stored as the exact float32 the model produced, so every mode returns the same
float for the same key. A miss is ``None``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from serving.errors import StoreUnavailable
from serving.resp import RespClient

_FLOAT = struct.Struct("<f")


def encode(value: float) -> bytes:
    """Stored form of one prediction."""
    return _FLOAT.pack(value)


def decode(raw: bytes | None) -> float | None:
    """Prediction from its stored form; ``None`` for a miss."""
    return None if raw is None else _FLOAT.unpack(raw)[0]


def prediction_key(namespace: str, model: str, version: str, key: str) -> str:
    """Redis key of one prediction of one model version."""
    return f"{namespace}:{model}:{version}:{key}"


def static_pointer_key(namespace: str, model: str) -> str:
    """Redis key naming the version whose static table is complete."""
    return f"{namespace}:{model}:static"


class CircuitBreaker:
    """Stops paying Redis timeouts while Redis is down.

    Closed: calls go through. After ``failures`` consecutive failures it opens: calls fail at once.
    After ``reset_s`` one call is let through as a probe; success closes it, failure re-opens it.
    """

    def __init__(self, failures: int, reset_s: float) -> None:
        self.failures_to_open = failures
        self.reset_s = reset_s
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self._probe_started = 0.0
        self.opened_count = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._probing or time.monotonic() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """Whether a call may go to Redis now."""
        if self._opened_at is None:
            return True
        now = time.monotonic()
        if now - self._opened_at < self.reset_s:
            return False
        # A probe that never reported back (its request was cancelled, e.g. the client hung up)
        # must not keep the breaker open forever: after another reset_s a new probe may go.
        if self._probing and now - self._probe_started < self.reset_s:
            return False
        self._probing = True
        self._probe_started = now
        return True

    def success(self) -> None:
        """Record a call that worked."""
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        """Record a call that failed or timed out."""
        self._consecutive += 1
        self._probing = False
        if self._opened_at is not None or self._consecutive >= self.failures_to_open:
            if self._opened_at is None:
                self.opened_count += 1
            self._opened_at = time.monotonic()


class RedisStore:
    """Async Redis access with a bounded timeout on every call, behind a circuit breaker.

    Prediction reads and writes (the hot path) go through the pipelined :class:`RespClient`;
    PING, SCAN and UNLINK, which are rare, through redis-py.
    """

    def __init__(self, url: str, timeout_s: float, breaker: CircuitBreaker) -> None:
        self.url = url
        self.breaker = breaker
        self.errors = 0
        self._fast = RespClient(url, timeout_s)
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
        )

    @property
    def client(self) -> aioredis.Redis:
        """The underlying client (admin and precompute use it directly)."""
        return self._client

    def _check(self) -> None:
        if not self.breaker.allow():
            raise StoreUnavailable("Redis is unavailable (circuit breaker open after repeated failures)")

    def _failed(self, exc: Exception) -> StoreUnavailable:
        self.errors += 1
        self.breaker.failure()
        return StoreUnavailable(f"Redis call failed: {type(exc).__name__}: {exc}")

    async def get_many(self, redis_keys: Sequence[str]) -> list[bytes | None]:
        """Raw values of ``redis_keys`` in one round trip (GET for one, MGET for more)."""
        self._check()
        command = ("GET", redis_keys[0]) if len(redis_keys) == 1 else ("MGET", *redis_keys)
        try:
            [reply] = await self._fast.execute([command])
        except OSError as exc:  # RespError, timeouts and socket errors are all OSErrors
            raise self._failed(exc) from exc
        self.breaker.success()
        return [reply] if len(redis_keys) == 1 else reply

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        """Write values in one pipelined round trip; ``ttl_s`` 0 means no expiry."""
        self._check()
        expiry = ("EX", ttl_s) if ttl_s else ()
        try:
            await self._fast.execute([("SET", redis_key, raw, *expiry) for redis_key, raw in items])
        except OSError as exc:
            raise self._failed(exc) from exc
        self.breaker.success()

    async def get_text(self, redis_key: str) -> str | None:
        """A small text value (the static pointer)."""
        raw = (await self.get_many([redis_key]))[0]
        return None if raw is None else raw.decode()

    async def ping(self) -> bool:
        """Whether Redis answers now (bypasses the breaker; used by /readyz)."""
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (SCAN + UNLINK in batches; never KEYS)."""
        deleted = 0
        try:
            async for batch in _scan_batches(self._client, f"{prefix}*"):
                deleted += await self._client.unlink(*batch)
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc
        return deleted

    async def close(self) -> None:
        """Close the connections."""
        await self._fast.close()
        await self._client.aclose()


async def _scan_batches(client: aioredis.Redis, pattern: str, count: int = 1000):  # type: ignore[no-untyped-def]
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=count):
        batch.append(key)
        if len(batch) >= count:
            yield batch
            batch = []
    if batch:
        yield batch
