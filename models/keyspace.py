"""Key spaces: which keys a model version answers, and each key's row in its feature table.

Two kinds, named in the model card's ``key_space``:

- ``grid``: the demo's road-hours, ``"<segment>:<hour_of_week>"`` in canonical decimal form (no
  sign, no leading zeros), row ``segment * 168 + hour``. Nothing is stored: the key is the row.
- ``table``: a user's own ids (customer ids, item ids: any strings that pass :func:`check_key`),
  stored once per version in ``keys.npy`` as fixed-width UTF-8 bytes, sorted, with the feature
  table in the same order. A key's row is its position, found by binary search in the
  memory-mapped array: 10 million keys cost no Python strings and no heap beyond the pages read.
  The keys a server has already looked up are remembered (up to :data:`KNOWN_KEYS_MAX`), so the
  keys of real traffic resolve with one dictionary lookup.

Every key is checked before it goes near Redis or a log line: a key can never be a pattern, a
command or another model's key. This module belongs to the registry (a card names its key space);
the server turns its two errors into 422 and 404 (:mod:`serving.features`).

Example::

    space = key_space_for(card, version_dir)
    row = space.index("user-000042")     # KeyRuleError / KeyNotFound otherwise
    space.key(row)                       # "user-000042"
"""

from __future__ import annotations

import bisect
import mmap
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np



class KeyRuleError(ValueError):
    """A key is malformed: it breaks the key rule, or the grid's format."""


class KeyNotFound(LookupError):
    """A well-formed key that is not in the key space."""

HOURS_PER_WEEK = 168
KEYS_FILE = "keys.npy"
FENCES_FILE = "key_fences.npy"
MAX_KEY_LENGTH = 128
# A server remembers the rows of this many looked-up keys; past it, lookups still work (binary
# search), the memo just stops growing, so an attacker sending every key cannot grow the heap.
KNOWN_KEYS_MAX = 1_000_000
# Keys between two in-memory fence keys: a stride of at most 128-byte keys spans a few pages.
FENCE_STRIDE = 64
# What a key may not contain: whitespace and control characters (log lines, HTTP paths), Redis glob
# characters (SCAN patterns) and "/" (a GET /v1/predict/{key} path segment cannot hold it).
FORBIDDEN_KEY_CHARACTERS = r"\s\x00-\x1f\x7f*?\[\]/"
"""A regex character class body (also published in the OpenAPI schema)."""
_FORBIDDEN = re.compile(f"[{FORBIDDEN_KEY_CHARACTERS}]")
KEY_RULE = f"1-{MAX_KEY_LENGTH} characters, no whitespace or control characters, none of * ? [ ] /"
GRID_KEY_PATTERN = r"(0|[1-9][0-9]{0,8}):(0|[1-9][0-9]{0,2})"
"""A grid key in canonical integers (also published in the OpenAPI schema)."""
_GRID_KEY = re.compile(GRID_KEY_PATTERN)
GRID_MAX_LENGTH = 13


def check_key(key: object) -> str:
    """``key`` itself if it follows :data:`KEY_RULE`; :class:`KeyRuleError` naming the rule otherwise."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH or _FORBIDDEN.search(key) is not None:
        raise KeyRuleError(f"key {_shown(key)} breaks the key rule: {KEY_RULE}")
    return key


def _shown(key: object) -> str:
    if isinstance(key, str) and len(key) > 32:
        return repr(key[:32] + "...")
    return repr(key)


class KeySpace(Protocol):
    """The keys of one model version and their rows."""

    kind: str
    count: int

    def index(self, key: str) -> int:
        """Row of ``key``; :class:`KeyRuleError` or :class:`KeyNotFound` if it has none."""
        ...

    def key(self, row: int) -> str:
        """The key of ``row`` (0 <= row < count)."""
        ...

    def keys(self) -> Iterator[str]:
        """Every key, in row order."""
        ...

    def check(self, key: str) -> str:
        """``key`` if well-formed for this key space (without asking whether it exists)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The card's ``key_space`` entry."""
        ...


class GridKeySpace:
    """The demo's ``"<segment>:<hour_of_week>"`` keys: ``segments x 168`` of them."""

    kind = "grid"

    def __init__(self, segments: int) -> None:
        if segments < 1:
            raise ValueError(f"a grid key space needs at least one segment, got {segments}")
        self.segments = segments
        self.count = segments * HOURS_PER_WEEK
        # Keys already looked up, with their rows: a request's key is checked by the walk and looked
        # up again for its feature row, and popular keys come back; only valid keys enter.
        self._known: dict[str, int] = {}

    def check(self, key: str) -> str:
        """``key`` if it is ``<segment>:<hour>`` in canonical integers."""
        if not isinstance(key, str) or len(key) > GRID_MAX_LENGTH or _GRID_KEY.fullmatch(key) is None:
            raise KeyRuleError(f"key {_shown(key)} is not '<segment>:<hour_of_week>' (canonical integers, e.g. '17:42')")
        return key

    def index(self, key: str) -> int:
        """``segment * 168 + hour``."""
        row = self._known.get(key)
        if row is not None:
            return row
        segment, hour = (int(part) for part in self.check(key).split(":"))
        if segment >= self.segments or hour >= HOURS_PER_WEEK:
            raise KeyNotFound(f"key {key!r} is outside the model's key space "
                             f"(segments 0..{self.segments - 1}, hours 0..{HOURS_PER_WEEK - 1})")
        row = segment * HOURS_PER_WEEK + hour
        if len(self._known) < KNOWN_KEYS_MAX:
            self._known[key] = row
        return row

    def key(self, row: int) -> str:
        """The key of a row."""
        segment, hour = divmod(int(row), HOURS_PER_WEEK)
        return f"{segment}:{hour}"

    def keys(self) -> Iterator[str]:
        """Every key, segment-major."""
        return (f"{segment}:{hour}" for segment in range(self.segments) for hour in range(HOURS_PER_WEEK))

    def describe(self) -> dict[str, Any]:
        """``{"kind": "grid", "segments": N, "count": N * 168}``."""
        return {"kind": self.kind, "segments": self.segments, "count": self.count, "format": "<segment>:<hour_of_week>"}


class TableKeySpace:
    """A user's own string ids: a sorted, memory-mapped array of their UTF-8 bytes."""

    kind = "table"

    def __init__(self, sorted_keys: np.ndarray, key_column: str = "key", fences: np.ndarray | None = None) -> None:
        if sorted_keys.dtype.kind != "S" or sorted_keys.ndim != 1 or len(sorted_keys) == 0:
            raise ValueError("a table key space needs a non-empty 1-D array of key bytes")
        # A plain view of the mapped file: slicing an np.memmap costs microseconds of bookkeeping.
        self._keys = np.asarray(sorted_keys)
        self.count = int(len(sorted_keys))
        self.key_column = key_column
        self._known: dict[str, int] = {}
        # Every FENCE_STRIDE-th key, in memory (Python bytes, 1/64 of the keys): a lookup bisects
        # these, then searches one stride of the mapped array, so it touches one or two pages of the
        # file instead of one per step of a binary search over all of it (an SSTable's index block,
        # in miniature). Measured: 6 us a first lookup at 2M keys, against 22 us for a plain search.
        # Stored beside the keys by the importer, so loading them does not read the whole key file.
        self._fences: list[bytes] = (fences if fences is not None else self.fences_of(sorted_keys)).tolist()

    @classmethod
    def load(cls, path: Path, key_column: str = "key") -> TableKeySpace:
        """The ``keys.npy`` of a registry version, memory-mapped for random access (with its
        ``key_fences.npy`` when the version has one)."""
        fences_path = path.with_name(FENCES_FILE)
        fences = np.load(fences_path) if fences_path.is_file() else None
        return cls(random_access(np.load(path, mmap_mode="r")), key_column, fences)

    @staticmethod
    def fences_of(sorted_keys: np.ndarray) -> np.ndarray:
        """Every :data:`FENCE_STRIDE`-th key: what ``key_fences.npy`` holds."""
        return np.array(sorted_keys[::FENCE_STRIDE])

    @staticmethod
    def encode(keys: list[str]) -> np.ndarray:
        """Keys as the sorted fixed-width bytes array :meth:`load` reads (checks every key)."""
        encoded = [check_key(k).encode() for k in keys]
        width = max(len(k) for k in encoded)
        return np.sort(np.array(encoded, dtype=f"S{width}"))

    def check(self, key: str) -> str:
        """``key`` if it follows the key rule."""
        return check_key(key)

    def index(self, key: str) -> int:
        """Row of ``key``: a memo hit, else a binary search over the sorted bytes."""
        row = self._known.get(key)
        if row is not None:
            return row
        raw = check_key(key).encode()
        if len(raw) > self._keys.dtype.itemsize:  # longer than every key: a cast would truncate it
            raise KeyNotFound(f"key {_shown(key)} is not in the model's key space ({self.count:,} keys)")
        block = max(0, bisect.bisect_right(self._fences, raw) - 1) * FENCE_STRIDE
        probe = np.array(raw, dtype=self._keys.dtype)
        position = block + int(self._keys[block : block + FENCE_STRIDE].searchsorted(probe))
        if position == self.count or self._keys[position] != raw:
            raise KeyNotFound(f"key {_shown(key)} is not in the model's key space ({self.count:,} keys)")
        if len(self._known) < KNOWN_KEYS_MAX:
            self._known[key] = position
        return position

    def key(self, row: int) -> str:
        """The key of a row."""
        return bytes(self._keys[int(row)]).decode()

    def keys(self) -> Iterator[str]:
        """Every key, in row (sorted) order."""
        return (bytes(raw).decode() for raw in self._keys)

    def describe(self) -> dict[str, Any]:
        """``{"kind": "table", "count": N, "key_column": ..., "max_length": ...}``."""
        return {"kind": self.kind, "count": self.count, "key_column": self.key_column,
                "max_length": int(self._keys.dtype.itemsize), "rule": KEY_RULE}


def random_access(array: np.ndarray) -> np.ndarray:
    """Tell the kernel a memory-mapped array is read at random (no read-ahead around each page
    touched: a cold lookup then reads a page, not a window of them); other arrays pass unchanged."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return array


def key_space_for(card: dict[str, Any], version_dir: Path) -> KeySpace:
    """The key space a model card names (cards from before key spaces are demo grids)."""
    spec = card.get("key_space") or {"kind": "grid", "segments": card["segments"]}
    if spec["kind"] == "grid":
        return GridKeySpace(int(spec["segments"]))
    if spec["kind"] == "table":
        return TableKeySpace.load(version_dir / KEYS_FILE, spec.get("key_column", "key"))
    raise ValueError(f"unknown key space kind {spec['kind']!r} in the card of {version_dir}")
