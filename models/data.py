"""Deterministic synthetic road-traffic data.

A *key* is ``"<segment>:<hour_of_week>"``; the key space is every segment x 168 hours.
The generator gives each segment fixed attributes (road class, lanes, speed limit, length,
location) and produces traffic volume (vehicles per hour) with hour-of-week seasonality:
morning and evening rush hours on weekdays, a flatter midday peak at weekends, and road-class
effects, plus noise. The same seed always gives the same data.

Example::

    segments = make_segments(200, seed=7)
    table = feature_table(segments)          # one float32 row per key, key order
    X, y = observations(segments, weeks=4, seed=7)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOURS_PER_WEEK = 168
ROAD_CLASSES = ("motorway", "primary", "secondary", "residential")
# Relative base volume and typical lanes / speed limit per road class: motorways carry most.
_CLASS_BASE_VOLUME = np.array([1800.0, 900.0, 450.0, 120.0])
_CLASS_LANES = np.array([3, 2, 2, 1])
_CLASS_SPEED_KMH = np.array([110, 70, 50, 30])
_CLASS_WEIGHTS = np.array([0.08, 0.22, 0.35, 0.35])

FEATURE_NAMES: tuple[str, ...] = (
    "road_class",
    "lanes",
    "speed_limit_kmh",
    "length_km",
    "lat",
    "lon",
    "hour_of_day",
    "day_of_week",
    "is_weekend",
    "hour_sin",
    "hour_cos",
)


@dataclass(frozen=True)
class Segments:
    """Static attributes of every road segment, one array entry per segment id."""

    road_class: np.ndarray
    lanes: np.ndarray
    speed_limit_kmh: np.ndarray
    length_km: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    popularity: np.ndarray  # latent busyness factor, not a model feature

    @property
    def count(self) -> int:
        """Number of segments."""
        return int(self.road_class.shape[0])

    @property
    def key_count(self) -> int:
        """Size of the key space: segments x hours of the week."""
        return self.count * HOURS_PER_WEEK


def make_segments(count: int, seed: int = 7) -> Segments:
    """Draw ``count`` road segments with realistic, seed-determined attributes."""
    if count < 1:
        raise ValueError(f"segment count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    road_class = rng.choice(len(ROAD_CLASSES), size=count, p=_CLASS_WEIGHTS)
    lanes = np.clip(_CLASS_LANES[road_class] + rng.integers(-1, 2, size=count), 1, 5)
    speed = _CLASS_SPEED_KMH[road_class]
    # Round to a grid that float32 holds exactly, so ONNX (float32) and scikit-learn
    # (float64) see the same inputs and tree splits cannot flip on rounding.
    length_km = np.round(rng.gamma(2.0, 0.8, size=count) * 16) / 16 + 0.0625
    lat = np.round((52.0 + rng.normal(0, 0.15, size=count)) * 1024) / 1024
    lon = np.round((13.0 + rng.normal(0, 0.25, size=count)) * 1024) / 1024
    popularity = rng.lognormal(0.0, 0.5, size=count)
    return Segments(road_class, lanes, speed, length_km, lat, lon, popularity)


def key_of(segment: int, hour_of_week: int) -> str:
    """The key string for one segment and hour of the week."""
    return f"{segment}:{hour_of_week}"


def key_index(segment: int, hour_of_week: int) -> int:
    """Row of a key in the feature table (segment-major order)."""
    return segment * HOURS_PER_WEEK + hour_of_week


def all_keys(segment_count: int) -> list[str]:
    """Every key, in feature-table order."""
    return [key_of(s, h) for s in range(segment_count) for h in range(HOURS_PER_WEEK)]


def _hour_features(hours: np.ndarray) -> np.ndarray:
    hour_of_day = hours % 24
    day_of_week = hours // 24
    is_weekend = (day_of_week >= 5).astype(np.float64)
    angle = 2 * np.pi * hour_of_day / 24
    return np.column_stack([hour_of_day, day_of_week, is_weekend, np.sin(angle), np.cos(angle)])


def _features(segments: Segments, seg_idx: np.ndarray, hours: np.ndarray) -> np.ndarray:
    static = np.column_stack(
        [
            segments.road_class[seg_idx],
            segments.lanes[seg_idx],
            segments.speed_limit_kmh[seg_idx],
            segments.length_km[seg_idx],
            segments.lat[seg_idx],
            segments.lon[seg_idx],
        ]
    ).astype(np.float64)
    return np.hstack([static, _hour_features(hours)]).astype(np.float32)


def feature_table(segments: Segments) -> np.ndarray:
    """Float32 features of every key, row ``segment * 168 + hour`` (see :func:`key_index`)."""
    seg_idx = np.repeat(np.arange(segments.count), HOURS_PER_WEEK)
    hours = np.tile(np.arange(HOURS_PER_WEEK), segments.count)
    return _features(segments, seg_idx, hours)


def _seasonality(hours: np.ndarray) -> np.ndarray:
    """Hour-of-week demand profile: weekday rush hours, softer weekend midday peak."""
    hod = hours % 24
    weekend = (hours // 24) >= 5
    night = 0.15 + 0.1 * np.cos(2 * np.pi * (hod - 14) / 24)
    morning = np.exp(-0.5 * ((hod - 8.0) / 1.2) ** 2)
    evening = np.exp(-0.5 * ((hod - 17.5) / 1.5) ** 2)
    weekday_profile = night + 0.9 * morning + 1.0 * evening + 0.35
    weekend_profile = night + 0.6 * np.exp(-0.5 * ((hod - 13.0) / 3.0) ** 2) + 0.2
    return np.where(weekend, weekend_profile, weekday_profile)


def expected_volume(segments: Segments, seg_idx: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """Noise-free traffic volume (vehicles/hour) for the given segments and hours."""
    base = _CLASS_BASE_VOLUME[segments.road_class[seg_idx]] * segments.lanes[seg_idx] / 2
    return base * segments.popularity[seg_idx] * _seasonality(hours)


def observations(segments: Segments, weeks: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Historical observations: every key once per week, with multiplicative and additive noise.

    Returns float32 features (already float32-exact, see :func:`make_segments`) and float64 volumes.
    """
    if weeks < 1:
        raise ValueError(f"weeks must be >= 1, got {weeks}")
    rng = np.random.default_rng(seed + 1)
    seg_idx = np.tile(np.repeat(np.arange(segments.count), HOURS_PER_WEEK), weeks)
    hours = np.tile(np.arange(HOURS_PER_WEEK), segments.count * weeks)
    mean = expected_volume(segments, seg_idx, hours)
    y = mean * rng.lognormal(0.0, 0.12, size=mean.shape) + rng.normal(0.0, 5.0, size=mean.shape)
    return _features(segments, seg_idx, hours), np.clip(y, 0.0, None)
