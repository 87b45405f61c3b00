"""serving/features.py: feature rows in key-space order, memory-mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.errors import UnknownKey
from serving.features import FeatureTable
from models.keyspace import HOURS_PER_WEEK, GridKeySpace, TableKeySpace


def test_grid_table_rows() -> None:
    rows = np.arange(3 * HOURS_PER_WEEK * 2, dtype=np.float32).reshape(-1, 2)
    table = FeatureTable(rows, GridKeySpace(3))
    assert table.key_count == 3 * HOURS_PER_WEEK and table.width == 2
    assert table.index("2:5") == 2 * HOURS_PER_WEEK + 5
    np.testing.assert_array_equal(table.rows([table.index("1:0")]), rows[HOURS_PER_WEEK : HOURS_PER_WEEK + 1])
    np.testing.assert_array_equal(table.rows([0, 2]), rows[[0, 2]])
    with pytest.raises(UnknownKey, match="outside"):
        table.index("3:0")


def test_table_must_match_its_key_space() -> None:
    with pytest.raises(ValueError, match="key space has"):
        FeatureTable(np.zeros((10, 2), dtype=np.float32), GridKeySpace(1))
    with pytest.raises(ValueError, match="float32"):
        FeatureTable(np.zeros((HOURS_PER_WEEK, 2)), GridKeySpace(1))


def test_memory_mapped_rows_of_string_keys(tmp_path: Path) -> None:
    keys = TableKeySpace.encode(["b", "a", "c"])
    np.save(tmp_path / "keys.npy", keys)
    np.save(tmp_path / "features.npy", np.array([[1.0], [2.0], [3.0]], dtype=np.float32))
    table = FeatureTable.load(tmp_path / "features.npy", TableKeySpace.load(tmp_path / "keys.npy"))
    assert table.rows([table.index("c")]).tolist() == [[3.0]]  # rows follow the sorted keys
    assert table.rows([table.index("a"), table.index("b")]).tolist() == [[1.0], [2.0]]
