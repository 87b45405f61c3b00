"""The reference distribution a model card carries, the baseline of drift monitoring.

Per feature: quantile bin edges of the training rows (deciles by default) and the share of those
rows in each bin; for the model's output: the same over the holdout's predictions (an imported
model has no holdout: its predictions over a sample of its feature table). :mod:`serving.drift`
compares the traffic's bins with these shares (population stability index).

Bins: ``edges`` are the distinct deciles (values that occur in the rows), ascending; a value's
bin is the number of edges below it (``np.searchsorted(edges, x, side="left")``), so an edge is
the inclusive top of its bin and there are ``len(edges) + 1`` bins, the last above the top
decile (values above the training maximum land there too). A discrete feature (a road class, a
weekday flag) has fewer distinct deciles than bins; repeated ones collapse into one edge, so
each of its values keeps a bin of its own and the last bin is empty in the reference.

Example::

    card["reference"] = reference_distribution(X_train, FEATURE_NAMES, holdout_predictions,
                                               features_from="training rows", predictions_from="holdout")
    bin_of(np.array([3.5]), card["reference"]["features"]["lanes"]["edges"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

REFERENCE_BINS = 10
"""Quantile bins per feature (deciles): enough to see a shift, few enough that a window of a
thousand rows fills every bin (the noise of PSI grows with bins / rows)."""
REFERENCE_KEY = "reference"
"""Where the reference sits in ``card.json``."""


def bin_of(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The bin of each value: the number of ``edges`` below it (see the module docstring)."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left")


def histogram(values: np.ndarray, bins: int = REFERENCE_BINS) -> dict[str, list[float]]:
    """Quantile edges of ``values`` and the share of ``values`` in each bin."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("a reference distribution needs at least one value")
    # inverted_cdf: every edge is a value that occurs, so a discrete feature's edges are its values.
    cuts = np.quantile(values, np.arange(1, bins) / bins, method="inverted_cdf")
    edges = np.unique(cuts)
    counts = np.bincount(bin_of(values, edges), minlength=len(edges) + 1)
    return {"edges": [float(e) for e in edges], "shares": [float(c) for c in counts / values.size]}


def reference_distribution(
    X: np.ndarray,
    names: Sequence[str],
    predictions: np.ndarray,
    *,
    features_from: str,
    predictions_from: str,
    bins: int = REFERENCE_BINS,
) -> dict[str, Any]:
    """The card's ``reference`` entry: per-feature histograms of ``X`` (one column per name) and
    the histogram of ``predictions``; ``*_from`` say where the rows came from, for the monitoring
    report (e.g. ``"training rows (134400)"``)."""
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"reference rows have shape {X.shape}; expected one column per feature ({len(names)})")
    return {
        "bins": bins,
        "features_from": features_from,
        "features": {name: histogram(X[:, i], bins) for i, name in enumerate(names)},
        "prediction_from": predictions_from,
        "prediction": histogram(predictions, bins),
    }
