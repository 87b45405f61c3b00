"""The hot set (serving/hot_set.py): the true top-k of a Zipf stream within the stated error, bounded
memory whatever the traffic, and a moved hot set taking over after decay."""

from __future__ import annotations

import tracemalloc
from collections import Counter

import numpy as np

from serving.hot_set import HotSet, jaccard_distance

# The memory bound the README states: at most 2 x capacity counters (plus the batch buffer), each a
# key string (shared with the request) and a float in a dict: under this many bytes per counter.
BYTES_PER_COUNTER = 200


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _zipf_stream(n: int, keys: int, s: float, seed: int) -> list[str]:
    ranks = np.arange(1, keys + 1, dtype=float)
    weights = ranks ** -s
    draws = np.random.default_rng(seed).choice(keys, size=n, p=weights / weights.sum())
    return [f"k{i}" for i in draws.tolist()]


def test_finds_the_true_top_k_of_a_zipf_stream_within_the_stated_error() -> None:
    stream = _zipf_stream(200_000, keys=20_000, s=1.1, seed=3)
    hot = HotSet(capacity=500, half_life_s=1e9, clock=Clock())
    hot.update(stream)
    true = Counter(stream)
    bound = hot.weight / (hot.capacity + 1) + 1  # the module's stated undercount bound
    assert hot.error <= bound
    for key, count in true.items():
        estimate = hot.estimate(key)
        assert estimate <= count, (key, estimate, count)  # never an overcount
        assert count - estimate <= bound, (key, estimate, count, bound)
    k = 50
    top = hot.top(k)
    true_top = [key for key, _ in true.most_common(k)]
    # Every key clearly above the k-th true count (by more than the bound) is in the estimated top-k.
    kth = true.most_common(k)[-1][1]
    clear = [key for key, count in true.items() if count > kth + bound]
    assert set(clear) <= set(top)
    assert len(set(top) & set(true_top)) >= 0.9 * k
    assert top[:10] == true_top[:10]  # the head of the ranking is exact


def test_memory_is_bounded_whatever_the_traffic() -> None:
    capacity = 1000
    hot = HotSet(capacity=capacity, half_life_s=1e9, clock=Clock())
    keys = [f"{i}:{i % 168}" for i in range(300_000)]  # every key distinct: the worst case for a counter table
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    peak_entries = 0
    for start in range(0, len(keys), 10_000):
        hot.update(keys[start:start + 10_000])
        peak_entries = max(peak_entries, len(hot))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert peak_entries <= 2 * capacity
    assert hot.buffered < 256
    assert grown < 2 * capacity * BYTES_PER_COUNTER, grown


def test_follows_a_moved_hot_set_after_decay() -> None:
    clock = Clock()
    hot = HotSet(capacity=400, half_life_s=2.0, clock=clock)
    rng = np.random.default_rng(5)
    old = [f"old{i}" for i in range(100)]
    new = [f"new{i}" for i in range(100)]
    tail = [f"tail{i}" for i in range(5000)]

    def second(hot_keys: list[str]) -> None:
        # 1000 requests: 90% over the hot keys, 10% over a long tail.
        picks = rng.random(1000) < 0.9
        for is_hot, h, t in zip(picks, rng.integers(0, 100, 1000), rng.integers(0, 5000, 1000)):
            hot.add(hot_keys[h] if is_hot else tail[t])
        clock.now += 1.0

    for _ in range(60):  # a minute of the old hot set
        second(old)
    assert jaccard_distance(hot.top(100), old) < 0.1
    for _ in range(10):  # five half-lives of the new one
        second(new)
    top = hot.top(100)
    assert len(set(top) & set(new)) >= 95, sorted(top)[:20]
    assert jaccard_distance(top, new) < 0.1


def test_jaccard_distance() -> None:
    assert jaccard_distance(["a", "b"], ["a", "b"]) == 0.0
    assert jaccard_distance(["a"], ["b"]) == 1.0
    assert jaccard_distance(["a", "b"], ["b", "c"]) == 1 - 1 / 3
    assert jaccard_distance([], []) == 0.0
