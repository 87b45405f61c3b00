"""The L1-hit path: ``GET /v1/predict/{key}`` answered from L1 in front of the routing.

An L1 hit is the cheapest answer the server has (a dict lookup), yet through the routed app it
also paid FastAPI's exception and exit-stack middleware, the router's match loop, a ``Request``
and a ``Response`` object: the profile put most of the gap between a hit and a constant route
there. :class:`L1HitLayer` is the innermost user middleware, so everything added around the app
(body limit, header limits) still runs first; it answers a hit itself and hands every other
request, a miss included, to the app unchanged. The answer is the app's own, byte for byte: the
same body (:meth:`serving.service.Prediction.as_dict` through orjson), status, headers and metrics
(:meth:`serving.service.PredictionService.predict_cached` counts exactly what ``predict`` counts).

Example::

    app.add_middleware(L1HitLayer, state=app.state)  # first add_middleware call: innermost
"""

from __future__ import annotations

import orjson
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

PREFIX = "/v1/predict/"
_PREFIX_LEN = len(PREFIX)
_CONTENT_TYPE = (b"content-type", b"application/json")


class L1HitLayer:
    """ASGI middleware answering single-key GETs that L1 holds; all else goes to ``app``."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self._state = state  # the app's state: the service appears there in the lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._hit(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        # The headers a Starlette Response with media_type application/json sends, in its order.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), _CONTENT_TYPE]})
        await send({"type": "http.response.body", "body": body})

    def _hit(self, scope: Scope) -> bytes | None:
        """The response body when the request is ``GET /v1/predict/{key}`` and L1 holds ``key``."""
        path: str = scope["path"]
        if not path.startswith(PREFIX) or scope.get("root_path"):
            return None
        key = path[_PREFIX_LEN:]
        if not key or "/" in key:  # the route's {key} is one non-empty path segment
            return None
        service = getattr(self._state, "service", None)
        prediction = service.predict_cached(key) if service is not None else None
        return None if prediction is None else orjson.dumps(prediction.as_dict())
