"""The hybrid cache tiers: an in-process L1 (bounded, LRU or S3-FIFO, with TTL), admission, and the Redis L2.

L1 and the admission rule are plain synchronous classes with no I/O so that the tuner can replay
access traces through exactly the code the server runs (``tuning.simulate``). The Redis tier is
:class:`serving.store.RedisStore`; this module only decides *what* is kept.

Example::

    l1 = L1Cache(capacity=10_000, ttl_s=300.0)
    l1.put("17:42", 123.5)
    l1.get("17:42")        # -> 123.5, or None on a miss; never a sentinel
"""

from __future__ import annotations

import time
import tracemalloc
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Clock = Callable[[], float]

# The admission counter forgets everything when it tracks this many keys: a cheap aging
# step (as in TinyLFU's reset) that bounds memory however many distinct keys pass by.
ADMISSION_MAX_TRACKED = 200_000


class L1Cache:
    """Bounded LRU of ``key -> prediction`` with an optional time-to-live.

    ``capacity`` 0 disables the tier. ``ttl_s`` 0 means entries never expire by age (they still
    leave by eviction, flush or model change). Not thread-safe: the server touches it only from
    its event loop.
    """

    def __init__(self, capacity: int, ttl_s: float = 0.0, clock: Clock = time.monotonic) -> None:
        if capacity < 0:
            raise ValueError(f"L1 capacity must be >= 0, got {capacity}")
        if ttl_s < 0:
            raise ValueError(f"L1 TTL must be >= 0, got {ttl_s}")
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._clock = clock
        # key -> (value, expiry on the clock; 0.0: none, so entries put before a TTL was set stay)
        self._entries: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.evictions = 0

    @property
    def capacity(self) -> int:
        """Maximum number of entries."""
        return self._capacity

    @property
    def ttl_s(self) -> float:
        """Entry lifetime in seconds (0: no expiry)."""
        return self._ttl_s

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return self.peek(key) is not None

    def peek(self, key: str) -> float | None:
        """The cached value without touching recency; ``None`` if absent or expired."""
        entry = self._entries.get(key)
        if entry is None or (entry[1] and entry[1] <= self._clock()):
            return None
        return entry[0]

    def get(self, key: str) -> float | None:
        """The cached value, marking it most recently used; ``None`` on a miss."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] and entry[1] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, value: float) -> None:
        """Insert or refresh ``key``, evicting the least recently used entry when full."""
        if self._capacity == 0:
            return
        expires = self._clock() + self._ttl_s if self._ttl_s else 0.0
        self._entries[key] = (value, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()

    def _shrink(self) -> None:
        """Evict down to the capacity (after it was lowered)."""
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def reconfigure(self, capacity: int | None = None, ttl_s: float | None = None) -> None:
        """Change size and/or TTL at run time; shrinking evicts the least recently used."""
        if capacity is not None:
            if capacity < 0:
                raise ValueError(f"L1 capacity must be >= 0, got {capacity}")
            self._capacity = capacity
            self._shrink()
        if ttl_s is not None:
            if ttl_s < 0:
                raise ValueError(f"L1 TTL must be >= 0, got {ttl_s}")
            self._ttl_s = ttl_s


# Frequency counters of S3-FIFO saturate here (two bits, as in the paper).
S3FIFO_MAX_FREQ = 3
# S3-FIFO's small queue holds this share of the capacity, its ghost keys this share (libCacheSim's
# defaults: fifo_size_ratio=0.1, ghost_size_ratio=0.9); an entry read at least this many times in
# the small queue moves on to the main one (move_to_main_threshold=2).
S3FIFO_SMALL_SHARE = 0.1
S3FIFO_GHOST_SHARE = 0.9
S3FIFO_MOVE_TO_MAIN = 2


class S3FIFOCache(L1Cache):
    """S3-FIFO (Yang et al., SOSP 2023): scan-resistant, with no reordering on a hit.

    New keys enter a small FIFO (10% of the capacity); one read there at least twice moves on to
    the main FIFO when it reaches the small queue's end, the others leave and their keys are
    remembered in a ghost FIFO. A key that comes back while its ghost is remembered goes straight
    to main. Main evicts like CLOCK: an entry read since it was last passed gets another round.
    One-hit wonders (a scan) so pass through the small queue without pushing out the main queue.

    Same interface, TTL and clock as :class:`L1Cache`. Queues hold ``(key, token)``; an entry
    deleted early (expired, overwritten by a shrink) leaves a stale token that is skipped when it
    reaches the queue's end.
    """

    def __init__(self, capacity: int, ttl_s: float = 0.0, clock: Clock = time.monotonic) -> None:
        super().__init__(capacity, ttl_s, clock)
        # key -> [value, expiry, frequency, in main, token]
        self._items: dict[str, list] = {}
        self._small: deque[tuple[str, int]] = deque()
        self._main: deque[tuple[str, int]] = deque()
        self._ghost: OrderedDict[str, None] = OrderedDict()
        self._small_len = 0
        self._token = 0

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: str) -> float | None:
        """The cached value without counting a read; ``None`` if absent or expired."""
        item = self._items.get(key)
        if item is None or (item[1] and item[1] <= self._clock()):
            return None
        return item[0]  # type: ignore[no-any-return]

    def get(self, key: str) -> float | None:
        """The cached value, counting one read of it; ``None`` on a miss."""
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] and item[1] <= self._clock():
            self._drop(key, item)
            return None
        if item[2] < S3FIFO_MAX_FREQ:
            item[2] += 1
        return item[0]  # type: ignore[no-any-return]

    def put(self, key: str, value: float) -> None:
        """Insert (into main if its ghost is remembered, else the small queue) or refresh ``key``."""
        if self._capacity == 0:
            return
        expires = self._clock() + self._ttl_s if self._ttl_s else 0.0
        item = self._items.get(key)
        if item is not None:
            item[0], item[1] = value, expires
            return
        self._token += 1
        to_main = self._ghost.pop(key, 0) is None
        self._items[key] = [value, expires, 0, to_main, self._token]
        (self._main if to_main else self._small).append((key, self._token))
        self._small_len += not to_main
        while len(self._items) > self._capacity:
            self._evict_one()

    def clear(self) -> None:
        """Drop every entry and every ghost."""
        self._items.clear()
        self._small.clear()
        self._main.clear()
        self._ghost.clear()
        self._small_len = 0

    def _shrink(self) -> None:
        """Evict down to the capacity by the S3-FIFO rules."""
        while len(self._items) > self._capacity:
            self._evict_one()

    def _drop(self, key: str, item: list) -> None:
        del self._items[key]
        self._small_len -= not item[3]

    def _evict_one(self) -> None:
        # As libCacheSim decides: main gives way only once it holds more than its share (or the
        # small queue is empty); otherwise the small queue does.
        if len(self._items) - self._small_len > (1 - S3FIFO_SMALL_SHARE) * self._capacity or not self._small_len:
            self._evict_main()
        else:
            self._evict_small()

    def _oldest(self, queue: deque[tuple[str, int]]) -> tuple[str, list] | None:
        """Pop the oldest live entry of ``queue`` (stale tokens skipped); ``None`` when it is empty."""
        while queue:
            key, token = queue.popleft()
            item = self._items.get(key)
            if item is not None and item[4] == token:
                return key, item
        return None

    def _evict_small(self) -> None:
        oldest = self._oldest(self._small)
        if oldest is None:
            self._evict_main()
            return
        key, item = oldest
        self._small_len -= 1
        if item[2] >= S3FIFO_MOVE_TO_MAIN:
            item[2], item[3] = 0, True
            self._main.append((key, item[4]))
            return  # moved, not evicted: the caller's loop evicts again
        del self._items[key]
        self.evictions += 1
        self._remember(key)

    def _evict_main(self) -> None:
        while (oldest := self._oldest(self._main)) is not None:
            key, item = oldest
            if item[2] > 0:  # read since it was last passed: another round, one read fewer
                item[2] -= 1
                self._main.append((key, item[4]))
                continue
            del self._items[key]
            self.evictions += 1
            return

    def _remember(self, key: str) -> None:
        self._ghost[key] = None
        while len(self._ghost) > S3FIFO_GHOST_SHARE * self._capacity:
            self._ghost.popitem(last=False)


# The L1 policies the server runs (Settings.l1_policy), and the class of each.
L1_POLICY_CLASSES: dict[str, type[L1Cache]] = {"lru": L1Cache, "s3fifo": S3FIFOCache}
L1_POLICIES: tuple[str, ...] = tuple(L1_POLICY_CLASSES)


def make_l1(capacity: int, ttl_s: float = 0.0, policy: str = "lru", clock: Clock = time.monotonic) -> L1Cache:
    """An L1 of ``policy`` (one of :data:`L1_POLICIES`); ``ValueError`` naming them otherwise.

    Example::

        make_l1(10_000, ttl_s=300.0, policy="s3fifo").put("17:42", 123.5)
    """
    try:
        cls = L1_POLICY_CLASSES[policy]
    except KeyError:
        raise ValueError(f"L1 policy must be one of {', '.join(L1_POLICIES)}, got {policy!r}") from None
    return cls(capacity, ttl_s=ttl_s, clock=clock)


def measure_l1_bytes_per_entry(keys: Sequence[str]) -> float:
    """Bytes one L1 entry takes in this interpreter, measured with ``tracemalloc``: an L1 is
    filled with copies of ``keys`` (fresh strings, as each request brings its own) and float
    values, and the memory traced while it is built is divided by its entries. It includes the
    key, the value, the entry tuple and the ordered dict's share per entry, at whatever fill its
    hash table has at ``len(keys)`` entries.

    Example::

        measure_l1_bytes_per_entry([f"{s}:{h}" for s in range(200) for h in range(168)])   # ~200
    """
    if not keys:
        raise ValueError("measuring L1 memory needs at least one key")
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        l1 = L1Cache(len(keys))
        for number, key in enumerate(keys):
            l1.put("".join((key, " "))[:-1], number + 0.5)  # a new string object, not the caller's
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    return used / len(keys)


@dataclass(frozen=True)
class AdmissionRule:
    """When a computed prediction enters the cache: ``always``, after ``N`` requests (misses), or
    ``tinylfu``: after two misses as estimated by a frequency sketch that ages (TinyLFU's filter).

    Parse from text with :meth:`parse`: ``"always"``, ``"after:N"`` (N >= 1; ``after:1`` is the
    same as ``always``) or ``"tinylfu"``.
    """

    min_requests: int = 1
    sketch: bool = False
    """Count misses in a :class:`FrequencySketch` (bounded memory, aged by halving) instead of per key."""

    @classmethod
    def parse(cls, text: str) -> AdmissionRule:
        """Parse ``always``, ``after:N`` or ``tinylfu``; raise ``ValueError`` with the accepted forms otherwise."""
        value = text.strip().lower()
        if value == "always":
            return cls(1)
        if value == "tinylfu":
            return cls(TINYLFU_MIN_REQUESTS, sketch=True)
        prefix, _, count = value.partition(":")
        if prefix == "after" and count.isdigit() and int(count) >= 1:
            return cls(int(count))
        raise ValueError(f"admission must be 'always' or 'after:N' with N >= 1, or 'tinylfu', got {text!r}")

    def __str__(self) -> str:
        if self.sketch:
            return "tinylfu"
        return "always" if self.min_requests <= 1 else f"after:{self.min_requests}"


# TinyLFU admission: a key is admitted once the sketch estimates two misses of it.
TINYLFU_MIN_REQUESTS = 2
TINYLFU_ROWS = 4
TINYLFU_MAX_COUNT = 15  # four-bit counters, as in TinyLFU
# Every counter is halved after width x this many misses: old popularity fades (TinyLFU's reset).
TINYLFU_SAMPLE_FACTOR = 10
_HALVE = bytes(value >> 1 for value in range(256))
_ROW_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)
_MASK64 = (1 << 64) - 1


class FrequencySketch:
    """Count-min sketch of how often keys were seen: fixed memory (``rows x width`` bytes), an
    over-estimate only when keys share counters, aged by halving every counter periodically.

    Example::

        sketch = FrequencySketch(1024)
        sketch.add("17:42"), sketch.add("17:42")   # (1, 2)
    """

    def __init__(self, width: int) -> None:
        self._width = 1 << max(4, (width - 1).bit_length())  # a power of two: indexes by mask
        self._mask = self._width - 1
        self._table = bytearray(TINYLFU_ROWS * self._width)
        self._added = 0
        self._sample = self._width * TINYLFU_SAMPLE_FACTOR

    def _slots(self, key: str) -> list[int]:
        h = hash(key) & _MASK64
        return [row * self._width + ((((h ^ seed) * seed) & _MASK64) >> 40 & self._mask)
                for row, seed in enumerate(_ROW_SEEDS)]

    def add(self, key: str) -> int:
        """Count one sighting of ``key`` (conservative update: only its smallest counters grow);
        returns its new estimate."""
        slots = self._slots(key)
        table = self._table
        estimate = min(table[slot] for slot in slots)
        if estimate < TINYLFU_MAX_COUNT:
            for slot in slots:
                if table[slot] == estimate:
                    table[slot] = estimate + 1
        self._added += 1
        if self._added >= self._sample:
            self._table = bytearray(table.translate(_HALVE))
            self._added //= 2
        return min(estimate + 1, TINYLFU_MAX_COUNT)

    def clear(self) -> None:
        """Forget every count."""
        self._table = bytearray(len(self._table))
        self._added = 0


class Admission:
    """Counts misses per key (or in a :class:`FrequencySketch`) and says when a key has earned a cache slot."""

    def __init__(self, rule: AdmissionRule, max_tracked: int = ADMISSION_MAX_TRACKED) -> None:
        self.rule = rule
        self._max_tracked = max_tracked
        self._counts: dict[str, int] = {}
        self._sketch = FrequencySketch(max_tracked) if rule.sketch else None
        self.rejected = 0

    def admit(self, key: str) -> bool:
        """Record one miss of ``key``; ``True`` when it should now be cached."""
        need = self.rule.min_requests
        if need <= 1:
            return True
        if self._sketch is not None:
            if self._sketch.add(key) >= need:
                return True
            self.rejected += 1
            return False
        count = self._counts.get(key, 0) + 1
        if count >= need:
            self._counts.pop(key, None)
            return True
        if len(self._counts) >= self._max_tracked:
            self._counts.clear()
        self._counts[key] = count
        self.rejected += 1
        return False

    def reset(self) -> None:
        """Forget all counts (after a flush or a model change)."""
        self._counts.clear()
        if self._sketch is not None:
            self._sketch.clear()
