"""Expected failures, each carrying its HTTP status and a short machine-readable code.

``serving.app`` maps every :class:`ServingError` to ``{"error": code, "detail": text}`` in one
handler; anything else that escapes is a bug and a 500.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of all expected failures."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def public_detail(self) -> str:
        """The ``detail`` a client is shown (every path that answers errors renders this)."""
        return self.detail


class BadRequest(ServingError):
    """The request is malformed (body, types, sizes)."""


class InvalidRequest(ServingError):
    """A request body or value breaks a documented rule."""

    status = 422
    code = "invalid_request"


class InvalidInstance(InvalidRequest):
    """A raw-feature instance breaks the model's feature schema (missing, unknown, not a number,
    not finite), or the mode cannot answer instances at all (static)."""

    code = "invalid_instance"


class InvalidRoutes(InvalidRequest):
    """A traffic split that breaks a rule (syntax, weights, duplicates, an unknown version, a
    shadow inside the split, a mode that cannot route): ``HYBRIDSERVE_ROUTES`` or the admin call."""

    code = "invalid_routes"


class MalformedKey(ServingError):
    """A key does not have the form ``<segment>:<hour_of_week>``."""

    status = 422
    code = "malformed_key"


class UnknownKey(ServingError):
    """A well-formed key outside the model's key space, or not in the precomputed table."""

    status = 404
    code = "unknown_key"


class NotStored(UnknownKey):
    """No tier holds the key and none computes it (static: the key is not in the precomputed table)."""


class UnknownVersion(ServingError):
    """A model name or version that the registry does not have."""

    status = 404
    code = "unknown_version"


class TooManyKeys(ServingError):
    """A batch larger than the configured limit."""

    status = 413
    code = "too_many_keys"


class BodyTooLarge(ServingError):
    """A request body over the configured byte limit."""

    status = 413
    code = "body_too_large"


class InvalidHTTP(ServingError):
    """Bytes that are not an HTTP/1.1 request (unknown method, raw non-ASCII in the path, ...)."""

    code = "invalid_http"


class HeaderTooLarge(ServingError):
    """A request line plus headers over the configured byte limit."""

    status = 431
    code = "header_too_large"


class RequestTimeout(ServingError):
    """A request head (line and headers) that did not arrive in full within the configured time."""

    status = 408
    code = "request_timeout"


class Unauthorized(ServingError):
    """No bearer token on an admin endpoint."""

    status = 401
    code = "unauthorized"


class Forbidden(ServingError):
    """A wrong bearer token on an admin endpoint."""

    status = 403
    code = "forbidden"


class AdminDisabled(ServingError):
    """Admin endpoints are off because no admin token is configured."""

    status = 403
    code = "admin_disabled"


class HotSetOff(ServingError):
    """An operation on the hot set (head refresh) on a server that does not track it."""

    status = 409
    code = "hot_set_off"


class Unavailable(ServingError):
    """A dependency (Redis, the model, the precomputed table) cannot serve right now."""

    status = 503
    code = "unavailable"


class TooManyConnections(Unavailable):
    """A connection over the per-worker limit: answered at once and closed."""

    code = "too_many_connections"


class StoreError(Unavailable):
    """The prediction store could not answer this call (base of the three below)."""

    code = "cache_unavailable"


class StoreUnavailable(StoreError):
    """An outage: Redis did not answer within its timeout, the connection broke, or the circuit
    breaker is open. The only store error the breaker counts."""

    code = "redis_unavailable"

    @property
    def public_detail(self) -> str:
        """Clients learn only that the cache is unavailable; the cause goes to the log."""
        return "cache unavailable"


class StoreRejected(StoreError):
    """Redis answered with an error reply (OOM on a write, WRONGTYPE...): it is up, so this is
    never counted as an outage."""

    code = "redis_error"


class CorruptPrediction(StoreError):
    """A stored value does not decode to a finite float32: never served."""

    code = "corrupt_value"


class NotReady(Unavailable):
    """The served state is missing (no model loaded, no precomputed table)."""

    code = "not_ready"


class TableUnavailable(NotReady):
    """Static mode has no complete precomputed table to serve (never run, or lost with Redis's
    data): every key is unanswerable, so the server is not ready rather than 404 for valid keys."""

    code = "table_unavailable"


class UnsupportedInput(ServingError):
    """A V2 inference input this server cannot take yet (a datatype or tensor name it does not serve)."""

    status = 400
    code = "unsupported_input"
