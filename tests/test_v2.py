"""serving/v2.py: the Open Inference Protocol routes, driven by the real tritonclient over loopback.

tritonclient runs on gevent, so it runs in a subprocess (tests/tritonclient_probe.py) that prints
what it got; gevent never enters the pytest process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.model import LoadedModel
from tests.helpers import running

PROBE = Path(__file__).with_name("tritonclient_probe.py")
PROBE_TIMEOUT_S = 60
KEYS = ["3:17", "0:0", "3:17", "19:167"]
FIRST_SOURCE = {"static": "redis", "dynamic": "model", "hybrid": "model"}
SECOND_SOURCE = {"static": "redis", "dynamic": "model", "hybrid": "l1"}


def _rows(registry: Path, keys: list[str]) -> list[list[float]]:
    """The feature rows of ``keys`` (what a raw-feature request for them sends)."""
    model = LoadedModel.from_registry(registry, "traffic-light")
    return model.features.rows([model.features.index(k) for k in keys]).tolist()  # type: ignore[no-any-return]


def _probe(url: str, model: str, keys: list[str], rows: list[list[float]]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(PROBE), url, model, json.dumps(rows), *keys], capture_output=True, text=True,
                          timeout=PROBE_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["static", "dynamic", "hybrid"])
def test_tritonclient_gets_the_v1_floats(ready_settings, mode: str) -> None:  # type: ignore[no-untyped-def]
    settings = ready_settings(mode)
    with running(settings) as (server, client):
        got = _probe(server.url, settings.model_name, KEYS, _rows(settings.registry, KEYS))
        v1 = client.post("/v1/predict", json={"keys": KEYS}).json()
    expected = [p["prediction"] for p in v1["predictions"]]
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["server"]["name"] == "hybridserve" and "binary_tensor_data" in got["server"]["extensions"]
    assert got["model"]["versions"] == [v1["model_version"]]
    assert got["model"]["inputs"][0]["datatype"] == "BYTES" and "lanes" in got["model"]["parameters"]["features"]
    for call in ("binary", "json", "versioned"):
        assert got[call]["values"] == expected, call  # the same floats, exactly
        assert got[call]["model_version"] == v1["model_version"]
    assert got["binary"]["source"] == ",".join([FIRST_SOURCE[mode]] * len(KEYS))
    assert got["json"]["source"] == ",".join([SECOND_SOURCE[mode]] * len(KEYS))
    assert got["wrong_version"]["status"] == got["wrong_model"]["status"] == "404"
    if mode == "static":  # a precomputed table cannot answer feature rows it has never seen
        assert got["features"]["status"] == "422" and got["features"]["message"] == "invalid_instance"
    else:  # the same rows as features: the same floats as the keys
        assert got["features"]["values"] == expected


def test_the_server_imports_no_client_side_code() -> None:
    """The V2 routes are server code: `import serving.app` pulls in neither tritonclient nor gevent."""
    code = "import json, sys, serving.app; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True)
    loaded = set(json.loads(done.stdout))
    assert not loaded & {"tritonclient", "gevent", "geventhttpclient", "locust", "sklearn", "skl2onnx", "matplotlib",
                         "libcachesim"}


def test_feature_tensor_of_the_wrong_width_names_the_features(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="dynamic")
    body = {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}
    with running(settings) as (_, client):
        response = client.post(f"/v2/models/{settings.model_name}/infer", json=body)
        other = client.post(f"/v2/models/{settings.model_name}/infer",
                            json={"inputs": [{"name": "rows", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    assert "2 columns; the model takes 11" in response.json()["detail"] and "lanes" in response.json()["detail"]
    assert other.status_code == 400 and other.json()["error"] == "unsupported_input"
    assert "BYTES tensor named 'key'" in other.json()["detail"] and "'features'" in other.json()["detail"]


def test_static_without_table_is_not_ready(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="static")
    with running(settings) as (_, client):
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        infer = client.post(f"/v2/models/{settings.model_name}/infer",
                            json={"inputs": [{"name": "key", "shape": [1], "datatype": "BYTES", "data": ["1:1"]}]})
        assert infer.status_code == 503 and infer.json()["error"] == "table_unavailable"


def test_bad_requests_are_4xx(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="dynamic", max_keys_per_request=2)
    path = f"/v2/models/{settings.model_name}/infer"

    def keys(data: Any, shape: list[int]) -> dict[str, Any]:
        return {"inputs": [{"name": "key", "shape": shape, "datatype": "BYTES", "data": data}]}

    cases = [
        (keys(["1:1", "1:2", "1:3"], [3]), 413, "too_many_keys"),
        (keys(["1:1"], [2]), 400, "bad_request"),  # shape and data disagree
        (keys([], [0]), 400, "bad_request"),
        (keys([1, 2], [2]), 400, "bad_request"),
        (keys(["nope"], [1]), 422, "malformed_key"),
        (keys(["999:1"], [1]), 404, "unknown_key"),
        ({**keys(["1:1"], [1]), "outputs": [{"name": "other"}]}, 400, "bad_request"),
        ({"inputs": []}, 400, "bad_request"),
    ]
    with running(settings) as (_, client):
        for body, status, code in cases:
            response = client.post(path, json=body)
            assert (response.status_code, response.json()["error"]) == (status, code), body
        nested = client.post(path, json=keys([["1:1"], ["1:2"]], [2, 1])).json()
        assert nested["outputs"][0]["shape"] == [2, 1] and len(nested["outputs"][0]["data"]) == 2
        garbage = client.post(path, content=b"{}xx", headers={"Inference-Header-Content-Length": "99"})
        assert garbage.status_code == 400 and garbage.json()["error"] == "bad_request"
