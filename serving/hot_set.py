"""The hot set: a bounded-memory estimate of the keys the *current* traffic asks for most.

A precomputed head chosen yesterday serves today's traffic; this module tells the server what the
head should be now (:mod:`serving.head_refresh` acts on it). It is a frequent-items summary
(Misra-Gries, the deterministic cousin of Space-Saving) with exponential decay:

- **Bounded memory.** At most ``2 x capacity`` counters plus ``batch`` buffered keys, whatever
  the traffic: when the counters pass ``2 x capacity`` they are compacted to the ``capacity``
  largest, and the ``(capacity + 1)``-th largest count is subtracted from all of them (the
  Misra-Gries step, applied to a batch of decrements at once so it costs ``O(log capacity)`` per
  distinct new key, amortized).
- **Stated error.** With ``W`` the (decayed) weight seen, every estimate is an undercount by at
  most ``W / (capacity + 1)`` (plus one request: counts that decay below half a request are
  dropped, and the halvings bound what that loses by 1/2 + 1/4 + ...); so every key with a true share above ``1 / (capacity + 1)`` is
  kept, and the top-k of a peaked stream comes out right whenever the k-th key's share is clear of
  the (k+1)-th by more than that. tests/test_hot_set.py checks it on a Zipf stream.
- **Recent, not all time.** Every ``half_life_s`` every count is halved (an epoch), so a hot set
  that moved away fades out: after ``n`` half-lives old counts weigh ``2**-n`` of new ones.
- **Cheap on the hot path.** :meth:`HotSet.add` appends the key to a list; the counting runs once
  per ``batch`` keys (``benchmarks/hot_set.py`` measures what it adds to an L1 hit).

Apache DataSketches' ``frequent_strings_sketch`` has the same guarantee but no decay (an epoch
would be a rebuild and a merge of sketches) and a call across the binding per key; the counting
here is a plain dict, so a batch costs one C-level ``Counter`` pass and a dict update per distinct key.

Example::

    hot = HotSet(capacity=4096, half_life_s=60)
    for key in requested_keys:
        hot.add(key)
    hot.top(1000)                      # the 1000 heaviest keys of recent traffic, heaviest first
    jaccard_distance(hot.top(1000), head_written)   # how far the hot set moved from the head
"""

from __future__ import annotations

import heapq
from collections import Counter
import time
from collections.abc import Callable, Iterable

Clock = Callable[[], float]

# Keys buffered before they are counted: one list append per request on the hot path, one counting
# pass per this many keys (the buffer is part of the memory bound).
DEFAULT_BATCH = 256


class HotSet:
    """Heavy hitters of recent traffic: at most ``2 x capacity`` counters, halved every ``half_life_s``."""

    def __init__(self, capacity: int, half_life_s: float, batch: int = DEFAULT_BATCH, clock: Clock = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"hot set capacity must be >= 1, got {capacity}")
        if half_life_s <= 0:
            raise ValueError(f"hot set half-life must be > 0 seconds, got {half_life_s}")
        self.capacity = capacity
        self.half_life_s = half_life_s
        self._batch = max(1, batch)
        self._clock = clock
        self._counts: dict[str, float] = {}
        self._buffer: list[str] = []
        self._epoch_start = clock()
        self.weight = 0.0
        """Decayed weight of all keys counted (the ``W`` of the error bound)."""
        self.error = 0.0
        """Largest undercount of any estimate from the compactions (their cuts, decayed with the
        counts); dropping decayed counts under one half adds at most one more."""
        self.seen = 0
        """Keys added, all time (not decayed)."""

    def add(self, key: str) -> None:
        """Count one requested key (buffered: the counting runs once per ``batch`` keys)."""
        self._buffer.append(key)
        if len(self._buffer) >= self._batch:
            self._flush()

    def update(self, keys: Iterable[str]) -> None:
        """Count many keys."""
        for key in keys:
            self.add(key)

    def top(self, k: int) -> list[str]:
        """The ``k`` heaviest keys (at most ``2 x capacity`` exist), heaviest first; ties by key."""
        return [key for key, _ in self.top_counts(k)]

    def top_counts(self, k: int) -> list[tuple[str, float]]:
        """``(key, estimated decayed count)`` of the ``k`` heaviest keys, heaviest first."""
        self._flush()
        return heapq.nsmallest(k, self._counts.items(), key=lambda item: (-item[1], item[0]))

    def estimate(self, key: str) -> float:
        """Estimated decayed count of ``key`` (an undercount by at most :attr:`error`)."""
        self._flush()
        return self._counts.get(key, 0.0)

    def __len__(self) -> int:
        """Counters held now (at most ``2 x capacity``)."""
        return len(self._counts)

    @property
    def buffered(self) -> int:
        """Keys added but not counted yet (fewer than ``batch``)."""
        return len(self._buffer)

    def clear(self) -> None:
        """Forget everything."""
        self._counts.clear()
        self._buffer.clear()
        self.weight = self.error = 0.0
        self._epoch_start = self._clock()

    def _flush(self) -> None:
        self._decay()
        buffer, self._buffer = self._buffer, []
        if not buffer:
            return
        counts = self._counts
        get = counts.get
        for key, n in Counter(buffer).items():  # the counting in C, then one dict update per distinct key
            counts[key] = get(key, 0.0) + n
        self.weight += len(buffer)
        self.seen += len(buffer)
        if len(counts) > 2 * self.capacity:
            self._compact()

    def _decay(self) -> None:
        """Halve every count once per elapsed half-life (epochs: no per-key timestamps to keep)."""
        epochs = int((self._clock() - self._epoch_start) / self.half_life_s)
        if epochs <= 0:
            return
        self._epoch_start += epochs * self.half_life_s
        factor = 0.5 ** epochs
        # Counts that decay below one request's weight carry no information worth the memory.
        self._counts = {key: count * factor for key, count in self._counts.items() if count * factor >= 0.5}
        self.weight *= factor
        self.error *= factor

    def _compact(self) -> None:
        """The Misra-Gries step: subtract the (capacity + 1)-th largest count from every counter
        and keep those left above zero (at most ``capacity``). Each compaction takes away at least
        ``(capacity + 1) x cut`` of weight, so the cuts add up to at most ``W / (capacity + 1)``."""
        counts = self._counts
        cut = heapq.nlargest(self.capacity + 1, counts.values())[-1]
        kept = {key: count - cut for key, count in counts.items() if count > cut}
        if len(kept) > self.capacity:  # ties at the cut: keep the heaviest, by key for ties
            kept = dict(heapq.nsmallest(self.capacity, kept.items(), key=lambda item: (-item[1], item[0])))
        self._counts = kept
        self.error += cut


def jaccard_distance(a: Iterable[str], b: Iterable[str]) -> float:
    """``1 - |A n B| / |A u B|`` of two key sets: 0 the same, 1 disjoint (and 0 for two empty sets)."""
    first, second = set(a), set(b)
    union = first | second
    return 1.0 - len(first & second) / len(union) if union else 0.0
