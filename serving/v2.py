"""Open Inference Protocol (KServe V2) REST routes beside our own ``/v1`` API.

Clients written for Triton, KServe or MLServer (``tritonclient.http``, KServe's client, load tools)
can point at hybridserve unchanged: server and model metadata, liveness and readiness, and
``POST /v2/models/{name}[/versions/{version}]/infer``. Inference takes a BYTES tensor of keys and
goes through the same tiers as ``/v1/predict``; the response carries the model version and each
key's source (``parameters.source``). The wire format lives in :mod:`serving.inference_protocol`;
these routes only parse, delegate to the service and render. Errors are :mod:`serving.errors`,
mapped by the app like every other route.

Example::

    app.include_router(serving.v2.router)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from models.registry import RegistryError, resolve
from serving import inference_protocol as oip
from serving.errors import BadRequest, NotReady, TooManyKeys, UnknownVersion
from serving.service import PredictionService
from serving.settings import Settings

SERVER_NAME = "hybridserve"
EXTENSIONS = ["binary_tensor_data"]
MAX_CARD_CACHE = 8


def _infer_body_schema() -> dict[str, Any]:
    """The JSON request schema for /docs and the fuzz tests (the route reads the raw body itself,
    because a binary-extension body is not JSON)."""
    schema = oip.InferRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"])
_INFER_DOC = _infer_body_schema()


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _service(request: Request) -> PredictionService:
    return request.app.state.service  # type: ignore[no-any-return]


def _check_name(settings: Settings, name: str) -> None:
    if name != settings.model_name:
        raise UnknownVersion(f"model {name!r} is not served here; this server serves {settings.model_name!r}")


def _check_version(service: PredictionService, name: str, asked: str | None, served: str) -> None:
    """404 unless ``asked`` is served: the one served version, or one of a traffic split's."""
    split = service.routes.versions
    if asked is not None and asked != served and asked not in split:
        shown = f"the versions of its traffic split ({', '.join(split)})" if split else f"the served one ({served})"
        raise UnknownVersion(f"version {asked!r} of {name!r} is not served here; served: {shown}")


@lru_cache(maxsize=MAX_CARD_CACHE)
def _card(registry: Path, name: str, version: str) -> dict[str, Any]:
    """A version's model card; versions are content hashes, so a cached card never goes stale."""
    try:
        return resolve(registry, name, version).card()
    except RegistryError as exc:
        raise UnknownVersion(str(exc)) from exc


async def _served_version(request: Request) -> str:
    """The version being served now; :class:`NotReady` while there is none."""
    ready, detail = await _service(request).readiness()
    if not ready or not detail.get("model_version"):
        raise NotReady(f"not ready: {', '.join(f'{k}={v}' for k, v in detail.items())}")
    return str(detail["model_version"])


@router.get("")
async def server_metadata(request: Request) -> Response:
    """Server metadata: name, version and the protocol extensions understood."""
    return _json({"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS})


@router.get("/health/live")
async def server_live() -> Response:
    """Liveness: the process answers."""
    return _json({"live": True})


@router.get("/health/ready")
async def server_ready(request: Request) -> Response:
    """Readiness, as ``/readyz``: 200 when the served model (or static table) can answer, else 503."""
    await _served_version(request)
    return _json({"ready": True})


async def _model_ready(request: Request, name: str, version: str | None) -> Response:
    _check_name(_service(request).settings, name)
    _check_version(_service(request), name, version, await _served_version(request))
    return _json({"name": name, "ready": True})


@router.get("/models/{name}/ready")
async def model_ready(name: str, request: Request) -> Response:
    """200 when the model can answer, 503 when not, 404 for a model this server does not serve."""
    return await _model_ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(name: str, version: str, request: Request) -> Response:
    """As ``/models/{name}/ready``, and 404 unless ``version`` is the served one."""
    return await _model_ready(request, name, version)


async def _model_metadata(request: Request, name: str, version: str | None) -> Response:
    settings = _service(request).settings
    _check_name(settings, name)
    served = await _served_version(request)
    _check_version(_service(request), name, version, served)
    shown = version or served
    return _json(oip.model_metadata(name, shown, settings.mode, _card(settings.registry, name, shown)))


@router.get("/models/{name}")
async def model_metadata(name: str, request: Request) -> Response:
    """Model metadata: the served version, the input (``key``, BYTES) and output (``prediction``, FP64)
    tensors, and from the model card the key format, target and feature names."""
    return await _model_metadata(request, name, None)


@router.get("/models/{name}/versions/{version}")
async def model_version_metadata(name: str, version: str, request: Request) -> Response:
    """As ``/models/{name}``, and 404 unless ``version`` is the served one."""
    return await _model_metadata(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    service = _service(request)
    settings = service.settings
    _check_name(settings, name)
    infer, binary = oip.parse_infer_request(await request.body(), request.headers.get(oip.HEADER_LENGTH))
    asked = oip.request_input(infer, binary)
    if len(asked) > settings.max_keys_per_request:
        raise TooManyKeys(f"{len(asked)} keys or rows in one request; the limit is {settings.max_keys_per_request}")
    binary_out = oip.wants_binary(infer)  # before any work: an unknown requested output is a 400
    # With a version, the service answers every key by exactly that version (404 unless served);
    # it checks against the routing snapshot the request is answered from, so a reload or a change
    # of routes between a check and the prediction cannot answer from another version.
    if isinstance(asked, list):
        predictions = await service.predict(asked, version)
    else:
        predictions = await service.predict_instances(_instances(service, asked), version)
    served = predictions[0].model_version
    if version is None and len({p.model_version for p in predictions}) > 1:
        served = ",".join(dict.fromkeys(p.model_version for p in predictions))  # a split answered: every version
    body, headers = oip.render_infer_response(
        infer, binary_out, name, served, [p.prediction for p in predictions], [p.source for p in predictions]
    )
    return Response(body, headers=headers)


def _instances(service: PredictionService, rows: Any) -> list[dict[str, float]]:
    """Feature rows as the instances /v1/predict takes, named by the served model's features (in
    its order), so both protocols go through the same schema checks."""
    schema = service.state.schema
    if schema is None:
        return [{}] * len(rows)  # no model: predict_instances answers that the mode cannot compute
    if rows.shape[1] != len(schema.names):
        raise BadRequest(f"input 'features' has {rows.shape[1]} columns; the model takes {len(schema.names)}: "
                         f"{', '.join(schema.names)}")
    return [dict(zip(schema.names, row)) for row in rows.tolist()]


@router.post("/models/{name}/infer", openapi_extra=_INFER_DOC)
async def infer(name: str, request: Request) -> Response:
    """Predictions for a BYTES tensor of keys (``inputs[0]``, named ``key``), through the same tiers
    as ``/v1/predict``. JSON or the binary tensor extension, answered in the encoding asked for."""
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=_INFER_DOC)
async def infer_version(name: str, version: str, request: Request) -> Response:
    """As ``/models/{name}/infer``, and 404 unless ``version`` is the one served."""
    return await _infer(request, name, version)

