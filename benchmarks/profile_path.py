"""Where a request's time goes: one path of the server under cProfile, grouped by component.

Runs the app in this process (uvicorn, uvloop, httptools, as ``hybridserve serve`` does) under
cProfile, drives it with wrk from the other core for a few seconds, and prints the profiled time
per request of each component: the event loop (uvloop's C code: sockets, wake-ups), uvicorn,
Starlette, FastAPI, each serving module, ONNX Runtime, numpy. cProfile inflates every Python call,
so the figures are larger than in ``make bench``; compare components and paths, not absolutes.
Needs wrk on PATH and the registry ``make bench`` trains; starts its own embedded Redis.

Example::

    python benchmarks/profile_path.py /livez                          # the floor
    python benchmarks/profile_path.py /v1/predict/3:4 --mode dynamic  # a model call
    python benchmarks/profile_path.py /v1/predict/3:4 --l1-size 0     # a Redis hit (hybrid)
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARM_REQUESTS = 3  # a hybrid key is computed, then admitted: later requests hit the cache
COMPONENTS = (("serving/", None), ("uvicorn", "uvicorn"), ("starlette", "starlette"), ("fastapi", "fastapi"),
              ("onnxruntime", "onnxruntime"), ("numpy", "numpy"), ("orjson", "orjson"))


def component(filename: str, function: str) -> str:
    """The component a pstats entry belongs to (C functions are named by ``function`` only)."""
    where = f"{filename}:{function}"
    for marker, name in COMPONENTS:
        if marker in where:
            return name or "serving/" + filename.split("serving/", 1)[1]
    if filename == "~" or "asyncio" in filename:
        return "event loop, sockets"  # C code: uvloop, socket calls; and asyncio's own frames
    return "other (stdlib)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="request path, e.g. /v1/predict/3:4")
    parser.add_argument("--mode", default="hybrid", choices=["static", "dynamic", "hybrid"])
    parser.add_argument("--model", default="traffic-light")
    parser.add_argument("--l1-size", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("profile_path.py needs wrk on PATH (apt-get install wrk)")

    import httpx
    import uvicorn

    from loadtests.harness.redis_server import EmbeddedRedis, free_port
    from loadtests.harness.server_process import pinned, split_cores
    from serving.app import create_app
    from serving.settings import Settings

    gen_core, server_core = split_cores()
    if server_core is not None:
        os.sched_setaffinity(0, {server_core})
    redis = EmbeddedRedis().start()
    port = free_port()
    settings = Settings(mode=args.mode, l1_size=args.l1_size, redis_url=redis.url, model_name=args.model,
                        registry=ROOT / "registry", port=port, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, loop="uvloop",
                                           http="httptools", access_log=False, log_level="warning"))
    result: dict[str, str] = {}

    def drive() -> None:
        while not server.started:
            time.sleep(0.05)
        for _ in range(WARM_REQUESTS):
            httpx.get(f"http://127.0.0.1:{port}{args.path}").raise_for_status()
        result["wrk"] = subprocess.run(pinned(["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds:g}s",
                                               f"http://127.0.0.1:{port}{args.path}"], None if gen_core is None else [gen_core]),
                                       capture_output=True, text=True).stdout
        server.should_exit = True

    profiler = cProfile.Profile()
    threading.Thread(target=drive, daemon=True).start()
    try:
        # The whole run: uvloop's C time (sockets, wake-ups) lands in asyncio.run's frame only
        # when the profile starts outside the loop. Start-up (the model load) is included; it is
        # small beside thousands of requests.
        profiler.runcall(server.run)
    finally:
        redis.stop()
    requests = next(int(line.split()[0]) for line in result["wrk"].splitlines() if "requests in" in line)
    per_component: collections.Counter[str] = collections.Counter()
    for (filename, _, function), (_, _, tottime, _, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        per_component[component(filename, function)] += tottime
    print(f"{args.path} ({args.mode}, model {args.model}, L1 {args.l1_size}): {requests:,} requests in {args.seconds:g} s "
          "under cProfile; profiled time per request by component:")
    for name, seconds in per_component.most_common(12):
        print(f"  {name:40s} {seconds / requests * 1e6:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
