"""What drift monitoring adds to a request: CPU per request with monitoring off, sampled, and on every request.

Drives :class:`serving.service.PredictionService` in this process (no HTTP: the HTTP stack costs
the same with or without monitoring, so leaving it out shows the difference, not noise around it)
over three paths, each ``--requests`` times per setting, and prints the process CPU per request:

- an L1 hit of one key (``predict_cached``, the fast path of ``GET /v1/predict/{key}``);
- a keyed batch of ``--batch`` keys, all L1 hits (``POST /v1/predict {"keys": ...}``);
- a raw-feature request of one instance, computed by the model (``{"instances": [...]}``).

Settings compared: ``drift_monitoring=false``; on with the default ``drift_sample_rate`` (0.1);
on with every request observed (1.0). Trains a small registry and starts an embedded Redis.

Example::

    python benchmarks/drift_overhead.py --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.harness.redis_server import EmbeddedRedis  # noqa: E402
from models.publish import build_and_publish  # noqa: E402
from serving.service import PredictionService  # noqa: E402
from serving.settings import Settings  # noqa: E402
from serving.store import build_store  # noqa: E402

SETTINGS: tuple[tuple[str, dict[str, object]], ...] = (
    ("off", {"drift_monitoring": False}),
    ("sampled 0.1", {"drift_sample_rate": 0.1}),
    ("every request", {"drift_sample_rate": 1.0}),
)
ROUNDS = 3  # the best of three: other load on the machine only ever adds CPU


async def _cpu_us_per_call(call: Callable[[], Awaitable[object] | object], requests: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(requests):
            result = call()
            if asyncio.iscoroutine(result):
                await result
        best = min(best, (time.process_time() - start) / requests * 1e6)
    return best


async def _measure(settings: Settings, requests: int, batch: int) -> dict[str, float]:
    service = PredictionService(settings, build_store(settings))
    await service.start()
    try:
        model = service.state.model
        assert model is not None
        keys = [model.key_space.key(i) for i in range(batch)]
        await service.predict(keys)  # computed and admitted: L1 hits from here on
        instance = {name: float(value) for name, value in zip(model.card["features"], model.features.rows([7])[0].tolist())}
        return {
            "L1 hit, one key": await _cpu_us_per_call(lambda: service.predict_cached(keys[0]), requests),
            f"keyed batch of {batch} (L1 hits)": await _cpu_us_per_call(lambda: service.predict(keys), requests // 4),
            "one raw-feature instance (model)": await _cpu_us_per_call(lambda: service.predict_instances([instance]), requests // 4),
        }
    finally:
        await service.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis_server:
        registry = Path(tmp)
        build_and_publish("light", registry, segments=20)
        results = {}
        for label, fields in SETTINGS:
            settings = Settings(mode="hybrid", registry=registry, redis_url=redis_server.url, **fields)  # type: ignore[arg-type]
            results[label] = asyncio.run(_measure(settings, args.requests, args.batch))
    paths = list(results["off"])
    print("| path | " + " | ".join(f"{label} us/req" for label, _ in SETTINGS) + " | added at 0.1 | added at 1.0 |")
    print("|---|" + "---|" * (len(SETTINGS) + 2))
    for path in paths:
        off, sampled, every = (results[label][path] for label, _ in SETTINGS)
        print(f"| {path} | {off:.2f} | {sampled:.2f} | {every:.2f} | {sampled - off:+.2f} | {every - off:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
