"""Synthetic access traces from the load-test key distributions, for tuning without real traffic.

The keys are model keys (``"17:42"``) drawn by :func:`loadtests.keys.key_stream`, so a synthetic
trace has the same popularity shape a load test of the same spec sends.

Example::

    write_synthetic_trace("zipf:1.1", requests=50_000, space=200, seed=7, out="zipf.keys.txt")
    read_trace("zipf.keys.txt").n_unique
"""

from __future__ import annotations

from pathlib import Path

from loadtests.keys import KeysExhausted, key_stream
from models.keyspace import KeySpace

# Keys are written in chunks so a long trace never sits in memory as one list of strings.
SYNTH_CHUNK = 65_536


def write_synthetic_trace(spec: str, *, requests: int, space: KeySpace | int, seed: int, out: str | Path) -> Path:
    """Write ``requests`` keys of distribution ``spec`` (e.g. ``zipf:1.1``) over ``space`` (a model's
    key space, or the demo grid of that many segments), one per line, to ``out``."""
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    stream = key_stream(spec, space, seed=seed)
    target = Path(out)
    with open(target, "w", encoding="utf-8") as handle:
        left = requests
        while left > 0:
            try:
                keys = stream.take(min(left, SYNTH_CHUNK))
            except KeysExhausted:  # a single-pass trace:PATH spec ran out of lines
                break
            handle.write("\n".join(keys) + "\n")
            left -= len(keys)
    return target
