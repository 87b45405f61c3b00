"""CPU per operation of the Redis Cluster client candidates; writes benchmarks/cluster_clients.md.

Candidates, each against the same real local cluster (3 masters, loopback, from
loadtests.harness.redis_cluster) and the same 4,096 keys of the serving key layout:

- ``resp+slots``: the project's pipelined RESP client taught slot routing (serving/cluster.py),
  through ClusterStore as the server uses it;
- ``redis-py``: redis-py's asyncio ``RedisCluster`` (``get``; ``mget_nonatomic`` for a batch, which
  groups by slot and pipelines per node);
- ``resp 1-node``: the one-node RespClient against one plain redis-server, the floor.

valkey-glide is not measured: it is not among the packages installable here without a network
build (a Rust core), and the brief allowed it only if it installed quickly.

Each operation is awaited one after another (no concurrency), so CPU per operation is this
process's CPU time (``time.process_time``) over the count: what a server pays per cache lookup,
the event loop included, Redis's own CPU excluded. Bounded: a few thousand operations each, one
median of three alternating rounds of a few seconds. Run: ``.venv/bin/python benchmarks/cluster_clients.py``.
"""

from __future__ import annotations

import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import redis.asyncio as aioredis  # noqa: E402  (after the path)

from loadtests.harness.redis_cluster import RedisCluster  # noqa: E402
from loadtests.harness.redis_server import EmbeddedRedis  # noqa: E402
from serving.settings import Settings  # noqa: E402
from serving.store import KeyLayout, build_store, encode  # noqa: E402

KEYS = [f"{s}:{h}" for s in range(64) for h in range(64)]
SINGLE_OPS = 3000
BATCH = 32
BATCH_OPS = 400
MODEL, VERSION = "traffic-light", "bench"
ROUNDS = 3
OUT = ROOT / "benchmarks" / "cluster_clients.md"


async def _cpu_per_op(op: Callable[[int], Awaitable[object]], count: int) -> tuple[float, float]:
    """Microseconds of CPU and of wall time per awaited ``op(i)``, after a warm-up."""
    for i in range(50):
        await op(i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        await op(i)
    return (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6


def _batch(i: int) -> list[str]:
    start = (i * BATCH) % (len(KEYS) - BATCH)
    return KEYS[start : start + BATCH]


async def _measure_store(url: str) -> dict[str, tuple[float, float]]:
    store = build_store(Settings(redis_url=url, redis_namespace="bench"))
    await store.put_predictions(MODEL, VERSION, [(k, float(i)) for i, k in enumerate(KEYS)], 0)
    single = await _cpu_per_op(lambda i: store.get_predictions(MODEL, VERSION, [KEYS[i % len(KEYS)]]), SINGLE_OPS)
    batch = await _cpu_per_op(lambda i: store.get_predictions(MODEL, VERSION, _batch(i)), BATCH_OPS)
    await store.close()
    return {"GET 1 key": single, f"read {BATCH} keys": batch}


async def _measure_redis_py(cluster: RedisCluster) -> dict[str, tuple[float, float]]:
    client = aioredis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    layout = KeyLayout("bench")
    names = layout.predictions(MODEL, VERSION, KEYS)
    await client.mset_nonatomic({name: encode(1.0) for name in names})
    single = await _cpu_per_op(lambda i: client.get(names[i % len(names)]), SINGLE_OPS)
    batch = await _cpu_per_op(lambda i: client.mget_nonatomic(layout.predictions(MODEL, VERSION, _batch(i))), BATCH_OPS)
    await client.aclose()
    return {"GET 1 key": single, f"read {BATCH} keys": batch}


def _table(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    ops = list(next(iter(results.values())))
    lines = ["| client | " + " | ".join(f"{op}: CPU us (wall us)" for op in ops) + " |",
             "|---|" + "---|" * len(ops)]
    for name, figures in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{figures[op][0]:.1f} ({figures[op][1]:.1f})" for op in ops) + " |")
    return "\n".join(lines)


def _median(rounds: list[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    return {op: (statistics.median(r[op][0] for r in rounds), statistics.median(r[op][1] for r in rounds)) for op in rounds[0]}


def main() -> None:
    rounds: dict[str, list[dict[str, tuple[float, float]]]] = {}
    with RedisCluster(masters=3) as cluster, EmbeddedRedis() as one:
        # Alternating rounds, so that other work on the machine hits every candidate alike.
        for _ in range(ROUNDS):
            rounds.setdefault("resp+slots (ClusterStore)", []).append(asyncio.run(_measure_store(cluster.url)))
            rounds.setdefault("redis-py RedisCluster", []).append(asyncio.run(_measure_redis_py(cluster)))
            rounds.setdefault("resp 1-node (RedisStore, floor)", []).append(asyncio.run(_measure_store(one.url)))
    results = {name: _median(figures) for name, figures in rounds.items()}
    table = _table(results)
    print(table)
    OUT.write_text(f"""# Redis Cluster client candidates: CPU per operation

Written by `benchmarks/cluster_clients.py` ({platform.node()}, Python {platform.python_version()},
{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). A real 3-master cluster on loopback; operations
awaited one at a time; CPU is the client process's only (Redis excluded). {SINGLE_OPS} single reads,
{BATCH_OPS} reads of {BATCH} keys (spread over all three masters); median of {ROUNDS} alternating rounds. A shared 2-core machine: compare
the ratios, not the absolute figures.

{table}

Choice: the project's RESP client with slot routing (`serving/cluster.py`), for the CPU it saves
per lookup on the serving hot path; it follows MOVED and ASK and re-reads the topology itself
(tested against real failovers and slot moves in `tests/test_cluster.py`). redis-py's cluster client
stays a fine choice for tools. valkey-glide was not measured (not installable here without building
its Rust core).
""")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
