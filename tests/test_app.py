"""serving/app.py + service.py over real HTTP, a real Redis and real ONNX models."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from models.data import all_keys
from models.registry import set_latest
from models.publish import build_and_publish
from serving.precompute import precompute
from tests.helpers import ADMIN, TEST_SEGMENTS, running

KEYS = all_keys(TEST_SEGMENTS)


def _static_ready(settings) -> None:  # type: ignore[no-untyped-def]
    precompute(settings, progress=False)


def _ready_settings(make_settings, mode: str):  # type: ignore[no-untyped-def]
    """Settings of ``mode``, with the full table precomputed when the mode is static."""
    settings = make_settings(mode=mode)
    if mode == "static":
        _static_ready(settings)
    return settings


@pytest.mark.parametrize("mode", ["static", "dynamic", "hybrid"])
def test_each_mode_end_to_end(make_settings, mode: str) -> None:  # type: ignore[no-untyped-def]
    with running(_ready_settings(make_settings, mode)) as (_, client):
        body = client.get("/v1/predict/3:17").json()
        assert body["key"] == "3:17" and isinstance(body["prediction"], float)
        assert body["source"] == {"static": "redis", "dynamic": "model", "hybrid": "model"}[mode]
        assert len(body["model_version"]) == 12
        assert client.get("/healthz").json() == {"status": "ok"} == client.get("/livez").json()
        assert client.get("/readyz").status_code == 200


def test_hybrid_sources(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid")) as (_, client):
        assert client.get("/v1/predict/5:5").json()["source"] == "model"
        assert client.get("/v1/predict/5:5").json()["source"] == "l1"
        assert client.post("/v1/admin/flush", json={"l1": True}, headers=ADMIN).status_code == 200
        assert client.get("/v1/predict/5:5").json()["source"] == "redis"
        assert client.get("/v1/predict/5:5").json()["source"] == "l1"


def test_hybrid_head_is_served_from_redis(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="hybrid")
    precompute(settings, ["7:1", "7:2"], progress=False)
    with running(settings) as (_, client):
        assert client.get("/v1/predict/7:1").json()["source"] == "redis"
        stats = client.get("/v1/cache/stats").json()
        assert stats["counts"]["redis_hits"] == 1 and stats["counts"]["model_rows"] == 0


def test_static_unknown_key_is_404_never_computed(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="static")
    precompute(settings, ["1:1"], progress=False)  # a head only: no complete table yet
    with running(settings) as (_, client):
        missing = client.get("/v1/predict/1:1")
        assert missing.status_code == 503 and missing.json()["error"] == "table_unavailable"
    _static_ready(settings)
    with running(settings) as (_, client):
        outside = client.get(f"/v1/predict/{TEST_SEGMENTS + 5}:1")
        assert outside.status_code == 404
        assert outside.json()["error"] == "unknown_key" and "key space" in outside.json()["detail"]
        assert client.get("/v1/cache/stats").json()["counts"]["model_rows"] == 0


def test_batch_order_duplicates_and_one_model_call(make_settings) -> None:  # type: ignore[no-untyped-def]
    keys = ["4:100", "1:1", "4:100", "19:167", "0:0"]
    with running(make_settings(mode="hybrid", batching=False)) as (_, client):
        body = client.post("/v1/predict", json={"keys": keys}).json()
        assert [p["key"] for p in body["predictions"]] == keys
        assert body["predictions"][0]["prediction"] == body["predictions"][2]["prediction"]
        stats = client.get("/v1/cache/stats").json()
        assert stats["counts"]["model_rows"] == 4  # the duplicate was computed once
        metrics = client.get("/metrics").text
        assert 'hybridserve_batch_rows_count{mode="hybrid"} 1.0' in metrics


PARITY_KEYS = 2000
PARITY_BATCH = 500
SINGLE_GETS = 50  # keys also asked one by one: batch composition must not change a value


def _predict_all(client, keys: list[str]) -> dict[str, tuple[float, str]]:  # type: ignore[no-untyped-def]
    """``key -> (prediction, source)`` for ``keys``, asked in POST batches of PARITY_BATCH."""
    got: dict[str, tuple[float, str]] = {}
    for i in range(0, len(keys), PARITY_BATCH):
        response = client.post("/v1/predict", json={"keys": keys[i : i + PARITY_BATCH]})
        assert response.status_code == 200, response.text
        for p in response.json()["predictions"]:
            got[p["key"]] = (p["prediction"], p["source"])
    return got


def _predict_each(client, keys: list[str]) -> dict[str, tuple[float, str]]:  # type: ignore[no-untyped-def]
    """``key -> (prediction, source)`` for ``keys``, one GET each."""
    bodies = [client.get(f"/v1/predict/{key}").json() for key in keys]
    return {b["key"]: (b["prediction"], b["source"]) for b in bodies}


def _values(answers: dict[str, tuple[float, str]], source: str) -> dict[str, float]:
    """The predictions of ``answers``, after checking that every one came from ``source``."""
    sources = Counter(s for _, s in answers.values())
    assert sources == Counter({source: len(answers)}), f"expected every answer from {source}: {sources}"
    return {key: value for key, (value, _) in answers.items()}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["light", "heavy"])
def test_parity_across_modes(make_settings, profile: str) -> None:  # type: ignore[no-untyped-def]
    """Static, dynamic and hybrid answer the same float for each of 2,000 keys, hybrid from every tier.

    Each mode has its own Redis namespace (``make_settings``), so no mode can read another's
    values: static's come from its precompute, dynamic's from the model per request, and hybrid's
    from its own model calls, then from what it admitted into L1 and Redis on those calls.
    """
    sample = random.Random(5).sample(KEYS, PARITY_KEYS)
    single = sample[:SINGLE_GETS]
    common = {"model_name": f"traffic-{profile}", "max_keys_per_request": PARITY_BATCH}

    static = make_settings(mode="static", **common)
    _static_ready(static)
    with running(static) as (_, client):
        static_values = _values(_predict_all(client, sample), "redis")
        assert _values(_predict_each(client, single), "redis") == {k: static_values[k] for k in single}

    with running(make_settings(mode="dynamic", **common)) as (_, client):
        dynamic_values = _values(_predict_all(client, sample), "model")
        assert _values(_predict_each(client, single), "model") == {k: dynamic_values[k] for k in single}

    # An empty namespace and an L1 that holds every sampled key: the first pass computes and
    # admits each key, the second reads what was admitted into L1, the third (L1 flushed) what was
    # written to Redis, and single GETs then read what the Redis pass refilled into L1.
    hybrid = make_settings(mode="hybrid", l1_size=PARITY_KEYS, admission="always", **common)
    with running(hybrid) as (_, client):
        computed = _values(_predict_all(client, sample), "model")
        counts = client.get("/v1/cache/stats").json()["counts"]
        assert counts["model_rows"] == counts["admitted"] == PARITY_KEYS and counts["redis_hits"] == 0
        from_l1 = _values(_predict_all(client, sample), "l1")
        flushed = client.post("/v1/admin/flush", json={"l1": True, "redis": False}, headers=ADMIN)
        assert flushed.status_code == 200 and flushed.json()["flushed"]["l1"] == PARITY_KEYS
        from_redis = _values(_predict_all(client, sample), "redis")
        refilled = _values(_predict_each(client, single), "l1")

    assert dynamic_values == static_values
    for tier, values in (("model", computed), ("l1", from_l1), ("redis", from_redis)):
        wrong = [k for k in sample if values[k] != static_values[k]]
        assert not wrong, f"hybrid {tier} differs from static on {len(wrong)} keys, e.g. {wrong[:3]}"
    assert refilled == {k: static_values[k] for k in single}


@pytest.mark.parametrize("mode", ["static", "dynamic", "hybrid"])
def test_reload_unknown_version_is_404_in_every_mode(make_settings, mode: str) -> None:  # type: ignore[no-untyped-def]
    with running(_ready_settings(make_settings, mode)) as (_, client):
        served = client.get(f"/v1/predict/{KEYS[0]}").json()["model_version"]
        unknown = client.post("/v1/admin/reload", json={"version": "nope"}, headers=ADMIN)
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_version", unknown.text
        for version in ("latest", served):
            again = client.post("/v1/admin/reload", json={"version": version}, headers=ADMIN)
            assert again.status_code == 200 and again.json() == {"model_version": served, "propagated": True}, again.text


def test_version_namespacing(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    registry = tmp_path / "registry"
    shutil.copytree(make_settings().registry, registry)
    settings = make_settings(mode="hybrid", registry=registry)
    with running(settings) as (_, client):
        old = {k: client.get(f"/v1/predict/{k}").json() for k in KEYS[:50]}
        old_version = old[KEYS[0]]["model_version"]
        new = build_and_publish("light", registry, segments=TEST_SEGMENTS, seed=123)
        assert new.version != old_version
        reload = client.post("/v1/admin/reload", json={"version": "latest"}, headers=ADMIN)
        assert reload.json() == {"model_version": new.version, "propagated": True}
        for key in KEYS[:50]:
            body = client.get(f"/v1/predict/{key}").json()
            assert body["model_version"] == new.version
            assert body["source"] == "model"  # nothing cached for the new version yet
            assert body["prediction"] != old[key]["prediction"]
        set_latest(registry, "traffic-light", old_version)


def test_errors_are_json_4xx(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="dynamic", max_keys_per_request=3)) as (_, client):
        cases = [
            (client.get("/v1/predict/abc"), 422, "malformed_key"),
            (client.get("/v1/predict/01:2"), 422, "malformed_key"),
            (client.get("/v1/predict/1:168"), 404, "unknown_key"),
            (client.post("/v1/predict", json={"keys": []}), 422, "invalid_request"),
            (client.post("/v1/predict", json={"keys": ["1:1"] * 4}), 413, "too_many_keys"),
            (client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}), 422, "invalid_request"),
            (client.post("/v1/predict", json={"keys": [1, 2]}), 422, "invalid_request"),
            (client.get("/nope"), 404, "not_found"),
            (client.delete("/v1/predict/1:1"), 405, "method_not_allowed"),
        ]
        for response, status, code in cases:
            assert response.status_code == status, response.text
            assert response.json()["error"] == code and response.json()["detail"]


def test_admin_requires_token(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid")) as (_, client):
        assert client.post("/v1/admin/flush", json={}).status_code == 401
        assert client.post("/v1/admin/flush", json={}, headers={"Authorization": "Bearer nope"}).status_code == 403
        policy = client.put("/v1/admin/policy", json={"l1_size": 5, "admission": "after:2"}, headers=ADMIN)
        assert policy.json()["policy"]["l1_size"] == 5 and policy.json()["policy"]["admission"] == "after:2"
    with running(make_settings(mode="hybrid", admin_token=None)) as (_, client):
        disabled = client.post("/v1/admin/flush", json={}, headers=ADMIN)
        assert disabled.status_code == 403 and disabled.json()["error"] == "admin_disabled"


def test_prometheus_counters_move(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid")) as (_, client):
        for _ in range(3):
            client.get("/v1/predict/2:2")
        text = client.get("/metrics").text
        assert 'hybridserve_cache_lookups_total{mode="hybrid",result="hit",tier="l1"} 2.0' in text
        assert 'hybridserve_request_seconds_count{mode="hybrid",source="l1"} 2.0' in text
        assert 'hybridserve_model_rows_total{mode="hybrid"} 1.0' in text


def test_static_redis_unreachable_is_503_within_timeout(make_settings, redis_server) -> None:  # type: ignore[no-untyped-def]
    from loadtests.harness.redis_server import free_port

    settings = make_settings(mode="static", redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)
    with running(settings) as (_, client):
        start = time.monotonic()
        response = client.get("/v1/predict/1:1")
        assert response.status_code == 503 and response.json()["error"] in {"not_ready", "redis_unavailable"}
        assert time.monotonic() - start < 5  # bounded by the Redis timeout, never a hang
        assert client.get("/readyz").status_code == 503


def test_fastapi_native_telemetry_only_when_asked(make_settings) -> None:  # type: ignore[no-untyped-def]
    """Off by default (its per-request provider check is hot-path cost); HYBRIDSERVE_OTEL=true keeps FastAPI's defaults."""
    from serving.app import create_app

    off, on = create_app(make_settings(mode="dynamic")), create_app(make_settings(mode="dynamic", otel=True))
    assert not any(off._telemetry[k] for k in ("tracing", "metrics", "logs"))
    assert all(on._telemetry[k] for k in ("tracing", "metrics", "logs"))
