"""``GET /v1/predict/{key}`` answered in front of the routing: the hot path of every mode.

Through the routed app a single-key GET also paid FastAPI's exception, telemetry and exit-stack
middleware, the router's match loop, a ``Request`` and a ``Response`` object; the profile of an
L1 hit put most of the gap between a hit and a constant route there, and a Redis hit or a model
call pays the same (``make bench`` measures each path with and without this layer). :class:`FastPredictLayer` is the
innermost user middleware, so everything added around the app (body limit, header limits) still
runs first. It answers single-key GETs itself and hands every other request to the app
unchanged. Its answers are the app's, byte for byte: the same body
(:meth:`serving.service.Prediction.as_dict` through orjson), the same status and error body for
a :class:`serving.errors.ServingError` (``{"error": code, "detail": text}``, as
:func:`serving.app._install_error_handlers` renders it), the same headers and the same metrics
(the same :class:`serving.service.PredictionService` calls). Anything else raised goes up to the
server-error middleware, as from the route.

Example::

    app.add_middleware(FastPredictLayer, state=app.state)  # first add_middleware call: innermost
"""

from __future__ import annotations

import orjson
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import ServingError, StoreUnavailable

PREFIX = "/v1/predict/"
_PREFIX_LEN = len(PREFIX)
_CONTENT_TYPE = (b"content-type", b"application/json")


class FastPredictLayer:
    """ASGI middleware answering ``GET /v1/predict/{key}``; all else goes to ``app``."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self._state = state  # the app's state: the service appears there in the lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _key(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        service = getattr(self._state, "service", None) if key is not None else None
        if service is None:
            await self.app(scope, receive, send)
            return
        status = 200
        # An L1 hit needs no coroutine: predict_cached answers it in place, counted as predict counts it.
        prediction = service.predict_cached(key)
        if prediction is None:
            try:
                [prediction] = await service.predict([key])
            except ServingError as exc:
                if isinstance(exc, StoreUnavailable):
                    self._state.report_outage(exc)  # the address to the log, as the app handler does
                status, body = exc.status, orjson.dumps({"error": exc.code, "detail": exc.public_detail})
        if status == 200:
            body = orjson.dumps(prediction.as_dict())
        # The headers a Starlette Response with media_type application/json sends, in its order.
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), _CONTENT_TYPE]})
        await send({"type": "http.response.body", "body": body})


def _key(scope: Scope) -> str | None:
    """The key of ``/v1/predict/{key}`` (one non-empty path segment, as the route reads it)."""
    path: str = scope["path"]
    if not path.startswith(PREFIX) or scope.get("root_path"):
        return None
    key = path[_PREFIX_LEN:]
    return key if key and "/" not in key else None
