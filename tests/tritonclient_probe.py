"""Drive a server with the real ``tritonclient.http`` client and print what it got as JSON.

Run as a script by tests/test_v2.py (``python tests/tritonclient_probe.py URL MODEL ROWS KEY...``), never
imported there: tritonclient runs on gevent, which must stay out of the pytest process.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def _keys_input(keys: list[str], binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("key", [len(keys)], "BYTES")
    tensor.set_data_from_numpy(np.array(keys, dtype=np.object_), binary_data=binary)
    return tensor


def _infer(client: httpclient.InferenceServerClient, model: str, keys: list[str], binary: bool, version: str = "") -> dict[str, Any]:
    # binary=True is tritonclient's default path (binary tensor extension both ways, no outputs
    # named); binary=False names the output and asks for JSON.
    outputs = None if binary else [httpclient.InferRequestedOutput("prediction", binary_data=False)]
    result = client.infer(model, [_keys_input(keys, binary)], model_version=version, outputs=outputs)
    response = result.get_response()
    return {"values": [float(v) for v in result.as_numpy("prediction")],
            "model_version": response["model_version"], "source": response["parameters"]["source"]}


def _error(call: Any) -> dict[str, Any]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": None, "message": "no error"}


def _features(client: httpclient.InferenceServerClient, model: str, rows: np.ndarray) -> dict[str, Any]:
    tensor = httpclient.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows.astype(np.float32))
    try:
        result = client.infer(model, [tensor])
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "200", "values": [float(v) for v in result.as_numpy("prediction")]}


def main(url: str, model: str, keys: list[str], rows: np.ndarray) -> dict[str, Any]:
    """Everything the test compares, from one client session."""
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        metadata = client.get_model_metadata(model)
        version = metadata["versions"][0]
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "server": client.get_server_metadata(),
            "model": metadata,
            "binary": _infer(client, model, keys, binary=True),
            "json": _infer(client, model, keys, binary=False),
            "versioned": _infer(client, model, keys, binary=False, version=version),
            "wrong_version": _error(lambda: client.infer(model, [_keys_input(keys, False)], model_version="0" * 12)),
            "wrong_model": _error(lambda: client.infer("no-such-model", [_keys_input(keys, False)])),
            "features": _features(client, model, rows),
        }
    finally:
        client.close()


if __name__ == "__main__":
    # argv: URL MODEL ROWS_JSON KEY... (ROWS_JSON: the feature rows of the keys, as a JSON list)
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[4:], np.array(json.loads(sys.argv[3])))))
