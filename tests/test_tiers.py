"""serving/tiers.py: the tier walk (order, refill, admission, fail-open), and the tuner's replay
driving the same walk as the live server, request by request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from models.data import all_keys
from serving.cache import Admission, AdmissionRule, L1Cache
from serving.errors import StoreRejected, StoreUnavailable, UnknownKey
from serving.metrics import Counts
from serving.precompute import precompute
from serving.modes import MODE_TIERS
from serving.tiers import L1Tier, TierWalk, run_now
from tests.helpers import TEST_SEGMENTS, running
from tuning.simulate import ServerPolicy, ServerReplay


class DictTier:
    """A cache tier over a dict, failing on demand."""

    computes = False
    trusts_keys = False

    def __init__(self, name: str, values: dict[str, float] | None = None) -> None:
        self.name = name
        self.values = dict(values or {})
        self.fail_reads: Exception | None = None
        self.fail_writes: Exception | None = None
        self.reads: list[list[str]] = []

    async def get_many(self, keys: Sequence[str]) -> list[float | None]:
        self.reads.append(list(keys))
        if self.fail_reads is not None:
            raise self.fail_reads
        return [self.values.get(k) for k in keys]

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        if self.fail_writes is not None:
            raise self.fail_writes
        self.values.update(items)


class DoublingModel:
    """A computing tier: the value of key 'k<n>' is 2n."""

    name = "model"
    computes = True
    trusts_keys = False

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def get_many(self, keys: Sequence[str]) -> list[float | None]:
        self.calls.append(list(keys))
        return [2.0 * int(k[1:]) for k in keys]

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        raise AssertionError("nothing is put into the model")


def _walk(tiers: list, admission: str = "always", validate=lambda key: None) -> tuple[TierWalk, Counts]:  # type: ignore[no-untyped-def]
    counts = Counts()
    walk = TierWalk(tiers, admission=Admission(AdmissionRule.parse(admission)), observer=counts, validate=validate)
    return walk, counts


def test_tiers_are_asked_in_order_for_what_the_ones_above_missed() -> None:
    l1 = L1Tier(L1Cache(10))
    store = DictTier("redis", {"k2": 4.0})
    model = DoublingModel()
    walk, counts = _walk([l1, store, model])
    found = run_now(walk.resolve(["k1", "k2", "k1"]))
    assert found == {"k1": (2.0, "model"), "k2": (4.0, "redis")}
    assert store.reads == [["k1", "k2"]] and model.calls == [["k1"]]  # duplicates looked up once
    # refill: the Redis hit and the admitted computation both land in L1; the computation in Redis
    assert run_now(walk.resolve(["k1", "k2"])) == {"k1": (2.0, "l1"), "k2": (4.0, "l1")}
    assert store.values["k1"] == 2.0
    assert (counts.l1_hits, counts.l1_misses, counts.redis_hits, counts.redis_misses, counts.model_rows) == (2, 2, 1, 1, 1)


def test_admission_keeps_computed_values_out_until_earned() -> None:
    l1, store, model = L1Tier(L1Cache(10)), DictTier("redis"), DoublingModel()
    walk, counts = _walk([l1, store, model], admission="after:2")
    assert run_now(walk.resolve(["k3"])) == {"k3": (6.0, "model")}
    assert "k3" not in store.values and len(l1.l1) == 0
    assert run_now(walk.resolve(["k3"])) == {"k3": (6.0, "model")}  # second miss: admitted now
    assert store.values["k3"] == 6.0
    assert run_now(walk.resolve(["k3"]))["k3"][1] == "l1"
    assert (counts.admitted, counts.not_admitted) == (1, 1)


def test_a_failing_tier_falls_through_to_the_next_and_a_failing_write_still_serves() -> None:
    store, model = DictTier("redis", {"k1": 2.0}), DoublingModel()
    walk, counts = _walk([store, model])
    store.fail_reads = StoreUnavailable("down")
    assert run_now(walk.resolve(["k1"])) == {"k1": (2.0, "model")}
    store.fail_reads, store.fail_writes = None, StoreRejected("OOM command not allowed")
    assert run_now(walk.resolve(["k5"])) == {"k5": (10.0, "model")}
    assert (counts.redis_fallbacks, counts.redis_write_errors, counts.admitted) == (1, 1, 2)


def test_the_last_tier_failing_or_missing_is_the_request_failing() -> None:
    store = DictTier("redis", {"k1": 2.0})
    walk, _ = _walk([store])
    with pytest.raises(UnknownKey, match="'k9'"):
        run_now(walk.resolve(["k1", "k9"]))
    store.fail_reads = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable):
        run_now(walk.resolve(["k1"]))


def test_keys_are_validated_before_the_first_tier_that_does_not_trust_them() -> None:
    seen: list[str] = []
    l1 = L1Tier(L1Cache(10))
    l1.l1.put("k1", 2.0)
    walk, _ = _walk([l1, DictTier("redis"), DoublingModel()], validate=seen.append)
    run_now(walk.resolve(["k1"]))
    assert seen == []  # an L1 hit needs no validation: L1 holds only validated keys
    run_now(walk.resolve(["k1", "k4"]))
    assert seen == ["k4"]


def test_every_mode_names_known_tiers() -> None:
    assert set(MODE_TIERS) == {"static", "dynamic", "hybrid"}
    assert all(set(tiers) <= {"l1", "store", "model"} for tiers in MODE_TIERS.values())


def _zipf_requests(keys: list[str], count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.2, count), len(keys)) - 1
    order = rng.permutation(len(keys))  # popular keys spread over the key space
    return [keys[order[r]] for r in ranks.tolist()]


@pytest.mark.parametrize(("mode", "l1_size", "admission"), [("hybrid", 40, "after:2"), ("hybrid", 0, "always"), ("dynamic", 0, "always")])
def test_live_server_and_replay_serve_every_request_from_the_same_tier(make_settings, mode: str, l1_size: int, admission: str) -> None:  # type: ignore[no-untyped-def]
    """One generated trace, sent request by request to a live server (real Redis, real model) and
    replayed through the tuner's ServerReplay: the source of every single request must agree."""
    keys = all_keys(TEST_SEGMENTS)
    requests = _zipf_requests(keys, 700, seed=3)
    head = list(dict.fromkeys(requests[:200]))[:25] if mode == "hybrid" else []
    settings = make_settings(mode=mode, l1_size=l1_size, admission=admission, redis_ttl_s=0)
    if head:
        precompute(settings, head, progress=False)
    with running(settings) as (_, client):
        live = [client.get(f"/v1/predict/{key}").json()["source"] for key in requests]
    replay = ServerReplay(ServerPolicy(mode=mode, l1_capacity=l1_size, admission=admission), head=head)
    simulated = [replay.serve(key) for key in requests]
    mismatches = [(i, k, a, b) for i, (k, a, b) in enumerate(zip(requests, live, simulated)) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(requests)} requests differ, first: {mismatches[:3]}"
    assert len(set(live)) == (3 if l1_size else 2 if mode == "hybrid" else 1)  # the trace exercised every tier
