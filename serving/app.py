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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.registry import RegistryError, resolve
from serving import logs
from serving.cluster import ClusterURL, is_cluster_url
from serving.control import ControlFollower, control_channel
from serving.errors import (
    AdminDisabled,
    BodyTooLarge,
    Forbidden,
    InvalidRequest,
    ServingError,
    StoreUnavailable,
    TooManyKeys,
    Unauthorized,
    UnknownVersion,
)
from serving.metrics import WorkerSnapshots
from serving.fast_path import FastPredictLayer
from serving.modes import uses_store
from serving.openapi import install_openapi
from serving.routes import Routes
from serving.service import PredictionService
from serving.settings import Settings
from serving.store import build_store
from serving.v2 import router as v2_router

OUTAGE_LOG_INTERVAL_S = 1.0
_log = logging.getLogger(__name__)
PREDICTION_EXAMPLE = {"key": "17:42", "prediction": 812.5, "source": "l1", "model_version": "a16b398c84f1"}
LIVEZ_BODY = b'{"status":"ok"}'


class JSONBody(Response):
    """JSON via orjson: several times cheaper than the stdlib encoder on the hot path."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, code: str, detail: str) -> JSONBody:
    return JSONBody({"error": code, "detail": detail}, status_code=status)


def _integral_float_as_int(value: object) -> object:
    """JSON Schema counts ``5.0`` as an integer (the published schema says "integer"): take it as 5."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


VERSION_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # a registry version name (Settings.model_version's rule)
ADMISSION_PATTERN = r"^\s*([Aa][Ll][Ww][Aa][Yy][Ss]|[Aa][Ff][Tt][Ee][Rr]:0*[1-9][0-9]*)\s*$"
PolicyCount = Annotated[StrictInt, Field(ge=0, le=100_000_000), BeforeValidator(_integral_float_as_int)]
"""A size or TTL of the policy: 5 and 5.0 pass; true, 5.5 and "5" do not (constraints before the
validator, so the schema still shows minimum and maximum)."""


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict``: keys, or raw feature instances (one of the two)."""

    model_config = ConfigDict(extra="forbid")
    keys: list[StrictStr] | None = Field(None, min_length=1, description="Keys of the model's key space, answered in order")
    instances: list[dict[str, Any]] | None = Field(
        None, min_length=1, description="Feature vectors as objects {feature: number}, every feature of the model")

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.keys is None) == (self.instances is None):
            raise ValueError("give either 'keys' or 'instances'")
        return self


class FlushRequest(BaseModel):
    """Body of ``POST /v1/admin/flush``."""

    model_config = ConfigDict(extra="forbid")
    l1: StrictBool = True
    redis: StrictBool = False


class PolicyRequest(BaseModel):
    """Body of ``PUT /v1/admin/policy``: fields left out keep their value. Values are checked by
    the same rules as the ``HYBRIDSERVE_*`` settings of the same names (one source of truth)."""

    model_config = ConfigDict(extra="forbid")
    l1_size: PolicyCount | None = None
    l1_ttl_s: StrictFloat | None = Field(None, ge=0, le=10_000_000)
    redis_ttl_s: PolicyCount | None = None
    # The pattern documents what the settings rule accepts (any case, spaces around): /docs and the fuzzer.
    admission: StrictStr | None = Field(None, pattern=ADMISSION_PATTERN, description="'always' or 'after:N'")


class ReloadRequest(BaseModel):
    """Body of ``POST /v1/admin/reload``."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field("latest", pattern=VERSION_PATTERN)


class RouteItem(BaseModel):
    """One version of a traffic split and its relative weight."""

    model_config = ConfigDict(extra="forbid")
    version: StrictStr = Field(pattern=VERSION_PATTERN, description="A registry version of the served model, or 'latest'")
    weight: StrictInt | StrictFloat = Field(gt=0, description="Relative weight, > 0 (90 and 10 split as 9 and 1 do)")


class RoutesRequest(BaseModel):
    """Body of ``PUT /v1/admin/routes``: the ``HYBRIDSERVE_ROUTES`` content as JSON; an empty
    ``routes`` list ends the split (its first version is served alone)."""

    model_config = ConfigDict(extra="forbid")
    routes: list[RouteItem] = Field(description="The weighted split, sticky by key")
    shadow: StrictStr | None = Field(None, pattern=VERSION_PATTERN,
                                     description="A version that computes on a copy of the traffic, never answering")


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


@asynccontextmanager
async def _shared_with_other_workers(app: FastAPI, settings: Settings, service: PredictionService) -> AsyncIterator[None]:
    """Admin changes made on any worker or replica reach this one (:mod:`serving.control`), and
    with a ``worker_dir`` this worker's counters reach /metrics on the others."""
    control = ControlFollower(control_channel(settings, service.store), service, settings.control_poll_s)
    snapshots = WorkerSnapshots(settings.worker_dir) if settings.worker_dir is not None else None
    await control.start()
    if snapshots is not None:
        snapshots.start(service.metrics, settings.metrics_snapshot_s)
    app.state.control, app.state.snapshots = control, snapshots
    try:
        yield
    finally:
        await control.stop()
        if snapshots is not None:
            await snapshots.stop()


def _control(request: Request) -> ControlFollower:
    return request.app.state.control  # type: ignore[no-any-return]


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
            async with _shared_with_other_workers(app, settings, service):
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
    _install_outage_handler(app, settings)
    _add_prediction_routes(app, settings)
    _add_operation_routes(app)
    _add_admin_routes(app)
    app.include_router(v2_router)  # Open Inference Protocol (KServe V2), serving/v2.py
    install_openapi(app, settings)
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
        return _error(exc.status, exc.code, exc.public_detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return _error(InvalidRequest.status, InvalidRequest.code, _validation_detail(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        response = _http_error(exc)
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only; a path with
            # a route per method (GET and PUT /v1/admin/routes) allows them all.
            response.headers["allow"] = ", ".join(_allowed_methods(request))
        return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(route.methods)
    return sorted(methods)


def _http_error(exc: StarletteHTTPException) -> Response:
    """Starlette's and FastAPI's own HTTP errors in this API's shape, with their headers (405: Allow)."""
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (invalid UTF-8, JSON nested past the parser's
        # recursion limit): the same 422 invalid_request as any other body that is not valid JSON.
        return _error(422, "invalid_request", "body: not valid JSON (UTF-8, nested at most a few hundred levels)")
    code = {404: "not_found", 405: "method_not_allowed", 413: BodyTooLarge.code}.get(exc.status_code, "http_error")
    response = _error(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


class _OutageLog:
    """Logs a Redis outage's cause at most once per ``interval_s``: a 503 storm must not flood the log."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = -interval_s

    def warning(self, address: str, detail: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            _log.warning("answering 503 cache unavailable: Redis at %s: %s (logged at most every %gs)",
                         address, detail, self.interval_s)


def _redis_address(url: str | None) -> str:
    """``host:port`` of a Redis URL (a cluster's: its seeds, comma-separated), never its password."""
    if url and is_cluster_url(url):
        return ",".join(f"{host}:{port}" for host, port in ClusterURL(url).seeds)
    parts = urlsplit(url or "")
    return f"{parts.hostname}:{parts.port or 6379}"


def _without_password(text: str, url: str | None) -> str:
    """``text`` with the Redis URL's password masked, should an error message ever quote it."""
    password = urlsplit(url or "").password
    return text.replace(password, "***") if password else text


def _install_outage_handler(app: FastAPI, settings: Settings) -> None:
    """503 for an unreachable Redis says "cache unavailable"; its address goes to the log only."""
    outages = _OutageLog(OUTAGE_LOG_INTERVAL_S)
    address = _redis_address(settings.redis_url)

    def report(exc: StoreUnavailable) -> None:
        outages.warning(address, _without_password(exc.detail, settings.redis_url))

    # The fast path (serving/fast_path.py) answers outside these handlers: it reports here too.
    app.state.report_outage = report

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
        report(exc)
        return _error(exc.status, exc.code, exc.public_detail)


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
        """Predictions for a batch of keys, or of raw feature instances, in request order: one Redis
        round trip, one model call."""
        asked = body.keys if body.keys is not None else body.instances
        assert asked is not None  # the model validator admits exactly one
        if len(asked) > settings.max_keys_per_request:
            raise TooManyKeys(f"{len(asked)} keys or instances in one request; the limit is {settings.max_keys_per_request}")
        if body.keys is not None:
            predictions = await _service(request).predict(body.keys)
            answers = [p.as_dict() for p in predictions]
        else:
            predictions = await _service(request).predict_instances(asked)
            answers = [{"prediction": p.prediction, "source": p.source, "model_version": p.model_version} for p in predictions]
        return JSONBody({"model_version": predictions[0].model_version, "predictions": answers})


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
        """Prometheus metrics (of every worker of this server)."""
        snapshots: WorkerSnapshots | None = request.app.state.snapshots
        others = snapshots.others() if snapshots is not None else ()
        return Response(_service(request).metrics.render(others), media_type="text/plain; version=0.0.4")

    @app.get("/v1/monitoring")
    async def monitoring(request: Request) -> Response:
        """Drift of the inputs and predictions against the model card's reference (serving/drift.py):
        per feature PSI, threshold, alert and when it fired, out-of-range share; of every worker."""
        snapshots: WorkerSnapshots | None = request.app.state.snapshots
        return JSONBody(_service(request).monitoring(snapshots.others() if snapshots is not None else ()))

    @app.get("/v1/cache/stats")
    async def cache_stats(request: Request) -> Response:
        """Hits and misses per tier, hit ratios, L1 and Redis state, the policy in force."""
        return JSONBody(_service(request).stats())


def _add_admin_routes(app: FastAPI) -> None:
    admin = [Depends(_require_admin)]

    @app.post("/v1/admin/flush", dependencies=admin)
    async def flush(body: FlushRequest, request: Request) -> Response:
        """Empty L1 and/or this model's predictions in Redis (L1 on every worker and replica)."""
        flushed = await _service(request).flush(body.l1, body.redis)
        return JSONBody({"flushed": flushed, "propagated": await _control(request).publish(l1_flush=body.l1)})

    @app.put("/v1/admin/policy", dependencies=admin)
    async def policy(body: PolicyRequest, request: Request) -> Response:
        """Change L1 size, TTLs or the admission rule at run time (the head is set at precompute),
        on every worker and replica."""
        try:
            policy = _service(request).configure(**body.model_dump(exclude_none=True))
        except ValidationError as exc:
            raise InvalidRequest(_validation_detail(exc.errors())) from None
        return JSONBody({"policy": policy, "propagated": await _control(request).publish(policy=policy)})

    @app.post("/v1/admin/reload", dependencies=admin)
    async def reload(body: ReloadRequest, request: Request) -> Response:
        """Load another model version (``latest`` re-reads the registry pointer), on every worker
        and replica within ``control_poll_s`` (``propagated``: the others were told)."""
        service = _service(request)
        if not service.computes:
            _require_published(request.app.state.settings, body.version)
        before = _version(service)
        loaded = await service.reload(body.version)
        logs.log_event("reload", requested=body.version, previous_version=before, model_version=loaded)
        # A reload serves one version alone: it ends a traffic split (routes 100% to that version).
        propagated = await _control(request).publish(version=loaded if service.computes else None,
                                                     routes="" if service.computes else None)
        return JSONBody({"model_version": loaded, "propagated": propagated})

    @app.put("/v1/admin/routes", dependencies=admin)
    async def put_routes(body: RoutesRequest, request: Request) -> Response:
        """Set the traffic split (weighted, sticky by key, optional shadow) on every worker and
        replica; the versions come back concrete. An empty ``routes`` ends the split."""
        service = _service(request)
        routes = await service.set_routes(Routes.from_json(body.model_dump()))
        served = _version(service)
        logs.log_event("routes", routes=str(routes), model_version=served)
        propagated = await _control(request).publish(version=served, routes=str(routes))
        return JSONBody({**_routes_body(service), "propagated": propagated})

    @app.get("/v1/admin/routes", dependencies=admin)
    async def get_routes(request: Request) -> Response:
        """The traffic split in force, versions concrete (``routes`` empty: ``model_version`` alone)."""
        return JSONBody(_routes_body(_service(request)))

    @app.post("/v1/admin/refresh-head", dependencies=admin)
    async def refresh_head(request: Request) -> Response:
        """Rewrite the head (the hot set's top ``head_size`` keys) into Redis and L1 for the served
        version now, on this worker (serving/head_refresh.py); 409 when the hot set is off."""
        return JSONBody(await _service(request).refresh_head())


def _routes_body(service: PredictionService) -> dict[str, Any]:
    return {**service.routes.as_json(), "model_version": _version(service)}



def _version(service: PredictionService) -> str | None:
    """The version served now (None before there is one), from the stats: no Redis round trip."""
    return service.stats()["model_version"]  # type: ignore[no-any-return]


def _require_published(settings: Settings, version: str) -> None:
    """:class:`UnknownVersion` unless ``version`` is ``latest`` or published in the registry.

    Static reload re-reads the table pointer and has no model to load, so nothing else checks the
    version; ``latest`` is not resolved, as a static server may run without a local registry.
    """
    if version == "latest":
        return
    try:
        resolve(settings.registry, settings.model_name, version)
    except RegistryError as exc:
        raise UnknownVersion(f"model {settings.model_name!r} has no version {version!r}") from exc


def app_from_env() -> FastAPI:
    """The app for settings read from ``HYBRIDSERVE_*`` (uvicorn's factory for ``--workers N``)."""
    return create_app(Settings())
