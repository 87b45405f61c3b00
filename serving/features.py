"""Keys and their feature rows.

A key is ``"<segment>:<hour_of_week>"`` in canonical decimal form (no sign, no leading zeros, no
spaces), so one road-hour has exactly one cache key. Keys are validated before they go anywhere
near Redis: they can never be patterns, commands or another model's keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from models.data import HOURS_PER_WEEK
from serving.errors import MalformedKey, UnknownKey

MAX_KEY_LENGTH = 16
KEY_PATTERN = r"(0|[1-9][0-9]{0,8}):(0|[1-9][0-9]{0,2})"
"""A canonical key, ``<segment>:<hour_of_week>`` (also published in the OpenAPI schema)."""
_KEY_RE = re.compile(KEY_PATTERN)


def parse_key(key: str) -> tuple[int, int]:
    """``(segment, hour_of_week)`` of a canonical key; :class:`MalformedKey` otherwise."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or _KEY_RE.fullmatch(key) is None:
        shown = key[:MAX_KEY_LENGTH] + "..." if isinstance(key, str) and len(key) > MAX_KEY_LENGTH else key
        raise MalformedKey(f"key {shown!r} is not '<segment>:<hour_of_week>' (canonical integers, e.g. '17:42')")
    segment, hour = key.split(":")
    return int(segment), int(hour)


def validate_key(key: str) -> str:
    """The key itself if well-formed (for modes that need no feature row)."""
    parse_key(key)
    return key


class FeatureTable:
    """In-memory float32 features of every key of one model version (``features.npy``)."""

    def __init__(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[0] % HOURS_PER_WEEK:
            raise ValueError(f"feature table must have segments x {HOURS_PER_WEEK} rows, got shape {rows.shape}")
        self._rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.segments = rows.shape[0] // HOURS_PER_WEEK
        # Keys already validated, with their rows: at most one entry per key of the key space.
        self._known: dict[str, int] = {}

    @classmethod
    def load(cls, path: Path) -> FeatureTable:
        """Read a registry feature table."""
        return cls(np.load(path))

    @property
    def key_count(self) -> int:
        """Number of keys in the key space."""
        return int(self._rows.shape[0])

    @property
    def width(self) -> int:
        """Number of features per row."""
        return int(self._rows.shape[1])

    def index(self, key: str) -> int:
        """Row of ``key``; :class:`MalformedKey` or :class:`UnknownKey` if it has none."""
        row = self._known.get(key)
        if row is not None:
            return row
        segment, hour = parse_key(key)
        if segment >= self.segments or hour >= HOURS_PER_WEEK:
            raise UnknownKey(
                f"key {key!r} is outside the model's key space "
                f"(segments 0..{self.segments - 1}, hours 0..{HOURS_PER_WEEK - 1})"
            )
        row = self._known[key] = segment * HOURS_PER_WEEK + hour
        return row

    def rows(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Feature rows for the given indices, as one contiguous float32 block."""
        if len(indices) == 1:
            start = int(indices[0])
            return self._rows[start : start + 1]  # a view: no gather for the common single key
        return self._rows[np.asarray(indices, dtype=np.intp)]
