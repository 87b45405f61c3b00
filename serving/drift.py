"""Drift monitoring: the traffic's inputs and the answered predictions against the card's reference.

One :class:`DriftMonitor` per served version (it lives in the version's
:class:`serving.service.ServedState`, so a reload starts a fresh window). It keeps the last
``drift_window`` observed rows in a ring buffer (bounded memory: six bytes per feature and row,
the float32 value, its bin and whether it is out of range), and from them, per feature:

- the **population stability index** of the window's bins against the reference shares of the
  card (:mod:`models.reference`): ``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over the bins, the
  shares floored at :data:`PSI_FLOOR` so an empty bin counts as rare rather than impossible;
- the **share of out-of-range values**: outside the [min, max] the model was trained on;

and the PSI of the answered predictions against the holdout's. A statistic above its threshold
(``drift_psi_threshold``, ``drift_prediction_psi_threshold``) once the window holds at least
``drift_min_rows`` rows **fires an alert**, stamped with the time it first fired; it clears when
the statistic falls back to the threshold or below.

Observed: the rows of raw-feature requests, the feature rows of requested keys (from the model's
feature table), and every answered value. Only a ``drift_sample_rate`` share of requests is
observed (every request's rows when it is): :meth:`DriftMonitor.sampled` is one addition on the
hot path, and an observed request is a copy of its rows into the ring buffer; binning runs in
bulk, vectorised over rows and features (``benchmarks/drift_overhead.py`` measures what each
costs). The statistics are recomputed every
:data:`EVALUATE_EVERY_SHARE` of a window (and when read), so an alert fires at most that many
rows after the window crossed the threshold.

Workers: a monitor's :meth:`DriftMonitor.snapshot` holds its window's bin counts, which add up;
:func:`monitoring_report` merges the snapshots of every worker of a version (as
:class:`serving.metrics.WorkerSnapshots` carries them) into one report: statistics of the summed
counts, ``fired_at`` the earliest of the workers' own alerts.

Example::

    monitor = DriftMonitor.for_version(card, "a16b398c84f1", rows_of_keys, settings)
    if monitor.sampled():
        monitor.observe(rows, predictions)
    monitoring_report([monitor.snapshot()])   # GET /v1/monitoring
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from models.reference import REFERENCE_KEY
from serving.instances import FeatureSchema
from serving.settings import Settings

PSI_FLOOR = 1e-4
"""Smallest share a bin counts with: an empty bin is rare (1 in 10,000), not impossible (log 0)."""
EVALUATE_EVERY_SHARE = 0.05
"""Statistics and alerts are recomputed after this share of a window of new rows (and on every read)."""
NO_REFERENCE = ("no reference distribution in the card of model {model!r} version {version}; retrain "
                "(`hybridserve train`) or re-import (`hybridserve import`) to write one")
PREDICTION = "prediction"
"""The ``statistic`` label of the prediction's alert in /metrics (features use their names)."""

RowsOfKeys = Callable[[Sequence[str]], np.ndarray]


def psi(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Population stability index of ``actual`` shares against ``expected`` shares, summed over
    the last axis (the bins); both floored at :data:`PSI_FLOOR`."""
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    return ((a - e) * np.log(a / e)).sum(axis=-1)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DriftSettings:
    """The monitoring settings a monitor needs (from :class:`serving.settings.Settings`)."""

    window: int
    min_rows: int
    psi_threshold: float
    prediction_psi_threshold: float
    sample_rate: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftSettings:
        """The ``drift_*`` fields of the server's settings."""
        return cls(settings.drift_window, settings.drift_min_rows, settings.drift_psi_threshold,
                   settings.drift_prediction_psi_threshold, settings.drift_sample_rate)


@dataclass(frozen=True)
class Reference:
    """A card's reference as padded arrays, one row per feature and a last row for the prediction
    (a *column* of an observed row: the features, then the answered value)."""

    names: tuple[str, ...]  # the features, in the card's order
    edges: np.ndarray  # (features + 1, most edges), padded with +inf: no value is above a padded edge
    shares: np.ndarray  # (features + 1, most edges + 1), padded with 0: a padded bin is never filled
    low: np.ndarray  # (features,) training minimum
    high: np.ndarray  # (features,) training maximum
    features_from: str
    prediction_from: str

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> Reference | None:
        """The reference of ``card``, or ``None`` when it has none (written before drift monitoring)."""
        ref = card.get(REFERENCE_KEY)
        if not ref:
            return None
        names = tuple(card["features"])
        hists = [*(ref["features"][name] for name in names), ref["prediction"]]
        width = max(len(h["edges"]) for h in hists)
        edges = np.full((len(hists), width), np.inf)
        shares = np.zeros((len(hists), width + 1))
        for i, h in enumerate(hists):
            edges[i, : len(h["edges"])] = h["edges"]
            shares[i, : len(h["shares"])] = h["shares"]
        schema = FeatureSchema.from_card(card)
        return cls(names, edges, shares, np.array([s.low for s in schema.specs]), np.array([s.high for s in schema.specs]),
                   ref.get("features_from", "training rows"), ref.get("prediction_from", "holdout predictions"))


class DriftMonitor:
    """The drift window of one served version; see the module docstring.

    The hot path only copies an observed request's rows and answers into a ring buffer of raw
    float32 values; binning and counting run in bulk, over the rows that arrived since, every
    :data:`EVALUATE_EVERY_SHARE` of a window (a few numpy calls a row would cost more than the
    L1 hit they ride on).
    """

    def __init__(self, version: str, reference: Reference | None, rows_of_keys: RowsOfKeys | None,
                 settings: DriftSettings, off_reason: str | None = None) -> None:
        self.version = version
        self.reference = reference
        self.settings = settings
        self.off_reason = None if reference is not None else (off_reason or "no reference distribution")
        self._rows_of_keys = rows_of_keys
        self._rate = settings.sample_rate if self.off_reason is None else 0.0
        self._credit = 0.0
        columns = len(reference.edges) if reference is not None else 0
        size = settings.window if reference is not None else 0
        self._raw = np.zeros((size, columns), dtype=np.float32)  # features, then the answered value
        self._bins = np.zeros((size, columns), dtype=np.uint8)
        self._outside = np.zeros((size, max(0, columns - 1)), dtype=bool)
        self._next = 0  # ring position of the next row
        self._filled = 0
        self._pending = 0  # rows written since the last binning
        self._binned = 0  # ring positions [0, _binned) hold binned rows (the ring fills from 0 before it wraps)
        bins = reference.shares.shape[1] if reference is not None else 0
        self._bin_counts = np.zeros(columns * bins, dtype=np.int64)  # per column and bin, flat
        self._offsets = np.arange(columns) * bins  # a column's first entry in _bin_counts
        self._outside_counts = np.zeros(max(0, columns - 1), dtype=np.int64)
        self.observed = 0  # rows ever observed (not only those in the window)
        self._evaluate_every = max(1, int(settings.window * EVALUATE_EVERY_SHARE))
        self._fired_at = np.full(columns, np.nan)  # per feature, then the prediction; NaN: not firing

    @classmethod
    def for_version(cls, card: dict[str, Any] | None, version: str, rows_of_keys: RowsOfKeys | None,
                    settings: Settings) -> DriftMonitor:
        """The monitor of one served version (``card``: its model's, None without a model): off,
        saying why, when disabled, without a model, or when the card has no reference distribution."""
        drift = DriftSettings.from_settings(settings)
        if not settings.drift_monitoring:
            return cls(version, None, None, drift, "drift monitoring is off (HYBRIDSERVE_DRIFT_MONITORING=false)")
        if card is None:
            return cls(version, None, None, drift, "drift monitoring needs the model (dynamic or hybrid mode); "
                                                      "static mode serves a precomputed table without it")
        reference = Reference.from_card(card)
        if reference is None:
            return cls(version, None, None, drift, NO_REFERENCE.format(model=settings.model_name, version=version))
        return cls(version, reference, rows_of_keys, drift)

    # ----- the hot path ------------------------------------------------------------------------

    def sampled(self) -> bool:
        """Whether to observe this request (``drift_sample_rate`` of them, evenly spread)."""
        self._credit += self._rate
        if self._credit < 1.0:
            return False
        self._credit -= 1.0
        return True

    def observe_keys(self, keys: Sequence[str], predictions: Sequence[float]) -> None:
        """Observe a keyed request: the keys' feature rows and the values answered."""
        if self._rows_of_keys is not None:
            self.observe(self._rows_of_keys(keys), predictions)

    def observe(self, rows: np.ndarray, predictions: Sequence[float] | np.ndarray) -> None:
        """Observe feature ``rows`` (one per answered value, in the card's feature order) and the
        ``predictions`` answered for them: copied into the window, binned later in bulk."""
        if self.reference is None:
            return
        size = self.settings.window
        if len(rows) > size:
            rows, predictions = rows[-size:], predictions[-size:]
        n = len(rows)
        raw, start = self._raw, self._next
        first = min(n, size - start)  # rows up to the ring's end; the rest wraps to its start
        if n == 1:  # the common single-key request: two item copies, no slicing
            raw[start, :-1] = rows[0]
            raw[start, -1] = predictions[0]
        else:
            raw[start:start + first, :-1] = rows[:first]
            raw[start:start + first, -1] = predictions[:first]
        if first < n:
            raw[: n - first, :-1] = rows[first:]
            raw[: n - first, -1] = predictions[first:]
        self._next = (start + n) % size
        self._filled = min(size, self._filled + n)
        self._pending += n
        self.observed += n
        if self._pending >= self._evaluate_every:
            self._evaluate()

    # ----- reading -----------------------------------------------------------------------------

    def _bin_pending(self) -> None:
        """Bin the rows written since the last call, all columns at once, and move the counts: the
        rows they replaced leave, they enter (the cost follows the new rows, not the window)."""
        ref = self.reference
        assert ref is not None
        count = min(self._pending, self.settings.window)
        self._pending = 0
        if not count:
            return
        where = (self._next - count + np.arange(count)) % self.settings.window
        size = len(self._bin_counts)
        replaced = where[where < self._binned]
        self._bin_counts -= np.bincount((self._bins[replaced] + self._offsets).ravel(), minlength=size)
        self._outside_counts -= self._outside[replaced].sum(axis=0)
        block = self._raw[where]
        # A value's bin is the number of edges below it (models.reference.bin_of): (rows, columns,
        # edges) comparisons summed over the edges.
        self._bins[where] = (block[:, :, None] > ref.edges).sum(axis=2)
        self._outside[where] = (block[:, :-1] < ref.low) | (block[:, :-1] > ref.high)
        self._bin_counts += np.bincount((self._bins[where] + self._offsets).ravel(), minlength=size)
        self._outside_counts += self._outside[where].sum(axis=0)
        self._binned = self._filled

    def _counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Bin counts per column (features, then the prediction) and out-of-range counts per feature."""
        assert self.reference is not None
        self._bin_pending()
        return self._bin_counts.reshape(self.reference.shares.shape), self._outside_counts

    def _evaluate(self) -> tuple[np.ndarray, np.ndarray]:
        """Recompute the statistics and move the alerts (fire, stamped now, or clear); returns the counts."""
        assert self.reference is not None
        counts, outside = self._counts()
        firing = _firing(_statistics(self.reference.shares, counts, self._filled), self._filled, self.settings)
        self._fired_at = np.where(firing, np.where(np.isnan(self._fired_at), time.time(), self._fired_at), np.nan)
        return counts, outside

    def snapshot(self) -> dict[str, Any]:
        """The window as JSON-ready counts (they add up over workers), with the reference and the
        settings needed to read them; the alerts are brought up to date first."""
        base: dict[str, Any] = {"version": self.version, "off_reason": self.off_reason}
        ref = self.reference
        if ref is None:
            return base
        counts, outside = self._evaluate()
        return {
            **base,
            "features": list(ref.names),
            "expected": ref.shares.tolist(),
            "features_from": ref.features_from,
            "prediction_from": ref.prediction_from,
            "settings": {"window": self.settings.window, "min_rows": self.settings.min_rows,
                         "psi_threshold": self.settings.psi_threshold,
                         "prediction_psi_threshold": self.settings.prediction_psi_threshold,
                         "sample_rate": self.settings.sample_rate},
            "rows": self._filled,
            "observed": self.observed,
            "counts": counts.tolist(),
            "outside": outside.tolist(),
            "fired_at": [None if np.isnan(t) else float(t) for t in self._fired_at],
        }


def _statistics(expected: np.ndarray, counts: np.ndarray, rows: int) -> np.ndarray:
    """PSI per column (features, then the prediction) of window counts over ``rows`` rows (0 when empty)."""
    if rows == 0:
        return np.zeros(len(expected))
    return psi(counts / rows, expected)


def _firing(statistics: np.ndarray, rows: int, settings: DriftSettings | dict[str, Any]) -> np.ndarray:
    """Which statistics are above their threshold, in a window with enough rows to say so."""
    get = settings.get if isinstance(settings, dict) else lambda name: getattr(settings, name)
    thresholds = np.full(len(statistics), float(get("psi_threshold")))
    thresholds[-1] = float(get("prediction_psi_threshold"))
    return (statistics > thresholds) & (rows >= int(get("min_rows")))  # type: ignore[no-any-return]


def monitoring_report(snapshots: Sequence[dict[str, Any] | None], model_name: str = "") -> dict[str, Any]:
    """``GET /v1/monitoring``: the first snapshot's version, merged with the other workers' of the
    same version (counts summed); ``enabled: false`` with the reason when there is nothing to monitor."""
    present = [s for s in snapshots if s]
    if not present:
        return {"enabled": False, "model_name": model_name, "model_version": None,
                "message": "no model version served yet: nothing to monitor"}
    mine = present[0]
    if mine.get("off_reason") is not None or "counts" not in mine:
        return {"enabled": False, "model_name": model_name, "model_version": mine["version"], "message": mine["off_reason"]}
    same = [s for s in present if s.get("version") == mine["version"] and "counts" in s]
    rows = sum(s["rows"] for s in same)
    counts = np.sum([s["counts"] for s in same], axis=0)
    outside = np.sum([s["outside"] for s in same], axis=0)
    settings = mine["settings"]
    statistics = _statistics(np.asarray(mine["expected"]), counts, rows)
    firing = _firing(statistics, rows, settings)
    fired = [min((t for s in same if (t := s["fired_at"][i]) is not None), default=None) if firing[i] else None
             for i in range(len(statistics))]
    names = mine["features"]
    features = {name: {"psi": float(statistics[i]), "threshold": settings["psi_threshold"], "alert": bool(firing[i]),
                       "fired_at": fired[i], "out_of_range_share": float(outside[i] / rows) if rows else 0.0}
                for i, name in enumerate(names)}
    return {
        "enabled": True,
        "model_name": model_name,
        "model_version": mine["version"],
        "statistic": "psi",
        "reference": {"features": mine["features_from"], "prediction": mine["prediction_from"]},
        "window": {"rows": rows, "size": settings["window"] * len(same), "min_rows": settings["min_rows"],
                   "sample_rate": settings["sample_rate"], "workers": len(same),
                   "observed": sum(s["observed"] for s in same)},
        "features": features,
        "prediction": {"psi": float(statistics[-1]), "threshold": settings["prediction_psi_threshold"],
                       "alert": bool(firing[-1]), "fired_at": fired[-1]},
        "alerts": [name for i, name in enumerate([*names, PREDICTION]) if firing[i]],
    }


def metric_families(mode: str, report: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    """The report as Prometheus gauges (nothing while monitoring is off)."""
    if not report.get("enabled"):
        return
    per_feature = {
        "psi": GaugeMetricFamily("hybridserve_drift_psi", "Population stability index of a feature's window against "
                                 "the card's reference", labels=["mode", "feature"]),
        "out_of_range_share": GaugeMetricFamily("hybridserve_drift_out_of_range_share", "Share of the window's values "
                                                "outside the feature's training range", labels=["mode", "feature"]),
    }
    alert = GaugeMetricFamily("hybridserve_drift_alert", "1 while a statistic is above its threshold (feature name, "
                              "or 'prediction')", labels=["mode", "statistic"])
    for name, entry in report["features"].items():
        for field, family in per_feature.items():
            family.add_metric([mode, name], entry[field])
        alert.add_metric([mode, name], float(entry["alert"]))
    alert.add_metric([mode, PREDICTION], float(report["prediction"]["alert"]))
    yield from per_feature.values()
    yield alert
    prediction = GaugeMetricFamily("hybridserve_drift_prediction_psi", "Population stability index of the answered "
                                   "predictions against the holdout's", labels=["mode"])
    prediction.add_metric([mode], report["prediction"]["psi"])
    yield prediction
    rows = GaugeMetricFamily("hybridserve_drift_window_rows", "Rows in the drift window (all workers)", labels=["mode"])
    rows.add_metric([mode], report["window"]["rows"])
    yield rows
