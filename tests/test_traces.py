"""Tests for tuning/traces.py: readers and the oracleGeneral writer."""

from __future__ import annotations

from pathlib import Path

import libcachesim as lcs
import numpy as np
import pytest

from tuning.traces import (
    ORACLE_RECORD,
    Trace,
    TraceFormat,
    TraceFormatError,
    detect_format,
    next_access_indices,
    read_csv_trace,
    read_oracle_trace,
    read_text_trace,
    read_trace,
    write_oracle_trace,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _keys(trace: Trace) -> list[str]:
    return [trace.keys[i] for i in trace.ids.tolist()]


# --------------------------------------------------------------------------- Trace


def test_from_keys_numbers_ids_by_first_appearance() -> None:
    trace = Trace.from_keys(["b", "a", "b", "c"])
    assert trace.ids.tolist() == [0, 1, 0, 2]
    assert trace.keys == ("b", "a", "c")
    assert (trace.n_requests, trace.n_unique) == (4, 3)
    assert trace.times is None


def test_split_shares_ids_and_counts_its_own_unique_keys() -> None:
    trace = Trace.from_keys(["a", "b", "a", "c", "c", "c"], times=[1, 2, 3, 4, 5, 6])
    train, test = trace.split(0.5)
    assert _keys(train) == ["a", "b", "a"] and _keys(test) == ["c", "c", "c"]
    assert (train.n_unique, test.n_unique) == (2, 1)
    assert test.times is not None and test.times.tolist() == [4.0, 5.0, 6.0]


def test_trace_rejects_mismatched_times() -> None:
    with pytest.raises(ValueError, match="times has 1 entries for 2 requests"):
        Trace.from_keys(["a", "b"], times=[1.0])


# --------------------------------------------------------------------------- text


def test_text_reader_skips_blank_lines_and_strips(tmp_path: Path) -> None:
    trace = read_text_trace(_write(tmp_path / "t.txt", "17:1\n\n  17:2 \n17:1\n\n"))
    assert _keys(trace) == ["17:1", "17:2", "17:1"]


def test_text_reader_rejects_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no requests"):
        read_text_trace(_write(tmp_path / "empty.keys", "\n \n"))


# --------------------------------------------------------------------------- CSV


def test_csv_reader_uses_time_column_when_present(tmp_path: Path) -> None:
    trace = read_csv_trace(_write(tmp_path / "t.csv", "time,key\n10.5,a\n11,b\n\n12,a\n"))
    assert _keys(trace) == ["a", "b", "a"]
    assert trace.times is not None and trace.times.tolist() == [10.5, 11.0, 12.0]


def test_csv_reader_named_columns_and_quoted_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", 'ts, route ,x\n1,"a,b",0\n2,c,0\n')
    trace = read_csv_trace(path, key_column="route", time_column="ts")
    assert _keys(trace) == ["a,b", "c"]
    assert trace.times is not None and trace.times.tolist() == [1.0, 2.0]
    assert read_csv_trace(path, key_column="route").times is None


def test_csv_reader_names_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "time,url\n1,a\n")
    with pytest.raises(TraceFormatError, match=r"no column 'key'.*\['time', 'url'\]"):
        read_csv_trace(path)
    with pytest.raises(TraceFormatError, match="no column 'ts'"):
        read_csv_trace(path, key_column="url", time_column="ts")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty CSV trace"),
        ("time,key\n", "no requests"),
        ("time,key\n1,a\nsoon,b\n", r"t.csv:3: time 'soon' is not a number"),
        ("time,key\n1,a\n2\n", r"t.csv:3: expected at least 2 fields, got 1"),
    ],
)
def test_csv_reader_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TraceFormatError, match=message):
        read_csv_trace(_write(tmp_path / "t.csv", text))


def test_trace_format_error_is_a_value_error() -> None:
    assert issubclass(TraceFormatError, ValueError)


# --------------------------------------------------------------------------- oracleGeneral


def test_next_access_is_one_based_request_index() -> None:
    assert next_access_indices(np.array([5, 7, 5, 9, 7, 5])).tolist() == [3, 5, 6, -1, -1, -1]


def test_writer_matches_libcachesim_conversion(tmp_path: Path) -> None:
    keys = "5 7 5 9 7 5 11 9 2 5".split()
    text = _write(tmp_path / "n.txt", "\n".join(keys) + "\n")
    reader = lcs.TraceReader(str(text), lcs.TraceType.PLAIN_TXT_TRACE, lcs.ReaderInitParam(ignore_obj_size=True))
    lcs.Util.convert_to_oracleGeneral(reader._reader, str(tmp_path / "theirs.oracleGeneral"))
    theirs = np.fromfile(tmp_path / "theirs.oracleGeneral", dtype=ORACLE_RECORD)
    ours = np.fromfile(write_oracle_trace(Trace.from_keys(keys), tmp_path / "ours.bin"), dtype=ORACLE_RECORD)
    assert len(ours) == len(keys)
    expected = ours[: len(theirs)].copy()
    if len(theirs) == len(keys) - 1:
        # libcachesim 0.3.5's converter drops the final request, so pointers to it read -1 there.
        expected["next_access"][expected["next_access"] == len(keys)] = -1
    assert theirs.tolist() == expected.tolist()


def test_oracle_round_trip_keeps_numeric_keys_and_times(tmp_path: Path) -> None:
    trace = Trace.from_keys(["42", "7", "42", "0"], times=[100.9, 101.2, 103.0, 103.5])
    back = read_oracle_trace(write_oracle_trace(trace, tmp_path / "t.oracleGeneral"))
    assert _keys(back) == ["42", "7", "42", "0"]
    assert back.times is not None and back.times.tolist() == [0.0, 0.0, 2.0, 2.0]
    records = np.fromfile(tmp_path / "t.oracleGeneral", dtype=ORACLE_RECORD)
    assert records["obj_id"].tolist() == [42, 7, 42, 0] and set(records["size"].tolist()) == {1}


def test_oracle_round_trip_of_string_keys_keeps_the_sequence(tmp_path: Path) -> None:
    trace = Trace.from_keys(["17:3", "007", "7", "17:3"])  # "007" and "7" must stay distinct
    back = read_trace(write_oracle_trace(trace, tmp_path / "t.bin"))
    assert back.ids.tolist() == trace.ids.tolist()
    assert back.times is None  # no timestamps written as zeros, read as none


@pytest.mark.parametrize(("size", "message"), [(0, "no requests"), (30, "truncated.*30 bytes.*6 stray bytes")])
def test_oracle_reader_rejects_empty_and_truncated(tmp_path: Path, size: int, message: str) -> None:
    path = tmp_path / "bad.oracleGeneral"
    path.write_bytes(b"\0" * size)
    with pytest.raises(TraceFormatError, match=message):
        read_oracle_trace(path)


# --------------------------------------------------------------------------- format detection


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.txt", TraceFormat.TEXT), ("a.keys", TraceFormat.TEXT), ("a.CSV", TraceFormat.CSV),
     ("a.oracleGeneral", TraceFormat.ORACLE), ("a.bin", TraceFormat.ORACLE)],
)
def test_detect_format(name: str, kind: TraceFormat) -> None:
    assert detect_format(name) is kind


@pytest.mark.parametrize(("name", "what"), [("trace.log", r"extension '\.log'"), ("trace", "without an extension")])
def test_unknown_extension_says_what_works(tmp_path: Path, name: str, what: str) -> None:
    path = _write(tmp_path / name, "a\n")
    with pytest.raises(TraceFormatError, match=rf"{what}.*\.csv") as error:
        read_trace(path)
    # The CLI has no format option: the message must not send a user to one.
    assert "format=" not in str(error.value)
    assert _keys(read_trace(path, format="text")) == ["a"]


def test_directory_is_refused_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "traces.txt"
    folder.mkdir()
    with pytest.raises(TraceFormatError, match="is a directory"):
        read_trace(folder)


RANDOM_BYTES = np.random.default_rng(5).integers(0, 256, 24 * 400, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("name", ["garbage.txt", "garbage.csv"])
def test_binary_bytes_named_as_text_are_refused_with_a_reason(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(RANDOM_BYTES)
    with pytest.raises(TraceFormatError, match="not a text trace.*oracleGeneral"):
        read_trace(path)


def test_ascii_control_bytes_are_not_a_text_trace(tmp_path: Path) -> None:
    """Bytes below 0x80 decode as UTF-8, so decoding alone does not catch them."""
    path = tmp_path / "garbage.keys"
    path.write_bytes(bytes(b % 128 for b in RANDOM_BYTES).replace(b"\n", b"\x01"))
    with pytest.raises(TraceFormatError, match="control character"):
        read_trace(path)


def test_random_bytes_are_not_an_oracle_trace(tmp_path: Path) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(RANDOM_BYTES)  # a whole number of 24-byte records
    with pytest.raises(TraceFormatError, match="not an oracleGeneral trace: record"):
        read_trace(path)


def test_oracle_next_access_must_name_the_same_object(tmp_path: Path) -> None:
    path = write_oracle_trace(Trace.from_keys(["1", "2", "1", "3"]), tmp_path / "t.bin")
    records = np.fromfile(path, dtype=ORACLE_RECORD)
    read_oracle_trace(path)  # as written: valid
    records["next_access"][0] = 2  # request 2 is object 2, not object 1
    records.tofile(path)
    with pytest.raises(TraceFormatError, match="record 1: next access 2 is a request for another object"):
        read_oracle_trace(path)
