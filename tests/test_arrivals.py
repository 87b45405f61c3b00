"""The load test's arrival stream: Poisson or even send times, seeded, with stalls bounded."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.arrivals import ArrivalStream, check_process

RATE = 300.0


def _times(stream: ArrivalStream, count: int) -> np.ndarray:
    # Taken as fast as they come due: nobody falls behind.
    return np.array([stream.take(now=stream.start) for _ in range(count)])


def test_poisson_gaps_are_exponential_at_the_rate() -> None:
    gaps = np.diff(_times(ArrivalStream(RATE, "poisson", seed=3), 20_001))
    assert gaps.mean() == pytest.approx(1 / RATE, rel=0.03)
    # Exponential: the standard deviation equals the mean, and a share 1 - e^-1 of the gaps is
    # under the mean (evenly spaced or bursty arrivals fail one or the other).
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.05)
    assert (gaps < 1 / RATE).mean() == pytest.approx(1 - np.exp(-1), abs=0.02)


def test_even_arrivals_are_one_interval_apart() -> None:
    gaps = np.diff(_times(ArrivalStream(RATE, "even"), 1_000))
    assert gaps == pytest.approx(np.full(len(gaps), 1 / RATE))


def test_the_seed_fixes_the_sequence() -> None:
    first, again, other = (_times(ArrivalStream(RATE, seed=seed), 100) for seed in (5, 5, 6))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_arrivals_too_far_behind_are_dropped_not_sent_in_a_burst() -> None:
    stream = ArrivalStream(100.0, "even", start=0.0, max_behind_s=1.0)
    assert stream.take(now=0.0) == pytest.approx(0.01)
    # A stall of 5 s: about 4 s of arrivals are dropped, the last second's are sent late.
    late = [stream.take(now=5.0) for _ in range(150)]
    assert late[0] == pytest.approx(4.0, abs=0.011)
    assert stream.dropped == pytest.approx(398, abs=1)
    assert sum(t < 5.0 for t in late) == pytest.approx(100, abs=1)


@pytest.mark.parametrize("process", ["burst", ""])
def test_an_unknown_process_is_refused_with_the_choices(process: str) -> None:
    with pytest.raises(ValueError, match="poisson, even"):
        check_process(process)


def test_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        ArrivalStream(0.0)
