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
# Weeks of history the kNN model keeps and searches on every prediction: with 200 segments about
# 240k observations, over 1 ms a row in ONNX Runtime on one core (dev machine).
HEAVY_WEEKS = 8
# Spread of the positions probe vehicles report along a segment around its nominal midpoint
# (degrees, ~500 m; segments are about 1.5 km long).
HEAVY_POSITION_JITTER_DEG = 0.005
# 8 neighbours = 32 bytes a row: ONNX Runtime's ReduceMean then sees every row equally aligned,
# so a key's prediction is the same float whatever batch it is computed in (with 10, rows at odd
# batch positions came out one ulp off).
HEAVY_NEIGHBOURS = 8
# ONNX Runtime's CDist computes |q|^2 + |x|^2 - 2 q.x in float32, so a squared distance carries an
# error of a few float32 steps of |q|^2 + |x|^2, whatever the distance. Neighbours whose squared
# distances are closer than this many steps are a tie: float32 and float64 (scikit-learn) may keep
# different ones, and both answers are right.
TIE_FLOAT32_STEPS = 16


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



def _estimator(profile: Profile, seed: int) -> RegressorMixin:
    if profile == "light":
        return HistGradientBoostingRegressor(max_iter=100, max_depth=8, random_state=seed)
    return make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=HEAVY_NEIGHBOURS, algorithm="brute"))


def _split(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed + 2).permutation(len(X))
    cut = int(len(X) * (1 - HOLDOUT_FRACTION))
    train, hold = order[:cut], order[cut:]
    return X[train], y[train], X[hold], y[hold]


def _history(X: np.ndarray, seed: int) -> np.ndarray:
    """Historical observations as recorded: each carries the position its probe vehicle reported
    somewhere along the segment, not the segment's nominal midpoint.

    Besides realism, the jitter makes every stored observation distinct: the same key observed in
    different weeks would otherwise be exact distance ties (and near-ties below float32 resolution),
    which scikit-learn and ONNX Runtime break differently. Offsets sit on a 2^-14 degree grid, exact
    in float32.
    """
    rng = np.random.default_rng(seed + 3)
    jittered = X.copy()
    for column in (data.FEATURE_NAMES.index("lat"), data.FEATURE_NAMES.index("lon")):
        offsets = np.round(rng.normal(0.0, HEAVY_POSITION_JITTER_DEG, size=len(X)) * 2**14) / 2**14
        jittered[:, column] = (X[:, column].astype(np.float64) + offsets).astype(np.float32)
    return jittered


def train_profile(profile: Profile, segments: int = DEFAULT_SEGMENTS, seed: int = DEFAULT_SEED) -> TrainResult:
    """Generate the synthetic history and fit the profile's model on it (deterministic)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    segs = data.make_segments(segments, seed)
    X, y = data.observations(segs, HEAVY_WEEKS if profile == "heavy" else TRAIN_WEEKS, seed)
    X_train, y_train, X_hold, y_hold = _split(X, y, seed)
    if profile == "heavy":
        X_train = _history(X_train, seed)
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
    dist, idx = knn.kneighbors(scaled, knn.n_neighbors + 1)
    stored = knn._fit_X  # the scaled observations the model searches  # noqa: SLF001
    norms = (scaled**2).sum(axis=1) + np.maximum((stored[idx[:, -2]] ** 2).sum(axis=1), (stored[idx[:, -1]] ** 2).sum(axis=1))
    gap = dist[:, -1] ** 2 - dist[:, -2] ** 2
    return gap <= TIE_FLOAT32_STEPS * np.finfo(np.float32).eps * norms
