"""The one configuration object of the server, read from ``HYBRIDSERVE_*`` environment variables.

Build it once (``Settings()`` or ``Settings(mode="static", ...)``) and pass it in:
``create_app(settings)``. Nothing reads the environment anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.cache import AdmissionRule
from serving.errors import InvalidRoutes
from serving.modes import MODES, computes
from serving.routes import Routes

ENV_PREFIX = "HYBRIDSERVE_"
LogLevel = Literal["debug", "info", "warning", "error"]


def env_vars(fields: dict[str, object]) -> dict[str, str]:
    """``HYBRIDSERVE_*`` environment variables that set ``fields`` (Settings field names) in another
    process; ``KeyError`` for a name that is not a setting, so no made-up variable is ever emitted.

    Example::

        env_vars({"mode": "hybrid", "l1_size": 5000})   # {"HYBRIDSERVE_MODE": "hybrid", ...}
    """
    env: dict[str, str] = {}
    for name, value in fields.items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[env_var(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class Settings(BaseSettings):
    """Server settings; every field can be set as ``HYBRIDSERVE_<FIELD>`` in the environment."""

    # use_attribute_docstrings: each field's docstring is its description, so the CLI's help lines
    # and the documentation come from the one place a field is defined.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", protected_namespaces=(),
                                      use_attribute_docstrings=True)

    mode: str = "hybrid"
    """Serving architecture: static (precomputed table), dynamic (model per request) or hybrid."""
    redis_url: str | None = Field(None, repr=False)  # it may carry a password: never in a repr or a log
    """Redis URL (redis://, rediss:// for TLS, password in the URL); None: the CLI starts an embedded Redis."""
    redis_timeout_s: float = Field(0.25, gt=0, le=30)
    """Socket and connect timeout of every Redis call, in seconds."""
    redis_namespace: str = Field("hs", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    """Prefix of every Redis key this server reads or writes."""
    registry: Path = Path("registry")
    """Model registry directory (``hybridserve train`` writes it)."""
    model_name: str = Field("traffic-light", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Registry name of the served model."""
    model_version: str = Field("latest", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Version to serve; ``latest`` follows the registry pointer."""
    routes: str = ""
    """Traffic split over versions, ``VERSION:WEIGHT,VERSION:WEIGHT[,shadow=VERSION]`` (weights relative,
    sticky by key); empty: serve ``model_version`` alone. Needs a mode that runs the model (not static)."""
    l1_size: int = Field(10_000, ge=0, le=100_000_000)
    """Entries in the in-process L1 cache (hybrid); 0 disables L1."""
    l1_policy: Literal["lru", "s3fifo"] = "lru"
    """L1 eviction policy (hybrid): lru, or s3fifo (scan-resistant: one-hit keys do not push out the others)."""
    l1_ttl_s: float = Field(0.0, ge=0, le=10_000_000)
    """L1 entry lifetime in seconds; 0: no age limit (entries still leave on eviction or model change)."""
    redis_ttl_s: int = Field(3600, ge=0, le=100_000_000)
    """Lifetime of predictions admitted into Redis on a miss (hybrid); 0: no expiry. The head never expires."""
    admission: str = "always"
    """When a computed prediction is cached (hybrid): ``always``, ``after:N`` misses, or ``tinylfu`` (two misses by an aging frequency sketch)."""
    head_size: int = Field(1000, ge=0)
    """Top-K keys precomputed into Redis for hybrid by ``hybridserve precompute --head``."""
    hot_set: bool = False
    """Track the heavy hitters of recent traffic (hybrid; serving/hot_set.py); on by itself with head refresh or warm start."""
    hot_set_capacity: int = Field(4096, ge=1, le=10_000_000)
    """Counters the hot set keeps; its memory holds at most twice this many keys (top-k beyond that is not tracked)."""
    hot_set_half_life_s: float = Field(60.0, gt=0, le=1_000_000)
    """Seconds after which a request counts half in the hot set (it follows recent traffic, not all time)."""
    head_refresh_s: float = Field(0.0, ge=0, le=1_000_000)
    """Rewrite the head (top ``head_size`` keys of the hot set) into Redis and L1 this often (hybrid); 0: not on a schedule."""
    head_refresh_threshold: float = Field(0.0, ge=0, le=1)
    """Rewrite the head when the Jaccard distance of the hot set's top keys from the head last written exceeds this; 0: off."""
    warm_start: bool = False
    """On a reload, compute the new version's hot keys (from the hot set) into Redis and L1 before it takes traffic (hybrid)."""
    warm_start_keys: int = Field(1000, ge=0, le=10_000_000)
    """Hot keys a warm start computes for the new version."""
    batching: bool = True
    """Dynamic batching of concurrent model calls (for models run in the worker thread, see
    ``offload_above_us``; cheaper models are called directly)."""
    max_batch_size: int = Field(32, ge=1, le=4096)
    """Most rows in one batched model call."""
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    """Longest a request waits for others to join its batch (0: only those already waiting)."""
    offload_above_us: float = Field(200.0, ge=0)
    """Run inference in a worker thread when one row costs more than this (from the model card);
    cheaper models run inline, where a thread hop would cost more than the inference."""
    max_keys_per_request: int = Field(256, ge=1, le=10_000)
    """Most keys in one POST /v1/predict."""
    max_body_bytes: int = Field(65_536, ge=256)
    """Largest request body accepted."""
    fast_path: bool = True
    """Answer GET /v1/predict/{key} in front of the routing (serving/fast_path.py); off only to measure what it saves."""
    otel: bool = False
    """FastAPI's native OpenTelemetry (spans, metrics, logs to the global providers); off: no per-request provider check."""
    admin_token: SecretStr | None = None
    """Bearer token of the admin endpoints; unset: admin endpoints are disabled."""
    breaker_failures: int = Field(3, ge=1)
    """Consecutive Redis failures that open the circuit breaker."""
    breaker_reset_s: float = Field(1.0, gt=0)
    """Seconds the breaker stays open before one probe request tries Redis again."""
    trace_path: Path | None = None
    """Record the access trace (time,key CSV) here; None: off."""
    trace_sample_rate: float = Field(1.0, ge=0, le=1)
    """Fraction of requests recorded in the trace."""
    trace_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """The trace file stops growing at this size."""
    precompute_batch_size: int = Field(4096, ge=1)
    """Rows per model call and per Redis pipeline in the precompute job."""
    max_head_bytes: int = Field(16_384, ge=1024, le=1_048_576)
    """Largest request line plus headers accepted; a larger head is answered 431 and closed."""
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    """Seconds a connection has to send a complete request head (after connecting or starting a request)."""
    keepalive_timeout_s: float = Field(5.0, gt=0, le=3600)
    """Seconds an idle keep-alive connection stays open between requests."""
    max_connections: int = Field(1000, ge=1, le=1_000_000)
    """Open connections per worker; one more is answered 503 and closed (keep it under the fd limit)."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback unless told otherwise."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to bind."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes (uvicorn workers)."""
    worker_dir: Path | None = None
    """Directory the workers of one server share (control file without a store, metrics snapshots);
    ``hybridserve serve`` makes one for ``--workers`` above 1."""
    control_poll_s: float = Field(0.25, gt=0, le=60)
    """How often every worker re-reads the control record (admin changes made on another worker)."""
    metrics_snapshot_s: float = Field(1.0, gt=0, le=60)
    """How often a worker writes its counters to ``worker_dir`` for /metrics on any worker."""
    drift_monitoring: bool = True
    """Drift monitoring of inputs and predictions against the card's reference (serving/drift.py, GET /v1/monitoring)."""
    drift_window: int = Field(1000, ge=10, le=1_000_000)
    """Rows (per worker) in the sliding window the drift statistics are computed over."""
    drift_min_rows: int = Field(200, ge=1)
    """Rows the window must hold before any drift alert can fire (fewer: the PSI is mostly noise)."""
    drift_psi_threshold: float = Field(0.2, gt=0)
    """A feature's population stability index above this fires its drift alert (0.1: moderate shift, 0.2: significant)."""
    drift_prediction_psi_threshold: float = Field(0.2, gt=0)
    """The predictions' population stability index against the holdout's above this fires the prediction drift alert."""
    drift_sample_rate: float = Field(0.1, ge=0, le=1)
    """Share of requests whose feature rows and answers enter the drift window (evenly spread; 0: observe none)."""
    log_level: LogLevel = "info"
    """Lowest level of the JSON log lines on stderr (start and stop, reloads, breaker transitions, precompute progress)."""

    @field_validator("mode")
    @classmethod
    def _mode_known(cls, value: str) -> str:
        if value not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
        return value

    @field_validator("routes")
    @classmethod
    def _routes_parse(cls, value: str) -> str:
        try:
            return str(Routes.parse(value))
        except InvalidRoutes as exc:
            raise ValueError(exc.detail) from None

    @model_validator(mode="after")
    def _routes_need_a_model(self) -> Settings:
        if self.routes and not computes(self.mode):
            raise ValueError(f"routes need a mode that runs the model (dynamic or hybrid): {self.mode} serves one "
                             "precomputed table; precompute each version and switch with a reload instead")
        return self

    @field_validator("admission")
    @classmethod
    def _admission_parses(cls, value: str) -> str:
        return str(AdmissionRule.parse(value))

    @field_validator("admin_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @property
    def admission_rule(self) -> AdmissionRule:
        """The parsed admission rule."""
        return AdmissionRule.parse(self.admission)

    def as_env(self) -> dict[str, str]:
        """``HYBRIDSERVE_*`` variables that reproduce these settings in another process."""
        return env_vars(self.model_dump(exclude_none=True))

    def updated(self, **fields: object) -> Settings:
        """A copy with ``fields`` changed, validated by the same rules as at start-up (unlike
        ``model_copy``, which validates nothing); ``pydantic.ValidationError`` if one is invalid."""
        return type(self).model_validate({**self.model_dump(), **fields})


def env_var(field: str) -> str:
    """The environment variable of a :class:`Settings` field: ``env_var("redis_url") == "HYBRIDSERVE_REDIS_URL"``."""
    if field not in Settings.model_fields:
        raise KeyError(f"{field!r} is not a Settings field")
    return ENV_PREFIX + field.upper()
