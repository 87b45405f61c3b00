"""Miss-ratio curves for cache policies, and replays of the server's own cache tiers.

Two kinds of simulation, both counting objects (every prediction has size 1):

- :func:`miss_ratio_curves`: library policies run by libCacheSim (LRU, LFU, ARC, S3-FIFO,
  W-TinyLFU, Sieve, TwoQ and Belady, the offline optimum) plus the Redis ``maxmemory``
  approximations of :mod:`tuning.redis_eviction`, over cache sizes given as fractions of the
  trace's unique keys.
- :func:`simulate_server_policy`: the tiers the server runs (static head, L1, admission, Redis
  L2), replayed through the server's own decision core (:class:`serving.tiers.TierWalk`, with
  ``serving.cache``'s L1 and admission) over counting tiers, so the numbers describe the code
  that serves.

libcachesim 0.3.5 pitfalls handled here (see ``shared/traces/README.md``): every libCacheSim run
reads an oracleGeneral file written by :func:`tuning.traces.write_oracle_trace` (Belady needs the
next-access field, and the plain readers abort on non-numeric keys); W-TinyLFU's window is kept
at one object or more; sizes below what S3-FIFO, W-TinyLFU and TwoQ can handle are raised to
their minimum and the point records it (``clamped_from``).

Example::

    trace = read_trace("web.keys.txt")
    curves = miss_ratio_curves(trace, ["LRU", "S3-FIFO", "Belady"], [0.01, 0.1])
    curves[0].points[1].miss_ratio
    hybrid = simulate_server_policy(trace, ServerPolicy.hybrid(head_size=100, l1_capacity=1000))
    hybrid.l1_hit_ratio, hybrid.l2_hit_ratio, hybrid.miss_ratio   # tiers cost differently
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import libcachesim as lcs
import numpy as np

from serving.cache import L1_POLICIES, Admission, AdmissionRule, make_l1
from serving.errors import UnknownKey
from serving.metrics import Counts
from serving.modes import MODE_TIERS
from serving.tiers import L1Tier, Tier, TierWalk, run_now
from tuning.redis_eviction import REDIS_EVICTION_POLICIES, REDIS_MAXMEMORY_SAMPLES, RedisEvictionCache
from tuning.traces import Trace, write_oracle_trace

# Cache sizes as fractions of unique keys: 0.1% to 50% in 1-2-5 steps (log-spaced, and it
# includes the 1% and 10% points of the reference table).
DEFAULT_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
# The part of a trace that chooses the static head; the rest is where it is evaluated.
DEFAULT_TRAIN_FRACTION = 0.5

_LIBCACHESIM_CLASSES: dict[str, type[lcs.CacheBase]] = {
    "LRU": lcs.LRU,
    "LFU": lcs.LFU,
    "ARC": lcs.ARC,
    "S3-FIFO": lcs.S3FIFO,
    "W-TinyLFU": lcs.WTinyLFU,
    "Sieve": lcs.Sieve,
    "TwoQ": lcs.TwoQ,
    "Belady": lcs.Belady,  # fed the next-access times of the oracleGeneral file
}
LIBCACHESIM_POLICIES: tuple[str, ...] = tuple(_LIBCACHESIM_CLASSES)
REDIS_POLICIES: tuple[str, ...] = tuple(f"redis-{name}" for name in REDIS_EVICTION_POLICIES)
ALL_POLICIES: tuple[str, ...] = LIBCACHESIM_POLICIES + REDIS_POLICIES
DEFAULT_POLICIES = LIBCACHESIM_POLICIES

# Smallest sizes (objects) at which libcachesim 0.3.5 works, measured on the bundled traces:
# S3-FIFO aborts the process below 10 and misses everything below 20; W-TinyLFU aborts below 6
# (its SLRU main cache gets an empty segment); TwoQ misses everything below 4 (empty Ain queue).
MIN_CACHE_SIZE: dict[str, int] = {"S3-FIFO": 20, "W-TinyLFU": 6, "TwoQ": 4}
# W-TinyLFU's window is window_size x cache size objects, rounded down: keep it at >= 1 object.
WTINYLFU_WINDOW = 0.01
WTINYLFU_MIN_WINDOW_OBJECTS = 1.5
# libCacheSim's hash table starts at 2**hashpower buckets and grows; its default (24) allocates
# 128 MiB per cache, which dominates the run time of small traces.
_MIN_HASHPOWER, _MAX_HASHPOWER = 12, 24


# --------------------------------------------------------------------------- results


@dataclass
class CurvePoint:
    """One simulated cache size: ``miss_ratio`` at ``cache_size`` objects."""

    fraction: float
    cache_size: int
    miss_ratio: float
    clamped_from: int | None = None
    """The size asked for, when a library minimum forced a larger ``cache_size``; else ``None``."""


@dataclass
class MissRatioCurve:
    """Miss ratio of one policy over cache sizes."""

    policy: str
    n_requests: int
    n_unique: int
    points: list[CurvePoint] = field(default_factory=list)


# Every mode the server runs can be replayed: the replay walks the same tier lists.
SERVER_MODES: tuple[str, ...] = tuple(MODE_TIERS)


@dataclass(frozen=True)
class ServerPolicy:
    """A configuration of the server's cache tiers, as replayed by :func:`simulate_server_policy`.

    Both modes precompute the ``head_size`` most requested keys of the training part into Redis
    (no TTL). ``static`` serves those and misses everything else. ``hybrid`` looks a key up in L1
    (``l1_capacity`` entries, 0 for none; ``l1_ttl_s``; ``l1_policy`` ``lru`` or ``s3fifo``), then in Redis (a hit refills L1), then
    calls the model and caches the result in L1 and Redis when ``admission`` (``always`` /
    ``after:N``) says so, with ``l2_ttl_s`` (the server's ``redis_ttl_s``; 0: no expiry).
    Redis holds everything unless ``l2_capacity`` sets ``maxmemory`` in keys, evicting with
    ``l2_eviction``; like ``allkeys-*`` in Redis, that may evict head keys too.

    Example::

        ServerPolicy.static(head_size=5000)
        ServerPolicy.hybrid(head_size=500, l1_capacity=2000, admission="after:2")
        ServerPolicy.hybrid(l2_capacity=10_000, l2_eviction="allkeys-lfu")
    """

    mode: str = "hybrid"
    head_size: int = 0
    l1_capacity: int = 0
    l1_ttl_s: float = 0.0
    admission: str = "always"
    l1_policy: str = "lru"
    l2_capacity: int | None = None
    l2_eviction: str = "allkeys-lru"
    l2_ttl_s: float = 0.0
    l2_samples: int = REDIS_MAXMEMORY_SAMPLES

    def __post_init__(self) -> None:
        if self.mode not in SERVER_MODES:
            raise ValueError(f"mode must be one of {SERVER_MODES}, got {self.mode!r}")
        for name in ("head_size", "l1_capacity", "l1_ttl_s", "l2_ttl_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.l2_capacity is not None and self.l2_capacity < 1:
            raise ValueError(f"l2_capacity must be None (no maxmemory) or >= 1 key, got {self.l2_capacity}")
        if self.l2_eviction not in REDIS_EVICTION_POLICIES:
            raise ValueError(f"l2_eviction must be one of {REDIS_EVICTION_POLICIES}, got {self.l2_eviction!r}")
        if self.mode == "static" and self.l1_capacity:
            raise ValueError("static mode has no L1 (the server runs it with L1 size 0)")
        if self.mode == "dynamic" and (self.l1_capacity or self.head_size):
            raise ValueError("dynamic mode has no caches: l1_capacity and head_size must be 0")
        AdmissionRule.parse(self.admission)  # raises a ValueError naming the accepted forms
        if self.l1_policy not in L1_POLICIES:
            raise ValueError(f"l1_policy must be one of {L1_POLICIES}, got {self.l1_policy!r}")

    @classmethod
    def static(cls, head_size: int) -> ServerPolicy:
        """Static serving of a precomputed head: every other key is a miss."""
        return cls(mode="static", head_size=head_size)

    @classmethod
    def hybrid(
        cls,
        head_size: int = 0,
        l1_capacity: int = 0,
        admission: str = "always",
        *,
        l1_ttl_s: float = 0.0,
        l1_policy: str = "lru",
        l2_capacity: int | None = None,
        l2_eviction: str = "allkeys-lru",
        l2_ttl_s: float = 0.0,
    ) -> ServerPolicy:
        """Hybrid serving: L1, Redis (head plus admitted keys), the model on a miss."""
        return cls(
            mode="hybrid",
            head_size=head_size,
            l1_capacity=l1_capacity,
            l1_ttl_s=l1_ttl_s,
            admission=admission,
            l1_policy=l1_policy,
            l2_capacity=l2_capacity,
            l2_eviction=l2_eviction,
            l2_ttl_s=l2_ttl_s,
        )


@dataclass
class ServerPolicyResult:
    """Where the evaluated requests were served from; ratios are fractions of ``requests``.

    Tiers cost different amounts (an L1 hit is a dict lookup, an L2 hit a Redis round trip, a miss
    a model call), so ``l1_hit_ratio + l2_hit_ratio + miss_ratio == 1`` are reported apart.
    ``head_request_ratio`` is the share of requests for head keys, served from L1 or Redis;
    ``oracle_head_request_ratio`` is that share for a head of the same size chosen on the
    evaluated requests themselves: the gap between the two is the cost of popularity drift.
    """

    policy: ServerPolicy
    train_fraction: float
    requests: int
    l1_hits: int
    l2_hits: int
    misses: int
    head_requests: int
    admissions: int
    rejected_admissions: int
    l1_evictions: int
    l2_evictions: int
    l1_hit_ratio: float
    l2_hit_ratio: float
    miss_ratio: float
    head_request_ratio: float
    oracle_head_request_ratio: float


# --------------------------------------------------------------------------- miss-ratio curves


def miss_ratio_curves(
    trace: Trace,
    policies: Sequence[str] = DEFAULT_POLICIES,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    seed: int = 0,
) -> list[MissRatioCurve]:
    """Miss ratio of each policy at each cache size (a fraction of the trace's unique keys).

    Policy names are those of :data:`ALL_POLICIES`, matched ignoring case and dashes
    (``"s3fifo"`` works). ``seed`` drives the Redis approximations' sampling.

    Example::

        for curve in miss_ratio_curves(trace, ["LRU", "Belady"], [0.001, 0.01, 0.1]):
            print(curve.policy, [p.miss_ratio for p in curve.points])
    """
    names = [canonical_policy(policy) for policy in policies]
    sizes = cache_sizes(trace.n_unique, fractions)
    with _oracle_file(trace, needed=any(name in LIBCACHESIM_POLICIES for name in names)) as oracle:
        return [_curve(trace, oracle, name, fractions, sizes, seed) for name in names]


def canonical_policy(name: str) -> str:
    """The policy's name as in :data:`ALL_POLICIES`; ``ValueError`` listing them if unknown."""
    wanted = _fold(name)
    for known in ALL_POLICIES:
        if _fold(known) == wanted:
            return known
    raise ValueError(f"unknown cache policy {name!r}; choose from {', '.join(ALL_POLICIES)}")


def cache_sizes(n_unique: int, fractions: Sequence[float]) -> list[int]:
    """Cache sizes in objects: ``fraction x n_unique`` rounded down, at least 1.

    Example::

        cache_sizes(20_484, [0.01, 0.1])   # -> [204, 2048]
    """
    if n_unique < 1:
        raise ValueError("the trace has no requests, so there is no cache size to simulate")
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"cache size fractions must be within (0, 1], got {fraction}")
    return [max(1, int(fraction * n_unique)) for fraction in fractions]


def _fold(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


@contextmanager
def _oracle_file(trace: Trace, *, needed: bool) -> Iterator[Path | None]:
    if not needed:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="hybridserve-trace-") as folder:
        yield write_oracle_trace(trace, Path(folder) / "trace.oracleGeneral")


def _curve(
    trace: Trace, oracle: Path | None, policy: str, fractions: Sequence[float], sizes: list[int], seed: int
) -> MissRatioCurve:
    points = [_point(trace, oracle, policy, fraction, size, seed) for fraction, size in zip(fractions, sizes)]
    return MissRatioCurve(policy=policy, n_requests=len(trace), n_unique=trace.n_unique, points=points)


def _point(trace: Trace, oracle: Path | None, policy: str, fraction: float, size: int, seed: int) -> CurvePoint:
    usable = max(size, MIN_CACHE_SIZE.get(policy, 1))
    if policy in REDIS_POLICIES:
        ratio = redis_miss_ratio(trace, usable, policy.removeprefix("redis-"), seed=seed)
    else:
        assert oracle is not None  # written whenever a libCacheSim policy is asked for
        ratio = _libcachesim_miss_ratio(oracle, policy, usable, _hashpower(trace.n_unique))
    clamped_from = size if usable != size else None
    return CurvePoint(fraction=fraction, cache_size=usable, miss_ratio=ratio, clamped_from=clamped_from)


def _hashpower(n_unique: int) -> int:
    return min(_MAX_HASHPOWER, max(_MIN_HASHPOWER, math.ceil(math.log2(n_unique + 1)) + 1))


def _libcachesim_miss_ratio(oracle: Path, policy: str, size: int, hashpower: int) -> float:
    params = lcs.ReaderInitParam(ignore_obj_size=True)
    reader = lcs.TraceReader(str(oracle), lcs.TraceType.ORACLE_GENERAL_TRACE, params)
    object_miss_ratio, _byte_miss_ratio = _libcachesim_cache(policy, size, hashpower).process_trace(reader)
    return float(object_miss_ratio)


def _libcachesim_cache(policy: str, size: int, hashpower: int) -> lcs.CacheBase:
    options: dict[str, float] = {}
    if policy == "W-TinyLFU":
        options["window_size"] = max(WTINYLFU_WINDOW, WTINYLFU_MIN_WINDOW_OBJECTS / size)
    return _LIBCACHESIM_CLASSES[policy](size, hashpower=hashpower, **options)


def redis_miss_ratio(
    trace: Trace,
    capacity: int,
    eviction: str = "allkeys-lru",
    *,
    samples: int = REDIS_MAXMEMORY_SAMPLES,
    seed: int = 0,
) -> float:
    """Miss ratio of Redis used as a cache of ``capacity`` keys (read, and write on a miss).

    Example::

        redis_miss_ratio(trace, capacity=2000, eviction="allkeys-lfu")
    """
    redis = RedisEvictionCache(capacity, eviction, samples=samples, seed=seed)
    misses = 0
    for key in trace.ids.tolist():
        if not redis.get(key):
            misses += 1
            redis.put(key)
    return misses / len(trace) if len(trace) else 0.0


# --------------------------------------------------------------------------- server policies


def simulate_server_policy(
    trace: Trace,
    policy: ServerPolicy,
    *,
    train_fraction: float = DEFAULT_TRAIN_FRACTION,
    warm_up: bool = True,
    seed: int = 0,
    in_flight: float = 0.0,
) -> ServerPolicyResult:
    """Replay ``trace`` through the server's cache tiers and count where requests are served.

    The first ``train_fraction`` of the trace chooses the head (its ``head_size`` most requested
    keys) and, with ``warm_up``, fills L1 and Redis as the running server would have; the rest is
    evaluated, so popularity drift between the two parts shows. ``train_fraction=0`` evaluates the
    whole trace from cold caches (then ``head_size`` must be 0). TTLs run on the trace's
    timestamps; ``seed`` drives the Redis eviction sampling; ``in_flight``: requests a request
    overlaps on the concurrent server (:class:`ServerReplay`).

    Example::

        result = simulate_server_policy(trace, ServerPolicy.hybrid(head_size=200, l1_capacity=1000))
        result.l1_hit_ratio + result.l2_hit_ratio + result.miss_ratio   # 1.0
    """
    _check_replay(trace, policy, train_fraction)
    train, test = trace.split(train_fraction)
    head = top_keys(train, policy.head_size)
    replay = ServerReplay(policy, [trace.keys[i] for i in head.tolist()], seed, in_flight=in_flight)
    head_ids = frozenset(head.tolist())
    if warm_up:
        _replay(replay, train, head_ids)
    counts = _replay(replay, test, head_ids)
    return _server_result(policy, train_fraction, counts, oracle_head_request_ratio(test, policy.head_size))


def top_keys(trace: Trace, k: int) -> np.ndarray:
    """Ids of the ``k`` most requested keys of ``trace``, most requested first (fewer if it has
    fewer keys); ties go to the key seen first."""
    counts = np.bincount(trace.ids, minlength=len(trace.keys))
    ranked = np.argsort(-counts, kind="stable")[:k]
    return ranked[counts[ranked] > 0]


def oracle_head_request_ratio(trace: Trace, head_size: int) -> float:
    """Share of ``trace``'s requests for its own ``head_size`` most requested keys."""
    if len(trace) == 0:
        return 0.0
    counts = np.sort(np.bincount(trace.ids))[::-1]
    return float(counts[:head_size].sum() / len(trace))


def _check_replay(trace: Trace, policy: ServerPolicy, train_fraction: float) -> None:
    if not 0.0 <= train_fraction < 1.0:
        raise ValueError(f"train_fraction must be within [0, 1), got {train_fraction}")
    if policy.head_size and train_fraction == 0.0:
        raise ValueError("the head is chosen on the training part: head_size > 0 needs train_fraction > 0")
    if int(len(trace) * train_fraction) == len(trace):
        raise ValueError(f"train_fraction {train_fraction} leaves no requests of {len(trace)} to evaluate")
    if (policy.l1_ttl_s or policy.l2_ttl_s) and trace.times is None:
        raise ValueError("TTLs need a trace with timestamps (a CSV time column or oracleGeneral times)")


class _Store(Protocol):
    """What the replay needs of Redis: GET (as a hit or not), SET, DEL."""

    evictions: int

    def get(self, key: str) -> bool: ...

    def put(self, key: str) -> None: ...

    def remove(self, key: str) -> bool: ...


class _UnboundedStore:
    """Redis without ``maxmemory``: keeps every key it is given."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self.evictions = 0

    def get(self, key: str) -> bool:
        return key in self._keys

    def put(self, key: str) -> None:
        self._keys.add(key)

    def remove(self, key: str) -> bool:
        if key not in self._keys:
            return False
        self._keys.discard(key)
        return True


class _TraceClock:
    """The replay's notion of now, so TTLs expire in trace time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _CountingStoreTier:
    """The store tier as the server sees it, without I/O: a store plus per-key expiry, checked on
    read like Redis' lazy expiry (an expired key is never returned; until read it takes a slot).
    Values are not kept: a hit answers 0.0, since only where a request is served matters here."""

    name = "redis"
    computes = False
    trusts_keys = False

    def __init__(self, store: _Store, clock: _TraceClock, ttl_s: float) -> None:
        self._store = store
        self._clock = clock
        self._ttl_s = ttl_s
        self._expires: dict[str, float] = {}

    @property
    def evictions(self) -> int:
        return self._store.evictions

    def _has(self, key: str) -> bool:
        expires = self._expires.get(key)
        if expires is not None and expires <= self._clock.now:
            del self._expires[key]
            self._store.remove(key)
            return False
        return self._store.get(key)

    def preload(self, key: str) -> None:
        """Write a head key (no expiry, as precompute does)."""
        self._store.put(key)
        self._expires.pop(key, None)

    async def get_many(self, keys: Sequence[str]) -> list[float | None]:
        return [0.0 if self._has(key) else None for key in keys]

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        for key, _ in items:
            self._store.put(key)
            if self._ttl_s:
                self._expires[key] = self._clock.now + self._ttl_s
            else:
                self._expires.pop(key, None)


class _CountingModelTier:
    """The model tier without inference: it answers every key (0.0)."""

    name = "model"
    computes = True
    trusts_keys = False

    async def get_many(self, keys: Sequence[str]) -> list[float | None]:
        return [0.0] * len(keys)

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Nothing to remember."""


def _accept(key: str) -> None:
    """Trace keys need no validation: they are the traffic, not user input."""


class ServerReplay:
    """The server's request path with the I/O taken out: the same :class:`serving.tiers.TierWalk`
    (order, refill, admission) over tiers that count instead of serving, for the policy's mode in
    :data:`serving.modes.MODE_TIERS`. The head is written to the store tier up front.

    ``in_flight``: how many of the following requests a request overlaps on a concurrent server,
    on average (rate x its latency, by Little's law): what it writes into the caches (an admission,
    an L1 refill) is seen only by the requests after those. A key requested twice in a row misses
    twice on a real server when the first request is still computing; the default 0 is the
    sequential server. Arrivals are Poisson, as the load test sends them
    (:mod:`loadtests.arrivals`), so the count a request overlaps is drawn from a Poisson
    distribution of that mean (seeded by ``seed``).

    Example::

        replay = ServerReplay(ServerPolicy.hybrid(l1_capacity=100, admission="after:2"), head=["17:42"])
        [replay.serve(key) for key in ["17:42", "3:8", "3:8"]]   # ["redis", "model", "model"]
    """

    def __init__(self, policy: ServerPolicy, head: Sequence[str] = (), seed: int = 0, in_flight: float = 0.0) -> None:
        self.policy = policy
        self.counts = Counts()
        self.unknown = 0
        self._clock = _TraceClock()
        self._l1 = make_l1(policy.l1_capacity, policy.l1_ttl_s, policy.l1_policy, clock=self._clock)
        self._store = _CountingStoreTier(_make_store(policy, seed), self._clock, policy.l2_ttl_s)
        for key in head:
            self._store.preload(key)
        # Only hybrid admits what the model computes; the tuner's static serves its head alone.
        tiers: dict[str, Tier] = {"l1": L1Tier(self._l1), "store": self._store, "model": _CountingModelTier()}
        self.in_flight = in_flight  # may change between requests (a sequential warm-up, then concurrent)
        self._served = 0
        self._pending: list[tuple[int, int, Tier, list[tuple[str, float]]]] = []  # a heap by due request
        self._overlaps = _PoissonDraws(seed)
        self._pushes = itertools.count()  # ties in the heap keep their order
        if in_flight > 0:
            tiers = {name: _Deferred(tier, self) if name != "model" else tier for name, tier in tiers.items()}
        self.admission = Admission(AdmissionRule.parse(policy.admission))
        self._walk = TierWalk([tiers[name] for name in MODE_TIERS[policy.mode]], admission=self.admission,
                              observer=self.counts, validate=_accept)

    @property
    def l1_evictions(self) -> int:
        """L1 evictions so far."""
        return self._l1.evictions

    @property
    def l2_evictions(self) -> int:
        """Store (Redis ``maxmemory``) evictions so far."""
        return self._store.evictions

    def serve(self, key: str, now: float | None = None) -> str:
        """Serve one request of ``key`` (at trace time ``now``); returns its source (``l1``,
        ``redis``, ``model``) or ``unknown`` where the server would answer 404."""
        if now is not None:
            self._clock.now = now
        self._served += 1
        while self._pending and self._pending[0][0] < self._served:  # writes of requests finished by now
            _, _, tier, items = heapq.heappop(self._pending)
            run_now(tier.put_many(items))
        try:
            found = run_now(self._walk.resolve((key,)))
        except UnknownKey:
            self.unknown += 1
            return "unknown"
        return found[key][1]


class _Deferred:
    """A tier of a :class:`ServerReplay` with ``in_flight``: reads as the tier, writes queued until
    the requests the writing one overlaps have been served."""

    def __init__(self, tier: Tier, replay: ServerReplay) -> None:
        self.tier, self.replay = tier, replay
        self.name, self.computes, self.trusts_keys = tier.name, tier.computes, tier.trusts_keys

    async def get_many(self, keys: Sequence[str], rows: object = None) -> list[float | None]:
        return await self.tier.get_many(keys)

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        replay = self.replay
        due = replay._served + replay._overlaps.for_request(replay._served, replay.in_flight)
        heapq.heappush(replay._pending, (due, next(replay._pushes), self.tier, list(items)))


# Above this mean overlap a Poisson count is drawn by its normal approximation.
POISSON_EXACT_UP_TO = 500.0


class _PoissonDraws:
    """How many following requests each request overlaps: one Poisson draw per request (its L1
    refill and its admission share it), drawn in blocks for speed."""

    BLOCK = 4096

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 3])
        self._uniform = np.empty(0)
        self._used = 0
        self._request = -1
        self._count = 0

    def for_request(self, request: int, mean: float) -> int:
        """The overlap of ``request`` (the same for every call about it)."""
        if request != self._request:
            if self._used == len(self._uniform):
                self._uniform, self._used = self._rng.random(self.BLOCK), 0
            self._request = request
            self._count = _poisson_quantile(mean, float(self._uniform[self._used]))
            self._used += 1
        return self._count


def _poisson_quantile(mean: float, u: float) -> int:
    """The Poisson(``mean``) count at cumulative probability ``u`` (inverse transform: one uniform
    draw serves any mean, which changes between a sequential warm-up and the concurrent run)."""
    if mean <= 0:
        return 0
    if mean > POISSON_EXACT_UP_TO:  # e^-mean underflows; the normal approximation is close there
        return max(0, round(mean + math.sqrt(mean) * statistics.NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))))
    term = cumulative = math.exp(-mean)
    count = 0
    while cumulative < u and count < 10_000:
        count += 1
        term *= mean / count
        cumulative += term
    return count


@dataclass
class _ReplayCounts:
    requests: int = 0
    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    head_requests: int = 0
    admissions: int = 0
    rejected_admissions: int = 0
    l1_evictions: int = 0
    l2_evictions: int = 0


def _replay(replay: ServerReplay, trace: Trace, head: frozenset[int]) -> _ReplayCounts:
    """Serve every request of ``trace``; the counts cover this call only."""
    c = replay.counts
    before = (c.l1_hits, c.redis_hits, c.model_rows + replay.unknown, c.admitted, c.not_admitted,
              replay.l1_evictions, replay.l2_evictions)
    times = trace.times.tolist() if trace.times is not None else None
    keys, serve = trace.keys, replay.serve
    head_requests = 0
    for index, key_id in enumerate(trace.ids.tolist()):
        head_requests += key_id in head
        serve(keys[key_id], None if times is None else times[index])
    after = (c.l1_hits, c.redis_hits, c.model_rows + replay.unknown, c.admitted, c.not_admitted,
             replay.l1_evictions, replay.l2_evictions)
    l1, l2, misses, admitted, refused, l1_ev, l2_ev = (a - b for a, b in zip(after, before))
    return _ReplayCounts(len(trace), l1, l2, misses, head_requests, admitted, refused, l1_ev, l2_ev)


def _make_store(policy: ServerPolicy, seed: int) -> _Store:
    if policy.l2_capacity is None:
        return _UnboundedStore()
    return RedisEvictionCache(policy.l2_capacity, policy.l2_eviction, samples=policy.l2_samples, seed=seed)


def _server_result(
    policy: ServerPolicy, train_fraction: float, counts: _ReplayCounts, oracle_head: float
) -> ServerPolicyResult:
    total = counts.requests
    return ServerPolicyResult(
        policy=policy,
        train_fraction=train_fraction,
        requests=total,
        l1_hits=counts.l1_hits,
        l2_hits=counts.l2_hits,
        misses=counts.misses,
        head_requests=counts.head_requests,
        admissions=counts.admissions,
        rejected_admissions=counts.rejected_admissions,
        l1_evictions=counts.l1_evictions,
        l2_evictions=counts.l2_evictions,
        l1_hit_ratio=counts.l1_hits / total,
        l2_hit_ratio=counts.l2_hits / total,
        miss_ratio=counts.misses / total,
        head_request_ratio=counts.head_requests / total,
        oracle_head_request_ratio=oracle_head,
    )
