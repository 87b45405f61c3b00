"""serving/instances.py and POST /v1/predict {"instances": [...]}: raw feature vectors validated against
the card's schema, computed by the model, cached by hybrid under their hash, refused by static."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from serving.errors import InvalidInstance
from serving.instances import INSTANCE_KEY_PREFIX, FeatureSchema, FeatureSpec, instance_key
from serving.model import LoadedModel
from serving.precompute import precompute
from tests.helpers import ADMIN, running

SCHEMA = FeatureSchema([FeatureSpec("age", "int", 18, 80), FeatureSpec("spend", "float", 0.0, 100.0)])


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        ({"age": 30}, r"instances\[0\]: feature 'spend' is missing"),
        ({"age": 30, "spend": 1.0, "debt": 2}, r"unknown feature 'debt'"),
        ({"age": "30", "spend": 1.0}, r"feature 'age' must be a number, got str"),
        ({"age": True, "spend": 1.0}, r"feature 'age' must be a number, got bool"),
        ({"age": None, "spend": 1.0}, r"feature 'age' must be a number, got NoneType"),
        ({"age": 30, "spend": math.nan}, r"feature 'spend' must be finite"),
        ({"age": 30, "spend": math.inf}, r"feature 'spend' must be finite"),
        ({"age": 30, "spend": 1e300}, r"feature 'spend' must be finite in float32"),
        ([30, 1.0], r"an instance is an object"),
    ],
)
def test_schema_refuses_naming_instance_feature_and_rule(instance: object, message: str) -> None:
    with pytest.raises(InvalidInstance, match=message):
        SCHEMA.rows([instance])


def test_schema_rows_in_model_order_and_out_of_range_counted() -> None:
    rows, outside = SCHEMA.rows([{"spend": 50.0, "age": 30}, {"age": 95, "spend": -1.0}])
    assert rows.dtype == np.float32 and rows.tolist() == [[30.0, 50.0], [95.0, -1.0]]
    assert outside == ["age", "spend"]


def test_instance_keys_are_canonical_hashes_no_user_key_can_equal() -> None:
    zero, negative_zero = np.array([0.0, 1.0], dtype=np.float32), np.array([-0.0, 1.0], dtype=np.float32)
    assert instance_key(zero) == instance_key(negative_zero) != instance_key(np.array([0.0, 2.0], dtype=np.float32))
    assert instance_key(zero).startswith(INSTANCE_KEY_PREFIX) and " " in INSTANCE_KEY_PREFIX  # the key rule forbids spaces


def _instance_of(registry: Path, key: str) -> dict[str, float]:
    model = LoadedModel.from_registry(registry, "traffic-light")
    row = model.features.rows([model.features.index(key)])[0]
    return {name: float(value) for name, value in zip(model.card["features"], row.tolist())}


@pytest.mark.parametrize("mode", ["dynamic", "hybrid"])
def test_an_instance_gets_the_same_float_as_its_key(make_settings, registry: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    instance = _instance_of(registry, "3:7")
    with running(make_settings(mode=mode)) as (_, client):
        by_key = client.get("/v1/predict/3:7").json()["prediction"]
        first = client.post("/v1/predict", json={"instances": [instance, instance]}).json()["predictions"]
        assert [p["prediction"] for p in first] == [by_key, by_key] and first[0]["source"] == "model"
        assert "key" not in first[0] and first[0]["model_version"]
        again = client.post("/v1/predict", json={"instances": [instance]}).json()["predictions"][0]
        assert again["prediction"] == by_key
        if mode == "hybrid":  # cached under its hash: L1, then Redis once L1 is flushed
            assert again["source"] == "l1"
            client.post("/v1/admin/flush", json={"l1": True}, headers=ADMIN)
            assert client.post("/v1/predict", json={"instances": [instance]}).json()["predictions"][0]["source"] == "redis"
        shifted = dict(instance, lanes=instance["lanes"] + 50)  # far outside training: served and counted
        assert client.post("/v1/predict", json={"instances": [shifted]}).status_code == 200
        metrics = client.get("/metrics").text
        assert 'hybridserve_feature_out_of_range_total{feature="lanes"' in metrics


def test_static_refuses_instances_with_a_clear_422(make_settings, registry: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="static")
    precompute(settings, progress=False)
    with running(settings) as (_, client):
        answer = client.post("/v1/predict", json={"instances": [_instance_of(registry, "3:7")]})
        assert answer.status_code == 422 and answer.json()["error"] == "invalid_instance"
        assert "cold start" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("body", "code"),
    [({"keys": ["1:1"], "instances": [{"a": 1}]}, "invalid_request"), ({}, "invalid_request"),
     ({"instances": []}, "invalid_request"), ({"instances": [{"lanes": 1}]}, "invalid_instance")],
)
def test_bad_instance_requests_are_422(make_settings, body: dict[str, object], code: str) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="dynamic")) as (_, client):
        answer = client.post("/v1/predict", json=body)
        assert answer.status_code == 422 and answer.json()["error"] == code, answer.text
