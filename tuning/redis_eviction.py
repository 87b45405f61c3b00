"""Redis ``maxmemory`` eviction (``allkeys-lru`` / ``allkeys-lfu``), approximated for trace replay.

Redis does not keep an exact LRU or LFU order. When memory is over ``maxmemory`` it samples
``maxmemory-samples`` keys (default 5), scores them (LRU: idle time; LFU: 255 minus an 8-bit
logarithmic access counter), merges them into a 16-entry *eviction pool* of the best candidates
seen so far, and evicts the best pool entry that still exists (``evict.c``). This class replays
that procedure on a key count instead of bytes. What differs from a real server, on purpose:

- Capacity counts keys (every prediction is about the same size), not bytes of memory.
- Sampling draws ``samples`` keys uniformly (with replacement) from a seeded RNG; Redis'
  ``dictGetSomeKeys`` walks a few random hash buckets, which is close to uniform for our sizes.
- The LRU clock is the replay's request counter, so idle times are exact; Redis' clock ticks
  once per second, which makes keys touched in the same second tie.
- LFU uses Redis' logarithmic counter (new keys start at 5, ``lfu-log-factor`` 10, saturating at
  255) but not ``lfu-decay-time``: a replayed trace has no wall-clock minutes to decay over.
- Eviction runs right after a write pushes the count over capacity, as Redis does before the
  next command; the new key is a candidate too.

Pool entries are not updated when their key is read again (Redis keeps stale scores as well),
and an entry whose key is gone is skipped.

Example::

    redis = RedisEvictionCache(capacity=1000, policy="allkeys-lfu", seed=1)
    if not redis.get("17:42"):
        redis.put("17:42")
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Hashable
from typing import Final

REDIS_EVICTION_POLICIES: Final = ("allkeys-lru", "allkeys-lfu")
REDIS_MAXMEMORY_SAMPLES: Final = 5
REDIS_EVICTION_POOL_SIZE: Final = 16
REDIS_LFU_LOG_FACTOR: Final = 10
REDIS_LFU_INIT_VAL: Final = 5
REDIS_LFU_COUNTER_MAX: Final = 255


class RedisEvictionCache:
    """A key set bounded at ``capacity`` keys with Redis' sampled LRU/LFU eviction."""

    def __init__(
        self,
        capacity: int,
        policy: str = "allkeys-lru",
        *,
        samples: int = REDIS_MAXMEMORY_SAMPLES,
        seed: int = 0,
        lfu_log_factor: int = REDIS_LFU_LOG_FACTOR,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"Redis capacity must be >= 1 key, got {capacity}")
        if policy not in REDIS_EVICTION_POLICIES:
            raise ValueError(f"Redis eviction policy must be one of {REDIS_EVICTION_POLICIES}, got {policy!r}")
        if samples < 1:
            raise ValueError(f"maxmemory-samples must be >= 1, got {samples}")
        self.capacity = capacity
        self.policy = policy
        self.samples = samples
        self.lfu_log_factor = lfu_log_factor
        self._lfu = policy == "allkeys-lfu"
        self._rng = random.Random(seed)
        # Keys live in a list (O(1) random sampling) with a slot index (O(1) lookup and removal).
        self._keys: list[Hashable] = []
        self._slots: dict[Hashable, int] = {}
        # Per slot: LRU last-access tick, or LFU logarithmic counter.
        self._scores: list[int] = []
        self._tick = 0
        # The pool as two parallel lists, scores ascending: the best candidate is last, as in Redis.
        self._pool_scores: list[int] = []
        self._pool_keys: list[Hashable] = []
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slots

    def get(self, key: Hashable) -> bool:
        """Look ``key`` up like a ``GET``: ``True`` on a hit, which counts as an access."""
        self._tick += 1
        slot = self._slots.get(key)
        if slot is None:
            return False
        self._touch(slot)
        return True

    def put(self, key: Hashable) -> None:
        """Store ``key`` like a ``SET``, then evict while over capacity."""
        self._tick += 1
        slot = self._slots.get(key)
        if slot is not None:
            self._touch(slot)
            return
        self._slots[key] = len(self._keys)
        self._keys.append(key)
        self._scores.append(REDIS_LFU_INIT_VAL if self._lfu else self._tick)
        while len(self._keys) > self.capacity:
            self._evict_one()

    def remove(self, key: Hashable) -> bool:
        """Delete ``key`` like a ``DEL`` (or an expiry); ``True`` if it was there."""
        if key not in self._slots:
            return False
        self._remove(key)
        return True

    def _touch(self, slot: int) -> None:
        if self._lfu:
            self._scores[slot] = self._lfu_log_incr(self._scores[slot])
        else:
            self._scores[slot] = self._tick

    def _lfu_log_incr(self, counter: int) -> int:
        """Redis' ``LFULogIncr``: the higher the counter, the less likely an access raises it."""
        if counter >= REDIS_LFU_COUNTER_MAX:
            return REDIS_LFU_COUNTER_MAX
        base = max(counter - REDIS_LFU_INIT_VAL, 0)
        if self._rng.random() < 1.0 / (base * self.lfu_log_factor + 1):
            return counter + 1
        return counter

    def _eviction_score(self, slot: int) -> int:
        """Higher is a better victim: idle ticks for LRU, inverted counter for LFU."""
        if self._lfu:
            return REDIS_LFU_COUNTER_MAX - self._scores[slot]
        return self._tick - self._scores[slot]

    def _evict_one(self) -> None:
        while True:
            self._populate_pool()
            while self._pool_keys:
                self._pool_scores.pop()
                key = self._pool_keys.pop()
                if key in self._slots:
                    self._remove(key)
                    self.evictions += 1
                    return

    def _populate_pool(self) -> None:
        count = len(self._keys)
        for _ in range(self.samples):
            slot = int(self._rng.random() * count)  # uniform slot; cheaper than randrange
            self._offer(self._eviction_score(slot), self._keys[slot])

    def _offer(self, score: int, key: Hashable) -> None:
        """Redis' pool insertion: keep the ``REDIS_EVICTION_POOL_SIZE`` highest scores."""
        scores = self._pool_scores
        full = len(scores) >= REDIS_EVICTION_POOL_SIZE
        if full and score <= scores[0]:
            return  # no better than the worst candidate of a full pool
        position = bisect_left(scores, score)
        scores.insert(position, score)
        self._pool_keys.insert(position, key)
        if full:
            del scores[0]
            del self._pool_keys[0]

    def _remove(self, key: Hashable) -> None:
        slot = self._slots.pop(key)
        last_key = self._keys.pop()
        last_score = self._scores.pop()
        if slot < len(self._keys):  # fill the hole with the last key
            self._keys[slot] = last_key
            self._scores[slot] = last_score
            self._slots[last_key] = slot
