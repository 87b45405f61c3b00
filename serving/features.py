"""Feature rows of a model version's keys: the float32 table in key-space row order.

The table is memory-mapped (``features.npy``), so a server holding ten million keys' features pays
for the pages it reads, not for the file; rows are gathered per request into one contiguous block.
Which key is which row is the key space's business (:mod:`models.keyspace`).

Example::

    table = FeatureTable.load(version_dir / "features.npy", key_space)
    table.rows([table.index("17:42")])      # one float32 row, ready for the model
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from models.keyspace import KeyNotFound, KeyRuleError, KeySpace, random_access
from serving.errors import MalformedKey, UnknownKey


def served_lookup(lookup: Callable[[str], int]) -> Callable[[str], int]:
    """``lookup`` (a key space's ``index`` or ``check_key``) with the registry's key errors turned
    into the server's: a malformed key is 422 ``malformed_key``, a key outside the space 404."""

    def checked(key: str) -> int:
        try:
            return lookup(key)
        except KeyRuleError as exc:
            raise MalformedKey(str(exc)) from None
        except KeyNotFound as exc:
            raise UnknownKey(str(exc)) from None

    return checked


class FeatureTable:
    """Float32 features of every key of one model version, one row per key."""

    def __init__(self, rows: np.ndarray, key_space: KeySpace) -> None:
        if rows.ndim != 2 or rows.shape[0] != key_space.count:
            raise ValueError(f"feature table has shape {rows.shape}; its key space has {key_space.count} keys")
        if rows.dtype != np.float32:
            raise ValueError(f"feature table must be float32, got {rows.dtype}")
        self._rows = rows
        self.key_space = key_space
        self.index = served_lookup(key_space.index)  # built once: the hot path calls it per key

    @classmethod
    def load(cls, path: Path, key_space: KeySpace) -> FeatureTable:
        """Memory-map a registry feature table."""
        return cls(random_access(np.load(path, mmap_mode="r")), key_space)

    @property
    def key_count(self) -> int:
        """Number of keys in the key space."""
        return int(self._rows.shape[0])

    @property
    def width(self) -> int:
        """Number of features per row."""
        return int(self._rows.shape[1])

    def rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Feature rows for the given indices, as one contiguous float32 block."""
        if len(indices) == 1:
            start = int(indices[0])
            return np.asarray(self._rows[start : start + 1])  # a view: no gather for the common single key
        return np.asarray(self._rows[np.asarray(indices, dtype=np.intp)])
