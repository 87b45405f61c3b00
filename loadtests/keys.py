"""Key distributions for load tests: seeded, deterministic streams of a model's keys.

A stream draws key indices ``i`` in ``[0, key_space.count)`` and yields the key space's keys
(:mod:`models.keyspace`: the demo's ``"<segment>:<hour>"`` grid, or a user's own string ids).
Four shapes of traffic:

- ``zipf:S``: Zipf with exponent ``S > 0`` over the whole (bounded) key space; which keys are
  popular is a seeded shuffle, so the head is not simply the first keys.
- ``uniform``: every key equally likely.
- ``drift:hot=H,p=P,period=T`` (or ``every=N``): a hot set of ``H`` keys gets a fraction ``P`` of
  the requests and moves to ``H`` fresh keys every ``T`` seconds (wall clock) or every ``N``
  requests (for a deterministic replay).
- ``trace:PATH`` (``trace:loop:PATH`` to loop): replay an access trace, one key per line, with
  its own keys; keys the model does not have are sent as they are (and answered 404, as users'
  would be), and :attr:`TraceKeys.unknown_share` says how many. ``trace:map:PATH`` (or
  ``trace:loop:map:PATH``) instead maps distinct trace keys onto distinct model keys through a
  seeded permutation: only for traces of another key space, and say so when reporting.

``seed`` fixes *which* keys are popular (the mapping); ``stream`` picks an independent random
sequence over the same mapping, so several load generators share one popularity ranking without
sending identical request sequences. Same ``(seed, stream)`` -> same sequence.

Example::

    keys = key_stream("zipf:1.1", GridKeySpace(200), seed=7)   # or a LoadedModel's key_space
    keys.next_key()          # -> e.g. "131:17"
    keys.take(4)             # -> four more key strings
    parse_spec("drift:hot=500,p=0.9,period=30")   # -> DriftSpec(hot=500, p=0.9, period_s=30.0, every=None)

This module must not import locust: the locustfile is the only place gevent patching may happen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.keyspace import GridKeySpace, KeyNotFound, KeyRuleError, KeySpace

Clock = Callable[[], float]

# Draws happen in numpy blocks of this size: Locust asks for one key per request, and a Python
# call into numpy per key would cost more than the request bookkeeping itself.
BLOCK_SIZE = 4096
# Defaults for the drifting hot set when the spec leaves a parameter out.
DEFAULT_HOT_KEYS = 100
DEFAULT_HOT_FRACTION = 0.9
DEFAULT_DRIFT_PERIOD_S = 60.0
# Prefixes inside a trace spec: loop forever instead of ending; map trace keys onto model keys.
TRACE_LOOP_PREFIX = "loop:"
TRACE_MAP_PREFIX = "map:"

SPEC_FORMS = (
    "'zipf:S' (S > 0), 'uniform', 'drift:hot=H,p=P,period=T' or 'drift:hot=H,p=P,every=N', "
    "'trace:PATH', 'trace:loop:PATH', 'trace:map:PATH' or 'trace:loop:map:PATH'"
)


class KeysExhausted(Exception):
    """A non-looping trace replay has sent every line of its trace."""


def as_key_space(space: KeySpace | int) -> KeySpace:
    """``space`` itself, or the demo grid of that many segments for an int."""
    if isinstance(space, int):
        if space < 1:
            raise ValueError(f"segment count must be >= 1, got {space}")
        return GridKeySpace(space)
    return space


def _permutation(key_count: int, seed: int) -> np.ndarray:
    """The seeded rank -> key index mapping shared by every stream with this seed."""
    return np.random.default_rng(seed).permutation(key_count)


def _stream_rng(seed: int, stream: int) -> np.random.Generator:
    # A separate generator from the permutation's: streams share the mapping, not the draws.
    return np.random.default_rng([seed, stream, 1])


class KeyStream:
    """An endless (or, for a finished trace, ending) stream of key indices, drawn in blocks.

    Subclasses implement :meth:`_draw_block`; :meth:`next_index` hands the block out one by one.
    """

    def __init__(self, space: KeySpace) -> None:
        self.space = space
        self.key_count = space.count
        self._block: list[int] = []
        self._pos = 0

    def _draw_block(self, size: int) -> np.ndarray:
        raise NotImplementedError

    def _next_raw(self) -> int:
        if self._pos >= len(self._block):
            # tolist() once per block: indexing a list is far cheaper than a numpy scalar.
            self._block = self._draw_block(BLOCK_SIZE).tolist()
            self._pos = 0
        value = self._block[self._pos]
        self._pos += 1
        return value

    def next_index(self) -> int:
        """The next key index."""
        return self._next_raw()

    def next_key(self) -> str:
        """The next key string, e.g. ``"17:42"``."""
        return self.space.key(self.next_index())

    def take(self, count: int) -> list[str]:
        """The next ``count`` key strings (a batch request's keys).

        Fewer only at the end of a single-pass trace; :class:`KeysExhausted` once none are left.
        """
        keys: list[str] = []
        try:
            for _ in range(count):
                keys.append(self.next_key())
        except KeysExhausted:
            if not keys:
                raise
        return keys


class ZipfKeys(KeyStream):
    """Zipf(``s``) over the whole key space: rank ``r`` (1-based) has weight ``r ** -s``.

    Bounded, so any ``s > 0`` (``s = 1`` too) is a proper distribution; sampled by inverse CDF
    over precomputed cumulative weights (``8 * key_count`` bytes).
    """

    def __init__(self, space: KeySpace, s: float, seed: int = 0, stream: int = 0) -> None:
        _check_zipf(s)
        super().__init__(space)
        key_count = space.count
        self.s = s
        self.rank_to_key = _permutation(key_count, seed)
        weights = np.arange(1, key_count + 1, dtype=np.float64) ** -s
        cdf = np.cumsum(weights)
        self._cdf = cdf / cdf[-1]
        self._rng = _stream_rng(seed, stream)

    def _draw_block(self, size: int) -> np.ndarray:
        ranks = np.searchsorted(self._cdf, self._rng.random(size), side="right")
        # Rounding can leave cdf[-1] a hair under a draw; clip keeps the rank in range.
        return self.rank_to_key[np.minimum(ranks, self.key_count - 1)]


def _check_zipf(s: float) -> None:
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"zipf exponent must be a finite number > 0, got {s}")


class UniformKeys(KeyStream):
    """Every key equally likely."""

    def __init__(self, space: KeySpace, seed: int = 0, stream: int = 0) -> None:
        super().__init__(space)
        self._rng = _stream_rng(seed, stream)

    def _draw_block(self, size: int) -> np.ndarray:
        return self._rng.integers(0, self.key_count, size)


class DriftingHotSetKeys(KeyStream):
    """A hot set of ``hot`` keys receives fraction ``p`` of requests; the rest is uniform.

    The hot set is a window of ``hot`` consecutive entries in a seeded permutation of the key
    space, and the window slides by ``hot`` each epoch, so every epoch brings ``hot`` fresh keys
    and the cold keys are exactly the others. An epoch is ``period_s`` seconds of ``clock``
    (absolute, so every user and process agrees on the current hot set) or ``every`` requests
    of this stream (deterministic replay). Give exactly one of the two.
    """

    def __init__(
        self,
        space: KeySpace,
        hot: int,
        p: float,
        *,
        period_s: float | None = None,
        every: int | None = None,
        seed: int = 0,
        stream: int = 0,
        clock: Clock = time.time,
    ) -> None:
        _check_drift(hot, p, period_s, every)
        key_count = space.count
        if hot >= key_count:
            raise ValueError(f"drift hot set ({hot}) must be smaller than the key space ({key_count})")
        super().__init__(space)
        self.hot, self.p, self.period_s, self.every = hot, p, period_s, every
        self._clock = clock
        self._order = _permutation(key_count, seed)
        self._rng = _stream_rng(seed, stream)
        self._served = 0

    def _draw_block(self, size: int) -> np.ndarray:
        # Offsets into the current window: [0, hot) is the hot set, [hot, key_count) the rest.
        # The epoch is applied per request (next_index), so a block drawn before a move is
        # still spread over the right hot set after it.
        is_hot = self._rng.random(size) < self.p
        hot = self._rng.integers(0, self.hot, size)
        cold = self._rng.integers(self.hot, self.key_count, size)
        return np.where(is_hot, hot, cold)

    def epoch(self) -> int:
        """How many times the hot set has moved (by clock, or by requests served)."""
        if self.every is not None:
            return self._served // self.every
        return int(self._clock() // self.period_s)

    def hot_keys(self, epoch: int | None = None) -> list[int]:
        """Key indices of the hot set in ``epoch`` (default: the current one)."""
        start = (self.epoch() if epoch is None else epoch) * self.hot
        return self._order[(start + np.arange(self.hot)) % self.key_count].tolist()

    def next_index(self) -> int:
        """The next key index, drawn against the hot set of the current epoch."""
        start = self.epoch() * self.hot
        self._served += 1
        return int(self._order[(start + self._next_raw()) % self.key_count])


def _check_drift(hot: int, p: float, period_s: float | None, every: int | None) -> None:
    if hot < 1:
        raise ValueError(f"drift hot must be >= 1, got {hot}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drift p must be within [0, 1], got {p}")
    if (period_s is None) == (every is None):
        raise ValueError("drift needs exactly one of period=SECONDS or every=REQUESTS")
    if period_s is not None and not period_s > 0:
        raise ValueError(f"drift period must be > 0 seconds, got {period_s}")
    if every is not None and every < 1:
        raise ValueError(f"drift every must be >= 1 requests, got {every}")


def map_trace(trace_keys: list[str], key_count: int, seed: int = 0) -> np.ndarray:
    """Key indices for a trace: the n-th distinct trace key (by first appearance) -> ``perm[n]``.

    ``perm`` is the seeded permutation of the key space, so distinct trace keys get distinct
    model keys and the mapping depends only on the trace and the seed.
    """
    if not trace_keys:
        raise ValueError("the trace has no keys")
    codes: dict[str, int] = {}
    positions = [codes.setdefault(key, len(codes)) for key in trace_keys]
    if len(codes) > key_count:
        raise ValueError(
            f"trace has {len(codes)} distinct keys but the key space has only {key_count}: a mapping cannot "
            "keep them distinct; replay the trace's own keys (trace:PATH) against a model that has them"
        )
    return _permutation(key_count, seed)[np.asarray(positions, dtype=np.int64)]


def read_trace(path: str | Path) -> list[str]:
    """The keys of a trace file, one per line; blank lines are skipped."""
    with open(path, encoding="utf-8") as handle:
        keys = [line.strip() for line in handle]
    keys = [key for key in keys if key]
    if not keys:
        raise ValueError(f"trace {path} has no keys")
    return keys


class TraceKeys(KeyStream):
    """Replays a trace in order, once or looping: its own keys, or (``remap``) model keys mapped
    from them (:func:`map_trace`).

    With its own keys, the share of requests whose key the model does not have is
    :attr:`unknown_share`; those requests are sent all the same (a 404, as a user would get). A
    looping replay starts ``stream`` lines in (modulo the trace length), so several looping streams
    over one trace do not send the same key at the same moment; a single pass always starts at
    the first line.
    """

    def __init__(
        self, trace_keys: list[str], space: KeySpace, *, loop: bool = False, remap: bool = False, seed: int = 0,
        stream: int = 0,
    ) -> None:
        super().__init__(space)
        if not trace_keys:
            raise ValueError("the trace has no keys")
        self.loop = loop
        self.remap = remap
        self._keys = [space.key(i) for i in map_trace(trace_keys, space.count, seed).tolist()] if remap else trace_keys
        self.unknown_share = 0.0 if remap else _unknown_share(trace_keys, space)
        self._next = stream % len(self._keys) if loop else 0

    def next_index(self) -> int:
        """Not available: a trace replays keys, some of which may be outside the key space."""
        raise TypeError("a trace replay yields keys (next_key), not key indices")

    def next_key(self) -> str:
        """The next line's key (mapped, with ``remap``)."""
        if self._next >= len(self._keys):
            if not self.loop:
                raise KeysExhausted("the trace has been replayed to its end")
            self._next = 0
        key = self._keys[self._next]
        self._next += 1
        return key


def _unknown_share(trace_keys: list[str], space: KeySpace) -> float:
    """Share of requests (not distinct keys) for keys the model does not have."""
    known: dict[str, bool] = {}
    for key in trace_keys:
        if key not in known:
            try:
                space.index(key)
                known[key] = True
            except (KeyNotFound, KeyRuleError):
                known[key] = False
    return sum(1 for key in trace_keys if not known[key]) / len(trace_keys)


@dataclass(frozen=True)
class ZipfSpec:
    """``zipf:S``."""

    s: float

    def __post_init__(self) -> None:
        _check_zipf(self.s)

    def build(self, space: KeySpace, seed: int = 0, stream: int = 0, clock: Clock = time.time) -> KeyStream:
        """A :class:`ZipfKeys` over ``space``."""
        return ZipfKeys(space, self.s, seed, stream)

    def __str__(self) -> str:
        return f"zipf:{self.s:g}"


@dataclass(frozen=True)
class UniformSpec:
    """``uniform``."""

    def build(self, space: KeySpace, seed: int = 0, stream: int = 0, clock: Clock = time.time) -> KeyStream:
        """A :class:`UniformKeys` over ``space``."""
        return UniformKeys(space, seed, stream)

    def __str__(self) -> str:
        return "uniform"


@dataclass(frozen=True)
class DriftSpec:
    """``drift:hot=H,p=P,period=T`` or ``drift:hot=H,p=P,every=N``."""

    hot: int = DEFAULT_HOT_KEYS
    p: float = DEFAULT_HOT_FRACTION
    period_s: float | None = DEFAULT_DRIFT_PERIOD_S
    every: int | None = None

    def __post_init__(self) -> None:
        _check_drift(self.hot, self.p, self.period_s, self.every)

    def build(self, space: KeySpace, seed: int = 0, stream: int = 0, clock: Clock = time.time) -> KeyStream:
        """A :class:`DriftingHotSetKeys`; ``clock`` times the moves when ``period_s`` is set."""
        return DriftingHotSetKeys(
            space,
            self.hot,
            self.p,
            period_s=self.period_s,
            every=self.every,
            seed=seed,
            stream=stream,
            clock=clock,
        )

    def __str__(self) -> str:
        moves = f"every={self.every}" if self.every is not None else f"period={self.period_s:g}"
        return f"drift:hot={self.hot},p={self.p:g},{moves}"


@dataclass(frozen=True)
class TraceSpec:
    """``trace:[loop:][map:]PATH``: play once or loop; the trace's own keys, or mapped ones."""

    path: str
    loop: bool = False
    remap: bool = False

    def build(self, space: KeySpace, seed: int = 0, stream: int = 0, clock: Clock = time.time) -> KeyStream:
        """A :class:`TraceKeys` replaying the file at ``path``."""
        return TraceKeys(read_trace(self.path), space, loop=self.loop, remap=self.remap, seed=seed, stream=stream)

    def __str__(self) -> str:
        return f"trace:{TRACE_LOOP_PREFIX if self.loop else ''}{TRACE_MAP_PREFIX if self.remap else ''}{self.path}"


KeySpec = ZipfSpec | UniformSpec | DriftSpec | TraceSpec


def parse_spec(text: str) -> KeySpec:
    """Parse a distribution spec; ``ValueError`` naming the spec and what is wrong with it.

    Example::

        parse_spec("zipf:1.1")                         # ZipfSpec(s=1.1)
        parse_spec("drift:hot=500,p=0.9,every=10000")  # DriftSpec(500, 0.9, None, 10000)
        parse_spec("trace:loop:/data/trace.txt")       # TraceSpec("/data/trace.txt", loop=True)
    """
    try:
        return _parse(text)
    except ValueError as exc:
        raise ValueError(f"bad key distribution {text!r}: {exc}") from None


def _parse(text: str) -> KeySpec:
    kind, sep, arg = text.strip().partition(":")
    kind = kind.lower()
    if kind == "uniform" and not arg:
        return UniformSpec()
    if kind == "zipf" and sep:
        return ZipfSpec(_number(arg, "zipf exponent", float))
    if kind == "drift":
        return _parse_drift(arg)
    if kind == "trace" and arg:
        loop = arg.startswith(TRACE_LOOP_PREFIX)
        path = arg.removeprefix(TRACE_LOOP_PREFIX)
        remap = path.startswith(TRACE_MAP_PREFIX)
        path = path.removeprefix(TRACE_MAP_PREFIX)
        if path:
            return TraceSpec(path, loop, remap)
    raise ValueError(f"expected one of {SPEC_FORMS}")


def _number(value: str, what: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


# Spec parameter name -> (DriftSpec field, type).
_DRIFT_PARAMS: dict[str, tuple[str, type[int] | type[float]]] = {
    "hot": ("hot", int),
    "p": ("p", float),
    "period": ("period_s", float),
    "every": ("every", int),
}


def _parse_drift(arg: str) -> DriftSpec:
    values: dict[str, int | float | None] = {}
    for item in filter(None, (part.strip() for part in arg.split(","))):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or name not in _DRIFT_PARAMS:
            raise ValueError(f"unknown drift parameter {item!r}; use hot=H, p=P and period=T or every=N")
        field, kind = _DRIFT_PARAMS[name]
        values[field] = _number(value, f"drift {name}", kind)
    if "every" in values:
        values.setdefault("period_s", None)  # every=N replaces the default period
    return DriftSpec(**values)  # type: ignore[arg-type]


def key_stream(
    spec: str | KeySpec, space: KeySpace | int, seed: int = 0, stream: int = 0, clock: Clock = time.time
) -> KeyStream:
    """Parse ``spec`` (if text) and build its stream over ``space`` (a model's key space, or for
    an int the demo grid of that many segments).

    Example::

        keys = key_stream("uniform", 50, seed=1)
        batch = keys.take(16)
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    return parsed.build(as_key_space(space), seed, stream, clock)
