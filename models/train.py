"""Training of the demo road-traffic models (scikit-learn).

Two profiles show both serving regimes:

- ``light``: a histogram gradient-boosted tree ensemble; about ten microseconds a row in ONNX Runtime,
  so a cache lookup can cost more than inference.
- ``heavy``: k-nearest-neighbours regression over a sample of historical observations; milliseconds
  a row, so caching pays. Its ONNX graph computes all pairwise distances, which batches well.

Example::

    result = train_profile("light", segments=200, seed=7)
    result.model.predict(result.X_holdout[:3])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models import data

Profile = Literal["light", "heavy"]
PROFILES: tuple[Profile, ...] = ("light", "heavy")

DEFAULT_SEGMENTS = 200
DEFAULT_SEED = 7
TRAIN_WEEKS = 4
HOLDOUT_FRACTION = 0.1
# Historical observations the kNN model searches per prediction: sized so one row costs a few
# milliseconds in ONNX Runtime on one core (about 3 ms measured on the dev machine).
HEAVY_HISTORY_ROWS = 2000
# 8 neighbours = 32 bytes a row: ONNX Runtime's ReduceMean then sees every row equally aligned,
# so a key's prediction is the same float whatever batch it is computed in (with 10, rows at odd
# batch positions came out one ulp off).
HEAVY_NEIGHBOURS = 8
# Neighbour distances closer than this (relative) are a tie: float32 (ONNX) and float64
# (scikit-learn) may then pick different neighbours, and both answers are equally right.
TIE_RELATIVE_GAP = 1e-4


@dataclass(frozen=True)
class TrainResult:
    """A fitted model with the data it was fitted and evaluated on."""

    profile: Profile
    model: RegressorMixin
    segments: data.Segments
    seed: int
    X_train: np.ndarray
    y_train: np.ndarray
    X_holdout: np.ndarray
    y_holdout: np.ndarray


def model_name(profile: Profile) -> str:
    """Registry name of a profile's model."""
    return f"traffic-{profile}"


def _estimator(profile: Profile, seed: int) -> RegressorMixin:
    if profile == "light":
        return HistGradientBoostingRegressor(max_iter=100, max_depth=8, random_state=seed)
    return make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=HEAVY_NEIGHBOURS))


def _split(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed + 2).permutation(len(X))
    cut = int(len(X) * (1 - HOLDOUT_FRACTION))
    train, hold = order[:cut], order[cut:]
    return X[train], y[train], X[hold], y[hold]


def _history_sample(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-key mean of the observed weeks, for a seeded sample of keys.

    One row per distinct feature vector: duplicate rows (the same key in different weeks) would be
    exact distance ties, and scikit-learn and ONNX Runtime break ties differently.
    """
    unique, inverse = np.unique(X, axis=0, return_inverse=True)
    means = np.bincount(inverse.ravel(), weights=y) / np.bincount(inverse.ravel())
    pick = np.sort(np.random.default_rng(seed + 3).choice(len(unique), min(HEAVY_HISTORY_ROWS, len(unique)), replace=False))
    return unique[pick], means[pick]


def train_profile(profile: Profile, segments: int = DEFAULT_SEGMENTS, seed: int = DEFAULT_SEED) -> TrainResult:
    """Generate the synthetic history and fit the profile's model on it (deterministic)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    segs = data.make_segments(segments, seed)
    X, y = data.observations(segs, TRAIN_WEEKS, seed)
    X_train, y_train, X_hold, y_hold = _split(X, y, seed)
    if profile == "heavy":
        X_train, y_train = _history_sample(X_train, y_train, seed)
    # float32 inputs seen as float64: exactly what ONNX Runtime will see, so parity is fair.
    model = _estimator(profile, seed).fit(X_train.astype(np.float64), y_train)
    return TrainResult(profile, model, segs, seed, X_train, y_train, X_hold, y_hold)


def ambiguous_rows(model: RegressorMixin, X: np.ndarray) -> np.ndarray:
    """Rows whose prediction depends on how ties are broken (kNN only; all False otherwise).

    kNN over a grid of hours has exact ties: a query at hour h is as far from h-1 as from h+1 of
    the same road. When the k-th and (k+1)-th neighbours tie, scikit-learn and ONNX Runtime may keep
    different ones. ONNX Runtime itself is deterministic, so every serving mode still agrees.
    """
    steps = getattr(model, "steps", None)
    if not steps or not isinstance(steps[-1][1], KNeighborsRegressor):
        return np.zeros(len(X), dtype=bool)
    knn: KNeighborsRegressor = steps[-1][1]
    scaled = X.astype(np.float64)
    for _, step in steps[:-1]:
        scaled = step.transform(scaled)
    dist, _ = knn.kneighbors(scaled, knn.n_neighbors + 1)
    kth, nxt = dist[:, -2], dist[:, -1]
    return (nxt - kth) <= TIE_RELATIVE_GAP * np.maximum(kth, 1e-12)
