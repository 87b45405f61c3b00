"""Redis Cluster: slot routing (serving/cluster.py), the cluster store, and the faults users fear,
on one real 3-master + 3-replica cluster (loadtests/harness/redis_cluster.py) shared by the module.

Parity of the three modes on 2,000 keys; a master SIGKILLed under hybrid and static load (hybrid:
zero failed requests; static: 503 only inside the failover window, never a wrong value); a slot
moved under load (ASK, then MOVED): no failed request, no wrong value. Load comes from a few
threads, bounded in request count and time; traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from loadtests.harness.redis_cluster import RedisCluster
from models.data import all_keys
from serving.cluster import ClusterURL, key_slot
from serving.model import LoadedModel
from serving.precompute import precompute
from serving.settings import Settings
from serving.store import KeyLayout, build_store
from tests.helpers import TEST_SEGMENTS, running
from tests.load import LoadThreads

KEYS = all_keys(TEST_SEGMENTS)
PARITY_KEYS = KEYS[:2000]
# Generous for a loaded 2-core CI machine: the failover itself takes ~2-4 s with
# cluster-node-timeout 1000 ms; the client re-reads the topology within 0.1 s of noticing.
SETTLE_S = 1.0  # after the harness sees the new master, the servers' next refresh + in-flight requests


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(masters=3, replicas=1) as started:
        yield started


@pytest.fixture(scope="module")
def truth(registry: Path) -> dict[str, float]:
    """Every key's prediction straight from the model: what every mode must return."""
    model = LoadedModel.from_registry(registry, "traffic-light", "latest")
    return dict(zip(KEYS, model.predict_indices(np.arange(len(KEYS))).tolist()))


@pytest.fixture
def on_cluster(make_settings, cluster: RedisCluster):  # type: ignore[no-untyped-def]
    def make(**fields: object) -> Settings:
        return make_settings(redis_url=cluster.url, **fields)  # type: ignore[no-any-return]

    return make


# ----- routing, no cluster needed -------------------------------------------------------------

def test_key_slot_is_crc16_xmodem_with_hash_tags() -> None:
    assert key_slot("123456789") == 0x31C3  # the CRC16/XMODEM check value, < 16384
    assert key_slot("{user1000}.following") == key_slot("user1000") == key_slot("x{user1000}y")
    assert key_slot("foo{}{bar}") == key_slot("foo{}{bar}".encode())  # an empty tag is no tag
    assert key_slot("a{b") != key_slot("b")


def test_cluster_url_scheme() -> None:
    url = ClusterURL("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7001")
    assert url.seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert url.node_url(("10.0.0.3", 7002)) == "redis://:secret@10.0.0.3:7002/0"
    assert ClusterURL("rediss+cluster://h:1?ssl_cert_reqs=none").node_url(("h", 1)) == "rediss://h:1/0?ssl_cert_reqs=none"
    for bad in ("redis://h:1", "redis+cluster://", "redis+cluster://h:1/2", "redis+cluster://h"):
        with pytest.raises(ValueError):
            ClusterURL(bad)


# ----- the store on a real cluster --------------------------------------------------------------

def test_store_spreads_a_version_over_every_master_and_finds_the_pointer_without_scan(on_cluster, cluster: RedisCluster) -> None:  # type: ignore[no-untyped-def]
    settings = on_cluster()

    async def run() -> None:
        store = build_store(settings)
        items = [(k, float(i)) for i, k in enumerate(KEYS[:600])]
        await store.put_predictions("m", "v1", items, 0)
        await store.set_pointer("m", "v1")
        assert await store.get_predictions("m", "v1", [k for k, _ in items] + ["999:1"]) == [v for _, v in items] + [None]
        assert await store.get_pointer("m") == "v1"
        assert await store.ping() and await store.used_memory() > 0
        assert await store.delete_model("m", keep_pointer=True) == 600
        assert await store.get_predictions("m", "v1", [KEYS[0]]) == [None] and await store.get_pointer("m") == "v1"
        await store.close()

    asyncio.run(run())
    layout = KeyLayout(settings.redis_namespace)
    owners = {cluster.master_of(key_slot(layout.prediction("m", "v1", k))).port for k in KEYS[:600]}
    assert len(owners) == 3, "one version's keys land on every master"


def test_three_modes_return_the_same_float_for_2000_keys(on_cluster, truth: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    static, hybrid = on_cluster(mode="static"), on_cluster(mode="hybrid", l1_size=0)
    precompute(static, progress=False)
    precompute(hybrid, PARITY_KEYS[::2], progress=False)  # half from Redis, half computed
    answers: dict[str, dict[str, float]] = {}
    for name, settings in (("static", static), ("hybrid", hybrid), ("dynamic", on_cluster(mode="dynamic"))):
        with running(settings) as (_, client):
            answers[name] = {}
            for start in range(0, len(PARITY_KEYS), 250):
                body = client.post("/v1/predict", json={"keys": PARITY_KEYS[start : start + 250]})
                assert body.status_code == 200, body.text
                answers[name].update((p["key"], p["prediction"]) for p in body.json()["predictions"])
    expected = {k: truth[k] for k in PARITY_KEYS}
    assert answers["static"] == answers["hybrid"] == answers["dynamic"] == expected


# ----- faults under load ------------------------------------------------------------------------

def _keys_on_master(cluster: RedisCluster, settings: Settings, version: str, port: int) -> list[str]:
    layout = KeyLayout(settings.redis_namespace)
    return [k for k in KEYS[:400] if cluster.master_of(key_slot(layout.prediction(settings.model_name, version, k))).port == port]


def test_master_killed_under_load(on_cluster, cluster: RedisCluster, truth: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """Hybrid: zero failed requests, Redis hits resume on the promoted replica. Static: 503 only
    inside the failover window and only for keys on the killed master, never a wrong value."""
    fast = {"redis_timeout_s": 0.2, "breaker_reset_s": 0.3}
    static, hybrid = on_cluster(mode="static", **fast), on_cluster(mode="hybrid", l1_size=0, **fast)
    version = precompute(static, progress=False).model_version
    precompute(hybrid, KEYS[:400], progress=False)
    victim_port = cluster.master_of(0).port
    on_victim = set(_keys_on_master(cluster, static, version, victim_port))
    keys = sorted(on_victim)[:20] + [k for k in KEYS[:400] if k not in on_victim][:20]
    with running(static) as (_, s_client), running(hybrid) as (_, h_client), \
            LoadThreads(str(s_client.base_url).rstrip("/"), keys) as s_load, \
            LoadThreads(str(h_client.base_url).rstrip("/"), keys) as h_load:
        h_load.wait_for(50, source="redis")
        s_load.wait_for(50)
        killed = time.monotonic()
        victim = cluster.kill_master_of(0)
        promoted = cluster.wait_until_served(0)
        served_again = time.monotonic()
        h_load.wait_for(50, since=served_again + SETTLE_S, source="redis")
        s_load.wait_for(50, since=served_again + SETTLE_S)
    assert promoted.port != victim.port
    assert h_load.failures() == [], h_load.failures()[:5]
    assert h_load.wrong(truth) == [] and s_load.wrong(truth) == []
    s_errors = s_load.failures()
    assert all(a.status == 503 and killed <= a.t <= served_again + SETTLE_S for a in s_errors), s_errors[:5]
    # Each node has its own breaker: keys on the surviving masters are answered all along.
    assert {a.key for a in s_errors} <= on_victim, sorted({a.key for a in s_errors} - on_victim)[:5]
    after = [a for a in s_load.answers if a.t > served_again + SETTLE_S]
    assert after and all(a.status == 200 for a in after)
    print(f"\nfailover: {served_again - killed:.1f}s; hybrid {len(h_load.answers)} requests, 0 failed; "
          f"static {len(s_errors)} x 503 of {len(s_load.answers)}")
    cluster.restart(victim)  # it rejoins as a replica of the promoted master


def _tag_for_slot(slot: int) -> str:
    """A hash tag whose keys land in ``slot`` (to give a slot enough keys for a long migration)."""
    return next(tag for i in range(1_000_000) if key_slot(tag := f"fill{i}") == slot)


def test_slot_moved_under_load(on_cluster, cluster: RedisCluster, truth: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """Keys of a slot in the middle of a migration (ASK) and after it (MOVED): no failed request,
    no wrong value, in static (reads) and hybrid (reads and admitted writes)."""
    static, hybrid = on_cluster(mode="static"), on_cluster(mode="hybrid", l1_size=0, redis_ttl_s=60)
    version = precompute(static, progress=False).model_version
    layout = KeyLayout(static.redis_namespace)
    key = KEYS[7]
    slot = key_slot(layout.prediction(static.model_name, version, key))
    hybrid_slot_keys = [k for k in KEYS if key_slot(KeyLayout(hybrid.redis_namespace).prediction(hybrid.model_name, version, k)) == slot]
    source = cluster.master_of(slot)
    target = next(cluster.by_port(i.port) for i in cluster.topology() if i.master and not i.failed and i.port != source.port)
    admin = cluster.admin(source)
    tag = _tag_for_slot(slot)
    admin.mset({f"{{{tag}}}:{i}": "x" for i in range(1500)})  # ~15 migrate batches: a long ASK window
    with running(static) as (s_server, s_client), running(hybrid) as (h_server, h_client), \
            LoadThreads(str(s_client.base_url).rstrip("/"), [key] * 5 + KEYS[:10]) as s_load, \
            LoadThreads(str(h_client.base_url).rstrip("/"), hybrid_slot_keys + [key] + KEYS[:10]) as h_load:
        s_load.wait_for(30)
        moved = cluster.move_slot(slot, target, pause_s=0.03)
        done = time.monotonic()
        s_load.wait_for(30, since=done)
        h_load.wait_for(30, since=done)
        redirects = s_server.server.config.app.state.service.store.redirects
    assert moved >= 1500 and cluster.master_of(slot).port == target.port
    failed = s_load.failures() + h_load.failures()
    assert failed == [], failed[:5]
    assert s_load.wrong(truth) == [] and h_load.wrong(truth) == []
    assert redirects >= 1, "the static server was redirected (ASK or MOVED) at least once"
    print(f"\nslot {slot}: {moved} keys moved; {len(s_load.answers) + len(h_load.answers)} requests, 0 failed, "
          f"{redirects} redirects followed")


def test_cli_starts_a_cluster_and_prints_its_url() -> None:
    process = subprocess.Popen([sys.executable, "-m", "hybridserve", "redis", "--cluster", "3"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        url = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("redis+cluster://:") and "@127.0.0.1:" in url  # every node needs the password
        cluster_url = ClusterURL(url)
        node = redis.Redis.from_url(cluster_url.node_url(cluster_url.seeds[0]), decode_responses=True)
        assert "cluster_state:ok" in node.execute_command("CLUSTER", "INFO")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(15) == 0
