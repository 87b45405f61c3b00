"""Consistency under change: a version switch under load, an interrupted static precompute, and
flushes racing requests. Real Redis, real ONNX, real HTTP; load bounded in count and time.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.data import all_keys
from serving.model import LoadedModel
from serving.precompute import precompute
from serving.store import KeyLayout
from tests.helpers import ADMIN, TEST_SEGMENTS, running

KEYS = all_keys(TEST_SEGMENTS)
MAX_LOAD_S = 60.0
MAX_REQUESTS_PER_THREAD = 3000
BATCH = 16


@dataclass(frozen=True)
class TwoVersions:
    """A private registry holding an old and a new version of traffic-light (latest: old)."""

    registry: Path
    old: str
    new: str
    old_values: dict[str, float]
    new_values: dict[str, float]


def _values(registry: Path, version: str) -> dict[str, float]:
    """Every key's prediction straight from the model: what any mode must return for it."""
    model = LoadedModel.from_registry(registry, "traffic-light", version)
    return dict(zip(KEYS, model.predict_indices(np.arange(len(KEYS))).tolist()))


@pytest.fixture(scope="module")
def two_versions(two_light_versions: tuple[Path, str, str]) -> TwoVersions:
    root, old, new = two_light_versions
    return TwoVersions(root, old, new, _values(root, old), _values(root, new))


@dataclass(frozen=True)
class Seen:
    """One batch response: when its request was sent, and what came back."""

    sent_at: float
    versions: frozenset[str]
    values: dict[str, float]


def _hammer(url: str, stop: threading.Event, seen: list[Seen], errors: list[str], seed: int) -> None:
    """POST batches of random keys until stopped (or the count/time bound), recording every answer."""
    rng = random.Random(seed)
    deadline = time.monotonic() + MAX_LOAD_S
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for _ in range(MAX_REQUESTS_PER_THREAD):
            if stop.is_set() or time.monotonic() > deadline:
                return
            keys = rng.sample(KEYS[:200], BATCH)  # a small key set, so L1 and Redis are hit too
            sent_at = time.monotonic()
            response = client.post("/v1/predict", json={"keys": keys})
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:200]}")
                continue
            predictions = response.json()["predictions"]
            if [p["key"] for p in predictions] != keys:
                errors.append(f"keys out of order: {keys} -> {[p['key'] for p in predictions]}")
            seen.append(Seen(sent_at, frozenset(p["model_version"] for p in predictions),
                             {p["key"]: p["prediction"] for p in predictions}))


def _load(url: str, threads: int = 3) -> tuple[threading.Event, list[threading.Thread], list[Seen], list[str]]:
    stop, seen, errors = threading.Event(), [], []  # type: ignore[var-annotated]
    workers = [threading.Thread(target=_hammer, args=(url, stop, seen, errors, i), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    return stop, workers, seen, errors


def test_version_switch_under_load(make_settings, two_versions: TwoVersions) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="hybrid", registry=two_versions.registry)
    with running(settings) as (server, client):
        stop, workers, seen, errors = _load(server.url)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and len(seen) < 20:
            time.sleep(0.1)
        reload = client.post("/v1/admin/reload", json={"version": two_versions.new}, headers=ADMIN)
        switched = time.monotonic()  # after the reload response: no old answer may be sent from here on
        assert reload.status_code == 200 and reload.json() == {"model_version": two_versions.new, "propagated": True}
        deadline = time.monotonic() + 20.0  # enough answers after the switch, even on a slow machine
        while time.monotonic() < deadline and sum(s.sent_at >= switched for s in list(seen)) < 20:
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.join(15)
    assert errors == []
    before = [s for s in seen if s.sent_at < switched]
    after = [s for s in seen if s.sent_at >= switched]
    assert before and after, (len(before), len(after))
    for answer in seen:
        assert len(answer.versions) == 1, f"one response mixed versions: {answer.versions}"
        expected = two_versions.old_values if answer.versions == {two_versions.old} else two_versions.new_values
        assert all(expected[k] == v for k, v in answer.values.items()), "a value of another version or key"
    old_after = [s for s in after if two_versions.old in s.versions]
    assert old_after == [], f"{len(old_after)} responses sent after the reload carried the old version"
    print(f"\nversion switch: {len(before)} batches before, {len(after)} after, none old after the reload")


def test_interrupted_precompute_keeps_the_old_table(make_settings, two_versions: TwoVersions, redis_server) -> None:  # type: ignore[no-untyped-def]
    import redis

    settings = make_settings(mode="static", registry=two_versions.registry, precompute_batch_size=500)
    precompute(settings, progress=False)  # the old version (latest), complete

    def fail_part_way(batch: int) -> None:
        if batch == 2:
            raise RuntimeError("precompute killed part-way")

    new_settings = settings.model_copy(update={"model_version": two_versions.new})
    with pytest.raises(RuntimeError, match="part-way"):
        precompute(new_settings, progress=False, on_batch=fail_part_way)
    client = redis.Redis.from_url(redis_server.url)
    pointer = client.get(KeyLayout(settings.redis_namespace).pointer("traffic-light"))
    assert pointer is not None and pointer.decode() == two_versions.old
    written_new = sum(1 for _ in client.scan_iter(match=f"{settings.redis_namespace}:traffic-light:{two_versions.new}:*", count=1000))
    assert 0 < written_new < len(KEYS), "the interrupted run did write part of the new table"
    client.close()

    with running(settings) as (_, http):
        for i in range(0, len(KEYS), 256):
            body = http.post("/v1/predict", json={"keys": KEYS[i : i + 256]}).json()
            assert body["model_version"] == two_versions.old
            for p in body["predictions"]:
                assert p["source"] == "redis" and p["prediction"] == two_versions.old_values[p["key"]]


@pytest.mark.slow
def test_flush_never_returns_another_keys_value(make_settings, two_versions: TwoVersions) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="hybrid", registry=two_versions.registry)
    flushes = 0
    with running(settings) as (server, client):
        stop, workers, seen, errors = _load(server.url)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert client.post("/v1/admin/flush", json={"l1": True, "redis": True}, headers=ADMIN).status_code == 200
            flushes += 1
            time.sleep(0.02)
        stop.set()
        for worker in workers:
            worker.join(15)
    assert errors == [] and seen and flushes > 5
    wrong = [(k, v) for s in seen for k, v in s.values.items() if v != two_versions.old_values[k]]
    assert wrong == [], wrong[:5]
    print(f"\nflush race: {len(seen)} batches, {flushes} flushes, no value for a wrong key")
