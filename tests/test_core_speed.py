"""loadtests/harness/core_speed.py: a real probe process pinned to a core, sampling while a window is open."""

from __future__ import annotations

import os
import time

import pytest

from loadtests.harness.core_speed import INTERVAL_S, CoreSpeedProbe, reading_of


def _a_core() -> list[int]:
    return sorted(os.sched_getaffinity(0))[-1:]


def test_a_probe_samples_its_core_for_as_long_as_the_window_is_open() -> None:
    with CoreSpeedProbe(_a_core()) as probe:
        time.sleep(20 * INTERVAL_S)
    reading = probe.reading
    assert reading is not None
    # About one sample an interval (fewer on a busy machine, never more).
    assert 5 <= reading.samples <= 21
    assert reading.unit_us > 0 and reading.spread >= 1.0
    assert probe._process is not None and probe._process.returncode == 0  # stopped when the window closed


def test_a_window_shorter_than_an_interval_has_no_reading() -> None:
    with CoreSpeedProbe(_a_core(), interval_s=5.0) as probe:
        pass
    assert probe.reading is None


def test_a_reading_is_the_mean_unit_time_and_its_spread() -> None:
    reading = reading_of([400.0, 600.0, 500.0])
    assert reading is not None
    assert reading.unit_us == pytest.approx(500.0) and reading.samples == 3 and reading.spread == pytest.approx(1.5)
    assert reading.as_record() == {"unit_us": pytest.approx(500.0), "samples": 3, "spread": pytest.approx(1.5)}
    assert reading_of([]) is None


def test_an_error_inside_the_window_stops_the_probe_and_propagates() -> None:
    with pytest.raises(KeyError), CoreSpeedProbe(_a_core()) as probe:
        raise KeyError("boom")
    assert probe._process is not None and probe._process.poll() is not None  # no probe left behind
    assert probe.reading is None
