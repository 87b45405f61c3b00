"""models/keyspace.py: the key rule, the demo grid and tables of string ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.keyspace import KeyNotFound, KeyRuleError, KNOWN_KEYS_MAX, GridKeySpace, TableKeySpace, check_key, key_space_for


@pytest.mark.parametrize("key", ["", "a b", "tab\tkey", "new\nline", "nul\x00", "star*", "q?", "[x]", "a/b", "x" * 129, 17, None])
def test_the_key_rule_refuses(key: object) -> None:
    with pytest.raises(KeyRuleError, match="key rule"):
        check_key(key)


@pytest.mark.parametrize("key", ["a", "user-000042", "Ünïcødé", "17:42", "x" * 128, "a:b@c.d#e"])
def test_the_key_rule_accepts(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "1", "1:", ":1", "01:1", "1:01", "-1:1", "1:1:1", " 1:1", "1:1\n", "a:b", "*",
                                 "1:1*", "1" * 20 + ":1", "１:1"])
def test_grid_refuses_non_canonical_keys(key: str) -> None:
    with pytest.raises(KeyRuleError):
        GridKeySpace(5).index(key)


def test_grid_rows_and_keys_round_trip() -> None:
    space = GridKeySpace(3)
    assert space.count == 504 and space.index("2:5") == 2 * 168 + 5 and space.key(2 * 168 + 5) == "2:5"
    assert list(space.keys())[:2] == ["0:0", "0:1"] and len(list(space.keys())) == space.count
    with pytest.raises(KeyNotFound):
        space.index("0:168")


def test_table_keys_are_sorted_bytes_found_by_binary_search(tmp_path: Path) -> None:
    ids = [f"user-{i:06d}" for i in range(999, -1, -1)] + ["Ünï"]
    np.save(tmp_path / "keys.npy", TableKeySpace.encode(ids))
    space = TableKeySpace.load(tmp_path / "keys.npy", key_column="user_id")
    assert space.count == 1001 and space.key(0) == "user-000000" and space.key(space.index("Ünï")) == "Ünï"
    assert all(space.key(space.index(k)) == k for k in ids)
    for missing in ("user-1000000", "user-00000", "a", "zzz"):
        with pytest.raises(KeyNotFound, match="not in the model's key space"):
            space.index(missing)
    with pytest.raises(KeyRuleError):
        space.index("has space")
    assert space.describe()["kind"] == "table" and space.describe()["key_column"] == "user_id"


def test_the_memo_of_known_keys_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("models.keyspace.KNOWN_KEYS_MAX", 10)
    np.save(tmp_path / "keys.npy", TableKeySpace.encode([str(i) for i in range(100)]))
    space = TableKeySpace.load(tmp_path / "keys.npy")
    assert [space.index(str(i)) for i in range(100)] == [space.index(space.key(r)) for r in [space.index(str(i)) for i in range(100)]]
    assert len(space._known) == 10 < KNOWN_KEYS_MAX


def test_cards_name_their_key_space(tmp_path: Path) -> None:
    assert isinstance(key_space_for({"segments": 4}, tmp_path), GridKeySpace)  # cards from before key spaces
    np.save(tmp_path / "keys.npy", TableKeySpace.encode(["a"]))
    assert key_space_for({"key_space": {"kind": "table", "key_column": "id"}}, tmp_path).count == 1
    with pytest.raises(ValueError, match="unknown key space"):
        key_space_for({"key_space": {"kind": "graph"}}, tmp_path)
