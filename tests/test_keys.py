"""Key distributions: determinism, shape, movement, trace mapping and spec errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from loadtests.keys import (
    DriftingHotSetKeys,
    DriftSpec,
    KeysExhausted,
    TraceSpec,
    UniformSpec,
    ZipfKeys,
    ZipfSpec,
    key_stream,
    parse_spec,
)
from models.data import HOURS_PER_WEEK
from models.keyspace import GridKeySpace, TableKeySpace

SEGMENTS = 50
KEY_COUNT = SEGMENTS * HOURS_PER_WEEK
GRID = GridKeySpace(SEGMENTS)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def indices(stream: object, count: int) -> np.ndarray:
    return np.array([stream.next_index() for _ in range(count)])  # type: ignore[attr-defined]


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.txt"
    path.write_text("road-a\nroad-b\n\nroad-a\nroad-c\nroad-b\nroad-a\n")
    return path


@pytest.fixture(params=["zipf:1.1", "uniform", "drift:hot=20,p=0.9,every=500", "trace:loop:", "trace:loop:map:"])
def spec(request: pytest.FixtureRequest, trace_file: Path) -> str:
    return request.param + (str(trace_file) if request.param.startswith("trace") else "")


def test_same_seed_and_stream_give_the_same_sequence(spec: str) -> None:
    first = key_stream(spec, SEGMENTS, seed=3, stream=1).take(6000)
    again = key_stream(spec, SEGMENTS, seed=3, stream=1).take(6000)
    assert first == again


def test_other_stream_or_seed_gives_another_sequence(spec: str) -> None:
    base = key_stream(spec, SEGMENTS, seed=3, stream=1).take(6000)
    assert key_stream(spec, SEGMENTS, seed=3, stream=2).take(6000) != base
    if spec.startswith("trace:") and ":map:" not in spec:
        return  # a trace's own keys: the seed picks no mapping, so it changes nothing
    assert key_stream(spec, SEGMENTS, seed=4, stream=1).take(6000) != base


def test_keys_are_model_keys(spec: str) -> None:
    if spec.startswith("trace:") and ":map:" not in spec:
        return  # a trace's own keys are whatever the trace holds (tested below)
    for key in key_stream(spec, SEGMENTS, seed=1).take(5000):
        segment, hour = map(int, key.split(":"))
        assert 0 <= segment < SEGMENTS and 0 <= hour < HOURS_PER_WEEK


def test_streams_yield_the_key_spaces_own_keys(tmp_path: Path) -> None:
    ids = [f"user-{i}" for i in range(500)]
    np.save(tmp_path / "keys.npy", TableKeySpace.encode(ids))
    space = TableKeySpace.load(tmp_path / "keys.npy")
    sent = key_stream("zipf:1.1", space, seed=1).take(2000)
    assert set(sent) <= set(ids) and len(set(sent)) > 100
    assert key_stream("uniform", 2, seed=1).take(1)[0].count(":") == 1  # an int: the demo grid


@pytest.mark.parametrize("s", [0.8, 1.0, 1.3])
def test_zipf_rank_frequency_slope_is_minus_s(s: float) -> None:
    draws = indices(ZipfKeys(GridKeySpace(200), s, seed=5), 300_000)
    top = np.sort(np.bincount(draws))[::-1][:100]
    slope = np.polyfit(np.log(np.arange(1, 101)), np.log(top), 1)[0]
    assert slope == pytest.approx(-s, abs=0.1)


def test_zipf_popular_keys_are_shuffled_by_the_seed() -> None:
    stream = ZipfKeys(GRID, 1.2, seed=9)
    top = [key for key, _ in Counter(indices(stream, 50_000).tolist()).most_common(5)]
    assert top == stream.rank_to_key[:5].tolist()
    assert sum(key < 20 for key in stream.rank_to_key[:20]) < 5  # not simply the lowest ids
    assert not np.array_equal(ZipfKeys(GRID, 1.2, seed=10).rank_to_key, stream.rank_to_key)
    # Streams of one seed agree on which keys are popular.
    assert np.array_equal(ZipfKeys(GRID, 1.2, seed=9, stream=7).rank_to_key, stream.rank_to_key)


def test_uniform_covers_the_key_space_evenly() -> None:
    counts = np.bincount(indices(key_stream("uniform", 2, seed=2), 2 * HOURS_PER_WEEK * 200))
    assert counts.shape == (2 * HOURS_PER_WEEK,)
    # 200 expected per key; 6 standard deviations either side.
    assert counts.min() > 200 - 6 * 200**0.5 and counts.max() < 200 + 6 * 200**0.5


def test_drift_hot_set_gets_fraction_p() -> None:
    stream = DriftingHotSetKeys(GRID, hot=50, p=0.8, every=10**9, seed=1)
    hot = set(stream.hot_keys())
    share = np.isin(indices(stream, 50_000), list(hot)).mean()
    assert share == pytest.approx(0.8, abs=0.01)


def test_drift_moves_the_hot_set_with_the_clock() -> None:
    clock = FakeClock(990.0)  # an epoch boundary: epochs count from clock zero
    stream = DriftSpec(hot=30, p=1.0, period_s=30.0).build(GRID, seed=4, clock=clock)
    before = set(indices(stream, 3000).tolist())
    assert before == set(stream.hot_keys())
    clock.now += 29.0
    assert set(indices(stream, 100).tolist()) <= before  # same epoch, same hot set
    clock.now += 1.0
    after = set(indices(stream, 3000).tolist())  # partly from a block drawn before the move
    assert after == set(stream.hot_keys()) and not after & before


def test_drift_moves_every_n_requests_for_replay() -> None:
    stream = key_stream("drift:hot=25,p=1,every=1000", SEGMENTS, seed=6)
    assert isinstance(stream, DriftingHotSetKeys)
    first, second = indices(stream, 1000), indices(stream, 1000)
    assert set(first.tolist()) == set(stream.hot_keys(0))
    assert set(second.tolist()) == set(stream.hot_keys(1))
    assert not set(first.tolist()) & set(second.tolist())


def test_trace_map_maps_distinct_keys_to_distinct_model_keys(trace_file: Path) -> None:
    replay = key_stream(f"trace:map:{trace_file}", SEGMENTS, seed=2).take(6)
    a, b, c = replay[0], replay[1], replay[3]
    assert replay == [a, b, a, c, b, a]
    assert len({a, b, c}) == 3 and all(GRID.index(k) >= 0 for k in (a, b, c))
    assert key_stream(f"trace:map:{trace_file}", SEGMENTS, seed=2).take(6) == replay  # stable


def test_trace_replays_its_own_keys_and_reports_the_unknown_share(tmp_path: Path) -> None:
    path = tmp_path / "own.txt"
    path.write_text("3:4\n3:4\nroad-a\n7:1\n99999:1\n")  # two of five requests for keys the model lacks
    stream = key_stream(f"trace:{path}", SEGMENTS)
    assert stream.take(5) == ["3:4", "3:4", "road-a", "7:1", "99999:1"]  # sent as they are: 404s, as users get
    assert stream.unknown_share == pytest.approx(0.4) and not stream.remap


def test_single_pass_trace_ends_and_loop_repeats(trace_file: Path) -> None:
    once = key_stream(f"trace:{trace_file}", SEGMENTS)
    sent = once.take(6)
    with pytest.raises(KeysExhausted):
        once.next_key()
    assert key_stream(f"trace:loop:{trace_file}", SEGMENTS).take(12) == sent + sent


def test_trace_mapped_with_more_distinct_keys_than_the_key_space_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("\n".join(f"k{i}" for i in range(HOURS_PER_WEEK + 1)))
    with pytest.raises(ValueError, match=r"169 distinct keys but the key space has only 168"):
        key_stream(f"trace:map:{path}", 1)
    assert key_stream(f"trace:{path}", 1).unknown_share == 1.0  # its own keys: sent, all unknown


def test_empty_trace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no keys"):
        key_stream(f"trace:{path}", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zipf:1.1", ZipfSpec(1.1)),
        ("Zipf:1", ZipfSpec(1.0)),
        ("uniform", UniformSpec()),
        ("drift:hot=500,p=0.9,period=30", DriftSpec(500, 0.9, 30.0)),
        ("drift:hot=5, every=100", DriftSpec(5, 0.9, None, 100)),
        ("trace:/data/t.txt", TraceSpec("/data/t.txt")),
        ("trace:loop:/data/t.txt", TraceSpec("/data/t.txt", loop=True)),
    ],
)
def test_good_specs_parse_and_print_back(text: str, expected: object) -> None:
    assert parse_spec(text) == expected
    assert parse_spec(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected one of"),
        ("zipf", "expected one of"),
        ("gauss:1", "expected one of"),
        ("zipf:abc", "zipf exponent must be a number, got 'abc'"),
        ("zipf:0", "zipf exponent must be a finite number > 0"),
        ("drift:hot=0", "drift hot must be >= 1"),
        ("drift:hot=1.5", "drift hot must be an integer"),
        ("drift:p=1.5", r"drift p must be within \[0, 1\]"),
        ("drift:period=0", "drift period must be > 0"),
        ("drift:every=10,period=5", "exactly one of period=SECONDS or every=REQUESTS"),
        ("drift:size=3", "unknown drift parameter 'size=3'"),
        ("trace:", "expected one of"),
    ],
)
def test_bad_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_spec(text)
    assert repr(text) in str(info.value)


def test_hot_set_must_be_smaller_than_the_key_space() -> None:
    with pytest.raises(ValueError, match="smaller than the key space"):
        key_stream(f"drift:hot={HOURS_PER_WEEK},every=10", 1)


def test_segment_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="segment count must be >= 1"):
        key_stream("uniform", 0)
