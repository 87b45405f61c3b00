"""The drift scenario's traffic and what the runner records of it.

Raw-feature instances drawn from a model's training distribution (rows of its registry feature
table, which the demo trains on), shifted part-way through a run: ``drift:at=0.5,shift=2.0`` sends
training rows for the first half of the run, then the same draws with every feature (or those
named by ``features=a+b``) moved by 2 training standard deviations. ``training`` never shifts
(the no-drift baseline). The locustfile sends them (``--instances SPEC``); while Locust runs, the
runner polls ``GET /v1/monitoring`` (:class:`MonitoringSampler`) and records the statistics over
time and the moment each alert fired (:mod:`loadtests.drift_report` draws them).

Example::

    spec = InstanceSpec.parse("drift:at=0.5,shift=2.0,features=length_km")
    stream = InstanceStream(spec, card, table, seed=7)
    stream.take(4, run_share=0.7)            # four shifted instances
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

MONITORING_SAMPLE_S = 1.0
"""How often the runner reads /v1/monitoring during a drift run."""


@dataclass(frozen=True)
class InstanceSpec:
    """What instances a run sends: ``at`` (share of the run before the shift; None: never),
    ``shift`` (in training standard deviations) and the features shifted (empty: all)."""

    at: float | None
    shift: float
    features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> InstanceSpec:
        """``training`` or ``drift:at=A,shift=S[,features=a+b]``; ``ValueError`` saying what is allowed."""
        text = text.strip()
        if text == "training":
            return cls(None, 0.0)
        kind, _, rest = text.partition(":")
        allowed = "instances: 'training' or 'drift:at=A,shift=S[,features=a+b]' (0 <= A <= 1)"
        if kind != "drift" or not rest:
            raise ValueError(f"{allowed}; got {text!r}")
        fields = dict(part.partition("=")[::2] for part in rest.split(","))
        unknown = set(fields) - {"at", "shift", "features"}
        if unknown or "at" not in fields or "shift" not in fields:
            raise ValueError(f"{allowed}; got {text!r}")
        try:
            at, shift = float(fields["at"]), float(fields["shift"])
        except ValueError:
            raise ValueError(f"{allowed}; got {text!r}") from None
        if not 0.0 <= at <= 1.0:
            raise ValueError(f"{allowed}; got at={at}")
        names = tuple(n for n in fields.get("features", "").split("+") if n)
        return cls(at, shift, names)


class InstanceStream:
    """Instances of one model as ``{feature: value}`` dicts, seeded; shifted past ``spec.at``."""

    def __init__(self, spec: InstanceSpec, card: dict[str, Any], table: np.ndarray, seed: int) -> None:
        self.spec = spec
        self.names: list[str] = list(card["features"])
        unknown = [n for n in spec.features if n not in self.names]
        if unknown:
            raise ValueError(f"instances: {unknown[0]!r} is not a feature of the model ({', '.join(self.names)})")
        stats = card.get("training_data", {}).get("features", {})
        shifted = spec.features or tuple(self.names)
        self._offset = np.array([spec.shift * float(stats.get(n, {}).get("std", 0.0)) if n in shifted else 0.0
                                 for n in self.names])
        self._table = table
        self._rng = np.random.default_rng(seed)

    def shifted(self, run_share: float) -> bool:
        """Whether instances sent at ``run_share`` of the run are shifted."""
        return self.spec.at is not None and run_share >= self.spec.at

    def take(self, count: int, run_share: float) -> list[dict[str, float]]:
        """``count`` instances for a request sent at ``run_share`` (0..1) of the run."""
        rows = np.asarray(self._table[self._rng.integers(0, len(self._table), count)], dtype=np.float64)
        if self.shifted(run_share):
            rows = rows + self._offset
        return [dict(zip(self.names, row)) for row in rows.tolist()]


class MonitoringSampler:
    """Reads ``GET /v1/monitoring`` every ``every_s`` in a thread while a run goes on.

    Example::

        with MonitoringSampler(url) as sampler:
            run_locust()
        sampler.series     # [{"t": 0.0, "psi": {...}, "prediction_psi": ..., "alerts": [...], ...}, ...]
    """

    def __init__(self, url: str, every_s: float = MONITORING_SAMPLE_S) -> None:
        self.url = url
        self.every_s = every_s
        self.started = time.time()
        self.series: list[dict[str, Any]] = []
        self.fired: dict[str, float] = {}  # statistic -> seconds into the run when its alert first fired
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MonitoringSampler:
        self.started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sample_once()  # the state at the end of the run

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample_once()

    def _sample_once(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=5.0) as client:
                report = client.get("/v1/monitoring").json()
        except (httpx.HTTPError, ValueError):
            return  # a missed sample is a gap in the series, not a failed run
        if not report.get("enabled"):
            return
        now = time.time() - self.started
        for name, entry in [*report["features"].items(), ("prediction", report["prediction"])]:
            if entry["fired_at"] is not None and name not in self.fired:
                self.fired[name] = max(0.0, entry["fired_at"] - self.started)
        self.series.append({"t": round(now, 3), "rows": report["window"]["rows"],
                            "psi": {n: e["psi"] for n, e in report["features"].items()},
                            "out_of_range": {n: e["out_of_range_share"] for n, e in report["features"].items()},
                            "prediction_psi": report["prediction"]["psi"], "alerts": report["alerts"],
                            "threshold": next(iter(report["features"].values()))["threshold"],
                            "prediction_threshold": report["prediction"]["threshold"]})

    def record(self, shift_at_s: float | None) -> dict[str, Any]:
        """What results.json keeps of the run's drift: the series, when the shift began and when
        each alert fired (seconds from the start of the run)."""
        return {"series": self.series, "shift_at_s": shift_at_s, "fired_at_s": self.fired}
