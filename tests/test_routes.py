"""Traffic split (serving/routes.py, the routing in serving/service.py, serving/shadow.py,
serving/version_metrics.py): parsing and its messages, a 90/10 split that holds and is sticky by
key, shadow that never changes a response, per-version metrics, and an admin change of routes that
is atomic per request and reaches every worker. Real Redis, real ONNX, real HTTP; every load loop
bounded in count and time.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtests.harness.server_process import ServerProcess
from models.data import all_keys
from models.publish import build_and_publish
from models.registry import set_latest
from serving.cache import Admission, AdmissionRule
from serving.errors import InvalidRoutes
from serving.instances import instance_key
from serving.metrics import Counts
from serving.model import LoadedModel
from serving.routes import BUCKETS, Router, Routes, bucket
from serving.shadow import ShadowRunner
from serving.tiers import TierWalk
from serving.version_metrics import VersionMetrics
from tests.helpers import ADMIN, TEST_SEGMENTS, running
from tests.test_consistency import TwoVersions, two_versions  # noqa: F401  (the fixture)

KEYS = all_keys(TEST_SEGMENTS)
SPLIT_REQUESTS = 10_000
SPLIT_TOLERANCE_PP = 2.0
LOAD_BOUND_S = 120.0  # every load loop stops here at the latest, on a loaded 2-core machine
SETTLE_S = 15.0  # background work (shadow, worker snapshots) shows up within this
STATED_CONVERGENCE_S = 2.0  # a poll (0.25 s) plus loading a version, as the README states
BATCH = 32
FLIPS = 8  # changes of routes under load in the workers test, one every FLIP_EVERY_S
FLIP_EVERY_S = 0.4


@dataclass(frozen=True)
class Versions:
    """A private registry with three versions of traffic-light (latest: a) and every key's value."""

    registry: Path
    a: str
    b: str
    c: str
    values: dict[str, dict[str, float]]


@pytest.fixture(scope="module")
def versions(two_versions: TwoVersions, tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """The two versions of tests/test_consistency.py (a: latest) and a third, trained with another seed."""
    root = tmp_path_factory.mktemp("split") / "registry"
    shutil.copytree(two_versions.registry, root)
    c = build_and_publish("light", root, segments=TEST_SEGMENTS, seed=321).version
    assert c not in (two_versions.old, two_versions.new)
    set_latest(root, "traffic-light", two_versions.old)
    model = LoadedModel.from_registry(root, "traffic-light", c)
    values = {two_versions.old: two_versions.old_values, two_versions.new: two_versions.new_values,
              c: dict(zip(KEYS, model.predict_indices(np.arange(len(KEYS))).tolist()))}
    return Versions(root, two_versions.old, two_versions.new, c, values)


def _put(client: httpx.Client, routes: list[tuple[str, float]], shadow: str | None = None) -> httpx.Response:
    body = {"routes": [{"version": v, "weight": w} for v, w in routes], "shadow": shadow}
    return client.put("/v1/admin/routes", json=body, headers=ADMIN)


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample's values over the lines that carry ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ----- parsing and validation ---------------------------------------------------------------------


def test_parse_the_settings_form_and_the_json_form_alike() -> None:
    routes = Routes.parse(" a1:90 , b2:10 ,shadow=c3 ")
    assert routes.versions == ("a1", "b2") and routes.shadow == "c3"
    assert Routes.parse(str(routes)) == routes
    assert Routes.from_json(routes.as_json()) == routes
    assert not Routes.parse("") and not Routes.from_json({"routes": []})


@pytest.mark.parametrize(("text", "says"), [
    ("a1", "is not VERSION:WEIGHT"),
    ("a1:ten", "is not a number"),
    ("a1:0", "positive finite number"),
    ("a1:-5", "positive finite number"),
    ("a1:nan", "positive finite number"),
    ("a1:inf", "positive finite number"),
    ("a1:1,a1:2", "appears more than once"),
    ("a1:1,shadow=a1", "is also in the split"),
    ("shadow=a1", "a shadow needs a split"),
    ("a1:1,shadow=b,shadow=c", "more than one shadow"),
    ("a/1:1", "is not a version name"),
])
def test_bad_routes_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidRoutes, match=says) as raised:
        Routes.parse(text)
    assert raised.value.status == 422


def test_unknown_versions_list_the_registry() -> None:
    known = {"latest": "v1", "v1": "v1", "v2": "v2"}
    assert Routes.parse("latest:3,v2:1").resolved(known.get, lambda: ["v1", "v2"]).versions == ("v1", "v2")
    with pytest.raises(InvalidRoutes, match=r"unknown version 'v9'; the registry has: v1, v2"):
        Routes.parse("v1:1,v9:1").resolved(known.get, lambda: ["v1", "v2"])
    with pytest.raises(InvalidRoutes, match="appears more than once"):  # latest is v1
        Routes.parse("latest:1,v1:1").resolved(known.get, lambda: ["v1", "v2"])


def test_weights_are_relative_and_buckets_cut_in_proportion() -> None:
    ninety, nine = Router(Routes.parse("x:90,y:10")), Router(Routes.parse("x:9,y:1"))
    assert all(ninety.version_for(k) == nine.version_for(k) for k in KEYS)
    shares = Counter(Router(Routes.parse("x:90,y:10")).version_for(f"k{i}") for i in range(20_000))
    assert abs(shares["y"] / 20_000 - 0.10) < 0.01


def test_the_bucket_of_a_key_is_the_same_in_every_process() -> None:
    """Python's hash() of a str is salted per process: routing by it would move keys between
    versions across workers and restarts. Two interpreters with different hash seeds agree."""
    probe = "from serving.routes import bucket; print([bucket(f'{s}:{h}') for s in range(5) for h in range(40)])"
    runs = {subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout for seed in (1, 2)}
    assert len(runs) == 1
    assert eval(runs.pop()) == [bucket(f"{s}:{h}") for s in range(5) for h in range(40)]
    assert all(0 <= bucket(k) < BUCKETS for k in KEYS)


def test_static_mode_refuses_routes(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="routes need a mode that runs the model"):
        make_settings(mode="static", routes=f"{versions.a}:1")


# ----- over HTTP -----------------------------------------------------------------------------------


def test_admin_routes_validate_and_resolve(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="hybrid", registry=versions.registry)
    with running(settings) as (_, client):
        assert client.get("/v1/admin/routes", headers=ADMIN).json() == {"routes": [], "shadow": None, "model_version": versions.a}
        unknown = _put(client, [("latest", 90), ("nope", 10)])
        assert unknown.status_code == 422 and unknown.json()["error"] == "invalid_routes"
        assert "unknown version 'nope'" in unknown.json()["detail"] and versions.b in unknown.json()["detail"]
        for routes, shadow, says in ([[(versions.a, 0)], None, "weight: Input should be greater than 0"], [[(versions.a, 1), (versions.a, 1)], None, "more than once"],
                                     [[(versions.a, 1)], versions.a, "also in the split"]):
            bad = _put(client, routes, shadow)
            assert bad.status_code == 422 and says in bad.json()["detail"], bad.text
        wrong_type = client.put("/v1/admin/routes", json={"routes": [{"version": versions.a, "weight": "x"}]}, headers=ADMIN)
        assert wrong_type.status_code == 422
        assert client.put("/v1/admin/routes", json={"routes": []}).status_code == 401
        assert client.delete("/v1/admin/routes").headers["allow"] == "GET, PUT"
        ok = _put(client, [("latest", 90), (versions.b, 10)], versions.c)
        assert ok.status_code == 200, ok.text
        assert ok.json()["routes"] == [{"version": versions.a, "weight": 90}, {"version": versions.b, "weight": 10}]
        assert ok.json()["shadow"] == versions.c
        assert client.get("/v1/admin/routes", headers=ADMIN).json()["routes"] == ok.json()["routes"]


def test_static_server_refuses_a_put(ready_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    with running(ready_settings("static")) as (_, client):
        refused = _put(client, [("latest", 1)])
        assert refused.status_code == 422 and "routes need a mode that runs the model" in refused.json()["detail"]


def test_a_90_10_split_holds_and_is_sticky_by_key(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    """10,000 single-key requests over the whole key space (every key, then uniform picks): the
    share answered by each version is within 2 points of 90/10, each key is always answered by the
    same version, and each value is that version's."""
    routes = f"{versions.a}:90,{versions.b}:10"
    settings = make_settings(mode="hybrid", registry=versions.registry, routes=routes)
    rng = random.Random(5)
    asked = KEYS + [rng.choice(KEYS) for _ in range(SPLIT_REQUESTS - len(KEYS))]
    answered: dict[str, set[str]] = {}
    per_request: Counter[str] = Counter()
    start = time.monotonic()
    with running(settings) as (_, client):
        for key in asked:
            assert time.monotonic() - start < LOAD_BOUND_S, "the run took too long"
            answer = client.get(f"/v1/predict/{key}").json()
            version = answer["model_version"]
            assert answer["prediction"] == versions.values[version][key]
            answered.setdefault(key, set()).add(version)
            per_request[version] += 1
    share = 100 * per_request[versions.b] / SPLIT_REQUESTS
    print(f"\n90/10 split over {SPLIT_REQUESTS} requests: {100 - share:.2f}% / {share:.2f}%")
    assert abs(share - 10.0) <= SPLIT_TOLERANCE_PP
    assert all(len(seen) == 1 for seen in answered.values()), "a key was answered by two versions"
    router = Router(Routes.parse(routes))  # and by the version a fresh process routes it to
    assert all(seen == {router.version_for(key)} for key, seen in answered.items())


def test_a_request_is_grouped_by_version_and_answered_in_order(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    routes = f"{versions.a}:50,{versions.b}:50"
    router = Router(Routes.parse(routes))
    settings = make_settings(mode="hybrid", registry=versions.registry, routes=routes)
    keys = KEYS[:100] + KEYS[:10]  # repeats too
    with running(settings) as (_, client):
        for _ in range(2):  # the model, then the caches
            body = client.post("/v1/predict", json={"keys": keys}).json()
            assert [p["key"] for p in body["predictions"]] == keys
            for p in body["predictions"]:
                assert p["model_version"] == router.version_for(p["key"])
                assert p["prediction"] == versions.values[p["model_version"]][p["key"]]
        # Raw features route by their instance key (the hash of the vector), sticky as keys are.
        model = LoadedModel.from_registry(versions.registry, "traffic-light", versions.a)
        rows = model.features.rows(list(range(60)))
        instances = [dict(zip(model.card["features"], row.tolist())) for row in rows]
        for _ in range(2):
            answered = client.post("/v1/predict", json={"instances": instances}).json()["predictions"]
            assert [p["model_version"] for p in answered] == [router.version_for(instance_key(row)) for row in rows]
        assert {p["model_version"] for p in answered} == {versions.a, versions.b}


def test_the_fast_path_answers_from_the_routed_version(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/predict/{key} is answered from L1 in front of the routing: after both versions' L1s
    are warm, the split flips (the same versions, the other order: half the keys move), and every
    key is still answered by the version it routes to now, with that version's value."""
    flipped = f"{versions.b}:50,{versions.a}:50"
    settings = make_settings(mode="hybrid", registry=versions.registry, routes=f"{versions.a}:50,{versions.b}:50")
    keys = KEYS[:200]
    with running(settings) as (_, client):
        for _ in range(2):  # computed, then L1 hits: both versions' L1s hold their keys
            assert all(client.get(f"/v1/predict/{k}").status_code == 200 for k in keys)
        assert _put(client, [(versions.b, 50), (versions.a, 50)]).status_code == 200
        answers = [client.get(f"/v1/predict/{k}").json() for k in keys]
    router, before = Router(Routes.parse(flipped)), Router(Routes.parse(f"{versions.a}:50,{versions.b}:50"))
    assert [a["model_version"] for a in answers] == [router.version_for(k) for k in keys]
    assert all(a["prediction"] == versions.values[a["model_version"]][a["key"]] for a in answers)
    # A key that stayed is an L1 hit of its version; one that moved is new to its new version's L1.
    assert [a["source"] for a in answers] == ["l1" if router.version_for(k) == before.version_for(k) else "model" for k in keys]


def test_v2_infer_serves_exactly_the_version_asked(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="hybrid", registry=versions.registry, routes=f"{versions.a}:50,{versions.b}:50")
    body = {"inputs": [{"name": "key", "shape": [20], "datatype": "BYTES", "data": KEYS[:20]}]}
    with running(settings) as (_, client):
        for version in (versions.a, versions.b):
            answer = client.post(f"/v2/models/traffic-light/versions/{version}/infer", json=body).json()
            assert answer["model_version"] == version
            assert answer["outputs"][0]["data"] == [versions.values[version][k] for k in KEYS[:20]]
        other = client.post(f"/v2/models/traffic-light/versions/{versions.c}/infer", json=body)
        assert other.status_code == 404 and versions.a in other.json()["detail"]
        assert client.get(f"/v2/models/traffic-light/versions/{versions.b}/ready").status_code == 200


def test_shadow_never_changes_a_response(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    """The same requests to a server with a shadow and to one without: the same answers, value by
    value; the shadow's differences reach /metrics and the stats."""
    plain = make_settings(mode="hybrid", registry=versions.registry, routes=f"{versions.a}:90,{versions.b}:10")
    shadowed = make_settings(mode="hybrid", registry=versions.registry, routes=f"{versions.a}:90,{versions.b}:10,shadow={versions.c}")
    rng = random.Random(8)
    batches = [rng.sample(KEYS[:400], 8) for _ in range(150)]
    with running(plain) as (_, without), running(shadowed) as (_, with_shadow):
        for batch in batches:
            expected = without.post("/v1/predict", json={"keys": batch}).json()
            assert with_shadow.post("/v1/predict", json={"keys": batch}).json() == expected
            for key in batch[:2]:  # single-key GETs too: the fast path, L1 hits included
                assert with_shadow.get(f"/v1/predict/{key}").json() == without.get(f"/v1/predict/{key}").json()
        model = LoadedModel.from_registry(versions.registry, "traffic-light", versions.a)
        instances = [dict(zip(model.card["features"], row.tolist())) for row in model.features.rows(list(range(40)))]
        for _ in range(2):  # raw-feature instances are shadowed too, by their rows
            expected = without.post("/v1/predict", json={"instances": instances}).json()
            assert with_shadow.post("/v1/predict", json={"instances": instances}).json() == expected
        deadline = time.monotonic() + SETTLE_S
        while (compared := _metric(with_shadow.get("/metrics").text, "hybridserve_shadow_abs_difference_count",
                                   shadow=versions.c)) == 0:
            assert time.monotonic() < deadline, "no shadow comparison reached /metrics"
            time.sleep(0.1)
        stats = with_shadow.get("/v1/cache/stats").json()["shadow"]
        assert {d["primary"] for d in stats["differences"]} == {versions.a, versions.b}
        assert all(d["max_abs"] > 0 for d in stats["differences"])  # the versions do differ
        assert _metric(without.get("/metrics").text, "hybridserve_shadow_abs_difference_count") == 0
        # The shadow's work is not the server's: the global counts hold only answered traffic.
        assert with_shadow.get("/v1/cache/stats").json()["counts"] == without.get("/v1/cache/stats").json()["counts"]
    print(f"\nshadow compared {compared:.0f} keys; dropped {stats['dropped']}")


def test_shadow_is_bounded_and_drops_when_full() -> None:
    """At most SHADOW_MAX_IN_FLIGHT shadow requests at once; more are dropped and counted; a failing
    shadow is counted and raises nowhere."""

    class SlowTier:
        name, computes, trusts_keys = "model", True, False

        def __init__(self) -> None:
            self.release = asyncio.Event()

        async def get_many(self, keys: Sequence[str], rows: object = None) -> list[float | None]:
            await self.release.wait()
            if keys == ["boom"]:
                raise RuntimeError("shadow model failed")
            return [1.5 for _ in keys]

        async def put_many(self, items: object) -> None:
            return None

    @dataclass
    class Answer:
        key: str
        prediction: float
        model_version: str

    async def scenario() -> VersionMetrics:
        metrics, tier = VersionMetrics(), SlowTier()
        walk = TierWalk([tier], admission=Admission(AdmissionRule()), observer=Counts(), validate=lambda key: None)
        runner = ShadowRunner(metrics, max_in_flight=4)
        for i in range(9):
            runner.submit(walk, "s", [Answer("boom" if i == 0 else f"k{i}", 1.0, "p")])
        assert runner.in_flight == 4 and metrics.shadow_dropped == 5
        tier.release.set()
        for _ in range(100):
            if runner.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        await runner.close()
        return metrics

    metrics = asyncio.run(scenario())
    assert metrics.shadow_errors == 1
    assert metrics.difference("p", "s").as_dict()["compared"] == 3
    assert metrics.difference("p", "s").as_dict()["mean_abs"] == 0.5


def test_per_version_metrics_count_each_version(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    routes = f"{versions.a}:70,{versions.b}:30"
    router = Router(Routes.parse(routes))
    settings = make_settings(mode="hybrid", registry=versions.registry, routes=routes)
    keys = KEYS[:300]
    expected = Counter(router.version_for(k) for k in keys)
    with running(settings) as (_, client):
        for _ in range(2):  # the second pass is all L1 hits
            for key in keys:
                assert client.get(f"/v1/predict/{key}").status_code == 200
        split = client.post("/v1/predict", json={"keys": keys[:20]}).json()  # one request, both versions
        in_split = Counter(p["model_version"] for p in split["predictions"])
        stats = client.get("/v1/cache/stats").json()
        text = client.get("/metrics").text
    for version in (versions.a, versions.b):
        counts = stats["versions"][version]["counts"]
        assert counts["requests"] == 2 * expected[version] + 1
        assert counts["keys"] == 2 * expected[version] + in_split[version]
        assert counts["model_rows"] == expected[version]  # each key computed once, by its version
        assert counts["l1_hits"] == expected[version] + in_split[version]
        assert stats["versions"][version]["hit_ratio"]["l1"] == pytest.approx(counts["l1_hits"] / (counts["l1_hits"] + counts["model_rows"]))
        assert _metric(text, "hybridserve_version_requests_total", version=version, role="primary") == counts["requests"]
        assert _metric(text, "hybridserve_version_request_seconds_count", version=version) == counts["requests"]
        assert _metric(text, "hybridserve_version_cache_lookups_total", version=version, tier="l1", result="hit") == counts["l1_hits"]
    assert stats["counts"]["keys"] == 2 * len(keys) + 20  # the global counts still count everything
    assert _metric(text, "hybridserve_keys_total") == 2 * len(keys) + 20


def test_reload_ends_the_split_and_clearing_keeps_the_first(make_settings, versions: Versions) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="hybrid", registry=versions.registry, routes=f"{versions.a}:50,{versions.b}:50")
    with running(settings) as (_, client):
        assert {client.get(f"/v1/predict/{k}").json()["model_version"] for k in KEYS[:50]} == {versions.a, versions.b}
        assert client.post("/v1/admin/reload", json={"version": versions.c}, headers=ADMIN).status_code == 200
        assert client.get("/v1/admin/routes", headers=ADMIN).json() == {"routes": [], "shadow": None, "model_version": versions.c}
        assert {client.get(f"/v1/predict/{k}").json()["model_version"] for k in KEYS[:50]} == {versions.c}
        assert _put(client, [(versions.b, 1), (versions.a, 1)]).status_code == 200
        assert client.put("/v1/admin/routes", json={"routes": []}, headers=ADMIN).json()["model_version"] == versions.b
        answers = [client.get(f"/v1/predict/{k}").json() for k in KEYS[:50]]
        assert all(a["model_version"] == versions.b and a["prediction"] == versions.values[versions.b][a["key"]] for a in answers)


def _fresh() -> httpx.Client:
    """A new connection per request, so the kernel hands each to either worker."""
    return httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0))


@pytest.mark.parametrize("mode", ["hybrid", "dynamic"])
def test_a_change_of_routes_is_atomic_per_request_and_reaches_every_worker(make_settings, versions: Versions, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                            mode: str) -> None:
    """``--workers 2``: batches of keys sent without pause from two threads while the routes change
    from version a alone to a 50/50 split of a and b, then flip FLIPS times between that split and
    b:50,a:50 (the same versions in the other order: half the keys change version), each change
    sent to whichever worker takes it. Every response is exactly one routing (a alone, or one of
    the two splits, never a mix), with each value that of the version named; after the stated
    convergence every response on every worker is the last routing. Hybrid follows the control
    record in Redis, dynamic (no Redis) the file in the server's worker_dir."""
    store = {} if mode == "hybrid" else {"redis_url": None}
    settings = make_settings(mode=mode, registry=versions.registry, workers=2, worker_dir=tmp_path, **store)
    splits = [[(versions.a, 50), (versions.b, 50)], [(versions.b, 50), (versions.a, 50)]]
    routers = [Router(Routes.of(split)) for split in splits]
    rng = random.Random(3)
    batches = [rng.sample(KEYS, BATCH) for _ in range(50)]
    seen: list[tuple[float, list[str], list[dict[str, object]]]] = []
    stop = threading.Event()

    def hammer(url: str, offset: int) -> None:
        with _fresh() as client:
            for i in range(20_000):
                if stop.is_set():
                    return
                batch = batches[(i + offset) % len(batches)]
                answer = client.post(f"{url}/v1/predict", json={"keys": batch}).json()
                seen.append((time.monotonic(), batch, answer["predictions"]))

    with ServerProcess(settings) as server:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("metrics-*.json"))) < 2:
            assert time.monotonic() < deadline, "two workers did not start"
            time.sleep(0.1)
        threads = [threading.Thread(target=hammer, args=(server.url, i * 25), daemon=True) for i in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        with _fresh() as admin:
            for flip in range(FLIPS + 1):
                changed = admin.put(f"{server.url}/v1/admin/routes", headers=ADMIN,
                                    json={"routes": [{"version": v, "weight": w} for v, w in splits[flip % 2]]})
                assert changed.status_code == 200 and changed.json()["propagated"] is True
                changed_at = time.monotonic()
                time.sleep(FLIP_EVERY_S)
        final = routers[FLIPS % 2]
        time.sleep(STATED_CONVERGENCE_S)
        stop.set()
        for thread in threads:
            thread.join(LOAD_BOUND_S)
        with _fresh() as client:  # every worker: fresh connections land on both
            routes = {tuple(r["version"] for r in client.get(f"{server.url}/v1/admin/routes", headers=ADMIN).json()["routes"])
                      for _ in range(20)}
            after = [client.post(f"{server.url}/v1/predict", json={"keys": b}).json() for b in batches[:40]]
    assert routes == {tuple(v for v, _ in splits[FLIPS % 2])}
    kinds: Counter[str] = Counter()
    late: list[float] = []
    for at, batch, answered in seen:
        named = [str(p["model_version"]) for p in answered]
        assert all(p["prediction"] == versions.values[str(p["model_version"])][str(p["key"])] for p in answered), \
            "a value is not that of the version named"
        kind = next((name for name, router in (("x", routers[0]), ("y", routers[1])) if named == [router.version_for(k) for k in batch]),
                    "alone" if named == [versions.a] * len(batch) else "mixed")
        kinds[kind] += 1
        if at > changed_at + STATED_CONVERGENCE_S and named != [final.version_for(k) for k in batch]:
            late.append(at)
    print(f"\nroutes changed {FLIPS + 1} times under load: {len(seen)} batches, {dict(kinds)}")
    assert kinds["mixed"] == 0, "a response mixed two routings"
    assert kinds["alone"] and kinds["x"] and kinds["y"], "the load did not span the changes"
    assert late == [], "a worker still answered with an old routing after the stated convergence"
    for answer, batch in zip(after, batches):
        assert [p["model_version"] for p in answer["predictions"]] == [final.version_for(k) for k in batch]
