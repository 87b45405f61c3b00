"""The HTTP layer: routes that parse, delegate to :class:`PredictionService` and render.

Every expected failure is a :class:`serving.errors.ServingError`, mapped to
``{"error": code, "detail": text}`` with its status in one place (:func:`_install_error_handlers`).

Example::

    app = create_app(Settings(mode="hybrid", redis_url="redis://127.0.0.1:6379/0"))
    uvicorn.run(app)
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import logs
from serving.errors import AdminDisabled, BodyTooLarge, Forbidden, InvalidRequest, ServingError, TooManyKeys, Unauthorized
from serving.fast_path import FastPredictLayer
from serving.modes import uses_store
from serving.service import PredictionService
from serving.settings import Settings
from serving.store import build_store
from serving.v2 import router as v2_router

PREDICTION_EXAMPLE = {"key": "17:42", "prediction": 812.5, "source": "l1", "model_version": "a16b398c84f1"}
LIVEZ_BODY = b'{"status":"ok"}'


class JSONBody(Response):
    """JSON via orjson: several times cheaper than the stdlib encoder on the hot path."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, code: str, detail: str) -> JSONBody:
    return JSONBody({"error": code, "detail": detail}, status_code=status)


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict``."""

    model_config = ConfigDict(extra="forbid")
    keys: list[StrictStr] = Field(min_length=1, description="Keys '<segment>:<hour_of_week>', answered in order")


class FlushRequest(BaseModel):
    """Body of ``POST /v1/admin/flush``."""

    model_config = ConfigDict(extra="forbid")
    l1: StrictBool = True
    redis: StrictBool = False


class PolicyRequest(BaseModel):
    """Body of ``PUT /v1/admin/policy``: fields left out keep their value. Values are checked by
    the same rules as the ``HYBRIDSERVE_*`` settings of the same names (one source of truth)."""

    model_config = ConfigDict(extra="forbid")
    l1_size: StrictInt | None = None
    l1_ttl_s: float | None = None
    redis_ttl_s: StrictInt | None = None
    admission: StrictStr | None = Field(None, description="'always' or 'after:N'")


class ReloadRequest(BaseModel):
    """Body of ``POST /v1/admin/reload``."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field("latest", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _error(413, BodyTooLarge.code, f"request body over {self.limit} bytes")(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Callable[[], Awaitable[Message]]:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # An HTTPException, not BodyTooLarge: FastAPI turns any other exception raised while
                # it reads the body into a generic 400, and a chunked body has no content-length.
                raise StarletteHTTPException(413, f"request body over {self.limit} bytes")
            return message

        return counted


def _service(request: Request) -> PredictionService:
    return request.app.state.service  # type: ignore[no-any-return]


def _require_admin(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        raise AdminDisabled("admin endpoints are disabled: set HYBRIDSERVE_ADMIN_TOKEN to enable them")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.encode(), settings.admin_token.get_secret_value().encode()):
        raise Forbidden("wrong admin token")


def _build_service(settings: Settings) -> PredictionService:
    store = build_store(settings) if uses_store(settings.mode) else None
    return PredictionService(settings, store)


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app for ``settings``; the model loads in the lifespan, not at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.configure(settings.log_level)
        service = _build_service(settings)
        await service.start()
        app.state.service = service
        logs.log_event("server_start", mode=settings.mode, model_name=settings.model_name, model_version=_version(service))
        try:
            yield
        finally:
            await service.close()
            logs.log_event("server_stop", mode=settings.mode, model_name=settings.model_name)

    app = FastAPI(title="hybridserve", version="0.1.0", lifespan=lifespan, **_telemetry(settings),
                  description="Static, dynamic and hybrid (cached) serving of one ONNX model.")
    app.state.settings = settings
    if settings.fast_path:
        app.add_middleware(FastPredictLayer, state=app.state)  # added first: the innermost, after every other middleware
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    _install_error_handlers(app)
    _add_prediction_routes(app, settings)
    _add_operation_routes(app)
    _add_admin_routes(app)
    app.include_router(v2_router)  # Open Inference Protocol (KServe V2), serving/v2.py
    return app


def _telemetry(settings: Settings) -> dict[str, Any]:
    """FastAPI's ``telemetry`` argument: its native OpenTelemetry off unless ``settings.otel``.

    FastAPI checks its OpenTelemetry providers on every request, even when none is configured;
    the check showed in the profile of the hot path, and this server exports Prometheus metrics
    and JSON logs of its own. FastAPI releases without native telemetry take no such argument.
    """
    if settings.otel or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Response:
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return _error(InvalidRequest.status, InvalidRequest.code, _validation_detail(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: BodyTooLarge.code}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))


def _validation_detail(errors: Sequence[Any]) -> str:
    """pydantic's errors as one line: ``location: message; ...`` (at most five)."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:5])
    return problems or "invalid request"


async def _predict_one(request: Request, key: str) -> Response:
    [prediction] = await _service(request).predict([key])
    return JSONBody(prediction.as_dict())


async def _predict_one_fast(request: Request) -> Response:
    """``GET /v1/predict/{key}`` as a plain Starlette endpoint: the hot path of every mode."""
    return await _predict_one(request, request.path_params["key"])


def _add_prediction_routes(app: FastAPI, settings: Settings) -> None:
    # The hot route is served by a plain Starlette Route placed first: FastAPI's per-request
    # parameter resolution (solve_dependencies) cost about a quarter of an L1 hit (profiled).
    # The FastAPI route below is never reached for GET; it documents the route in /docs and
    # /openapi.json. Errors take the same handlers either way.
    app.router.routes.insert(0, Route("/v1/predict/{key}", _predict_one_fast, methods=["GET"], include_in_schema=False))

    @app.get("/v1/predict/{key}", responses={200: {"content": {"application/json": {"example": PREDICTION_EXAMPLE}}}})
    async def predict_one(key: str, request: Request) -> Response:
        """Prediction for one key ``<segment>:<hour_of_week>``."""
        return await _predict_one(request, key)

    @app.post("/v1/predict")
    async def predict_many(body: PredictRequest, request: Request) -> Response:
        """Predictions for a batch of keys, in request order: one Redis round trip, one model call."""
        if len(body.keys) > settings.max_keys_per_request:
            raise TooManyKeys(f"{len(body.keys)} keys in one request; the limit is {settings.max_keys_per_request}")
        predictions = await _service(request).predict(body.keys)
        version = predictions[0].model_version
        return JSONBody({"model_version": version, "predictions": [p.as_dict() for p in predictions]})


async def _livez(request: Request) -> Response:
    """``GET /livez``: liveness as a plain Starlette route with a constant body. It pays only what
    every request pays here (server, middleware, routing, a Response), so it is the stack's floor
    that ``make bench`` measures each path against."""
    return Response(LIVEZ_BODY, media_type="application/json")


def _add_operation_routes(app: FastAPI) -> None:
    app.router.routes.insert(0, Route("/livez", _livez, methods=["GET"], include_in_schema=False))

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process answers (a constant body through FastAPI's route handling; `make bench`
        reports it beside /livez, the floor without that handling)."""
        return JSONBody({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Readiness: model loaded (or static table found) and Redis reachable, or hybrid degraded."""
        ready, detail = await _service(request).readiness()
        return JSONBody({"ready": ready, **detail}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        return Response(_service(request).metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/cache/stats")
    async def cache_stats(request: Request) -> Response:
        """Hits and misses per tier, hit ratios, L1 and Redis state, the policy in force."""
        return JSONBody(_service(request).stats())


def _add_admin_routes(app: FastAPI) -> None:
    admin = [Depends(_require_admin)]

    @app.post("/v1/admin/flush", dependencies=admin)
    async def flush(body: FlushRequest, request: Request) -> Response:
        """Empty L1 and/or this model's predictions in Redis."""
        return JSONBody({"flushed": await _service(request).flush(body.l1, body.redis)})

    @app.put("/v1/admin/policy", dependencies=admin)
    async def policy(body: PolicyRequest, request: Request) -> Response:
        """Change L1 size, TTLs or the admission rule at run time (the head is set at precompute)."""
        try:
            return JSONBody({"policy": _service(request).configure(**body.model_dump(exclude_none=True))})
        except ValidationError as exc:
            raise InvalidRequest(_validation_detail(exc.errors())) from None

    @app.post("/v1/admin/reload", dependencies=admin)
    async def reload(body: ReloadRequest, request: Request) -> Response:
        """Load another model version (``latest`` re-reads the registry pointer)."""
        service = _service(request)
        before = _version(service)
        loaded = await service.reload(body.version)
        logs.log_event("reload", requested=body.version, previous_version=before, model_version=loaded)
        return JSONBody({"model_version": loaded})


def _version(service: PredictionService) -> str | None:
    """The version served now (None before there is one), from the stats: no Redis round trip."""
    return service.stats()["model_version"]  # type: ignore[no-any-return]


def app_from_env() -> FastAPI:
    """The app for settings read from ``HYBRIDSERVE_*`` (uvicorn's factory for ``--workers N``)."""
    return create_app(Settings())
