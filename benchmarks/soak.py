"""Soak test: a hybrid server under a fixed request rate for a long time, watched per time window.

Starts ``python -m hybridserve serve --mode hybrid`` as a subprocess on loopback (embedded Redis,
head precomputed), sends ``GET /v1/predict/{key}`` with Zipf keys at a fixed rate (open loop: each
request leaves at its scheduled time, whatever the latency), and prints per window the requests,
errors, achieved rate and latency percentiles, plus the server's RSS at start and end. Exits 1 on
any error, so a soak in CI fails loudly.

Example::

    python benchmarks/soak.py --seconds 600 --rate 100 --window 30
    make soak SOAK_SECONDS=60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.keys import ZipfKeys  # noqa: E402
from models.keyspace import GridKeySpace  # noqa: E402
from models.data import HOURS_PER_WEEK  # noqa: E402
from models.registry import RegistryError, resolve  # noqa: E402
from models.publish import build_and_publish  # noqa: E402
from loadtests.harness.redis_server import free_port  # noqa: E402
from loadtests.harness.server_process import ManagedProcess  # noqa: E402

MODEL = "traffic-light"
STARTUP_TIMEOUT_S = 120.0
MAX_IN_FLIGHT = 256  # beyond this the server is not keeping up: count the request as an error
REQUEST_TIMEOUT_S = 5.0
ZIPF_S = 1.1


@dataclass
class Window:
    """What happened in one reporting window."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    sources: dict[str, int] = field(default_factory=dict)

    def report(self, index: int, seconds: float) -> dict[str, object]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        done = len(self.latencies_ms) + self.errors
        return {"window": index, "requests": done, "errors": self.errors, "rps": round(done / seconds, 1),
                "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2),
                "max_ms": round(float(np.nanmax(lat)), 2), "sources": dict(sorted(self.sources.items()))}


def _segments(registry: Path) -> int:
    """Segment count of the served model, so every key sent is in its key space."""
    try:
        artifact = resolve(registry, MODEL)
    except RegistryError:
        print(f"training {MODEL} into {registry} ...", flush=True)
        artifact = build_and_publish("light", registry)
    return int(np.load(artifact.path / "features.npy", mmap_mode="r").shape[0]) // HOURS_PER_WEEK


async def _one(client: httpx.AsyncClient, key: str, window: Window) -> None:
    start = time.perf_counter()
    try:
        response = await client.get(f"/v1/predict/{key}", timeout=REQUEST_TIMEOUT_S)
        ok = response.status_code == 200
        source = response.json().get("source", "?") if ok else str(response.status_code)
    except (httpx.HTTPError, ValueError) as exc:
        ok, source = False, type(exc).__name__
    if ok:
        window.latencies_ms.append((time.perf_counter() - start) * 1000)
    else:
        window.errors += 1
    window.sources[source] = window.sources.get(source, 0) + 1


def _rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


async def soak(seconds: float, rate: float, window_s: float, registry: Path) -> int:
    """Run the soak; returns the number of failed requests."""
    keys = ZipfKeys(GridKeySpace(_segments(registry)), ZIPF_S, seed=7)
    # Hybrid with the CLI's own set-up: an embedded Redis and the head precomputed before serving.
    server = ManagedProcess("hybridserve", [sys.executable, "-m", "hybridserve", "serve", "--mode", "hybrid",
                                            "--port", str(port := free_port()), "--registry", str(registry)], port=port)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64)
    total_errors = 0
    try:
        server.launch().wait_ready(STARTUP_TIMEOUT_S)
        async with httpx.AsyncClient(base_url=server.url, limits=limits) as client:
            proc = psutil.Process(server.pid)
            rss_start = _rss_mb(proc)
            print(json.dumps({"start": {"rate": rate, "seconds": seconds, "window_s": window_s, "server_rss_mb": round(rss_start, 1)}}), flush=True)
            pending: set[asyncio.Task[None]] = set()
            begin = time.monotonic()
            window, index, window_start = Window(), 0, begin
            sent = 0
            while (now := time.monotonic()) - begin < seconds:
                if now - window_start >= window_s:
                    print(json.dumps(window.report(index, now - window_start)), flush=True)
                    total_errors += window.errors
                    window, index, window_start = Window(), index + 1, now
                due = int((now - begin) * rate) + 1
                while sent < due:  # open loop: send what the schedule says is due
                    sent += 1
                    if len(pending) >= MAX_IN_FLIGHT:
                        window.errors += 1
                        window.sources["overload"] = window.sources.get("overload", 0) + 1
                        continue
                    task = asyncio.create_task(_one(client, keys.next_key(), window))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(min(0.005, 1 / rate))
            if pending:
                await asyncio.wait(pending, timeout=REQUEST_TIMEOUT_S * 2)
            print(json.dumps(window.report(index, time.monotonic() - window_start)), flush=True)
            total_errors += window.errors
            rss_end = _rss_mb(proc)
            stats = (await client.get("/v1/cache/stats")).json()
            print(json.dumps({"end": {"requests": sent, "errors": total_errors, "server_rss_mb_start": round(rss_start, 1),
                                      "server_rss_mb_end": round(rss_end, 1), "rss_growth_mb": round(rss_end - rss_start, 1),
                                      "hit_ratio": stats["hit_ratio"], "l1": stats["l1"]}}), flush=True)
    finally:
        server.stop()
    return total_errors


def main() -> int:
    """Entry point: ``python benchmarks/soak.py --seconds N --rate R``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", 100)), help="requests per second")
    parser.add_argument("--window", type=float, default=float(os.environ.get("SOAK_WINDOW", 30)), help="report every N seconds")
    parser.add_argument("--registry", type=Path, default=ROOT / "registry")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0 or args.window <= 0:
        parser.error("--seconds, --rate and --window must be positive")
    errors = asyncio.run(soak(args.seconds, args.rate, args.window, args.registry))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
