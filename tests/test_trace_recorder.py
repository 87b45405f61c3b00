"""Tests for serving/trace_recorder.py: the live server's access-trace recorder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.trace_recorder import RECORDER_HEADER, TraceRecorder
from tuning.traces import Trace, read_trace


def _keys(trace: Trace) -> list[str]:
    return [trace.keys[i] for i in trace.ids.tolist()]


def test_recorder_output_reads_back_with_times(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    with TraceRecorder(path) as recorder:
        for stamp, key in [(1.0, "17:1"), (2.5, 'odd,"key"'), (3.0, " padded"), (4.0, "17:1")]:
            recorder.record(key, timestamp=stamp)
    trace = read_trace(path)
    assert _keys(trace) == ["17:1", 'odd,"key"', " padded", "17:1"]
    assert trace.times is not None and trace.times.tolist() == [1.0, 2.5, 3.0, 4.0]


def test_recorder_buffers_until_flush(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    recorder = TraceRecorder(path, buffer_lines=3, clock=lambda: 5.0)
    recorder.record("a")
    recorder.record("b")
    assert path.stat().st_size == len(RECORDER_HEADER)  # nothing written per request
    recorder.record("c")
    assert path.read_text().count("\n") == 4  # the third line filled the buffer
    recorder.record("d")
    recorder.flush()
    assert _keys(read_trace(path)) == ["a", "b", "c", "d"]
    recorder.close()
    with pytest.raises(ValueError, match="closed"):
        recorder.record("e")


def test_recorder_stops_at_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    limit = 200
    with TraceRecorder(path, max_bytes=limit, clock=lambda: 1.0) as recorder:
        for number in range(100):
            recorder.record(f"key{number}")
    assert recorder.full and 0 < recorder.recorded < 100
    assert path.stat().st_size <= limit
    assert read_trace(path).n_requests == recorder.recorded


def test_recorder_samples_whole_keys(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    keys = [f"{segment}:{hour}" for segment in range(200) for hour in range(5)] * 3
    with TraceRecorder(path, sample_rate=0.3, clock=lambda: 1.0) as recorder:
        for key in keys:
            recorder.record(key)
    trace = read_trace(path)
    counts = np.bincount(trace.ids)
    assert set(counts.tolist()) == {3}  # a sampled key keeps every one of its requests
    assert 0.2 < trace.n_unique / 1000 < 0.4


def test_recorder_sample_rate_zero_records_nothing(tmp_path: Path) -> None:
    with TraceRecorder(tmp_path / "live.csv", sample_rate=0.0) as recorder:
        recorder.record("a")
    assert recorder.recorded == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"sample_rate": 1.5}, "sample_rate"), ({"max_bytes": 3}, "max_bytes"), ({"buffer_lines": 0}, "buffer_lines")],
)
def test_recorder_rejects_bad_settings(tmp_path: Path, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TraceRecorder(tmp_path / "live.csv", **kwargs)  # type: ignore[arg-type]
