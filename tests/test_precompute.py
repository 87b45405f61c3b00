"""serving/precompute.py: the full table and the pointer switch, the head, old versions dropped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis

from models.publish import build_and_publish
from serving.model import LoadedModel
from serving.precompute import popularity_prior, precompute, top_keys_from_file
from serving.store import KeyLayout, decode
from tests.helpers import TEST_SEGMENTS


def test_full_table_then_pointer(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    report = precompute(settings, progress=False)
    client = redis.Redis.from_url(settings.redis_url)
    ns, name = settings.redis_namespace, settings.model_name
    assert report.switched_pointer and report.keys == TEST_SEGMENTS * 168 and report.keys_per_s > 0
    assert client.get(KeyLayout(ns).pointer(name)).decode() == report.model_version
    assert len(list(client.scan_iter(match=f"{ns}:{name}:{report.model_version}:*", count=1000))) == report.keys
    model = LoadedModel.from_registry(settings.registry, name)
    stored = decode(client.get(KeyLayout(ns).prediction(name, report.model_version, "3:17")))
    assert stored == float(model.predict_indices([model.features.index("3:17")])[0])


def test_head_does_not_move_the_pointer(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    report = precompute(settings, ["1:1", "2:2"], progress=False)
    client = redis.Redis.from_url(settings.redis_url)
    assert not report.switched_pointer and report.keys == 2
    assert client.get(KeyLayout(settings.redis_namespace).pointer(settings.model_name)) is None


def test_top_keys_from_file(tmp_path: Path) -> None:
    trace = tmp_path / "trace.keys"
    trace.write_text("3:3\n1:1\n3:3\n2:2\n3:3\n1:1\n\n")
    assert top_keys_from_file(trace, 2) == ["3:3", "1:1"]
    with pytest.raises(FileNotFoundError):
        top_keys_from_file(tmp_path / "none", 2)
    trace.write_text("1:1\nnot*a-key\n")
    with pytest.raises(ValueError, match="trace.keys.*not\\*a-key.*key rule"):
        top_keys_from_file(trace, 2)


def test_a_head_of_keys_the_model_lacks_is_refused_clearly(make_settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="cannot precompute traffic-light@.*'999:1' is outside"):
        precompute(make_settings(), ["1:1", "999:1"], progress=False)


def test_popularity_prior_is_busiest_first(registry: Path) -> None:
    model = LoadedModel.from_registry(registry, "traffic-light")
    keys = popularity_prior(model, 5)
    values = model.predict_indices([model.features.index(k) for k in keys])
    assert len(set(keys)) == 5 and list(values) == sorted(values, reverse=True)


def test_old_versions_are_dropped_after_a_switch(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = tmp_path / "registry"
    shutil.copytree(make_settings().registry, registry)
    settings = make_settings(registry=registry)
    first = precompute(settings, progress=False).model_version
    versions = [first]
    for seed in (101, 102):
        build_and_publish("light", registry, segments=TEST_SEGMENTS, seed=seed)
        versions.append(precompute(settings, progress=False).model_version)
    client = redis.Redis.from_url(settings.redis_url)
    counts = {v: sum(1 for _ in client.scan_iter(match=f"{settings.redis_namespace}:{settings.model_name}:{v}:*", count=1000))
              for v in versions}
    assert counts[versions[0]] == 0  # older than the previous pointer: gone
    assert counts[versions[1]] == counts[versions[2]] == TEST_SEGMENTS * 168  # new and previous kept
