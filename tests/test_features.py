"""serving/features.py: canonical keys, validation before Redis, and feature rows."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import HOURS_PER_WEEK
from serving.errors import MalformedKey, UnknownKey
from serving.features import FeatureTable, parse_key


@pytest.mark.parametrize(("key", "parsed"), [("0:0", (0, 0)), ("17:42", (17, 42)), ("199:167", (199, 167))])
def test_parse(key: str, parsed: tuple[int, int]) -> None:
    assert parse_key(key) == parsed


@pytest.mark.parametrize("key", ["", "1", "1:", ":1", "01:1", "1:01", "-1:1", "1:1:1", " 1:1", "1:1\n", "a:b", "*",
                                 "1:1*", "1" * 20 + ":1", "１:1"])
def test_malformed(key: str) -> None:
    with pytest.raises(MalformedKey):
        parse_key(key)


def test_table_rows_and_key_space() -> None:
    rows = np.arange(3 * HOURS_PER_WEEK * 2, dtype=np.float32).reshape(-1, 2)
    table = FeatureTable(rows)
    assert table.segments == 3 and table.key_count == 3 * HOURS_PER_WEEK and table.width == 2
    assert table.index("2:5") == 2 * HOURS_PER_WEEK + 5
    assert table.index("2:5") == 2 * HOURS_PER_WEEK + 5  # the remembered path gives the same row
    np.testing.assert_array_equal(table.rows([table.index("1:0")]), rows[HOURS_PER_WEEK : HOURS_PER_WEEK + 1])
    np.testing.assert_array_equal(table.rows([0, 2]), rows[[0, 2]])
    with pytest.raises(UnknownKey, match="outside"):
        table.index("3:0")
    with pytest.raises(UnknownKey):
        table.index("0:168")
    with pytest.raises(ValueError, match="segments x"):
        FeatureTable(np.zeros((10, 2), dtype=np.float32))
