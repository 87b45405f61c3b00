"""serving/hit_path.py: L1 hits answered in front of the routing, byte for byte as the routed app
answers them, and everything else handed to the app. Two real servers (the layer on and off) get
the same requests over real HTTP; their answers and their metrics must match."""

from __future__ import annotations

import asyncio
import re

import httpx

from serving.hit_path import L1HitLayer
from tests.helpers import running

# Headers that carry meaning (date and server are uvicorn's, the same on both paths).
COMPARED_HEADERS = ("content-type", "content-length")
HIT_KEYS = ["3:17", "0:0", "19:167", "7:42"]
# Requests the layer must not answer: a miss, bad keys, a path that is no key, a query string on a
# cached key (the route ignores it; so must the layer), a percent-encoded cached key, HEAD and POST.
OTHER_REQUESTS = [
    ("GET", "/v1/predict/5:5"),
    ("GET", "/v1/predict/not-a-key"),
    ("GET", "/v1/predict/999:1"),
    ("GET", "/v1/predict/"),
    ("GET", "/v1/predict/3:17/"),
    ("GET", "/v1/predict/3:17?x=1"),
    ("GET", "/v1/predict/3%3A17"),
    ("HEAD", "/v1/predict/3:17"),
    ("POST", "/v1/predict/3:17"),
    ("GET", "/v1/predictions/3:17"),
    ("GET", "/livez"),
]
METRIC_LINE = re.compile(r"^(hybridserve_(request_seconds_count|cache_lookups_total|keys_total|model_rows_total)\{[^}]*\}) (\S+)$")


def _answer(client: httpx.Client, method: str, path: str) -> tuple[int, bytes, dict[str, str | None]]:
    r = client.request(method, path)
    return r.status_code, r.content, {h: r.headers.get(h) for h in COMPARED_HEADERS}


def _counted(client: httpx.Client) -> tuple[dict[str, int], dict[str, str]]:
    """The service's counters and the Prometheus samples a request moves."""
    metrics = {m.group(1): m.group(3) for line in client.get("/metrics").text.splitlines() if (m := METRIC_LINE.match(line))}
    return client.get("/v1/cache/stats").json()["counts"], metrics


def test_layer_and_routed_app_answer_identically(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid")) as (_, fast), running(make_settings(mode="hybrid", l1_hit_path=False)) as (_, routed):
        answers = {}
        for name, client in (("fast", fast), ("routed", routed)):
            first = [_answer(client, "GET", f"/v1/predict/{k}") for k in HIT_KEYS]  # computed, admitted into L1
            hits = [_answer(client, "GET", f"/v1/predict/{k}") for k in HIT_KEYS * 2]
            others = [_answer(client, m, p) for m, p in OTHER_REQUESTS]
            answers[name] = (first, hits, others, _counted(client))
        assert all(b'"source":"l1"' in body for _, body, _ in answers["fast"][1])
        assert answers["fast"][0] == answers["routed"][0]
        assert answers["fast"][1] == answers["routed"][1]
        for request, f, r in zip(OTHER_REQUESTS, answers["fast"][2], answers["routed"][2]):
            assert f == r, request
        counts, metrics = answers["fast"][3]
        assert (counts, metrics) == answers["routed"][3]
        assert counts["l1_hits"] >= len(HIT_KEYS) * 2 and metrics


class _Recorder:
    """The app behind the layer: records what reaches it and answers 404."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _call(layer: L1HitLayer, method: str, path: str) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await layer({"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""},
                receive, send)
    return sent


def test_layer_answers_only_l1_hits(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid")) as (server, client):
        client.get("/v1/predict/3:17")  # now in L1
        behind = _Recorder()
        layer = L1HitLayer(behind, state=server.app.state)
        hit = asyncio.run(_call(layer, "GET", "/v1/predict/3:17"))
        assert behind.paths == [] and hit[0]["status"] == 200 and b'"source":"l1"' in hit[1]["body"]
        for method, path in [("GET", "/v1/predict/4:4"), ("GET", "/v1/predict/x"), ("POST", "/v1/predict/3:17"),
                             ("GET", "/v1/predict/3:17/x"), ("GET", "/healthz")]:
            asyncio.run(_call(layer, method, path))
        assert behind.paths == ["/v1/predict/4:4", "/v1/predict/x", "/v1/predict/3:17", "/v1/predict/3:17/x", "/healthz"]


def test_no_l1_no_layer_answers(make_settings) -> None:  # type: ignore[no-untyped-def]
    """Dynamic mode has no L1, and an L1 of size 0 holds nothing: every request goes to the app."""
    for settings in (make_settings(mode="dynamic"), make_settings(mode="hybrid", l1_size=0)):
        with running(settings) as (server, client):
            client.get("/v1/predict/3:17")
            client.get("/v1/predict/3:17")
            behind = _Recorder()
            asyncio.run(_call(L1HitLayer(behind, state=server.app.state), "GET", "/v1/predict/3:17"))
            assert behind.paths == ["/v1/predict/3:17"]
