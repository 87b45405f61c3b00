"""The published API contract: FastAPI's generated OpenAPI schema, corrected where it describes
FastAPI's defaults instead of this server (schemathesis checks every answer against it).

- Every error answer is ``{"error": code, "detail": text}`` (:data:`ERROR_SCHEMA`): documented for
  the statuses each operation answers (:data:`ERRORS_BY_PATH`) and as ``default`` for the rest (the
  connection guard's 408/431/503, 405), replacing FastAPI's own 422 list;
- the key format of the served key space (pattern, length) on ``/v1/predict/{key}`` and on the
  batch's items, and the batch size limit, so a request the schema allows is never refused as malformed;
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
from serving.keyspace import FORBIDDEN_KEY_CHARACTERS, GRID_KEY_PATTERN, GRID_MAX_LENGTH, MAX_KEY_LENGTH, key_space_for
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


def key_schema(settings: Settings) -> dict[str, Any]:
    """The key format of the configured model's key space (its card says grid or table); the
    general key rule when the registry does not have it (a static server without a registry)."""
    try:
        artifact = resolve(settings.registry, settings.model_name, settings.model_version)
        kind = key_space_for(artifact.card(), artifact.path).kind
    except (RegistryError, OSError, ValueError):
        return ANY_KEY_SCHEMA
    return GRID_KEY_SCHEMA if kind == "grid" else ANY_KEY_SCHEMA


def _document_keys(schema: dict[str, Any], settings: Settings) -> None:
    key = key_schema(settings)
    for parameter in schema["paths"]["/v1/predict/{key}"]["get"].get("parameters", []):
        if parameter["name"] == "key":
            parameter["schema"] = {**key, "title": "Key"}
    keys = schema["components"]["schemas"]["PredictRequest"]["properties"]["keys"]
    keys["items"] = key
    keys["maxItems"] = settings.max_keys_per_request


def _document_special_bodies(paths: dict[str, Any]) -> None:
    paths["/metrics"]["get"]["responses"]["200"] = {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    readiness = {"application/json": {"schema": {"type": "object", "required": ["ready"]}}}
    readyz = paths["/readyz"]["get"]["responses"]
    readyz["200"] = {"description": "Ready: {ready: true, mode, model_version, redis, degraded, breaker}", "content": readiness}
    readyz["503"] = {"description": "Not ready: the same body with ready false", "content": readiness}
