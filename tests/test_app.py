"""serving/app.py + service.py over real HTTP, a real Redis and real ONNX models."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from models.data import all_keys
from models.registry import set_latest
from models.publish import build_and_publish
from serving.precompute import precompute
from tests.conftest import ADMIN, TEST_SEGMENTS, running

KEYS = all_keys(TEST_SEGMENTS)


def _static_ready(settings) -> None:  # type: ignore[no-untyped-def]
    precompute(settings, progress=False)


@pytest.mark.parametrize("mode", ["static", "dynamic", "hybrid"])
def test_each_mode_end_to_end(make_settings, mode: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode=mode)
    if mode == "static":
        _static_ready(settings)
    with running(settings) as (_, client):
        body = client.get("/v1/predict/3:17").json()
        assert body["key"] == "3:17" and isinstance(body["prediction"], float)
        assert body["source"] == {"static": "redis", "dynamic": "model", "hybrid": "model"}[mode]
        assert len(body["model_version"]) == 12
        assert client.get("/healthz").json() == {"status": "ok"}
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
        assert outside.json()["error"] == "unknown_key" and "precomputed" in outside.json()["detail"]
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


@pytest.mark.parametrize("profile", ["light", "heavy"])
def test_parity_across_modes(make_settings, profile: str) -> None:  # type: ignore[no-untyped-def]
    sample = random.Random(5).sample(KEYS, 2000)
    results: dict[str, dict[str, float]] = {}
    base = make_settings(model_name=f"traffic-{profile}")
    _static_ready(base)
    for mode in ("static", "dynamic", "hybrid"):
        settings = base.model_copy(update={"mode": mode, "max_keys_per_request": 500})
        with running(settings) as (_, client):
            got: dict[str, float] = {}
            for i in range(0, len(sample), 500):
                for p in client.post("/v1/predict", json={"keys": sample[i : i + 500]}).json()["predictions"]:
                    got[p["key"]] = p["prediction"]
            # single requests too: batch composition must not change a value
            for key in sample[:50]:
                assert client.get(f"/v1/predict/{key}").json()["prediction"] == got[key]
            results[mode] = got
    assert results["static"] == results["dynamic"] == results["hybrid"]


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
