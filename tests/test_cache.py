"""serving/cache.py: the L1 LRU with TTL, and the admission rule."""

from __future__ import annotations

import pytest

from serving.cache import (
    L1_POLICIES,
    Admission,
    AdmissionRule,
    FrequencySketch,
    L1Cache,
    S3FIFOCache,
    make_l1,
    measure_l1_bytes_per_entry,
)


class FakeClock:
    """A clock the test moves by hand (TTL without sleeping)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lru_evicts_least_recently_used() -> None:
    l1 = L1Cache(capacity=2)
    l1.put("a", 1.0)
    l1.put("b", 2.0)
    assert l1.get("a") == 1.0  # a is now the most recent
    l1.put("c", 3.0)
    assert l1.get("b") is None and l1.get("a") == 1.0 and l1.get("c") == 3.0
    assert l1.evictions == 1 and len(l1) == 2


def test_miss_is_none_and_zero_capacity_disables() -> None:
    l1 = L1Cache(capacity=0)
    l1.put("a", 0.0)
    assert l1.get("a") is None and len(l1) == 0
    assert L1Cache(capacity=3).get("nope") is None


def test_zero_prediction_is_a_hit_not_a_miss() -> None:
    l1 = L1Cache(capacity=3)
    l1.put("a", 0.0)
    assert l1.get("a") == 0.0 and "a" in l1


def test_ttl_expires_entries() -> None:
    clock = FakeClock()
    l1 = L1Cache(capacity=10, ttl_s=5.0, clock=clock)
    l1.put("a", 1.0)
    clock.now = 4.9
    assert l1.get("a") == 1.0
    clock.now = 5.0
    assert l1.get("a") is None and len(l1) == 0


def test_reconfigure_shrinks_and_changes_ttl() -> None:
    l1 = L1Cache(capacity=5)
    for i in range(5):
        l1.put(str(i), float(i))
    l1.reconfigure(capacity=2, ttl_s=1.0)
    assert len(l1) == 2 and l1.peek("4") == 4.0 and l1.peek("0") is None
    assert l1.capacity == 2 and l1.ttl_s == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        l1.reconfigure(capacity=-1)


@pytest.mark.parametrize(("text", "needed"), [("always", 1), ("after:1", 1), ("after:3", 3), (" AFTER:2 ", 2)])
def test_admission_rule_parses(text: str, needed: int) -> None:
    assert AdmissionRule.parse(text).min_requests == needed


@pytest.mark.parametrize("text", ["", "never", "after:0", "after:-1", "after:x", "after"])
def test_admission_rule_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="'always' or 'after:N'"):
        AdmissionRule.parse(text)


def test_admission_after_n_misses() -> None:
    admission = Admission(AdmissionRule(3))
    assert [admission.admit("k") for _ in range(3)] == [False, False, True]
    assert admission.rejected == 2
    assert Admission(AdmissionRule(1)).admit("k") is True


def test_admission_memory_is_bounded() -> None:
    admission = Admission(AdmissionRule(2), max_tracked=10)
    for i in range(100):
        admission.admit(str(i))
    assert len(admission._counts) <= 10  # noqa: SLF001


def test_l1_entry_bytes_are_measured_and_grow_with_the_key() -> None:
    short = measure_l1_bytes_per_entry([f"{i}:{i % 168}" for i in range(5000)])
    long = measure_l1_bytes_per_entry([f"user-{i:08d}-" + "x" * 200 for i in range(5000)])
    # A float (24 B) and a tuple (56 B) alone exceed 50 B; the 200 extra characters show up in full.
    assert 50 < short < 1000
    assert long - short == pytest.approx(200, abs=40)
    with pytest.raises(ValueError, match="at least one key"):
        measure_l1_bytes_per_entry([])


def test_s3fifo_keeps_reread_keys_through_a_scan() -> None:
    l1 = S3FIFOCache(capacity=10)
    for key in "abcde":
        l1.put(key, 1.0)
        l1.get(key)
        l1.get(key)  # read twice: moves to main when it reaches the small queue's end
    for n in range(100):  # a scan of one-hit keys
        l1.put(f"scan-{n}", 0.0)
    assert all(l1.get(key) == 1.0 for key in "abcde")
    assert len(l1) == 10 and l1.evictions == 95
    lru = L1Cache(capacity=10)
    for key in "abcde":
        lru.put(key, 1.0)
    for n in range(100):
        lru.put(f"scan-{n}", 0.0)
    assert not any(key in lru for key in "abcde")  # the contrast: LRU lost them all


def test_s3fifo_ghost_readmits_to_main() -> None:
    l1 = S3FIFOCache(capacity=10)
    l1.put("g", 1.0)
    for n in range(10):  # pushes "g" (never re-read) out of the small queue: its key becomes a ghost
        l1.put(f"x{n}", 0.0)
    assert l1.get("g") is None
    l1.put("g", 2.0)  # back while remembered: straight into main
    for n in range(50):
        l1.put(f"y{n}", 0.0)
    assert l1.get("g") == 2.0


def test_s3fifo_ttl_refresh_shrink_and_clear() -> None:
    clock = FakeClock()
    l1 = S3FIFOCache(capacity=4, ttl_s=10.0, clock=clock)
    l1.put("a", 1.0)
    l1.put("a", 2.0)  # refresh in place
    assert l1.peek("a") == 2.0 and len(l1) == 1
    clock.now = 11.0
    assert l1.get("a") is None and len(l1) == 0
    for key in "wxyz":
        l1.put(key, 0.0)
    l1.reconfigure(capacity=2)
    assert len(l1) == 2 and l1.capacity == 2
    l1.clear()
    assert len(l1) == 0 and l1.get("w") is None


@pytest.mark.parametrize("policy", L1_POLICIES)
def test_make_l1_builds_each_policy(policy: str) -> None:
    l1 = make_l1(3, policy=policy)
    for key in "abcdef":
        l1.put(key, 1.0)
    assert len(l1) == 3 and l1.evictions == 3
    with pytest.raises(ValueError, match="lru, s3fifo"):
        make_l1(3, policy="mru")


def test_tinylfu_admits_on_the_second_miss_and_forgets_with_age() -> None:
    rule = AdmissionRule.parse("tinylfu")
    assert str(rule) == "tinylfu" and rule.sketch
    admission = Admission(rule, max_tracked=64)
    assert not admission.admit("a") and admission.admit("a")
    assert admission.rejected == 1
    # Past width x TINYLFU_SAMPLE_FACTOR misses every count is halved: one old miss is forgotten.
    admission.admit("b")
    for _ in range(64 * 10):
        admission.admit("filler")  # one key: its own counters saturate, the others are left alone
    assert not admission.admit("b")
    admission.reset()
    assert not admission.admit("a")


def test_frequency_sketch_counts_within_its_bound() -> None:
    sketch = FrequencySketch(4096)
    for n in range(1000):
        for _ in range(n % 4):
            sketch.add(f"k{n}")
    estimates = [sketch.add(f"k{n}") - 1 for n in range(1000)]
    exact = [n % 4 for n in range(1000)]
    assert all(e >= x for e, x in zip(estimates, exact))  # count-min never under-counts
    assert sum(e != x for e, x in zip(estimates, exact)) < 20  # and rarely over-counts at this width
