"""models/data.py: determinism, shape and structure of the synthetic traffic data."""

import numpy as np
import pytest

from models import data


def test_same_seed_same_data() -> None:
    a, b = data.make_segments(30, seed=3), data.make_segments(30, seed=3)
    X1, y1 = data.observations(a, weeks=2, seed=3)
    X2, y2 = data.observations(b, weeks=2, seed=3)
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2)


def test_different_seed_different_data() -> None:
    X1, _ = data.observations(data.make_segments(30, seed=1), weeks=1, seed=1)
    X2, _ = data.observations(data.make_segments(30, seed=2), weeks=1, seed=2)
    assert not np.array_equal(X1, X2)


def test_shapes_and_key_order() -> None:
    segs = data.make_segments(12)
    table = data.feature_table(segs)
    assert table.shape == (12 * data.HOURS_PER_WEEK, len(data.FEATURE_NAMES))
    assert table.dtype == np.float32
    keys = data.all_keys(12)
    assert len(keys) == segs.key_count == 12 * 168
    assert keys[data.key_index(5, 17)] == "5:17"
    hour_col = data.FEATURE_NAMES.index("hour_of_day")
    assert table[data.key_index(5, 17), hour_col] == 17


def test_float32_exact_features() -> None:
    X, _ = data.observations(data.make_segments(10), weeks=1)
    assert np.array_equal(X.astype(np.float64).astype(np.float32), X)


def test_weekday_rush_hours_and_road_classes() -> None:
    segs = data.make_segments(400, seed=11)
    idx = np.arange(segs.count)
    monday_8, monday_3 = np.full(segs.count, 8), np.full(segs.count, 3)
    assert np.all(data.expected_volume(segs, idx, monday_8) > data.expected_volume(segs, idx, monday_3))
    saturday_8 = np.full(segs.count, 5 * 24 + 8)
    assert data.expected_volume(segs, idx, saturday_8).mean() < data.expected_volume(segs, idx, monday_8).mean()
    motorway = segs.road_class == 0
    residential = segs.road_class == 3
    vol = data.expected_volume(segs, idx, monday_8)
    assert vol[motorway].mean() > 3 * vol[residential].mean()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="segment count"):
        data.make_segments(0)
    with pytest.raises(ValueError, match="weeks"):
        data.observations(data.make_segments(2), weeks=0)
