"""A trace in the served model's key space: its own keys where the model has them, or mapped on request.

A trace is replayed with its own keys: a request for a key the model's key space does not hold is
one every mode answers 404, so it is left out of the simulation and its share is reported
(``out_of_space_share``). Mapping the trace's distinct keys onto distinct keys of the key space
(seeded, so a trace of string ids can drive the demo model) is an explicit option, never a default.

Example::

    fitted = fit_trace(read_trace("requests.csv"), model.key_space)
    fitted.trace, fitted.out_of_space_share, fitted.distinct_in_space
    fit_trace(read_trace("web.keys.txt"), model.key_space, map_keys=True).mapped   # True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.keyspace import KeyNotFound, KeyRuleError, KeySpace
from tuning.traces import Trace

MAX_KEYS_SHOWN = 3


@dataclass(frozen=True)
class FittedTrace:
    """The requests of a trace that the model can answer, with keys of its key space."""

    trace: Trace
    original_requests: int
    out_of_space_share: float
    """Share of the original requests whose key is not in the key space (0 when mapped)."""
    distinct_in_space: int
    """Distinct keys of the trace in the key space (after mapping, when mapped)."""
    key_count: int
    """Keys in the model's key space."""
    mapped: bool
    collisions: int = 0
    """Mapped only: distinct trace keys beyond the key space's size, folded onto keys already used."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the trace itself left out)."""
        return {"original_requests": self.original_requests, "requests_in_space": len(self.trace),
                "out_of_space_share": self.out_of_space_share, "distinct_in_space": self.distinct_in_space,
                "key_count": self.key_count, "mapped": self.mapped, "collisions": self.collisions}


def in_key_space(trace: Trace, key_space: KeySpace) -> np.ndarray:
    """Per distinct key of ``trace`` (by id), whether the key space holds it."""
    inside = np.zeros(len(trace.keys), dtype=bool)
    for number, key in enumerate(trace.keys):
        try:
            key_space.index(key)
        except (KeyRuleError, KeyNotFound):
            continue
        inside[number] = True
    return inside


def fit_trace(trace: Trace, key_space: KeySpace, *, map_keys: bool = False, seed: int = 0) -> FittedTrace:
    """``trace`` restricted to (or, with ``map_keys``, mapped onto) ``key_space``.

    ``ValueError`` when no request is in the key space and mapping was not asked for: the message
    shows a few of the keys and the option that maps them.
    """
    if map_keys:
        return _mapped(trace, key_space, seed)
    inside = in_key_space(trace, key_space)
    if not inside.any():
        shown = ", ".join(repr(k) for k in trace.keys[:MAX_KEYS_SHOWN])
        raise ValueError(f"none of the trace's {len(trace.keys):,} keys is in the model's key space "
                         f"({key_space.count:,} keys; the trace has {shown}, ...); map them onto it with --map-keys")
    keep = inside[trace.ids]
    kept = np.flatnonzero(keep)
    times = None if trace.times is None else trace.times[kept]
    fitted = Trace.from_keys((trace.keys[i] for i in trace.ids[kept].tolist()), times=times)
    return FittedTrace(fitted, len(trace), 1.0 - len(kept) / len(trace), fitted.n_unique, key_space.count, False)


def _mapped(trace: Trace, key_space: KeySpace, seed: int) -> FittedTrace:
    """Distinct trace keys -> distinct rows of a seeded permutation of the key space (folded
    modulo its size when the trace has more distinct keys than the key space)."""
    distinct = len(trace.keys)
    rows = np.random.default_rng(seed).permutation(key_space.count)
    chosen = rows[np.arange(distinct) % key_space.count]
    keys = tuple(key_space.key(int(row)) for row in chosen.tolist())
    fitted = Trace.from_keys((keys[i] for i in trace.ids.tolist()), times=trace.times)
    return FittedTrace(fitted, len(trace), 0.0, fitted.n_unique, key_space.count, True,
                       collisions=max(0, distinct - key_space.count))
