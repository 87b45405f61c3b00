"""The published API contract: FastAPI's generated OpenAPI schema, corrected where it describes
FastAPI's defaults instead of this server (schemathesis checks every answer against it).

- Every error answer is ``{"error": code, "detail": text}`` (:data:`ERROR_SCHEMA`): documented for
  the statuses each operation answers (:data:`ERRORS_BY_PATH`) and as ``default`` for the rest (the
  connection guard's 408/431/503, 405), replacing FastAPI's own 422 list;
- the key format of the served key space (pattern, length) on ``/v1/predict/{key}``, and the batch
  body as exactly one of ``keys`` or ``instances`` (the card's features; not in static), with the
  batch size limit, so a request the schema allows is never refused as malformed;
- ``/metrics`` as Prometheus text, ``/readyz``'s 503 with the readiness body;
- the admin operations' bearer token as a security scheme.

Example::

    install_openapi(app, settings)
    app.openapi()["components"]["schemas"]["Error"]
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from models.registry import RegistryError, resolve
from models.keyspace import FORBIDDEN_KEY_CHARACTERS, GRID_KEY_PATTERN, GRID_MAX_LENGTH, MAX_KEY_LENGTH, KeySpace, key_space_for
from serving.instances import FLOAT32_MAX
from serving.modes import computes
from serving.settings import Settings

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "detail"],
    "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "Machine-readable code, e.g. malformed_key", "example": "malformed_key"},
        "detail": {"type": "string", "description": "What was wrong, for a person"},
    },
}
GRID_KEY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": f"^{GRID_KEY_PATTERN}$",
    "minLength": 3,
    "maxLength": GRID_MAX_LENGTH,
    "description": "'<segment>:<hour_of_week>', canonical integers",
    "example": "17:42",
}
ANY_KEY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": f"^[^{FORBIDDEN_KEY_CHARACTERS}]+$",
    "minLength": 1,
    "maxLength": MAX_KEY_LENGTH,
    "description": "A key of the model's key space: no whitespace or control characters, none of * ? [ ] /",
}
ERROR_MEANINGS = {
    401: "No bearer token (`unauthorized`)",
    403: "Wrong token (`forbidden`) or admin endpoints disabled (`admin_disabled`)",
    404: "Key outside the key space or not precomputed (`unknown_key`), or unknown model version (`unknown_version`)",
    413: "More keys than allowed (`too_many_keys`) or body too large (`body_too_large`)",
    422: "Malformed key (`malformed_key`) or invalid request body (`invalid_request`)",
    503: "Redis or the served state cannot answer now (`redis_unavailable`, `not_ready`)",
}
ERRORS_BY_PATH: dict[str, tuple[int, ...]] = {
    "/v1/predict/{key}": (404, 422, 503),
    "/v1/predict": (404, 413, 422, 503),
    "/v1/admin/flush": (401, 403, 413, 422, 503),
    "/v1/admin/policy": (401, 403, 413, 422),
    "/v1/admin/reload": (401, 403, 404, 413, 422, 503),
    "/v1/admin/routes": (401, 403, 404, 413, 422),
}
"""Error statuses each operation answers, besides ``default`` (any path not listed: none)."""
ADMIN_PREFIX = "/v1/admin/"


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) return the corrected schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            correct(generate(), settings)  # FastAPI caches the dict it returns: corrected once, in place
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def correct(schema: dict[str, Any], settings: Settings) -> None:
    """Apply this module's corrections to a schema FastAPI generated."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for fastapi_default in ("HTTPValidationError", "ValidationError"):
        schemas.pop(fastapi_default, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {"adminToken": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            _document_errors(path, operation)
            if path.startswith(ADMIN_PREFIX):
                operation["security"] = [{"adminToken": []}]
    _document_keys(schema, settings)
    _document_special_bodies(schema["paths"])


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _document_errors(path: str, operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    responses.pop("422", None)  # FastAPI's list of validation problems: this server never sends it
    for status in ERRORS_BY_PATH.get(path, ()):
        responses[str(status)] = _error_response(ERROR_MEANINGS[status])
    responses["default"] = _error_response("Any other error, same body (e.g. 405, 408, 431, 503 too_many_connections)")


def _served_card(settings: Settings) -> tuple[dict[str, Any], KeySpace] | None:
    """The configured version's card and key space; None when the registry does not have it (a
    static server deployed without the registry)."""
    try:
        artifact = resolve(settings.registry, settings.model_name, settings.model_version)
        card = artifact.card()
        return card, key_space_for(card, artifact.path)
    except (RegistryError, OSError, ValueError):
        return None


def key_schema(space: KeySpace | None) -> dict[str, Any]:
    """The key format of the served key space: the grid's pattern, else the general key rule."""
    return GRID_KEY_SCHEMA if space is not None and space.kind == "grid" else ANY_KEY_SCHEMA


def instance_schema(card: dict[str, Any]) -> dict[str, Any]:
    """A raw-feature instance: every feature of the model as a number, nothing else."""
    features = list(card["features"])
    return {"type": "object", "required": features, "additionalProperties": False,
            # Features are served as float32: a finite JSON number past its range is refused.
            "properties": {name: {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX} for name in features}}


def _document_keys(schema: dict[str, Any], settings: Settings) -> None:
    served = _served_card(settings)
    key = key_schema(served[1] if served else None)
    for parameter in schema["paths"]["/v1/predict/{key}"]["get"].get("parameters", []):
        if parameter["name"] == "key":
            parameter["schema"] = {**key, "title": "Key"}
    # "keys" or "instances", exactly one: pydantic's schema cannot say so; static answers keys only.
    limit = settings.max_keys_per_request
    bodies = [_one_field_body("keys", key, limit, "Keys of the model's key space, answered in order")]
    if served is not None and computes(settings.mode):
        bodies.append(_one_field_body("instances", instance_schema(served[0]), limit,
                                      "Feature vectors as objects {feature: number}, every feature of the model"))
    schema["components"]["schemas"]["PredictRequest"] = {"title": "PredictRequest", "oneOf": bodies}


def _one_field_body(field: str, items: dict[str, Any], limit: int, description: str) -> dict[str, Any]:
    array = {"type": "array", "minItems": 1, "maxItems": limit, "items": items, "description": description}
    return {"type": "object", "required": [field], "additionalProperties": False, "properties": {field: array}}


def _document_special_bodies(paths: dict[str, Any]) -> None:
    paths["/metrics"]["get"]["responses"]["200"] = {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    readiness = {"application/json": {"schema": {"type": "object", "required": ["ready"]}}}
    readyz = paths["/readyz"]["get"]["responses"]
    readyz["200"] = {"description": "Ready: {ready: true, mode, model_version, redis, degraded, breaker}", "content": readiness}
    readyz["503"] = {"description": "Not ready: the same body with ready false", "content": readiness}
