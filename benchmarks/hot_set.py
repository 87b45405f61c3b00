"""What the hot set costs on the hot path: CPU per L1 hit with and without it.

A hybrid PredictionService (real Redis, the light demo model) with every key of a Zipf stream in
L1; ``predict_cached`` (what the fast path calls for ``GET /v1/predict/{key}``) is timed over the
same stream with ``hot_set`` off and on, in alternating rounds (the machine is shared: the median of
rounds is reported, and the difference of medians). Also the sketch alone (``HotSet.add``) and the
hot set's counters and traced memory after the run.

Writes benchmarks/hot_set.md. ``python benchmarks/hot_set.py [--requests N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.harness.redis_server import EmbeddedRedis  # noqa: E402
from loadtests.keys import key_stream  # noqa: E402
from models.publish import build_and_publish  # noqa: E402
from serving.hot_set import HotSet  # noqa: E402
from serving.service import PredictionService  # noqa: E402
from serving.settings import Settings  # noqa: E402
from serving.store import build_store  # noqa: E402

SEGMENTS = 200
DISTRIBUTION = "zipf:1.1"
SERVED_L1_HIT_US = 56  # server CPU of an L1 hit over HTTP, benchmarks/results.md


async def _per_hit_ns(settings: Settings, keys: list[str], rounds: int) -> tuple[list[float], PredictionService]:
    service = PredictionService(settings, build_store(settings))
    await service.start()
    await service.predict(list(dict.fromkeys(keys))[:settings.l1_size])  # every key in L1
    assert all(service.predict_cached(k) is not None for k in keys[:1000])
    times = []
    cached = service.predict_cached
    for _ in range(rounds):
        start = time.process_time()
        for key in keys:
            cached(key)
        times.append((time.process_time() - start) / len(keys) * 1e9)
    await service.close()
    return times, service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--capacity", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis_server:
        registry = Path(tmp) / "registry"
        artifact = build_and_publish("light", registry, segments=SEGMENTS)
        keys = key_stream(DISTRIBUTION, artifact.card()["segments"] if "segments" in artifact.card() else SEGMENTS,
                          seed=7).take(args.requests)
        base = dict(registry=registry, redis_url=redis_server.url, mode="hybrid", l1_size=50_000)
        off, on = [], []
        for _ in range(args.rounds):  # alternate, so both see the same machine load
            off += asyncio.run(_per_hit_ns(Settings(**base), keys, 1))[0]
            on += asyncio.run(_per_hit_ns(Settings(**base, hot_set=True, hot_set_capacity=args.capacity), keys, 1))[0]
        hot = HotSet(args.capacity, half_life_s=60.0)
        add = hot.add
        start = time.process_time()
        for key in keys:
            add(key)
        hot.top(1)  # count the last batch too
        add_ns = (time.process_time() - start) / len(keys) * 1e9
        hot = HotSet(args.capacity, half_life_s=60.0)  # again under tracemalloc (which slows it): its memory
        tracemalloc.start()
        hot.update(keys)
        hot.top(1)
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    off_ns, on_ns = statistics.median(off), statistics.median(on)
    lines = [
        "# The hot set on the hot path (`python benchmarks/hot_set.py`)",
        "",
        f"Measured on {platform.node()} ({len(__import__('os').sched_getaffinity(0))} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.requests:,} `{DISTRIBUTION}` keys over the "
        f"{SEGMENTS}-segment demo grid, all L1 hits, {args.rounds} alternating rounds each (median; process CPU time; "
        "the machine was shared with other work, niced).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| `predict_cached` (an L1 hit, in process), hot set off | {off_ns:.0f} ns |",
        f"| `predict_cached`, hot set on (capacity {args.capacity}) | {on_ns:.0f} ns |",
        f"| added per L1 hit (difference of medians) | {on_ns - off_ns:.0f} ns ({(on_ns - off_ns) / off_ns * 100:.1f}%) |",
        f"| `HotSet.add` alone, batching and counting included | {add_ns:.0f} ns |",
        f"| hot set after the run: counters / traced memory | {len(hot):,} / {memory / 1024:.0f} KiB |",
        "",
        f"Rounds off (ns): {', '.join(f'{t:.0f}' for t in off)}; on: {', '.join(f'{t:.0f}' for t in on)}.",
        "",
        f"A served L1 hit costs about {SERVED_L1_HIT_US} µs of server CPU over HTTP here (benchmarks/results.md, `make bench`):",
        f"the hot set adds about {(on_ns - off_ns) / 1000 / SERVED_L1_HIT_US * 100:.1f}% to it.",
    ]
    out = ROOT / "benchmarks" / "hot_set.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
