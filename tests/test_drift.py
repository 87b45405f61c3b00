"""serving/drift.py and models/reference.py: the card's reference, PSI, the sliding window, alerts,
/v1/monitoring and /metrics, against a real server (real Redis, real ONNX, HTTP on loopback).

Stated window (``WINDOW`` = 500 rows, every request observed): a shift of two standard deviations
of one feature raises its PSI above 0.2 within ``SHIFT_DETECTED_WITHIN`` = 250 rows after the
shift (half a window; it fired after 125 here, checked every 25 rows: PSI passes 0.2 once about a
quarter of the window has moved to the top bins),
and a run of 3 windows drawn from the training distribution keeps every PSI below half the threshold.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import Ridge

from loadtests.cost import Prices
from loadtests.drift_report import drift_section
from loadtests.drift_traffic import InstanceSpec, InstanceStream
from loadtests.harness.server_process import ServerProcess
from loadtests.report import render_html
from loadtests.runner import RunSpec, run_one
from models.importer import import_model
from models.reference import REFERENCE_KEY, bin_of, histogram
from models.registry import ModelArtifact, resolve
from serving.drift import DriftMonitor, DriftSettings, Reference, monitoring_report, psi
from tests.helpers import running
from tests.test_workers import _wait_for_workers

WINDOW = 500
MIN_ROWS = 100
THRESHOLD = 0.2
SHIFT_DETECTED_WITHIN = WINDOW // 2
BATCH = 25
DRIFT = {"drift_sample_rate": 1.0, "drift_window": WINDOW, "drift_min_rows": MIN_ROWS, "drift_psi_threshold": THRESHOLD}


# --------------------------------------------------------------------------- PSI and the reference


def test_psi_matches_a_hand_computed_value() -> None:
    # (0.5-0.25) ln(0.5/0.25) + (0.5-0.75) ln(0.5/0.75) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    # An empty bin counts as 1e-4: (1-0.5) ln(1/0.5) + (1e-4-0.5) ln(1e-4/0.5)
    assert psi(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(0.5 * math.log(2) + (1e-4 - 0.5) * math.log(2e-4))
    assert psi(np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.5])) == 0.0


def test_reference_histogram_bins_by_quantiles_and_keeps_discrete_values_apart() -> None:
    continuous = histogram(np.arange(1.0, 11.0))
    assert continuous["edges"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert continuous["shares"] == pytest.approx([0.1] * 10)
    discrete = histogram(np.array([0.0, 0.0, 0.0, 1.0]))
    assert discrete == {"edges": [0.0, 1.0], "shares": [0.75, 0.25, 0.0]}
    assert bin_of(np.array([-1.0, 0.0, 0.5, 1.0, 7.0]), discrete["edges"]).tolist() == [0, 0, 1, 1, 2]


def test_card_written_by_train_has_the_reference(light_artifact: ModelArtifact) -> None:
    card = light_artifact.card()
    reference = card[REFERENCE_KEY]
    assert set(reference["features"]) == set(card["features"])
    for entry in [*reference["features"].values(), reference["prediction"]]:
        assert len(entry["shares"]) == len(entry["edges"]) + 1
        assert sum(entry["shares"]) == pytest.approx(1.0)
        assert entry["edges"] == sorted(set(entry["edges"]))
    assert reference["features_from"].startswith("training rows")
    assert reference["prediction_from"].startswith("holdout predictions")


def test_card_written_by_import_has_the_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.normal(50, 10, 400), rng.integers(0, 4, 400)])
    joblib.dump(Ridge().fit(X, X[:, 0] * 2 + X[:, 1]), tmp_path / "m.joblib")
    pq.write_table(pa.table({"id": [f"k{i}" for i in range(400)], "spend": X[:, 0], "region": X[:, 1].astype(np.int64)}),
                   tmp_path / "t.parquet")
    card = import_model("shop", tmp_path / "m.joblib", tmp_path / "t.parquet", "id", tmp_path / "reg").card()
    reference = card[REFERENCE_KEY]
    assert reference["features"]["region"] == {"edges": [0.0, 1.0, 2.0, 3.0], "shares": pytest.approx(
        [*np.bincount(X[:, 1].astype(int), minlength=4) / 400, 0.0])}
    assert sum(reference["prediction"]["shares"]) == pytest.approx(1.0)
    assert "no holdout" in reference["prediction_from"] and reference["features_from"] == "feature table (400 rows)"


# --------------------------------------------------------------------------- the monitor, in process


def _monitor(card: dict, window: int = WINDOW, rate: float = 1.0) -> DriftMonitor:
    settings = DriftSettings(window=window, min_rows=MIN_ROWS, psi_threshold=THRESHOLD, prediction_psi_threshold=THRESHOLD,
                             sample_rate=rate)
    reference = Reference.from_card(card)
    assert reference is not None
    return DriftMonitor("v1", reference, None, settings)


def test_vectorised_bins_follow_the_reference_rule(light_artifact: ModelArtifact) -> None:
    card = light_artifact.card()
    monitor = _monitor(card, window=64)
    rows = np.load(light_artifact.features_path)[::53][:64]
    monitor.observe(rows, np.zeros(len(rows)))
    counts = np.asarray(monitor.snapshot()["counts"])
    for i, name in enumerate(card["features"]):
        expected = np.bincount(bin_of(rows[:, i], card[REFERENCE_KEY]["features"][name]["edges"]), minlength=counts.shape[1])
        assert counts[i].tolist() == expected.tolist(), name
    # Counts move as rows enter and leave: batches of 7 through a window of 20 wrap it several times.
    small = _monitor(card, window=20)
    for start in range(0, 64, 7):
        small.observe(rows[start:start + 7], rows[start:start + 7, 0])
        small.snapshot()
    last = np.asarray(small.snapshot()["counts"])
    name = card["features"][3]
    expected = np.bincount(bin_of(rows[-20:, 3], card[REFERENCE_KEY]["features"][name]["edges"]), minlength=last.shape[1])
    assert last[3].tolist() == expected.tolist()
    assert last[-1].sum() == 20  # the prediction column counts the same rows


def test_sample_rate_observes_that_share_of_requests_evenly(light_artifact: ModelArtifact) -> None:
    monitor = _monitor(light_artifact.card(), rate=0.25)
    taken = [monitor.sampled() for _ in range(100)]
    assert sum(taken) == 25 and all(sum(taken[i:i + 4]) == 1 for i in range(0, 100, 4))


def test_window_is_bounded_and_workers_merge_by_counts(light_artifact: ModelArtifact) -> None:
    card = light_artifact.card()
    table = np.load(light_artifact.features_path)
    rng = np.random.default_rng(1)
    a, b, both = _monitor(card, window=200), _monitor(card, window=200), _monitor(card, window=400)
    first, second = table[rng.integers(0, len(table), 200)], table[rng.integers(0, len(table), 200)]
    for monitor, rows in ((a, first), (b, second), (both, first), (both, second)):
        monitor.observe(rows, rows[:, 0])
    a.observe(table[:50], table[:50, 0])  # 250 rows into a window of 200: the oldest 50 leave
    assert a.snapshot()["rows"] == 200 and a.observed == 250
    a = _monitor(card, window=200)
    a.observe(first, first[:, 0])
    merged = monitoring_report([a.snapshot(), b.snapshot()])
    alone = monitoring_report([both.snapshot()])
    assert merged["window"]["rows"] == 400 and merged["window"]["workers"] == 2
    for name in card["features"]:
        assert merged["features"][name]["psi"] == pytest.approx(alone["features"][name]["psi"])


# --------------------------------------------------------------------------- the server over HTTP


def _instances(names: list[str], rows: np.ndarray) -> list[dict[str, float]]:
    return [{name: float(v) for name, v in zip(names, row)} for row in rows.tolist()]


def _training_rows(artifact: ModelArtifact, count: int, seed: int) -> np.ndarray:
    """Rows drawn from the training distribution (the demo trains on every key's row, once a week)."""
    table = np.load(artifact.features_path)
    return table[np.random.default_rng(seed).integers(0, len(table), count)]


def _send(client, names: list[str], rows: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    for start in range(0, len(rows), BATCH):
        answer = client.post("/v1/predict", json={"instances": _instances(names, rows[start:start + BATCH])})
        assert answer.status_code == 200, answer.text


def test_a_shift_fires_the_alert_within_the_stated_rows_and_no_drift_does_not(make_settings, light_artifact) -> None:  # type: ignore[no-untyped-def]
    card = light_artifact.card()
    names, stats = card["features"], card["training_data"]["features"]
    with running(make_settings(mode="dynamic", **DRIFT)) as (_, client):
        _send(client, names, _training_rows(light_artifact, 3 * WINDOW, seed=11))
        calm = client.get("/v1/monitoring").json()
        assert calm["enabled"] and calm["window"]["rows"] == WINDOW and calm["alerts"] == []
        # Margin: every PSI under half the threshold (noise is about bins / rows, ~0.02 here).
        assert max(f["psi"] for f in calm["features"].values()) < THRESHOLD / 2, calm["features"]
        assert calm["prediction"]["psi"] < THRESHOLD / 2

        shifted = _training_rows(light_artifact, SHIFT_DETECTED_WITHIN, seed=12)
        shifted[:, names.index("length_km")] += 2 * stats["length_km"]["std"]
        fired_after = None
        for sent in range(BATCH, SHIFT_DETECTED_WITHIN + 1, BATCH):
            _send(client, names, shifted[sent - BATCH:sent])
            report = client.get("/v1/monitoring").json()
            if report["features"]["length_km"]["alert"]:
                fired_after = sent
                break
        assert fired_after is not None, f"no alert within {SHIFT_DETECTED_WITHIN} rows: {report['features']['length_km']}"
        entry = report["features"]["length_km"]
        assert entry["psi"] > THRESHOLD and entry["threshold"] == THRESHOLD and entry["fired_at"] is not None
        assert report["alerts"] == ["length_km"]  # only the shifted feature
        fired_at = entry["fired_at"]

        # The alert keeps its first time while it lasts, and clears once the window is back to normal.
        _send(client, names, shifted[fired_after:fired_after + BATCH])
        assert client.get("/v1/monitoring").json()["features"]["length_km"]["fired_at"] == fired_at
        _send(client, names, _training_rows(light_artifact, WINDOW, seed=13))
        cleared = client.get("/v1/monitoring").json()["features"]["length_km"]
        assert not cleared["alert"] and cleared["fired_at"] is None


def test_out_of_range_share_and_metrics(make_settings, light_artifact) -> None:  # type: ignore[no-untyped-def]
    card = light_artifact.card()
    names, stats = card["features"], card["training_data"]["features"]
    with running(make_settings(mode="hybrid", **DRIFT)) as (_, client):
        _send(client, names, _training_rows(light_artifact, 100, seed=21))
        outside = _training_rows(light_artifact, 50, seed=22)
        outside[:, names.index("lat")] = stats["lat"]["max"] + 1.0
        _send(client, names, outside)
        report = client.get("/v1/monitoring").json()
        assert report["features"]["lat"]["out_of_range_share"] == pytest.approx(50 / 150)
        assert all(report["features"][n]["out_of_range_share"] == 0.0 for n in names if n != "lat")
        metrics = client.get("/metrics").text
    assert 'hybridserve_drift_out_of_range_share{feature="lat",mode="hybrid"} 0.3333' in metrics
    for family in ("hybridserve_drift_psi{", "hybridserve_drift_alert{", "hybridserve_drift_prediction_psi{",
                   "hybridserve_drift_window_rows{mode=\"hybrid\"} 150.0"):
        assert family in metrics


def test_keys_moving_to_another_region_drift_features_and_predictions(make_settings, light_artifact) -> None:  # type: ignore[no-untyped-def]
    """Keyed traffic (GET, L1 hits included) observes the keys' feature rows and the answered values:
    uniform keys match the training distribution; keys of weekday rush hours only move hour_of_day
    and the predictions (rush hour is the busiest)."""
    card = light_artifact.card()
    segments, hours = card["segments"], card["hours_per_week"]
    rng = np.random.default_rng(31)
    with running(make_settings(mode="hybrid", **DRIFT)) as (_, client):
        for key in [f"{s}:{h}" for s, h in zip(rng.integers(0, segments, WINDOW), rng.integers(0, hours, WINDOW))]:
            assert client.get(f"/v1/predict/{key}").status_code == 200
        calm = client.get("/v1/monitoring").json()
        assert calm["alerts"] == [] and calm["window"]["rows"] == WINDOW
        rush = [f"{s}:{d * 24 + h}" for s, d, h in zip(rng.integers(0, segments, WINDOW), rng.integers(0, 5, WINDOW),
                                                       rng.choice([8, 17], WINDOW))]
        for start in range(0, WINDOW, BATCH):  # a whole window of rush hours: the predictions move less than a feature
            assert client.post("/v1/predict", json={"keys": rush[start:start + BATCH]}).status_code == 200
        for key in rush[:BATCH]:  # L1 hits now: observed on the fast path too
            assert client.get(f"/v1/predict/{key}").json()["source"] == "l1"
        report = client.get("/v1/monitoring").json()
    assert report["window"]["observed"] == 2 * WINDOW + BATCH
    assert report["features"]["hour_of_day"]["alert"] and report["prediction"]["alert"], (
        report["prediction"], {n: f["psi"] for n, f in report["features"].items()})
    assert report["prediction"]["psi"] > THRESHOLD and report["prediction"]["fired_at"] is not None
    assert not report["features"]["road_class"]["alert"] and not report["features"]["lat"]["alert"]


@pytest.fixture
def registry_without_reference(light_artifact: ModelArtifact, tmp_path: Path) -> Path:
    """A copy of the light model as an older registry wrote it: a card without a reference."""
    target = tmp_path / "registry" / light_artifact.name / light_artifact.version
    shutil.copytree(light_artifact.path, target)
    card = json.loads((target / "card.json").read_text())
    del card[REFERENCE_KEY]
    (target / "card.json").write_text(json.dumps(card))
    (target.parent / "latest").write_text(light_artifact.version)
    assert resolve(tmp_path / "registry", light_artifact.name).version == light_artifact.version
    return tmp_path / "registry"


def test_card_without_reference_says_so_and_still_serves(make_settings, registry_without_reference, light_artifact) -> None:  # type: ignore[no-untyped-def]
    names = light_artifact.card()["features"]
    with running(make_settings(mode="hybrid", registry=registry_without_reference, **DRIFT)) as (_, client):
        _send(client, names, _training_rows(light_artifact, BATCH, seed=41))
        assert client.get("/v1/predict/3:7").status_code == 200
        report = client.get("/v1/monitoring").json()
        metrics = client.get("/metrics")
    assert report["enabled"] is False and report["model_version"] == light_artifact.version
    assert "no reference distribution in the card" in report["message"] and "retrain" in report["message"]
    assert "re-import" in report["message"]
    assert metrics.status_code == 200 and "hybridserve_drift_psi" not in metrics.text


def test_static_mode_and_monitoring_off_say_why(ready_settings) -> None:  # type: ignore[no-untyped-def]
    with running(ready_settings("static", **DRIFT)) as (_, client):
        assert client.get("/v1/predict/3:7").status_code == 200
        static = client.get("/v1/monitoring").json()
    assert static["enabled"] is False and "needs the model" in static["message"]
    with running(ready_settings("dynamic", drift_monitoring=False)) as (_, client):
        off = client.get("/v1/monitoring").json()
    assert off["enabled"] is False and "HYBRIDSERVE_DRIFT_MONITORING" in off["message"]


# --------------------------------------------------------------------------- the drift load test


def test_instance_spec_parses_and_refuses_with_what_is_allowed() -> None:
    assert InstanceSpec.parse("drift:at=0.5,shift=2.0") == InstanceSpec(0.5, 2.0)
    assert InstanceSpec.parse("drift:at=0.25,shift=1,features=lat+lon") == InstanceSpec(0.25, 1.0, ("lat", "lon"))
    assert InstanceSpec.parse("training") == InstanceSpec(None, 0.0)
    for bad in ("drift", "drift:at=2,shift=1", "drift:shift=1", "uniform", "drift:at=0.5,shift=x", "drift:at=0.5,shift=1,y=2"):
        with pytest.raises(ValueError, match="'training' or 'drift:at=A,shift=S"):
            InstanceSpec.parse(bad)


def test_instance_stream_shifts_by_the_training_std_after_the_share(light_artifact: ModelArtifact) -> None:
    card = light_artifact.card()
    table = np.load(light_artifact.features_path)
    before = InstanceStream(InstanceSpec.parse("drift:at=0.5,shift=2.0,features=lat"), card, table, seed=3).take(5, run_share=0.4)
    after = InstanceStream(InstanceSpec.parse("drift:at=0.5,shift=2.0,features=lat"), card, table, seed=3).take(5, run_share=0.5)
    lat_std = card["training_data"]["features"]["lat"]["std"]
    for b, a in zip(before, after):
        assert a["lat"] == pytest.approx(b["lat"] + 2 * lat_std) and a["lanes"] == b["lanes"]
    with pytest.raises(ValueError, match="'speed' is not a feature"):
        InstanceStream(InstanceSpec.parse("drift:at=0.5,shift=2.0,features=speed"), card, table, seed=3)


DRIFT_RUN_SECONDS = 10


def test_drift_load_test_records_the_statistics_and_when_the_alert_fired(registry: Path) -> None:
    """A short bounded Locust run (own process) whose instances shift half-way: the runner's series
    shows the shift, the alert fires after it (not before), and the report draws the section."""
    spec = RunSpec("light", "dynamic", "uniform", rate=60, users=4, duration_s=DRIFT_RUN_SECONDS, batch_size=5,
                   instances="drift:at=0.5,shift=2.0,features=length_km",
                   settings=(("drift_sample_rate", 1.0), ("drift_window", WINDOW), ("drift_min_rows", MIN_ROWS)))
    result = run_one(spec, registry, Prices())
    drift = result.drift
    assert result.failures == 0 and len(drift["series"]) >= DRIFT_RUN_SECONDS // 2
    assert drift["shift_at_s"] is not None and 0 < drift["shift_at_s"] < DRIFT_RUN_SECONDS + 5
    fired = drift["fired_at_s"]
    assert "length_km" in fired and fired["length_km"] >= drift["shift_at_s"] - 1.0, drift  # 1 s: the two clocks' grain
    before_shift = [s for s in drift["series"] if s["t"] < drift["shift_at_s"] and s["rows"] >= MIN_ROWS]
    assert all(s["psi"]["length_km"] < THRESHOLD for s in before_shift)
    assert max(s["psi"]["length_km"] for s in drift["series"]) > THRESHOLD
    page = render_html([result.as_record()], {})
    assert "<h2>Drift monitoring</h2>" in page and "length_km" in drift_section([result.as_record()])


MERGE_BOUND_S = 15.0  # worker snapshots every 1 s; generous for a loaded 2-core machine


def test_workers_merge_their_windows_in_monitoring_and_metrics(make_settings, light_artifact, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``serve --workers 2``: requests on fresh connections reach either worker; whichever answers
    /v1/monitoring and /metrics sums both windows (the other's as of its last snapshot)."""
    names = light_artifact.card()["features"]
    settings = make_settings(mode="dynamic", redis_url=None, workers=2, worker_dir=tmp_path, **DRIFT)
    rows = _training_rows(light_artifact, 400, seed=51)
    with ServerProcess(settings) as server, httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        _wait_for_workers(tmp_path, 2)
        for start in range(0, len(rows), BATCH):
            body = {"instances": _instances(names, rows[start:start + BATCH])}
            assert client.post(f"{server.url}/v1/predict", json=body).status_code == 200
        deadline = time.monotonic() + MERGE_BOUND_S
        while (report := client.get(f"{server.url}/v1/monitoring").json())["window"]["rows"] < len(rows):
            assert time.monotonic() < deadline, report["window"]
            time.sleep(0.2)
        metrics = client.get(f"{server.url}/metrics").text
    assert report["window"]["workers"] == 2 and report["window"]["rows"] == len(rows) and report["alerts"] == []
    assert report["window"]["size"] == 2 * WINDOW
    assert 'hybridserve_drift_window_rows{mode="dynamic"} 400.0' in metrics
