"""serving/fast_path.py: single-key GETs answered in front of the routing, byte for byte as the
routed app answers them, and everything else handed to the app. Two real servers per mode (the
layer on and off) get the same requests over real HTTP; their answers and metrics must match."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from serving.fast_path import FastPredictLayer
from tests.helpers import ADMIN, running

# Headers that carry meaning (date and server are uvicorn's, the same on both paths).
COMPARED_HEADERS = ("content-type", "content-length")
KEYS = ["3:17", "0:0", "19:167", "7:42"]
# Computed or read from Redis, then (hybrid) L1 hits, then Redis hits after an L1 flush; then bad
# keys, paths that are no key, a query string (the route ignores it; so must the layer), a
# percent-encoded key, HEAD and POST.
REQUESTS = [
    *[("GET", f"/v1/predict/{k}") for k in KEYS * 2],
    ("FLUSH", ""),
    *[("GET", f"/v1/predict/{k}") for k in KEYS],
    ("GET", "/v1/predict/not-a-key"),
    ("GET", "/v1/predict/999:1"),
    ("GET", "/v1/predict/3:999"),
    ("GET", "/v1/predict/"),
    ("GET", "/v1/predict/3:17/"),
    ("GET", "/v1/predict/3:17?x=1"),
    ("GET", "/v1/predict/3%3A17"),
    ("HEAD", "/v1/predict/3:17"),
    ("POST", "/v1/predict/3:17"),
    ("GET", "/v1/predictions/3:17"),
    ("GET", "/livez"),
]
METRIC_LINE = re.compile(r"^(hybridserve_(request_seconds_count|cache_lookups_total|keys_total|model_rows_total"
                         r"|request_errors_total|admitted_total)\{[^}]*\}) (\S+)$")


def _answers(client: httpx.Client) -> list[tuple[int, bytes, dict[str, str | None]]]:
    out = []
    for method, path in REQUESTS:
        if method == "FLUSH":
            assert client.post("/v1/admin/flush", json={"l1": True}, headers=ADMIN).status_code == 200
            continue
        r = client.request(method, path)
        out.append((r.status_code, r.content, {h: r.headers.get(h) for h in COMPARED_HEADERS}))
    return out


def _counted(client: httpx.Client) -> tuple[dict[str, int], dict[str, str]]:
    """The service's counters and the Prometheus samples a request moves."""
    metrics = {m.group(1): m.group(3) for line in client.get("/metrics").text.splitlines() if (m := METRIC_LINE.match(line))}
    return client.get("/v1/cache/stats").json()["counts"], metrics


@pytest.mark.parametrize("mode", ["static", "dynamic", "hybrid"])
def test_layer_and_routed_app_answer_identically(ready_settings, mode: str) -> None:  # type: ignore[no-untyped-def]
    with running(ready_settings(mode)) as (_, fast), running(ready_settings(mode, fast_path=False)) as (_, routed):
        fast_answers, routed_answers = _answers(fast), _answers(routed)
        for request, f, r in zip([r for r in REQUESTS if r[0] != "FLUSH"], fast_answers, routed_answers):
            assert f == r, request
        counts, metrics = _counted(fast)
        assert (counts, metrics) == _counted(routed)
    statuses = {status for status, _, _ in fast_answers}
    assert {200, 404, 422} <= statuses and counts["errors"] >= 3 and metrics
    if mode == "hybrid":
        assert counts["l1_hits"] >= len(KEYS) and counts["redis_hits"] >= len(KEYS) and counts["model_rows"] >= len(KEYS)


class _Recorder:
    """The app behind the layer: records what reaches it and answers 404."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _call(layer: FastPredictLayer, method: str, path: str) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await layer({"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""},
                receive, send)
    return sent


def test_layer_answers_single_key_gets_only(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid")) as (server, client):
        client.get("/v1/predict/3:17")  # now in L1
        behind = _Recorder()
        layer = FastPredictLayer(behind, state=server.app.state)
        hit = asyncio.run(_call(layer, "GET", "/v1/predict/3:17"))
        bad = asyncio.run(_call(layer, "GET", "/v1/predict/x"))
        assert behind.paths == [] and hit[0]["status"] == 200 and b'"source":"l1"' in hit[1]["body"]
        assert bad[0]["status"] == 422 and b'"error":"malformed_key"' in bad[1]["body"]
        for method, path in [("POST", "/v1/predict/3:17"), ("HEAD", "/v1/predict/3:17"), ("GET", "/v1/predict/3:17/x"),
                             ("GET", "/v1/predict/"), ("GET", "/healthz")]:
            asyncio.run(_call(layer, method, path))
        assert behind.paths == ["/v1/predict/3:17", "/v1/predict/3:17", "/v1/predict/3:17/x", "/v1/predict/", "/healthz"]


def test_layer_before_the_service_exists_hands_over(make_settings) -> None:  # type: ignore[no-untyped-def]
    """Without a service in the app's state (outside the lifespan) every request goes to the app."""
    from starlette.datastructures import State

    behind = _Recorder()
    asyncio.run(_call(FastPredictLayer(behind, state=State()), "GET", "/v1/predict/3:17"))
    assert behind.paths == ["/v1/predict/3:17"]
