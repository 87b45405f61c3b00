"""Access traces: read them and write them for libCacheSim (the live server records them with
:mod:`serving.trace_recorder`).

A :class:`Trace` is compact: one ``int64`` key id per request (ids are dense, numbered in order of
first appearance), the original key strings once each, and optional per-request timestamps.

Three on-disk formats, picked by extension (see :func:`detect_format`):

- text (``.txt``, ``.keys``): one key per line, oldest first; blank lines are skipped.
- CSV (``.csv``): a header row, a key column (``key`` unless told otherwise) and optionally a
  time column in seconds (``time`` is used when present). :class:`serving.trace_recorder.TraceRecorder` writes this.
- libCacheSim oracleGeneral (``.oracleGeneral``, ``.bin``): 24-byte little-endian records
  ``<u4 time, <u8 object id, <u4 size, <i8 next access>``, where next access is the 1-based index
  of the next request for the same object, -1 for none. Belady needs this format.

Example::

    trace = read_trace("web.keys.txt")
    trace.n_requests, trace.n_unique
    write_oracle_trace(trace, "web.oracleGeneral")   # for libCacheSim's Belady
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from _csv import Reader as CsvRows

DEFAULT_KEY_COLUMN = "key"
DEFAULT_TIME_COLUMN = "time"

# One oracleGeneral record, exactly as libCacheSim's oracleGeneralBin reader decodes it.
ORACLE_RECORD = np.dtype(
    [("time", "<u4"), ("obj_id", "<u8"), ("size", "<u4"), ("next_access", "<i8")]
)
ORACLE_NO_NEXT_ACCESS = -1
_U4_MAX = np.iinfo(np.uint32).max
_U8_MAX = np.iinfo(np.uint64).max

class TraceFormat(str, Enum):
    """On-disk trace formats."""

    TEXT = "text"
    CSV = "csv"
    ORACLE = "oracleGeneral"


_EXTENSIONS: dict[str, TraceFormat] = {
    ".txt": TraceFormat.TEXT,
    ".keys": TraceFormat.TEXT,
    ".csv": TraceFormat.CSV,
    ".oraclegeneral": TraceFormat.ORACLE,
    ".bin": TraceFormat.ORACLE,
}


class TraceFormatError(ValueError):
    """A trace file that cannot be read: unknown extension, no requests, missing column, bad record."""


@dataclass(frozen=True, eq=False)
class Trace:
    """A request sequence: ``keys[ids[i]]`` is the key of request ``i``.

    ``times`` (seconds, float64, one per request) is ``None`` when the source has no timestamps.
    Build one from strings with :meth:`from_keys`; read one from disk with :func:`read_trace`.
    """

    ids: np.ndarray
    keys: tuple[str, ...]
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids.ndim != 1 or self.ids.dtype != np.int64:
            raise ValueError(f"Trace.ids must be a 1-D int64 array, got {self.ids.dtype} {self.ids.shape}")
        if self.times is not None and self.times.shape != self.ids.shape:
            raise ValueError(f"Trace.times has {self.times.shape[0]} entries for {self.ids.shape[0]} requests")

    @classmethod
    def from_keys(cls, keys: Iterable[str], times: Sequence[float] | np.ndarray | None = None) -> Trace:
        """Encode a sequence of key strings.

        Example::

            trace = Trace.from_keys(["a", "b", "a"])
            trace.ids.tolist()   # [0, 1, 0]
        """
        index: dict[str, int] = {}
        ids = np.fromiter((index.setdefault(key, len(index)) for key in keys), dtype=np.int64)
        stamps = None if times is None else np.asarray(times, dtype=np.float64)
        return cls(ids=ids, keys=tuple(index), times=stamps)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_requests(self) -> int:
        """Number of requests."""
        return len(self)

    @cached_property
    def n_unique(self) -> int:
        """Number of distinct keys requested in this trace (a split part may use fewer than ``keys``)."""
        if len(self) == 0:
            return 0
        return int(np.count_nonzero(np.bincount(self.ids, minlength=len(self.keys))))

    def split(self, fraction: float) -> tuple[Trace, Trace]:
        """The first ``fraction`` of the requests and the rest, sharing key ids.

        Example::

            train, test = trace.split(0.5)   # choose a static head on train, evaluate on test
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"split fraction must be within [0, 1], got {fraction}")
        cut = int(len(self) * fraction)
        return self._slice(0, cut), self._slice(cut, len(self))

    def _slice(self, start: int, stop: int) -> Trace:
        times = None if self.times is None else self.times[start:stop]
        return Trace(ids=self.ids[start:stop], keys=self.keys, times=times)


# --------------------------------------------------------------------------- reading


def detect_format(path: str | Path) -> TraceFormat:
    """The trace format implied by the file extension; :class:`TraceFormatError` if unknown."""
    suffix = Path(path).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        known = ", ".join(sorted(_EXTENSIONS))
        what = f"extension {suffix!r}" if suffix else "a name without an extension"
        # No mention of read_trace's format= argument: the CLI has no such option, so the way out
        # that works everywhere is the file's name.
        raise TraceFormatError(
            f"{path}: cannot tell the trace format from {what}; name the file with one of {known} "
            "(.txt/.keys: one key per line, .csv: a header row and a key column, "
            ".oracleGeneral/.bin: libCacheSim binary)"
        ) from None


def read_trace(
    path: str | Path,
    *,
    format: TraceFormat | str | None = None,
    key_column: str = DEFAULT_KEY_COLUMN,
    time_column: str | None = None,
) -> Trace:
    """Read a trace in any supported format, chosen by extension unless ``format`` is given.

    ``key_column``/``time_column`` apply to CSV only (see :func:`read_csv_trace`).

    Example::

        trace = read_trace("requests.csv", key_column="route")
    """
    kind = detect_format(path) if format is None else TraceFormat(format)
    if Path(path).is_dir():
        raise TraceFormatError(f"{path} is a directory; give the path of a trace file inside it")
    if kind is TraceFormat.TEXT:
        return read_text_trace(path)
    if kind is TraceFormat.CSV:
        return read_csv_trace(path, key_column=key_column, time_column=time_column)
    return read_oracle_trace(path)


def read_text_trace(path: str | Path) -> Trace:
    """Read one key per line (surrounding whitespace stripped, blank lines skipped)."""
    with _text_errors(path), open(path, encoding="utf-8") as lines:
        keys = [key for key in (line.strip() for line in lines) if key]
    _require_requests(path, len(keys))
    _require_printable(path, keys)
    return Trace.from_keys(keys)


def read_csv_trace(
    path: str | Path, *, key_column: str = DEFAULT_KEY_COLUMN, time_column: str | None = None
) -> Trace:
    """Read a CSV trace with a header row.

    ``time_column=None`` uses a ``time`` column when there is one and reads no times otherwise;
    naming a column makes it required. Times must be numbers (seconds).

    Example::

        trace = read_csv_trace("access.csv", key_column="url", time_column="ts")
    """
    with _text_errors(path), open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle, skipinitialspace=True)
        header = [name.strip() for name in next(rows, [])]
        if not header:
            raise TraceFormatError(f"{path}: empty CSV trace (no header row, no requests)")
        key_index = _column_index(path, header, key_column)
        time_index = _time_column_index(path, header, time_column)
        keys, times = _read_csv_rows(path, rows, key_index, time_index)
    _require_requests(path, len(keys))
    _require_printable(path, keys)
    return Trace.from_keys(keys, times=times if time_index is not None else None)


def read_oracle_trace(path: str | Path) -> Trace:
    """Read a libCacheSim oracleGeneral binary trace.

    Object ids become the key strings (``"42"``). Sizes and next-access fields are not kept: the
    simulator counts objects and :func:`write_oracle_trace` recomputes next accesses. A time field
    that is zero throughout (libCacheSim writes that for untimed sources) reads as no timestamps.
    """
    records = _load_oracle_records(path)
    ids, object_ids = _first_appearance_ids(records["obj_id"])
    times = records["time"].astype(np.float64)
    return Trace(ids=ids, keys=tuple(str(obj) for obj in object_ids.tolist()), times=times if times.any() else None)


def _require_requests(path: str | Path, count: int) -> None:
    if count == 0:
        raise TraceFormatError(f"{path}: the trace holds no requests")


@contextmanager
def _text_errors(path: str | Path) -> Iterator[None]:
    """A text reader's decode error as a :class:`TraceFormatError` that says what the file is not."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise TraceFormatError(
            f"{path}: not a text trace: byte {error.start} ({error.object[error.start]:#04x}) is not UTF-8 text; "
            "a libCacheSim binary trace must be named .oracleGeneral or .bin"
        ) from None


def _require_printable(path: str | Path, keys: Sequence[str]) -> None:
    """Binary data can decode as UTF-8 by chance (bytes below 0x80 do): control characters other
    than tab never occur in a key of a real trace, so they mark the file as not text."""
    for number, key in enumerate(keys, 1):
        bad = next((char for char in key if ord(char) < 32 and char != "\t"), None)
        if bad is not None:
            raise TraceFormatError(
                f"{path}: not a text trace: key {number} holds control character {ord(bad):#04x}; "
                "a libCacheSim binary trace must be named .oracleGeneral or .bin"
            )


def _column_index(path: str | Path, header: list[str], column: str) -> int:
    try:
        return header.index(column)
    except ValueError:
        raise TraceFormatError(
            f"{path}: no column {column!r} in the CSV header; columns are {header}"
        ) from None


def _time_column_index(path: str | Path, header: list[str], column: str | None) -> int | None:
    if column is None:
        # Optional by default: only a trace that has a time column gets timestamps.
        return header.index(DEFAULT_TIME_COLUMN) if DEFAULT_TIME_COLUMN in header else None
    return _column_index(path, header, column)


def _read_csv_rows(
    path: str | Path, rows: CsvRows, key_index: int, time_index: int | None
) -> tuple[list[str], list[float]]:
    keys: list[str] = []
    times: list[float] = []
    needed = max(key_index, -1 if time_index is None else time_index) + 1
    for row in rows:
        if not row:
            continue
        line = rows.line_num
        if len(row) < needed:
            raise TraceFormatError(f"{path}:{line}: expected at least {needed} fields, got {len(row)}")
        keys.append(row[key_index])
        if time_index is not None:
            times.append(_parse_time(path, line, row[time_index]))
    return keys, times


def _parse_time(path: str | Path, line: int, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TraceFormatError(f"{path}:{line}: time {text!r} is not a number of seconds") from None


def _load_oracle_records(path: str | Path) -> np.ndarray:
    size = Path(path).stat().st_size
    _require_requests(path, size)
    stray = size % ORACLE_RECORD.itemsize
    if stray:
        raise TraceFormatError(
            f"{path}: truncated oracleGeneral trace: {size} bytes is not a whole number of "
            f"{ORACLE_RECORD.itemsize}-byte records ({stray} stray bytes at the end)"
        )
    records = np.fromfile(path, dtype=ORACLE_RECORD)
    _check_oracle_records(path, records)
    return records


def _check_oracle_records(path: str | Path, records: np.ndarray) -> None:
    """Refuse bytes that are not oracleGeneral records: times must not go back, and each
    ``next_access`` is -1 or a later request (one inside the file must be of the same object; one
    past its end is allowed, for a prefix cut from a longer trace). Random bytes fail at once."""
    times = records["time"]
    back = np.flatnonzero(times[1:] < times[:-1])
    if back.size:
        _bad_record(path, int(back[0]) + 1, f"time {times[back[0] + 1]} is earlier than the record before it")
    nxt = records["next_access"]
    own = np.arange(1, len(records) + 1)
    invalid = np.flatnonzero((nxt != ORACLE_NO_NEXT_ACCESS) & (nxt <= own))
    if invalid.size:
        _bad_record(path, int(invalid[0]), f"next access {nxt[invalid[0]]} is not a later request")
    inside = np.flatnonzero((nxt > own) & (nxt <= len(records)))
    other = inside[records["obj_id"][nxt[inside] - 1] != records["obj_id"][inside]]
    if other.size:
        _bad_record(path, int(other[0]), f"next access {nxt[other[0]]} is a request for another object")


def _bad_record(path: str | Path, index: int, why: str) -> None:
    raise TraceFormatError(f"{path}: not an oracleGeneral trace: record {index + 1}: {why}")


def _first_appearance_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids numbered by first appearance, and the distinct values in that order."""
    distinct, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse].astype(np.int64), distinct[order]


# --------------------------------------------------------------------------- writing


def next_access_indices(ids: np.ndarray) -> np.ndarray:
    """For each request, the 1-based index of the next request for the same key, or -1.

    This is the oracleGeneral ``next_access`` field, with libCacheSim's own convention (checked
    against its ``convert_to_oracleGeneral``).

    Example::

        next_access_indices(np.array([5, 7, 5]))   # -> [3, -1, -1]
    """
    order = np.argsort(ids, kind="stable")
    same_key = ids[order[1:]] == ids[order[:-1]]
    following = np.full(ids.shape[0], ORACLE_NO_NEXT_ACCESS, dtype=np.int64)
    following[order[:-1][same_key]] = order[1:][same_key] + 1
    return following


def write_oracle_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as libCacheSim oracleGeneral binary (every object size 1).

    Keys that are all canonical non-negative integers keep their numbers as object ids (so the
    file matches libCacheSim's own conversion of the same text trace); other keys get their dense
    ids. Times are whole seconds since the first request, 0 when the trace has none.

    Example::

        write_oracle_trace(read_trace("web.keys.txt"), "web.oracleGeneral")
    """
    records = np.zeros(len(trace), dtype=ORACLE_RECORD)
    records["time"] = _oracle_times(trace)
    records["obj_id"] = _oracle_object_ids(trace)
    records["size"] = 1
    records["next_access"] = next_access_indices(trace.ids)
    target = Path(path)
    records.tofile(target)
    return target


def _oracle_object_ids(trace: Trace) -> np.ndarray:
    numbers = _canonical_numbers(trace.keys)
    if numbers is None:
        return trace.ids.astype(np.uint64)
    return numbers[trace.ids]


def _canonical_numbers(keys: Sequence[str]) -> np.ndarray | None:
    """The keys as uint64 when every key is the canonical decimal form of one; else ``None``."""
    # Canonical form only ("7", not "007"), so distinct keys never collide on one number.
    if not all(key.isascii() and key.isdigit() and str(int(key)) == key for key in keys):
        return None
    values = [int(key) for key in keys]
    if values and max(values) > _U8_MAX:
        return None
    return np.array(values, dtype=np.uint64)


def _oracle_times(trace: Trace) -> np.ndarray:
    if trace.times is None or len(trace) == 0:
        return np.zeros(len(trace), dtype=np.uint32)
    relative = np.floor(trace.times - trace.times.min())
    if relative.max() > _U4_MAX:
        raise ValueError(f"trace spans {relative.max():.0f} s, more than oracleGeneral's 32-bit time field")
    return relative.astype(np.uint32)
