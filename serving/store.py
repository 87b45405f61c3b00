"""The prediction store: its protocol, the Redis key layout and encoding, timeouts and the breaker.

:class:`PredictionStore` is what serving and the precompute job need of a store (batched get and
put, the version pointer, delete by model); :class:`RedisStore` implements it on one Redis node,
:class:`ClusterStore` on a Redis Cluster; :func:`build_store` picks one from the URL.

Key layout (``ns`` is ``Settings.redis_namespace``), see :class:`KeyLayout`::

    {ns}:{model}:{version}:{key}   -> 4-byte little-endian float32 prediction
    {ns}:{model}:static            -> version whose static table is complete (the pointer)
    {ns}@control:{model}           -> the control record all workers follow (serving.control)

Every key carries the model name and version, so a new version never reads an old one's value.
In a cluster the same layout holds: prediction keys carry no ``{hash tag}``, so one version's table
spreads over all 16384 slots (and all masters), while the pointer is one fixed key, read with one
GET on the node that owns its slot: no SCAN to find the served version.
A prediction is stored as the exact float32 the model produced, so every mode returns the same
float for the same key. A miss is ``None``; a value that does not decode to a finite float32 is
never served (:class:`~serving.errors.CorruptPrediction`).

Failures come in two kinds (:mod:`serving.errors`): an outage (no answer, broken connection,
breaker open: :class:`StoreUnavailable`, the only kind the breaker counts) and an error reply
(Redis is up but refused, e.g. OOM on a write: :class:`StoreRejected`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import ResponseError as RedisResponseError

from serving.breaker import Breaker, CircuitBreaker
from serving.cluster import ClusterClient, is_cluster_url
from serving.errors import CorruptPrediction, StoreRejected, StoreUnavailable
from serving.resp import RespClient, RespConnectionError, RespReplyError, RespTimeoutError
from serving.settings import Settings

_FLOAT = struct.Struct("<f")
# Keys per SCAN page and per UNLINK when a model's keys are deleted.
DELETE_BATCH = 1000


def encode(value: float) -> bytes:
    """Stored form of one prediction."""
    return _FLOAT.pack(value)


def decode(raw: bytes | None) -> float | None:
    """Prediction from its stored form; ``None`` for a miss; :class:`CorruptPrediction` for bytes
    that are not a finite float32 (a foreign or damaged value must never be served)."""
    if raw is None:
        return None
    if len(raw) != _FLOAT.size:
        raise CorruptPrediction(f"a stored prediction is {len(raw)} bytes, not a 4-byte float32")
    value: float = _FLOAT.unpack(raw)[0]
    if not math.isfinite(value):
        raise CorruptPrediction(f"a stored prediction is {value}, not a finite number")
    return value


class KeyLayout:
    """Where one namespace keeps its predictions and pointers in Redis."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def prediction(self, model: str, version: str, key: str) -> str:
        """Redis key of one prediction of one model version."""
        return f"{self.namespace}:{model}:{version}:{key}"

    def predictions(self, model: str, version: str, keys: Sequence[str]) -> list[str]:
        """Redis keys of several predictions of one version (the prefix built once)."""
        prefix = f"{self.namespace}:{model}:{version}:"
        return [prefix + key for key in keys]

    def pointer(self, model: str) -> str:
        """Redis key naming the version whose static table is complete."""
        return f"{self.namespace}:{model}:static"

    def control(self, model: str) -> str:
        """Redis key of the control record every worker follows (:mod:`serving.control`); the
        ``@`` keeps it outside every model's prefix, so deleting a model never deletes it."""
        return f"{self.namespace}@control:{model}"

    def version_prefix(self, model: str, version: str) -> str:
        """Prefix of every prediction of one version."""
        return f"{self.namespace}:{model}:{version}:"

    def model_prefix(self, model: str) -> str:
        """Prefix of every key of one model: all its versions and its pointer."""
        return f"{self.namespace}:{model}:"


class PredictionStore(Protocol):
    """What serving and precompute need of a prediction store; every call is bounded in time.

    Reads and writes raise :class:`StoreUnavailable` on an outage and :class:`StoreRejected` on an
    error reply; reads raise :class:`CorruptPrediction` for a value that is not a finite float32.
    """

    breaker: Breaker
    errors: int  # outages (what the breaker counts)
    rejected: int  # error replies (Redis up, but it refused)
    full: bool  # the last write was refused for lack of memory (cleared by a write that works)

    async def get_predictions(self, model: str, version: str, keys: Sequence[str]) -> list[float | None]:
        """Stored predictions of ``keys`` (``None`` for a miss), in one round trip."""
        ...

    async def put_predictions(self, model: str, version: str, items: Sequence[tuple[str, float]], ttl_s: int) -> None:
        """Store predictions in one round trip; ``ttl_s`` 0: no expiry."""
        ...

    async def get_pointer(self, model: str) -> str | None:
        """The version whose static table is complete, or ``None``."""
        ...

    async def set_pointer(self, model: str, version: str) -> None:
        """Make ``version`` the complete static table of ``model``."""
        ...

    async def get_control(self, model: str) -> bytes | None:
        """The control record of ``model``'s servers (:mod:`serving.control`), or ``None``."""
        ...

    async def set_control(self, model: str, raw: bytes) -> None:
        """Replace the control record."""
        ...

    async def delete_version(self, model: str, version: str) -> int:
        """Delete one version's predictions; returns how many keys went."""
        ...

    async def delete_model(self, model: str, keep_pointer: bool = False) -> int:
        """Delete every key of ``model`` (all versions; the pointer too unless ``keep_pointer``)."""
        ...

    async def used_memory(self) -> int:
        """Bytes the store uses now (for cost reports)."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers now (bypasses the breaker)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def build_store(settings: Settings, *, timeout_s: float | None = None) -> PredictionStore:
    """The store ``settings.redis_url`` names: ``redis://`` or ``rediss://``, one node
    (:class:`RedisStore`); ``redis+cluster://HOST:PORT,...`` or ``rediss+cluster://``, a Redis
    Cluster (:class:`ClusterStore`, scheme in :mod:`serving.cluster`).

    ``timeout_s`` overrides ``settings.redis_timeout_s`` (batch jobs wait longer than requests).
    """
    if not settings.redis_url:
        raise ValueError("this needs a Redis: set HYBRIDSERVE_REDIS_URL (the CLI starts an embedded one)")
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    kind = ClusterStore if is_cluster_url(settings.redis_url) else RedisStore
    return kind(settings.redis_url, timeout, breaker, KeyLayout(settings.redis_namespace))


class RedisStore:
    """:class:`PredictionStore` on one Redis node, behind a circuit breaker.

    Prediction reads and writes (the hot path) go through the pipelined :class:`RespClient`; PING,
    INFO, SCAN and UNLINK, which are rare, through redis-py. A read that loses its connection is
    retried once on a fresh one before it counts as a failure: one dropped connection (a
    ``CLIENT KILL``, a proxy restart) is not an outage. Timeouts are not retried, so no call waits
    much longer than its timeout.
    """

    def __init__(self, url: str, timeout_s: float, breaker: CircuitBreaker, layout: KeyLayout) -> None:
        self.breaker: Breaker = breaker
        self.layout = layout
        self.errors = 0
        self.rejected = 0
        self.full = False
        self._open(url, timeout_s)

    def _open(self, url: str, timeout_s: float) -> None:
        """The clients: the fast one for predictions, redis-py for the rare admin commands."""
        self._fast: RespClient | ClusterClient = RespClient(url, timeout_s)
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
        )

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        self.errors += 1
        self.breaker.failure()
        return StoreUnavailable(f"cache unavailable: {type(exc).__name__}")

    async def _execute(self, commands: Sequence[tuple[str | bytes | int, ...]], retry: bool, write: bool = False) -> list[object]:
        """Commands through the fast client, breaker and error kinds applied. Reads (``retry``)
        are sent once more on a fresh connection if theirs broke; writes are not retried."""
        if not self.breaker.allow():
            raise StoreUnavailable("cache unavailable (circuit breaker open after repeated failures)")
        try:
            try:
                replies = await self._fast.execute(commands)
            except RespTimeoutError:
                raise
            except RespConnectionError:
                if not retry:
                    raise
                replies = await self._fast.execute(commands)  # once, on a fresh connection
        except RespReplyError as exc:
            self.breaker.success()  # Redis answered: up, whatever it said
            self.rejected += 1
            reply = str(exc).removeprefix("Redis replied with an error: ")
            if write and reply.startswith("OOM"):
                self.full = True
            raise StoreRejected(f"Redis refused: {reply}") from exc
        except OSError as exc:  # connection errors and timeouts are OSErrors
            raise self._failed(exc) from exc
        self.breaker.success()
        if write:
            self.full = False
        return replies

    async def get_predictions(self, model: str, version: str, keys: Sequence[str]) -> list[float | None]:
        """Stored predictions of ``keys`` (GET for one, MGET for more)."""
        redis_keys = self.layout.predictions(model, version, keys)
        if len(redis_keys) == 1:
            [reply] = await self._execute((("GET", redis_keys[0]),), retry=True)
            return [decode(reply)]  # type: ignore[arg-type]
        [replies] = await self._execute((("MGET", *redis_keys),), retry=True)
        return [decode(raw) for raw in replies]  # type: ignore[attr-defined]

    async def put_predictions(self, model: str, version: str, items: Sequence[tuple[str, float]], ttl_s: int) -> None:
        """One MSET without a TTL, else one pipelined SET ... EX per value."""
        redis_keys = self.layout.predictions(model, version, [key for key, _ in items])
        if ttl_s:
            commands = [("SET", rk, encode(v), "EX", ttl_s) for rk, (_, v) in zip(redis_keys, items)]
        else:
            commands = [("MSET", *(part for rk, (_, v) in zip(redis_keys, items) for part in (rk, encode(v))))]
        await self._execute(commands, retry=False, write=True)

    async def get_pointer(self, model: str) -> str | None:
        """The static pointer."""
        [raw] = await self._execute((("GET", self.layout.pointer(model)),), retry=True)
        return None if raw is None else raw.decode()  # type: ignore[attr-defined]

    async def set_pointer(self, model: str, version: str) -> None:
        """Move the static pointer."""
        await self._execute((("SET", self.layout.pointer(model), version),), retry=False, write=True)

    async def get_control(self, model: str) -> bytes | None:
        """GET of the control record."""
        [raw] = await self._execute((("GET", self.layout.control(model)),), retry=True)
        return raw  # type: ignore[return-value]

    async def set_control(self, model: str, raw: bytes) -> None:
        """SET of the control record."""
        await self._execute((("SET", self.layout.control(model), raw),), retry=False, write=True)

    async def delete_version(self, model: str, version: str) -> int:
        """SCAN + UNLINK one version's predictions."""
        return await self._delete_matching(self.layout.version_prefix(model, version) + "*", keep=())

    async def delete_model(self, model: str, keep_pointer: bool = False) -> int:
        """SCAN + UNLINK every key of the model (never KEYS)."""
        keep = (self.layout.pointer(model).encode(),) if keep_pointer else ()
        return await self._delete_matching(self.layout.model_prefix(model) + "*", keep)

    async def _delete_matching(self, pattern: str, keep: Sequence[bytes]) -> int:
        deleted = 0
        try:
            async for batch in self._scan_batches(pattern):
                doomed = [key for key in batch if key not in keep]
                if doomed:
                    deleted += await self._client.unlink(*doomed)
        except RedisResponseError as exc:
            self.rejected += 1
            raise StoreRejected(f"Redis refused: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc
        return deleted

    async def _scan_batches(self, pattern: str) -> AsyncIterator[list[bytes]]:
        batch: list[bytes] = []
        async for key in self._client.scan_iter(match=pattern, count=DELETE_BATCH):
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def used_memory(self) -> int:
        """INFO memory's ``used_memory``."""
        try:
            return int((await self._client.info("memory"))["used_memory"])
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from exc

    async def ping(self) -> bool:
        """Whether Redis answers now (bypasses the breaker; used by /readyz)."""
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        """Close the connections."""
        await self._fast.close()
        await self._client.aclose()


class ClusterBreakers:
    """The store-wide view of a cluster's per-node breakers (a :class:`Breaker`). It never stops a
    call itself: each node's breaker does, for that node's keys only, so one master down does not
    fail the requests whose keys live on the others. Its state is the worst of the nodes'."""

    def __init__(self, client: ClusterClient) -> None:
        self._client = client

    @property
    def state(self) -> str:
        """``open`` if a node's breaker is open, else ``half_open`` if one probes, else ``closed``."""
        states = {breaker.state for breaker in self._client.breakers.values()}
        return next((s for s in ("open", "half_open") if s in states), "closed")

    def allow(self) -> bool:
        """Always: the nodes' breakers decide, per node."""
        return True

    def success(self) -> None:
        """Counted by the node that answered."""

    def failure(self) -> None:
        """Counted by the node that failed."""


class ClusterStore(RedisStore):
    """:class:`PredictionStore` on a Redis Cluster (``redis+cluster://``), a breaker per node.

    The same key layout and error kinds as :class:`RedisStore`; commands go through the
    slot-routing :class:`~serving.cluster.ClusterClient`. Keys of one request live on different
    slots, so a read is pipelined GETs and a write pipelined SETs, one pipeline per node, all nodes
    at once (MGET and MSET must stay within one slot). Deleting by pattern SCANs every master.
    A master that dies fails only the requests that touch its slots, until a replica takes over
    and the client re-reads the topology.
    """

    def _open(self, url: str, timeout_s: float) -> None:
        # One breaker per node, built like the store's; the store's own becomes their summary.
        template = self.breaker
        assert isinstance(template, CircuitBreaker)
        self._fast = self._cluster = ClusterClient(
            url, timeout_s, node_breaker=lambda: CircuitBreaker(template.failures_to_open, template.reset_s))
        self.breaker = ClusterBreakers(self._cluster)

    @property
    def redirects(self) -> int:
        """MOVED and ASK replies followed so far (slots moving under this server)."""
        return self._cluster.redirects

    async def get_predictions(self, model: str, version: str, keys: Sequence[str]) -> list[float | None]:
        """Stored predictions of ``keys``: one GET each, pipelined per node."""
        replies = await self._execute([("GET", rk) for rk in self.layout.predictions(model, version, keys)], retry=True)
        return [decode(raw) for raw in replies]  # type: ignore[arg-type]

    async def put_predictions(self, model: str, version: str, items: Sequence[tuple[str, float]], ttl_s: int) -> None:
        """One SET per value (with EX when ``ttl_s``), pipelined per node."""
        redis_keys = self.layout.predictions(model, version, [key for key, _ in items])
        expiry: tuple[str | int, ...] = ("EX", ttl_s) if ttl_s else ()
        await self._execute([("SET", rk, encode(v), *expiry) for rk, (_, v) in zip(redis_keys, items)], retry=False, write=True)

    async def _delete_matching(self, pattern: str, keep: Sequence[bytes]) -> int:
        """SCAN every master, UNLINK what matches (routed, so a key that moved meanwhile is found)."""
        deleted = 0
        try:
            await self._cluster.refresh(force=True)
            for master in self._cluster.masters():
                cursor = b"0"
                while True:
                    [(cursor, batch)] = await self._cluster.execute_on(master, [("SCAN", cursor, "MATCH", pattern, "COUNT", DELETE_BATCH)])
                    doomed = [key for key in batch if key not in keep]
                    if doomed:
                        deleted += sum(await self._cluster.execute([("UNLINK", key) for key in doomed]))
                    if cursor == b"0":
                        break
        except RespReplyError as exc:
            self.rejected += 1
            raise StoreRejected(f"Redis refused: {exc}") from exc
        except OSError as exc:
            raise self._failed(exc) from exc
        return deleted

    async def _each_master(self, command: tuple[str, ...]) -> list[object]:
        """One command on every master (after a topology refresh), replies in master order."""
        await self._cluster.refresh()
        return [reply for master in self._cluster.masters() for reply in await self._cluster.execute_on(master, [command])]

    async def used_memory(self) -> int:
        """Sum of ``used_memory`` over the masters (replicas hold copies, priced apart)."""
        try:
            infos = await self._each_master(("INFO", "memory"))
        except (RespReplyError, OSError) as exc:
            raise self._failed(exc) from exc
        return sum(_info_field(info, "used_memory") for info in infos)  # type: ignore[arg-type]

    async def ping(self) -> bool:
        """Whether every master answers PING now (bypasses the breaker)."""
        try:
            return all(reply == b"PONG" for reply in await self._each_master(("PING",)))
        except (RespReplyError, OSError):
            return False

    async def close(self) -> None:
        """Close every node's connection."""
        await self._cluster.close()


def _info_field(info: bytes, name: str) -> int:
    """One integer field of an INFO reply."""
    prefix = name.encode() + b":"
    for line in info.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):])
    raise ValueError(f"INFO has no {name}")
