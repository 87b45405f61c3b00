"""tuning/key_fit.py: traces replayed with their own keys where the model has them, mapped only on request."""

from __future__ import annotations

import pytest

from models.keyspace import GridKeySpace
from tuning.key_fit import fit_trace
from tuning.traces import Trace

SPACE = GridKeySpace(2)  # 336 keys: "0:0" .. "1:167"


def test_own_keys_are_kept_and_the_rest_reported() -> None:
    trace = Trace.from_keys(["0:1", "web-page", "1:5", "0:1", "9:9", "0:1"], times=[1, 2, 3, 4, 5, 6])
    fitted = fit_trace(trace, SPACE)
    assert [fitted.trace.keys[i] for i in fitted.trace.ids.tolist()] == ["0:1", "1:5", "0:1", "0:1"]
    assert fitted.out_of_space_share == pytest.approx(2 / 6) and fitted.distinct_in_space == 2
    assert fitted.trace.times.tolist() == [1, 3, 4, 6] and not fitted.mapped


def test_no_key_in_the_space_says_how_to_map() -> None:
    with pytest.raises(ValueError, match="--map-keys"):
        fit_trace(Trace.from_keys(["a", "b"]), SPACE)


def test_mapping_is_explicit_distinct_and_seeded() -> None:
    trace = Trace.from_keys(["a", "b", "a", "c"])
    fitted = fit_trace(trace, SPACE, map_keys=True, seed=1)
    keys = [fitted.trace.keys[i] for i in fitted.trace.ids.tolist()]
    assert fitted.mapped and keys[0] == keys[2] and len(set(keys)) == 3
    assert all(SPACE.index(key) >= 0 for key in keys)
    assert keys == [fitted.trace.keys[i] for i in fit_trace(trace, SPACE, map_keys=True, seed=1).trace.ids.tolist()]
