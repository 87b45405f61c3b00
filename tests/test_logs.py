"""serving/logs.py: one JSON line per event, at the configured level, from the server and precompute."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from serving import logs
from serving.precompute import precompute
from tests.helpers import ADMIN, running


def _lines(err: str) -> list[dict[str, Any]]:
    """Every stderr line, each of which must be one JSON object."""
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def _events(err: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in _lines(err):
        found.setdefault(line["event"], []).append(line)
    return found


@pytest.fixture(autouse=True)
def _reset_levels() -> Any:
    yield
    logs.configure("info")


def test_one_json_object_per_line_and_the_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning")
    logs.log_event("dropped", detail="info is below warning")
    logs.log_breaker_transition("closed", "open", failures=3)
    logs.configure("info")
    logs.configure("info")  # idempotent: still one line per event, not two
    logs.log_breaker_transition("half_open", "closed", failures=0)
    logging.getLogger("serving.model").warning("batch %s", "variant")
    lines = _lines(capsys.readouterr().err)
    assert [(x["event"], x["level"]) for x in lines] == [("breaker_transition", "warning"), ("breaker_transition", "info"),
                                                        ("log", "warning")]
    assert lines[0]["old"] == "closed" and lines[0]["new"] == "open" and lines[0]["failures"] == 3
    assert lines[2]["message"] == "batch variant" and lines[2]["logger"] == "serving.model"
    assert all(x["ts"].endswith("Z") for x in lines)


def test_server_start_reload_stop(make_settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="dynamic", log_level="info")) as (_, client):
        version = client.get("/readyz").json()["model_version"]
        assert client.post("/v1/admin/reload", json={"version": "latest"}, headers=ADMIN).status_code == 200
    events = _events(capsys.readouterr().err)
    assert events["server_start"][0]["model_version"] == version and events["server_start"][0]["mode"] == "dynamic"
    assert events["reload"][0]["previous_version"] == version == events["reload"][0]["model_version"]
    assert events["reload"][0]["requested"] == "latest"
    assert len(events["server_stop"]) == 1


def test_warning_level_keeps_info_events_out(make_settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="dynamic", log_level="warning")) as (_, client):
        assert client.get("/v1/predict/1:1").status_code == 200
    assert "server_start" not in _events(capsys.readouterr().err)


def test_precompute_progress(make_settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    logs.configure("info")
    settings = make_settings(mode="static", precompute_batch_size=500)
    report = precompute(settings, progress=False)
    events = _events(capsys.readouterr().err)
    assert events["precompute_start"][0]["keys"] == report.keys and events["precompute_start"][0]["full_table"] is True
    progress = events["precompute_progress"]
    assert progress[-1]["keys_done"] == progress[-1]["keys_total"] == report.keys
    assert [p["keys_done"] for p in progress] == sorted(p["keys_done"] for p in progress)
    assert events["precompute_done"][0]["model_version"] == report.model_version
