"""hybridserve against the servers a team would otherwise pick (``make bench-peers``); writes
benchmarks/peers.md.

Each peer lives in its own virtual environment under ``benchmarks/.peers/`` (git-ignored), created
on first use from the package registry with the pinned versions of ``benchmarks/peers/<peer>.txt``:
MLServer with its scikit-learn runtime (serving the light and heavy models as scikit-learn joblib
files, trained here exactly as the registry's), LitServe and BentoML (serving the registry's own
``model.onnx`` through ONNX Runtime). A peer that cannot be installed or started is reported with
its error, and the others are measured.

Every server runs alone, pinned to the same core as in ``make bench``, under the same load (wrk
when on PATH, else the Python generator; benchmarks/bench.py); hybridserve serves
``GET /v1/predict/{key}`` in dynamic mode (every request runs the model), a peer is sent the
key's feature row in its own request format. Before it is measured, each server's answer for a
few keys is checked against hybridserve's (the same model must give the same prediction).
Bounded: ``PEERS_DURATION_S`` seconds x ``PEERS_ROUNDS`` per server and profile.

Example::

    make bench-peers
    PEERS_DURATION_S=3 PEERS_ROUNDS=1 PEERS_ONLY=bentoml .venv/bin/python benchmarks/bench_peers.py
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from bench import CONNS, HEAVY_CONNS, SERVER_CORE, USE_WRK, Contender, _loadavg, _on, _wrk_version, agg, measure  # noqa: E402
from loadtests.harness.redis_server import free_port  # noqa: E402
from loadtests.harness.server_process import ManagedProcess  # noqa: E402

DURATION_S = float(os.environ.get("PEERS_DURATION_S", "5"))
ROUNDS = int(os.environ.get("PEERS_ROUNDS", "2"))
# PEERS_ONLY=litserve,bentoml: measure only these peers (hybridserve always runs: the ratios need it).
ONLY = {p for p in os.environ.get("PEERS_ONLY", "").split(",") if p}
PEERS_DIR = HERE / ".peers"
REQUIREMENTS = HERE / "peers"
REGISTRY = ROOT / "registry"
OUT = HERE / "peers.md"
KEYS = 2000  # random keys per load (the same for every server)
PARITY_KEYS = 5
PARITY_RTOL = 1e-3  # float32 ONNX vs the float64 scikit-learn model
START_TIMEOUT_S = 180.0
MAX_BATCH = 32  # the batch hybridserve uses (Settings.max_batch_size), given to each peer's batcher
BATCH_TIMEOUT_S = 0.002  # hybridserve's max_wait_ms
PROFILES = {"light": "traffic-light", "heavy": "traffic-heavy"}
GOALS = {"light": 10.0, "heavy": 3.0}  # hybridserve's throughput per core over each peer's


@dataclass
class Model:
    """What every server needs of one profile: files, the keys sent, features and expected values."""

    profile: str
    onnx: Path
    joblib: Path
    keys: list[str]
    rows: np.ndarray  # feature row of each key
    expected: dict[str, float]  # hybridserve's prediction of the parity keys


@dataclass
class Peer:
    """A server under test: how to start it for a profile, its requests and how to read an answer."""

    name: str
    venv: str | None  # None: hybridserve's own environment
    start: Callable[[Model, int, bool], ManagedProcess]
    request: Callable[[Model, int], tuple[str, str | None]]  # (path, JSON body or None for GET)
    value: Callable[[dict | list], float]


# ------------------------------------------------------------------ environments


def venv_python(name: str) -> Path:
    """The peer's venv interpreter, creating the venv from its pinned requirements on first use."""
    venv = PEERS_DIR / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed-stamp"
    requirements = REQUIREMENTS / f"{name}.txt"
    if stamp.exists() and stamp.read_text() == requirements.read_text():
        return python
    print(f"creating {venv} from {requirements.name} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    out = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pip install -r {requirements.name} failed ({out.returncode}): {out.stderr.strip()[-1500:]}")
    stamp.write_text(requirements.read_text())
    return python


def versions(python: Path, packages: list[str]) -> str:
    """``name version`` of each installed package in an environment."""
    code = ("import importlib.metadata as m, sys\n"
            "print(', '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))")
    return subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, check=True).stdout.strip()


# ------------------------------------------------------------------ models


def prepare(profile: str) -> Model:
    """The registry version of ``profile`` (trained if missing), its joblib twin and the keys sent."""
    import joblib

    from models.publish import build_and_publish
    from models.registry import RegistryError, resolve
    from models.train import train_profile
    from serving.model import LoadedModel

    name = PROFILES[profile]
    try:
        artifact = resolve(REGISTRY, name)
    except RegistryError:
        artifact = build_and_publish(profile, REGISTRY)  # type: ignore[arg-type]
    card = artifact.card()
    joblib_path = PEERS_DIR / "models" / f"{name}-{artifact.version}.joblib"
    if not joblib_path.exists():
        print(f"training the scikit-learn twin of {name} {artifact.version} for MLServer ...", flush=True)
        result = train_profile(profile, card["segments"], card["seed"])  # type: ignore[arg-type]
        joblib_path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(result.model, joblib_path)
    loaded = LoadedModel.from_registry(REGISTRY, name, artifact.version)
    rng = random.Random(7)
    keys = [f"{rng.randrange(card['segments'])}:{rng.randrange(card['hours_per_week'])}" for _ in range(KEYS)]
    rows = loaded.features.rows([loaded.features.index(k) for k in keys])
    expected = dict(zip(keys[:PARITY_KEYS], loaded.run(rows[:PARITY_KEYS]).tolist()))
    return Model(profile, artifact.model_path, joblib_path, keys, np.asarray(rows, dtype=np.float32), expected)


# ------------------------------------------------------------------ the servers


def _hybridserve(model: Model, port: int, batching: bool) -> ManagedProcess:
    argv = [sys.executable, "-m", "hybridserve", "serve", "--registry", str(REGISTRY), "--no-precompute",
            "--mode", "dynamic", "--model", PROFILES[model.profile], "--port", str(port)]
    return ManagedProcess("hybridserve", argv, port=port, cores=_on(SERVER_CORE), ready_path="/readyz",
                          env={"HYBRIDSERVE_BATCHING": str(batching).lower(), "HYBRIDSERVE_LOG_LEVEL": "warning"})


def _mlserver(model: Model, port: int, batching: bool) -> ManagedProcess:
    """``mlserver start`` on a folder with the joblib file and its model-settings.json."""
    folder = PEERS_DIR / "mlserver-run" / model.profile
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0,  # inference in the server process: no hop to a worker pool on one core
        "logging_level": "WARNING"}))
    settings: dict = {"name": model.profile, "implementation": "mlserver_sklearn.SKLearnModel",
                      "parameters": {"uri": str(model.joblib)}}
    if batching:
        settings |= {"max_batch_size": MAX_BATCH, "max_batch_time": BATCH_TIMEOUT_S}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    bin_dir = PEERS_DIR / "mlserver" / "bin"
    return ManagedProcess("mlserver", [str(bin_dir / "mlserver"), "start", str(folder)], port=port, cores=_on(SERVER_CORE),
                          ready_path=f"/v2/models/{model.profile}/ready", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})


def _litserve(model: Model, port: int, batching: bool) -> ManagedProcess:
    python = PEERS_DIR / "litserve" / "bin" / "python"
    return ManagedProcess("litserve", [str(python), str(REQUIREMENTS / "litserve_app.py"), str(model.onnx), str(port)],
                          port=port, cores=_on(SERVER_CORE), ready_path="/health",
                          env={"PEER_MAX_BATCH": str(MAX_BATCH if batching else 1), "PEER_BATCH_TIMEOUT_S": str(BATCH_TIMEOUT_S)})


def _bentoml(model: Model, port: int, batching: bool) -> ManagedProcess:
    bin_dir = PEERS_DIR / "bentoml" / "bin"
    argv = [str(bin_dir / "bentoml"), "serve", "bentoml_service:OnnxModel", "--host", "127.0.0.1", "--port", str(port),
            "--working-dir", str(REQUIREMENTS)]
    return ManagedProcess("bentoml", argv, port=port, cores=_on(SERVER_CORE), ready_path="/readyz",
                          env={"PEER_MODEL": str(model.onnx), "PEER_MAX_BATCH": str(MAX_BATCH if batching else 1),
                               "PATH": f"{bin_dir}:{os.environ['PATH']}", "BENTOML_DO_NOT_TRACK": "true"})


def _row(model: Model, i: int) -> list[float]:
    return [float(x) for x in model.rows[i]]


PEERS = [
    Peer("hybridserve", None, _hybridserve, lambda m, i: (f"/v1/predict/{m.keys[i]}", None), lambda b: b["prediction"]),  # type: ignore[index, call-overload]
    Peer("mlserver", "mlserver", _mlserver,
         lambda m, i: (f"/v2/models/{m.profile}/infer", json.dumps(
             {"inputs": [{"name": "input-0", "shape": [1, m.rows.shape[1]], "datatype": "FP32", "data": _row(m, i)}]})),
         lambda b: b["outputs"][0]["data"][0]),  # type: ignore[index, call-overload]
    Peer("litserve", "litserve", _litserve, lambda m, i: ("/predict", json.dumps({"input": _row(m, i)})), lambda b: b["prediction"]),  # type: ignore[index, call-overload]
    Peer("bentoml", "bentoml", _bentoml, lambda m, i: ("/predict", json.dumps({"x": [_row(m, i)]})), lambda b: b[0]),  # type: ignore[index]
]


def check_parity(peer: Peer, model: Model, server: ManagedProcess) -> None:
    """The server answers the parity keys with hybridserve's predictions (and warms up)."""
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        for i, key in enumerate(model.keys[:PARITY_KEYS]):
            path, body = peer.request(model, i)
            r = client.get(path) if body is None else client.post(path, content=body, headers={"content-type": "application/json"})
            r.raise_for_status()
            got, want = float(peer.value(r.json())), model.expected[key]
            if not np.isclose(got, want, rtol=PARITY_RTOL, atol=1e-3):
                raise RuntimeError(f"{peer.name} answered {got} for key {key}, hybridserve {want}")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a server and its child processes (workers, batchers), in MB."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 1e6


@dataclass
class Outcome:
    """One server on one profile: its measured rounds, or why there are none."""

    peer: str
    profile: str
    contender: Contender | None = None
    rss_mb: float = float("nan")
    error: str | None = None
    model_us_per_row: float | None = None  # hybridserve only: ONNX Runtime time per row, from its metrics


def run_one(peer: Peer, model: Model) -> Outcome:
    """Start ``peer`` alone for ``model``, check it, measure it, stop it."""
    batching = model.profile == "heavy"
    if peer.venv is not None:
        try:
            venv_python(peer.venv)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            return Outcome(peer.name, model.profile, error=str(exc))
    server = peer.start(model, free_port(), batching)
    try:
        server.launch().wait_ready(START_TIMEOUT_S)
        check_parity(peer, model, server)
        rss = tree_rss_mb(server.pid)
        reqs = [peer.request(model, i) for i in range(len(model.keys))]
        c = Contender(f"{peer.name} {model.profile}", server, [p for p, _ in reqs], HEAVY_CONNS if batching else CONNS,
                      method="GET" if reqs[0][1] is None else "POST", bodies=None if reqs[0][1] is None else [b or "" for _, b in reqs])
        for rnd in range(ROUNDS):
            r = measure(c, DURATION_S, seed=rnd)
            print(f"{c.name} round {rnd + 1}: {r['rps']:,.0f} req/s p99 {r['p99_ms']:.1f} ms, server {r['server_cpu_us_per_req']:.0f} us/req "
                  f"({r['server_core_util']:.2f} core), errors {r['errors']}", flush=True)
        model_us = _model_us_per_row(server) if peer.venv is None else None
        return Outcome(peer.name, model.profile, c, rss, model_us_per_row=model_us)
    except (RuntimeError, httpx.HTTPError, subprocess.SubprocessError) as exc:
        last_lines = " / ".join(line.strip() for line in str(exc).strip().splitlines()[-3:])  # a traceback's end says why
        return Outcome(peer.name, model.profile, error=f"{type(exc).__name__}: {last_lines[-600:]}")
    finally:
        stop_tree(server)


def stop_tree(server: ManagedProcess) -> None:
    """Stop a server and every process it started: LitServe's API server and inference worker,
    BentoML's workers outlive a parent that is only sent SIGTERM, and would keep using the core."""
    try:
        children = psutil.Process(server.pid).children(recursive=True) if server.process else []
    except psutil.NoSuchProcess:
        children = []
    server.stop()
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(children, timeout=5.0)
    for child in alive:
        child.kill()


def _model_us_per_row(server: ManagedProcess) -> float | None:
    """ONNX Runtime time per row over the server's life, from its Prometheus histograms: the part
    of a request no server can avoid, which bounds what any serving layer can gain on it."""
    sums = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10.0).text.splitlines():
        for name in ("hybridserve_inference_seconds_sum", "hybridserve_batch_rows_sum"):
            if line.startswith(name):
                sums[name] = float(line.rsplit(" ", 1)[1])
    rows = sums.get("hybridserve_batch_rows_sum", 0.0)
    return sums["hybridserve_inference_seconds_sum"] / rows * 1e6 if rows else None


def main() -> int:
    began = time.perf_counter()
    load_start = _loadavg()
    models = {p: prepare(p) for p in PROFILES}
    outcomes: list[Outcome] = []
    for profile, model in models.items():
        for peer in PEERS:
            if ONLY and peer.venv is not None and peer.name not in ONLY:
                continue
            outcomes.append(run_one(peer, model))
            if outcomes[-1].error:
                print(f"{peer.name} {profile}: {outcomes[-1].error}", flush=True)
    version_lines = {"hybridserve": versions(Path(sys.executable), ["fastapi", "uvicorn", "onnxruntime", "numpy"])}
    for name, packages in (("mlserver", ["mlserver", "mlserver-sklearn", "scikit-learn", "numpy"]),
                           ("litserve", ["litserve", "fastapi", "uvicorn", "onnxruntime", "numpy"]),
                           ("bentoml", ["bentoml", "onnxruntime", "numpy"])):
        python = PEERS_DIR / name / "bin" / "python"
        version_lines[name] = versions(python, packages) if python.exists() else "not installed"
    write(outcomes, version_lines, load_start, time.perf_counter() - began)
    print(f"wrote {OUT} in {time.perf_counter() - began:.0f}s")
    return 0


def write(outcomes: list[Outcome], version_lines: dict[str, str], load_start: str, elapsed: float) -> None:
    """benchmarks/peers.md from the outcomes."""
    ours = {o.profile: o.contender for o in outcomes if o.peer == "hybridserve" and o.contender}
    generator = _wrk_version() if USE_WRK else "the asyncio closed-loop generator of benchmarks/bench.py (wrk not on PATH)"
    L = ["# hybridserve and its peers", "",
         f"Generated by `make bench-peers` (benchmarks/bench_peers.py) on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, in {elapsed:.0f} s. "
         f"Load average (1, 5, 15 min) at the start: {load_start}; at the end: {_loadavg()} (a shared 2-core machine: absolute "
         "figures are noisy; the CPU-per-request column is the steadier comparison).", "",
         "## Method", "",
         f"- Each server runs alone, pinned with taskset to core {SERVER_CORE} (its worker processes too); the load generator, "
         f"**{generator}**, on the other core: {CONNS} keep-alive connections for the light model, {HEAVY_CONNS} for the heavy one, "
         f"{ROUNDS} rounds of {DURATION_S:g} s back to back per server, servers one after the other (not interleaved: load drift "
         "between servers shows in req/s more than in CPU per request).",
         f"- Requests: single-row predictions for the same {KEYS} random keys. hybridserve: `GET /v1/predict/{{key}}` in dynamic mode "
         "(the feature row is looked up and the model runs on every request). Peers are sent the key's feature row in their own "
         "format: MLServer V2 `POST /v2/models/<m>/infer` (FP32 tensor), LitServe `POST /predict {\"input\": row}`, BentoML "
         "`POST /predict {\"x\": [row]}`.",
         "- Models: LitServe and BentoML run the registry's `model.onnx` (the file hybridserve serves) in ONNX Runtime, one "
         "intra-op thread; MLServer's scikit-learn runtime runs the same profile trained by `models/train.py` with the same seed "
         "and key space, saved with joblib. Before measuring, each server's answers for "
         f"{PARITY_KEYS} keys are checked against hybridserve's (relative tolerance {PARITY_RTOL:g}).",
         f"- Heavy model: each server's batching on (hybridserve: its dynamic batcher, at most {MAX_BATCH} rows, "
         f"{BATCH_TIMEOUT_S * 1000:g} ms wait; MLServer adaptive batching, same size and time; LitServe `max_batch_size={MAX_BATCH}`, "
         f"`batch_timeout={BATCH_TIMEOUT_S}`; BentoML `batchable=True, max_batch_size={MAX_BATCH}`, its own adaptive wait). "
         "Light model: no batching anywhere.",
         "- MLServer runs with `parallel_workers: 0` (inference in the server process; a worker pool would add a process hop on "
         "the one core). LitServe runs one API server and one inference worker process, BentoML one worker: their defaults on one "
         "device.",
         "- Server CPU: the CPU time of the server's process tree over the window (/proc schedstat), per request. "
         "RSS: the server's process tree after start-up and the parity requests, before the load.", "",
         "## Results", "",
         "Throughput per core is requests per second of server CPU (1 / CPU per request): what one core serves when the "
         "server keeps it busy. A server that leaves its core idle under this load (server core < 1) shows a lower req/s "
         "than its per-core figure; the goals are per core, and both ratios are given.", "",
         "| server | model | req/s | p50 ms | p99 ms | server CPU us/req | server core | RSS MB | hybridserve / it: req/s | "
         "hybridserve / it: per core | goal (per core) | met | non-2xx |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        if o.contender is None:
            L.append(f"| {o.peer} | {o.profile} | not measured: see below | | | | | | | | | | |")
            continue
        c, mine = o.contender, ours.get(o.profile)
        is_ours = o.peer == "hybridserve"
        ratio = agg(mine, "rps") / agg(c, "rps") if mine else float("nan")
        cpu_ratio = agg(c, "server_cpu_us_per_req") / agg(mine, "server_cpu_us_per_req") if mine else float("nan")
        goal = GOALS[o.profile]
        met = "-" if is_ours or not mine else ("yes" if cpu_ratio >= goal else "NO")
        L.append(f"| {o.peer} | {o.profile} | {agg(c, 'rps'):,.0f} | {agg(c, 'p50_ms'):.2f} | {agg(c, 'p99_ms'):.2f} | "
                 f"{agg(c, 'server_cpu_us_per_req'):,.0f} | {agg(c, 'server_core_util'):.2f} | {o.rss_mb:.0f} | {'-' if is_ours else f'{ratio:.1f}x'} | "
                 f"{'-' if is_ours else f'{cpu_ratio:.1f}x'} | {'-' if is_ours else f'>= {goal:g}x'} | {met} | "
                 f"{sum(r['errors'] for r in c.runs)} |")
    for o in outcomes:
        if o.model_us_per_row is not None:
            L.append(f"\nhybridserve {o.profile}: ONNX Runtime ran {o.model_us_per_row:,.0f} us per row (its inference histogram over "
                     "the run, batched rows included): the floor under every server's CPU per request on this model.")
    errors = [o for o in outcomes if o.error]
    if errors:
        L += ["", "## Not measured", ""]
        L += [f"- {o.peer} ({o.profile}): `{o.error.strip()}`" for o in errors]
    L += ["", "## Versions", ""]
    L += [f"- {name}: {line} (pins: `benchmarks/peers/{name}.txt`)" if name != "hybridserve" else f"- {name}: {line}"
          for name, line in version_lines.items()]
    OUT.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
