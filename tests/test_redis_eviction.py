"""Tests for tuning/redis_eviction.py: Redis' sampled LRU/LFU eviction, approximated."""

from __future__ import annotations

import numpy as np
import pytest

from serving.cache import L1Cache
from tuning.redis_eviction import REDIS_EVICTION_POLICIES, RedisEvictionCache


def _zipf_keys(n_requests: int = 30_000, n_keys: int = 3_000, seed: int = 5) -> list[int]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1) ** 0.9
    return rng.choice(n_keys, size=n_requests, p=weights / weights.sum()).tolist()


def _misses(cache: RedisEvictionCache, keys: list[int]) -> int:
    misses = 0
    for key in keys:
        if not cache.get(key):
            misses += 1
            cache.put(key)
    return misses


def _exact_lru_misses(capacity: int, keys: list[int]) -> int:
    lru = L1Cache(capacity)
    misses = 0
    for key in map(str, keys):
        if lru.get(key) is None:
            misses += 1
            lru.put(key, 0.0)
    return misses


@pytest.mark.parametrize("policy", REDIS_EVICTION_POLICIES)
def test_capacity_is_never_exceeded(policy: str) -> None:
    cache = RedisEvictionCache(50, policy, seed=1)
    keys = _zipf_keys(n_requests=5_000)
    misses = _misses(cache, keys)
    assert len(cache) == 50
    assert cache.evictions == misses - 50


def test_sampled_lru_is_close_to_exact_lru() -> None:
    keys = _zipf_keys()
    approx = _misses(RedisEvictionCache(300, "allkeys-lru", seed=2), keys) / len(keys)
    exact = _exact_lru_misses(300, keys) / len(keys)
    assert approx == pytest.approx(exact, abs=0.02)


def test_lfu_keeps_a_hot_key_through_a_scan_that_lru_loses() -> None:
    survivors = {}
    for policy in REDIS_EVICTION_POLICIES:
        cache = RedisEvictionCache(10, policy, seed=3)
        cache.put("hot")
        for _ in range(100):
            cache.get("hot")
        for number in range(1_000):
            cache.put(f"scan{number}")
        survivors[policy] = "hot" in cache
    assert survivors == {"allkeys-lru": False, "allkeys-lfu": True}


def test_same_seed_same_evictions() -> None:
    keys = _zipf_keys(n_requests=5_000)
    runs = [_misses(RedisEvictionCache(100, "allkeys-lfu", seed=9), keys) for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"capacity": 0}, "capacity"), ({"policy": "noeviction"}, "allkeys-lru"), ({"samples": 0}, "maxmemory-samples")],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"capacity": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        RedisEvictionCache(**settings)  # type: ignore[arg-type]


def test_remove_deletes_a_key() -> None:
    cache = RedisEvictionCache(3, seed=0)
    for key in "abc":
        cache.put(key)
    assert cache.remove("b") and not cache.remove("b")
    assert "b" not in cache and len(cache) == 2 and cache.get("a") and cache.get("c")
