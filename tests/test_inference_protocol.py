"""serving/inference_protocol.py: the V2 wire format, both encodings, and its refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from serving import inference_protocol as oip
from serving.errors import BadRequest, UnsupportedInput


def _bytes_tensor(keys: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(k.encode())) + k.encode() for k in keys)


def _binary_request(keys: list[str], raw: bytes | None = None, **parameters: object) -> tuple[bytes, str]:
    raw = _bytes_tensor(keys) if raw is None else raw
    header = json.dumps({"inputs": [{"name": "key", "shape": [len(keys)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}], "parameters": parameters}).encode()
    return header + raw, str(len(header))


def test_binary_keys_and_binary_answer() -> None:
    body, length = _binary_request(["17:42", "3:8"], binary_data_output=True)
    request, binary = oip.parse_infer_request(body, length)
    assert oip.request_keys(request, binary) == ["17:42", "3:8"]
    assert oip.wants_binary(request)
    out, headers = oip.render_infer_response(request, True, "m", "v1", [1.5, -2.25], ["l1", "model"])
    size = int(headers[oip.HEADER_LENGTH])
    head = json.loads(out[:size])
    assert head["parameters"] == {"source": "l1,model"} and head["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert struct.unpack("<2d", out[size:]) == (1.5, -2.25)


def test_json_answer_keeps_shape_and_id() -> None:
    body = json.dumps({"id": "r1", "inputs": [{"name": "key", "shape": [2, 1], "datatype": "BYTES", "data": [["1:1"], ["1:2"]]}]})
    request, binary = oip.parse_infer_request(body.encode(), None)
    assert oip.request_keys(request, binary) == ["1:1", "1:2"]
    assert not oip.wants_binary(request)
    out, headers = oip.render_infer_response(request, False, "m", "v1", [1.0, 2.0], ["redis", "redis"])
    assert headers == {"content-type": "application/json"}
    assert json.loads(out) == {"id": "r1", "model_name": "m", "model_version": "v1", "parameters": {"source": "redis,redis"},
                               "outputs": [{"name": "prediction", "datatype": "FP64", "shape": [2, 1], "data": [1.0, 2.0]}]}


@pytest.mark.parametrize("raw", [b"\x05\x00\x00\x001:1", b"\x03\x00", b"\x02\x00\x00\x00\xff\xfe"])
def test_broken_bytes_tensors_are_400(raw: bytes) -> None:
    body, length = _binary_request(["x"], raw=raw)
    request, binary = oip.parse_infer_request(body, length)
    with pytest.raises(BadRequest):
        oip.request_keys(request, binary)


def test_binary_size_must_match() -> None:
    body, length = _binary_request(["1:1"])
    request, binary = oip.parse_infer_request(body + b"extra", length)
    with pytest.raises(BadRequest, match="binary_data_size"):
        oip.request_keys(request, binary)


@pytest.mark.parametrize(("name", "datatype", "supported"), [("rows", "FP32", "not supported"), ("key", "INT64", "not supported"),
                                                            ("other", "BYTES", "not supported")])
def test_unsupported_inputs_name_what_is_supported(name: str, datatype: str, supported: str) -> None:
    body = json.dumps({"inputs": [{"name": name, "shape": [1], "datatype": datatype, "data": [1]}]}).encode()
    request, binary = oip.parse_infer_request(body, None)
    with pytest.raises(UnsupportedInput, match=supported) as raised:
        oip.request_input(request, binary)
    assert "BYTES tensor named 'key'" in raised.value.detail and "'features'" in raised.value.detail


def test_feature_rows_from_json_and_binary() -> None:
    rows = np.array([[1.5, 2.0], [3.0, -4.25]], dtype=np.float32)
    as_json = json.dumps({"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP64", "data": rows.tolist()}]}).encode()
    assert oip.request_input(*oip.parse_infer_request(as_json, None)).tolist() == rows.tolist()
    header = json.dumps({"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32",
                                      "parameters": {"binary_data_size": rows.nbytes}}]}).encode()
    got = oip.request_input(*oip.parse_infer_request(header + rows.tobytes(), str(len(header))))
    assert got.tolist() == rows.tolist()
    with pytest.raises(BadRequest, match="needs 4 numbers"):
        oip.request_input(*oip.parse_infer_request(json.dumps(
            {"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}).encode(), None))


def test_header_length_beyond_body_is_400() -> None:
    with pytest.raises(BadRequest, match="does not fit"):
        oip.parse_infer_request(b"{}", "10")
