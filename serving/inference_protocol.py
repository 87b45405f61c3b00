"""The Open Inference Protocol (KServe V2) wire format: parse an infer request, render its answer.

Free of routing and of the service (``serving/v2.py`` holds the routes). Both encodings a client
may send are understood: plain JSON, and the binary tensor extension ``tritonclient`` uses by
default (a JSON header of ``Inference-Header-Content-Length`` bytes, then the raw tensors; a BYTES
element is a 4-byte little-endian length and its bytes). The answer comes back in the encoding the
request asked for (``binary_data_output`` or an output's ``binary_data``), JSON otherwise.

This model takes one input: ``key`` (BYTES, keys of the model's key space), or ``features`` (FP32 or
FP64, shape ``[N, F]`` with the model's F features in its order: raw-feature requests), and gives
one output, ``prediction`` (FP64, one per row). Other tensors are refused with a 400 that
says what is supported.

Example::

    request, binary = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
    keys = request_keys(request, binary)
    body, headers = render_infer_response(request, wants_binary(request), "traffic-light", "a16b398c84f1", [812.5], ["l1"])
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from math import prod
from typing import Annotated, Any

import orjson
import numpy as np
from pydantic import BaseModel, Field, StrictInt, ValidationError

from serving.errors import BadRequest, UnsupportedInput
from serving.modes import computes

HEADER_LENGTH = "inference-header-content-length"
KEY_INPUT = "key"
PREDICTION_OUTPUT = "prediction"
PREDICTION_DATATYPE = "FP64"  # the served float32 widened without loss: the same float as /v1/predict
FEATURE_DATATYPES = ("FP32", "FP64")
MAX_DIMS = 4
FEATURES_INPUT = "features"
SUPPORTED = (f"send the keys as one BYTES tensor named '{KEY_INPUT}', e.g. [\"17:42\", \"3:8\"], or feature rows "
             f"as one FP32/FP64 tensor named '{FEATURES_INPUT}' of shape [N, number of features]")
_FLOAT_TYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
_LENGTH = struct.Struct("<I")


class TensorIn(BaseModel):
    """One input tensor of an infer request."""

    name: str = Field(min_length=1, max_length=128)
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1, max_length=MAX_DIMS)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class TensorOut(BaseModel):
    """One requested output of an infer request."""

    name: str = Field(min_length=1, max_length=128)
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """The JSON part of ``POST /v2/models/{name}/infer``."""

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorIn] = Field(min_length=1, max_length=16)
    outputs: list[TensorOut] | None = Field(None, max_length=16)


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The request's JSON header, parsed, and the binary tensor data after it (may be empty)."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)} bytes")
        header, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        return InferRequest.model_validate_json(header), binary
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise BadRequest(f"invalid inference request: {problems}") from None


def request_input(request: InferRequest, binary: bytes) -> list[str] | np.ndarray:
    """The request's one input: keys (a list, in row-major order) or feature rows (a 2-D float64
    array, for a ``features`` tensor)."""
    if len(request.inputs) != 1:
        raise UnsupportedInput(f"{len(request.inputs)} input tensors; this model takes one: {SUPPORTED}")
    tensor = request.inputs[0]
    if tensor.datatype in FEATURE_DATATYPES and tensor.name == FEATURES_INPUT:
        return _feature_rows(tensor, binary)
    return request_keys(request, binary)


def _feature_rows(tensor: TensorIn, binary: bytes) -> np.ndarray:
    """A ``features`` tensor as rows: shape [N, F] (or [F], one row), JSON numbers or raw bytes."""
    shape = tensor.shape if len(tensor.shape) == 2 else [1, *tensor.shape] if len(tensor.shape) == 1 else None
    if shape is None or 0 in shape:
        raise BadRequest(f"input '{FEATURES_INPUT}' must have shape [N, F] with N, F > 0, got {tensor.shape}")
    if "binary_data_size" in tensor.parameters:
        raw = _binary_part(tensor, binary)
        dtype = _FLOAT_TYPES[tensor.datatype]
        if len(raw) != prod(shape) * dtype.itemsize:
            raise BadRequest(f"input '{FEATURES_INPUT}' of shape {tensor.shape} needs {prod(shape) * dtype.itemsize} bytes, got {len(raw)}")
        return np.frombuffer(raw, dtype=dtype).astype(np.float64).reshape(shape)
    values = np.asarray(tensor.data, dtype=object).reshape(-1) if isinstance(tensor.data, list) else None
    if values is None or len(values) != prod(shape) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.tolist()
    ):
        raise BadRequest(f"input '{FEATURES_INPUT}' needs {prod(shape)} numbers as its data (shape {tensor.shape})")
    return np.array(values.tolist(), dtype=np.float64).reshape(shape)


def request_keys(request: InferRequest, binary: bytes) -> list[str]:
    """The keys of the request's one input, in tensor (row-major) order."""
    if len(request.inputs) != 1:
        raise UnsupportedInput(f"{len(request.inputs)} input tensors; this model takes one: {SUPPORTED}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES" or tensor.name != KEY_INPUT:
        raise UnsupportedInput(f"input {tensor.name!r} of {tensor.datatype} is not supported; {SUPPORTED}")
    if "binary_data_size" in tensor.parameters:
        keys = _decode_bytes(_binary_part(tensor, binary))
    else:
        keys = _flatten_strings(tensor.data)
    if len(keys) != prod(tensor.shape):
        raise BadRequest(f"input '{KEY_INPUT}' has shape {tensor.shape} but {len(keys)} elements")
    if not keys:
        raise BadRequest(f"input '{KEY_INPUT}' is empty")
    return keys


def _binary_part(tensor: TensorIn, binary: bytes) -> bytes:
    size = tensor.parameters["binary_data_size"]
    # One input, so its data is all of the binary part: no offsets to track, nothing may trail.
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise BadRequest(f"binary_data_size {size!r} of input '{tensor.name}' does not match the {len(binary)} bytes sent")
    return binary


def _decode_bytes(raw: bytes) -> list[str]:
    """A serialized BYTES tensor: each element a little-endian uint32 length, then its bytes."""
    out, pos = [], 0
    while pos < len(raw):  # every pass advances at least 4 bytes
        if pos + _LENGTH.size > len(raw):
            raise BadRequest("truncated BYTES tensor (an element length is cut off)")
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += _LENGTH.size
        if pos + length > len(raw):
            raise BadRequest("truncated BYTES tensor (an element is shorter than its length)")
        try:
            out.append(raw[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest("a BYTES element is not UTF-8 text") from None
        pos += length
    return out


def _flatten_strings(data: Any) -> list[str]:
    """JSON tensor data (flat or nested row-major, at most MAX_DIMS deep) as a flat list of strings."""
    level, depth = data, 0
    while isinstance(level, list) and level and all(isinstance(x, list) for x in level):
        depth += 1
        if depth >= MAX_DIMS:
            raise BadRequest(f"tensor data nested deeper than {MAX_DIMS} dimensions")
        level = [x for row in level for x in row]
    if not isinstance(level, list) or not all(isinstance(x, str) for x in level):
        raise BadRequest(f"input '{KEY_INPUT}' needs its data as a list of strings")
    return level


def wants_binary(request: InferRequest) -> bool:
    """Whether the answer goes out in the binary tensor extension (the client asked for it)."""
    for output in request.outputs or ():
        if output.name != PREDICTION_OUTPUT:
            raise BadRequest(f"unknown output {output.name!r}; this model has one output, '{PREDICTION_OUTPUT}' ({PREDICTION_DATATYPE})")
    if request.outputs:
        return any(o.parameters.get("binary_data") is True for o in request.outputs)
    return request.parameters.get("binary_data_output") is True


def render_infer_response(
    request: InferRequest, binary: bool, model_name: str, model_version: str, values: Sequence[float], sources: Sequence[str]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers, binary (see :func:`wants_binary`) or JSON.
    ``parameters.source`` lists each key's tier, comma-separated, in key order."""
    given = request.inputs[0]
    # One prediction per key (the keys' own shape), or per feature row ([N]).
    shape = [len(values)] if given.name == FEATURES_INPUT and given.datatype in FEATURE_DATATYPES else given.shape
    output: dict[str, Any] = {"name": PREDICTION_OUTPUT, "datatype": PREDICTION_DATATYPE, "shape": shape}
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version,
                            "parameters": {"source": ",".join(sources)}, "outputs": [output]}
    if request.id is not None:
        head["id"] = request.id
    if not binary:
        output["data"] = list(values)
        return orjson.dumps(head), {"content-type": "application/json"}
    raw = struct.pack(f"<{len(values)}d", *values)
    output["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps(head)
    return header + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def model_metadata(name: str, version: str, mode: str, card: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the tensors this model takes and gives, plus what its card says."""
    return {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": KEY_INPUT, "datatype": "BYTES", "shape": [-1]}]
        + ([{"name": FEATURES_INPUT, "datatype": "FP32", "shape": [-1, len(card.get("features", []))]}] if computes(mode) else []),
        "outputs": [{"name": PREDICTION_OUTPUT, "datatype": PREDICTION_DATATYPE, "shape": [-1]}],
        "parameters": {"mode": mode, "key_format": card.get("key_format", ""), "target": card.get("target", ""),
                       "features": list(card.get("features", []))},
    }
