"""Runs one load test per (model profile, mode, distribution) and measures what it cost.

For each run: a fresh embedded Redis and a fresh server process (``python -m hybridserve.cli serve``,
pinned to its own core with taskset when there are two or more), the mode prepared (static: every
key precomputed; hybrid: the head precomputed from a sample of earlier traffic, L1 empty), a
warm-up, then Locust in its own process for a fixed time at a fixed offered rate (or, with
``RunSpec.load_workers``, a Locust master and N worker processes sharing the rate; latency
percentiles then come from the workers' histograms added together, and the generator counts as
saturated when any one of its processes is). Around the
measured window it samples server CPU (per-thread schedstat, the server process and its children), Redis CPU
(``INFO cpu``), the server's tier counters (``/v1/cache/stats``) and the keys the run stored in Redis
(``MEMORY USAGE`` summed over the run's namespace, so a mode that stores nothing reports 0 because
it stored nothing). Rates and the reported duration are over Locust's traffic window, from the start
of its statistics to its last response (not Locust's start-up and shutdown). Nothing else reaches
the server between the two snapshots, so its counters count exactly the requests of that window and
its CPU reading adds only the server's idle time around it.

Latency comes from two places, both reported: the client side (Locust's unrounded response times,
loopback included, kept by the locustfile at 2% resolution; Locust's own statistics round to whole
milliseconds below 100 ms) and the server's histogram (server side, resolution = bucket bounds,
0.1 ms at the bottom).

Example::

    specs = [RunSpec(profile="light", mode=mode) for mode in ("static", "dynamic", "hybrid")]
    records = compare(Path("registry"), specs, prices=cost.Prices())   # results.json records
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from loadtests import cost, split
from loadtests.drift_traffic import MonitoringSampler
from loadtests.keys import TraceKeys, key_stream
from loadtests.tier_costs import cpu_us_at_speed, speed_reference
from models.keyspace import KeyNotFound, KeyRuleError, KeySpace, key_space_for
from models.registry import model_name, resolve
from serving.precompute import precompute, top_keys_from_file
from loadtests.harness.core_speed import CoreSpeedProbe
from loadtests.harness.redis_server import EmbeddedRedis, free_port
from loadtests.harness.server_process import ServerProcess, pinned
from serving.cache import measure_l1_bytes_per_entry
from serving.modes import precomputes
from serving.settings import Settings

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
WARMUP_REQUESTS = 300
# How long the idle CPU of the server and Redis is sampled before each run.
IDLE_SAMPLE_S = 0.5
HEAD_SAMPLE_REQUESTS = 100_000
# Achieved below this share of the offered rate means the generator (or server) could not keep up
# (less Poisson noise: see fell_behind).
SATURATION_SHARE = 0.95
# Standard deviations of a Poisson count that a short run's arrivals may fall under their mean by.
POISSON_SLACK_SD = 3.0
DEMO_PROFILES = ("light", "heavy")
LOCUST_CPU_SATURATED = 90.0
# How long a Locust master waits for its workers to connect, and how long workers get to quit
# after their master has.
LOAD_WORKERS_WAIT_S = 30
STOP_GRACE_S = 10.0
SCAN_COUNT = 1000
CPU_SAMPLE_S = 1.0
# Two-sided 95% normal quantile: the confidence interval reported with every p99.
P99_CI_Z = 1.96
SHIFT_FILE = "shift.json"  # where the locustfile notes when a drift run's shift began


@dataclass(frozen=True)
class RunSpec:
    """One cell of the comparison matrix."""

    profile: str
    """A demo profile (``light``, ``heavy``) or the registry name of any model (``hybridserve import``)."""
    mode: str
    distribution: str = "zipf:1.1"
    rate: float = 400.0
    users: int = 20
    duration_s: float = 20.0
    batch_size: int = 1
    seed: int = 7
    head_size: int = 5000
    l1_size: int = 10_000
    settings: tuple[tuple[str, Any], ...] = ()
    """More server settings as ``(field, value)`` pairs (``l1_policy``, ``admission``, ``redis_ttl_s``...)."""
    redis_maxmemory: int | None = None
    """Redis memory budget for the predictions in bytes (``maxmemory`` = Redis' own baseline + this); None: unbounded."""
    redis_eviction: str = "allkeys-lru"
    """``maxmemory-policy`` when ``redis_maxmemory`` is set."""
    load_workers: int = 0  # Locust worker processes under one master; 0: one plain Locust process
    latency_after_s: float = 0.0  # seconds at the start of a run left out of the latency percentiles
    instances: str = ""
    """Send raw-feature instances instead of keys (``training`` or ``drift:at=A,shift=S``, see
    :mod:`loadtests.drift_traffic`); the run then records the drift statistics over time."""
    latency_windows: bool = False
    """Locust also writes a latency histogram per wall-clock second (``windows-{worker}.json`` in the
    bench's workdir; :func:`latency_windows` reads them): latency over time."""

    @property
    def model_name(self) -> str:
        """Registry name of the model: the demo profile's, or the name given."""
        return model_name(self.profile) if self.profile in DEMO_PROFILES else self.profile

    @property
    def label(self) -> str:
        """Short human label."""
        return f"{self.profile}/{self.mode}/{self.distribution}"


@dataclass
class RunResult:
    """Everything measured in one run (one record of results.json)."""

    spec: RunSpec
    model_version: str
    key_count: int
    requests: int
    failures: int
    failure_reasons: dict[str, int]
    duration_s: float
    """Locust's traffic window (start of its statistics to last response): the window the rates are over."""
    offered_rps: float
    achieved_rps: float
    latency_ms: dict[str, float]
    server_latency_ms: dict[str, float]
    hit_ratio: dict[str, float]
    tier_counts: dict[str, int]
    server_cpu_us_per_request: float
    redis_cpu_us_per_request: float
    redis_bytes: int
    """Bytes of the keys stored under the run's namespace at the end (``MEMORY USAGE`` summed: entry,
    key and value; not the hash table's bucket array, at most 8 bytes a key more)."""
    redis_keys: int
    """Keys stored under the run's namespace at the end."""
    redis_keys_added: int
    """Keys the server added to Redis during the measured window (hybrid: its admissions)."""
    redis_bytes_added: int
    """Bytes of those added keys."""
    l1_entries: int
    precompute_s: float
    precompute_cpu_s: float
    load_generator_saturated: bool
    """Achieved below ``SATURATION_SHARE`` of the offered rate, or Locust at ``LOCUST_CPU_SATURATED``."""
    load_generator_cpu_percent: float
    """Locust's peak CPU percent over one-second intervals inside the traffic window."""
    latency_histograms: int
    """Locust processes whose histograms were merged into ``latency_ms`` (1, or ``load_workers``)."""
    cost: dict[str, Any] = field(default_factory=dict)
    unknown_key_share: float = 0.0
    """A trace replay: share of its requests for keys the model does not have (answered 404)."""
    trace_keys_mapped: bool = False
    """A trace replay whose keys were mapped onto the model's (``trace:map:``), not its own."""
    split: dict[str, Any] = field(default_factory=dict)
    """A server with a traffic split (``routes`` in the spec's settings): per version requests,
    server-side latency, CPU and cost share, and the shadow's differences (:mod:`loadtests.split`)."""
    l1_bytes: int = 0
    """L1 memory at the end: ``l1_entries`` x the bytes of one entry, measured with tracemalloc on
    the run's own warm-up keys (:func:`serving.cache.measure_l1_bytes_per_entry`); priced with Redis'."""
    idle_cpu_ms_per_s: dict[str, float] = field(default_factory=dict)
    """CPU the server and Redis burn with no traffic (``server``, ``redis``; ms a second), sampled
    before the run: timers, the control poll, Redis' cron. Taken out of the CPU figures for the
    seconds of the measured window outside the traffic (Locust's start and stop), so they are the
    CPU of serving at the run's rate."""

    core_speed: dict[str, dict[str, float]] = field(default_factory=dict)
    """How slow the server's core (``server``) and Redis' (``redis``, shared with the load generator)
    ran during the traffic window: :class:`loadtests.harness.core_speed.ProbeReading` records. The
    CPU figures above are as measured; the tuner compares runs made at different moments at one
    core speed (:func:`loadtests.tier_costs.at_speed`)."""

    drift: dict[str, Any] = field(default_factory=dict)
    """With ``spec.instances``: /v1/monitoring over the run, the shift's start and when alerts fired
    (:meth:`loadtests.drift_traffic.MonitoringSampler.record`)."""

    def as_record(self) -> dict[str, Any]:
        """Flat JSON-ready record: the spec's fields, then the measured ones.

        The spec's ``duration_s`` (what Locust was asked for) becomes ``requested_duration_s``, so it
        cannot overwrite the measured ``duration_s`` that the rates and the cost are over.
        """
        record = asdict(self)
        spec = record.pop("spec")
        spec["requested_duration_s"] = spec.pop("duration_s")
        record.update(spec)
        record["model_name"] = self.spec.model_name  # a demo profile's model, or the registered name
        return record


# ----- processes ---------------------------------------------------------------------------------

def _cores() -> tuple[list[int] | None, list[int]]:
    """(server cores, load generator + Redis cores): split when there are at least two."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, available
    return available[-1:], available[:-1]


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# ----- preparation -------------------------------------------------------------------------------

def _limit_memory(redis_server: EmbeddedRedis, baseline: int, budget: int, eviction: str) -> None:
    """``maxmemory`` = what Redis used empty (``baseline``) + ``budget``, so the budget is what predictions get."""
    redis_server.set_memory_limit(baseline + budget, eviction)


def _head_keys(spec: RunSpec, space: KeySpace, workdir: Path) -> list[str]:
    """The head: most frequent keys of a sample of earlier traffic (another stream, same seed),
    among those the model has (a trace's unknown keys cannot be precomputed)."""
    sample = key_stream(spec.distribution, space, seed=spec.seed, stream=99).take(HEAD_SAMPLE_REQUESTS)
    sample = [key for key in sample if _in_space(space, key)]
    path = workdir / "head-sample.keys"
    path.write_text("\n".join(sample) + "\n")
    return top_keys_from_file(path, spec.head_size)


def _in_space(space: KeySpace, key: str) -> bool:
    try:
        space.index(key)
    except (KeyNotFound, KeyRuleError):
        return False
    return True


def _prepare(spec: RunSpec, settings: Settings, space: KeySpace, workdir: Path) -> tuple[float, float]:
    """Precompute what the mode needs; returns (wall seconds, CPU seconds)."""
    needed = precomputes(spec.mode)
    if needed is None:
        return 0.0, 0.0
    keys = None if needed == "table" else _head_keys(spec, space, workdir)
    report = precompute(settings, keys, progress=False)
    return report.seconds, report.cpu_seconds


def _warm_up(url: str, spec: RunSpec, space: KeySpace) -> None:
    keys = key_stream(spec.distribution, space, seed=spec.seed, stream=98).take(WARMUP_REQUESTS)
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for key in keys:
            client.get(f"/v1/predict/{key}")


# ----- measurement -------------------------------------------------------------------------------

def _locust_argvs(spec: RunSpec, url: str, registry: Path, workdir: Path) -> list[list[str]]:
    """The Locust command lines: one plain process, or with ``spec.load_workers`` a master (which
    prints the statistics) followed by its workers. The master hands its options to the workers,
    ``--rate`` included, and ``--rate`` paces one process, so each worker gets its share."""
    workers = spec.load_workers
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    # --json prints the complete final statistics on stdout (the --csv files are rewritten only
    # once a second and miss the last second of a run); failure reasons still go to stderr.
    first = [*base, "--headless", "--only-summary", "--json",
             "-u", str(spec.users), "-r", str(spec.users), "-t", f"{int(spec.duration_s)}s", "--host", url,
             "--key-dist", spec.distribution, "--model", spec.model_name, "--registry", str(registry),
             "--batch-size", str(spec.batch_size),
             "--rate", str(spec.rate / workers if workers else spec.rate), "--seed", str(spec.seed), "--stop-timeout", "5",
             "--latency-file", str(workdir / "latency-{worker}.json"), "--latency-after-s", str(spec.latency_after_s)]
    if spec.instances:
        first += ["--instances", spec.instances, "--shift-file", str(workdir / SHIFT_FILE)]
    if spec.latency_windows:
        first += ["--latency-windows-file", str(workdir / "windows-{worker}.json")]
    if not workers:
        return [first]
    port = str(free_port())
    master = [*first, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
              "--expect-workers", str(workers), "--expect-workers-max-wait", str(LOAD_WORKERS_WAIT_S)]
    return [master] + [[*base, "--worker", "--master-host", "127.0.0.1", "--master-port", port]] * workers


def _run_locust(spec: RunSpec, url: str, registry: Path, workdir: Path) -> tuple[dict[str, Any], float]:
    """Run Locust headless (one process, or a master and its workers); returns its final
    statistics and the peak CPU percent of its busiest process in the traffic window."""
    stdout_path, stderr_path = workdir / "locust.json", workdir / "locust.err"
    for stale in [*workdir.glob("latency-*.json"), *workdir.glob("windows-*.json")]:
        stale.unlink()  # an earlier run on the same bench: never merged into this one
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        procs = [psutil.Popen(pinned(argv, _cores()[1]), stdout=out if i == 0 else subprocess.DEVNULL, stderr=err)
                 for i, argv in enumerate(_locust_argvs(spec, url, registry, workdir))]
        samples = _watch_cpu(procs, spec.duration_s + 60 + LOAD_WORKERS_WAIT_S)
    if not stdout_path.read_text().strip():
        raise RuntimeError(f"Locust printed no statistics: {stderr_path.read_text()[-2000:]}")
    stats = locust_stats(json.loads(stdout_path.read_text()), stderr_path.read_text())
    histograms = [json.loads(path.read_text()) for path in sorted(workdir.glob("latency-*.json"))]
    if histograms:
        stats["latency_ms"].update(precise_percentiles(histograms))
    stats["latency_histograms"] = len(histograms)
    # Only the traffic window: Locust's start-up (imports, a second or more of full CPU on a loaded
    # machine) would otherwise read as a saturated generator in a short run.
    return stats, max((window_cpu_percent(taken, *stats["window"]) for taken in samples), default=0.0)


def precise_percentiles(histograms: list[list[list[float]]]) -> dict[str, float]:
    """p50/p95/p99 (ms, 2% resolution) from the locustfile's latency histograms, one per Locust
    process: their bucket counts are added, so the percentiles are those of all requests together
    (averaging each process's percentiles would not be). Empty when nothing was recorded. With the
    95% confidence interval of the p99 (``p99_low``, ``p99_high``; see :func:`quantile_interval`)."""
    histogram: Counter[float] = Counter()
    for buckets in histograms:
        for bound, count in buckets:
            histogram[float(bound)] += int(count)
    if not histogram:
        return {}  # nothing recorded (a run shorter than its warm-up): Locust's own figures stand
    out = {name: _percentile(histogram, q) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}
    out["p99_low"], out["p99_high"] = quantile_interval(histogram, 0.99)
    return out


def latency_windows(workdir: Path) -> dict[int, dict[str, float]]:
    """Per wall-clock second of the last run on a bench (``RunSpec.latency_windows``): requests and
    client-side p50/p99 (ms), the Locust processes' histograms added per second."""
    merged: dict[int, Counter[float]] = {}
    for path in sorted(workdir.glob("windows-*.json")):
        for second, buckets in json.loads(path.read_text()).items():
            histogram = merged.setdefault(int(second), Counter())
            for bound, count in buckets:
                histogram[float(bound)] += int(count)
    return {second: {"requests": sum(h.values()), "p50": _percentile(h, 0.5), "p99": _percentile(h, 0.99)}
            for second, h in sorted(merged.items())}


def quantile_interval(histogram: Counter[float], q: float, z: float = P99_CI_Z) -> tuple[float, float]:
    """Distribution-free confidence interval of the ``q`` quantile of ``n`` samples: the values at
    the order-statistic ranks ``n q -/+ z sqrt(n q (1 - q))`` (normal approximation of the
    binomial count of samples below the true quantile). ``inf`` for the upper end when the rank
    lies past the largest sample: too few requests to bound the quantile from above.

    Example::

        quantile_interval(Counter({1.0: 990, 50.0: 10}), 0.99)   # (1.0, 50.0): 10 slow requests
    """
    total = sum(histogram.values())
    spread = z * math.sqrt(total * q * (1 - q))
    low, high = math.floor(total * q - spread), math.ceil(total * q + spread) + 1
    return _ranked(histogram, max(low, 1)), (_ranked(histogram, high) if high <= total else math.inf)


def _ranked(histogram: Counter[float], rank: int) -> float:
    """The ``rank``-th smallest value (1-based) of a histogram of values."""
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return 0.0


def _watch_cpu(procs: list[psutil.Popen], timeout_s: float) -> list[list[tuple[float, float]]]:
    """``(wall clock, CPU seconds so far)`` of each process every ``CPU_SAMPLE_S`` until the first
    (the one that reports) exits, or ``timeout_s`` (then it is killed); the rest (Locust workers,
    which quit with their master) get ``STOP_GRACE_S`` more. The wall clock is ``time.time()``,
    the clock of Locust's statistics."""
    samples: list[list[tuple[float, float]]] = [[] for _ in procs]
    deadline = time.monotonic() + timeout_s
    while procs[0].poll() is None and time.monotonic() < deadline:
        now = time.time()
        for proc, taken in zip(procs, samples):
            try:
                used = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            taken.append((now, used.user + used.system))
        time.sleep(CPU_SAMPLE_S)
    for proc in procs:
        try:
            proc.wait(STOP_GRACE_S if proc is not procs[0] else 0)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait()
    return samples


def window_cpu_percent(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Peak CPU percent over the sampling intervals that lie inside ``[start, end]``.

    ``samples`` are ``(wall clock, CPU seconds so far)``. When no whole interval fits in the window
    (a window shorter than the sampling period), the mean over the two samples around it.
    """
    inside = [(a, b) for a, b in zip(samples, samples[1:]) if start <= a[0] and b[0] <= end]
    if not inside:
        before = [s for s in samples if s[0] <= start][-1:]
        after = [s for s in samples if s[0] >= end][:1]
        inside = [(before[0], after[0])] if before and after else []
    return max(((b[1] - a[1]) / (b[0] - a[0]) * 100 for a, b in inside if b[0] > a[0]), default=0.0)


def _percentile(histogram: Counter[float], q: float) -> float:
    total = sum(histogram.values())
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= q * total:
            return value
    return 0.0


def locust_stats(entries: list[dict[str, Any]], stderr: str = "") -> dict[str, Any]:
    """Totals, rate, traffic window (``window``: wall-clock start and end, ``span_s``: its length) and
    latency percentiles from ``locust --json`` output (all request names)."""
    histogram: Counter[float] = Counter()
    requests = failures = 0
    total_ms, longest = 0.0, 0.0
    start, end = float("inf"), 0.0
    for entry in entries:
        requests += entry["num_requests"]
        failures += entry["num_failures"]
        total_ms += entry["total_response_time"]
        longest = max(longest, entry["max_response_time"] or 0.0)
        start, end = min(start, entry["start_time"]), max(end, entry["last_request_timestamp"] or 0.0)
        for value, count in entry["response_times"].items():
            histogram[float(value)] += count
    span = end - start if requests and end > start else 0.0
    window = (start, end) if span else (0.0, 0.0)
    return {
        "requests": requests,
        "failures": failures,
        "rps": requests / span if span else 0.0,
        "span_s": span,
        "window": window,
        "latency_ms": {"p50": _percentile(histogram, 0.5), "p95": _percentile(histogram, 0.95),
                       "p99": _percentile(histogram, 0.99), "max": longest,
                       "mean": total_ms / requests if requests else 0.0},
        "failure_reasons": _failure_reasons(stderr),
    }


def _failure_reasons(stderr: str) -> dict[str, int]:
    """Locust's error report lines: '<count> <method> <name>: <reason>'."""
    reasons: dict[str, int] = {}
    for line in stderr.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].isdigit() and ("HTTP" in parts[1] or "error" in parts[1].lower()):
            reasons[parts[1][:200]] = reasons.get(parts[1][:200], 0) + int(parts[0])
    return reasons


def _server_snapshot(url: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=10.0) as client:
        stats = client.get("/v1/cache/stats").json()
        metrics = client.get("/metrics").text
    return {"stats": stats, "histogram": _latency_histogram(metrics), "versions": split.version_histograms(metrics)}


def _latency_histogram(metrics: str) -> dict[float, float]:
    """Cumulative counts of hybridserve_request_seconds by upper bound, summed over sources."""
    buckets: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith("hybridserve_request_seconds_bucket{"):
            labels, value = line.rsplit(" ", 1)
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            le = float("inf") if bound == "+Inf" else float(bound)
            buckets[le] = buckets.get(le, 0.0) + float(value)
    return buckets


def _histogram_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Upper-bound quantiles (ms) of the requests observed between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    out = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        bound = next((b for b, c in zip(bounds, counts) if total and c >= q * total), float("inf"))
        out[name] = bound * 1000 if bound != float("inf") else float("inf")
    return out


def _delta_counts(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    b, a = before["stats"]["counts"], after["stats"]["counts"]
    return {k: int(a[k] - b.get(k, 0)) for k in a}


def _hit_ratio(counts: dict[str, int]) -> dict[str, float]:
    served = counts["l1_hits"] + counts["redis_hits"] + counts["model_rows"]
    if not served:
        return {"l1": 0.0, "redis": 0.0, "total": 0.0}
    return {"l1": counts["l1_hits"] / served, "redis": counts["redis_hits"] / served,
            "total": (counts["l1_hits"] + counts["redis_hits"]) / served}


@dataclass(frozen=True)
class StoredKeys:
    """What a run holds in Redis under its namespace."""

    keys: int
    bytes: int

    @classmethod
    def read(cls, client: redis.Redis, namespace: str) -> StoredKeys:
        """Count the namespace's keys (SCAN) and sum their ``MEMORY USAGE`` (one pipelined round trip)."""
        names = list(client.scan_iter(match=f"{namespace}:*", count=SCAN_COUNT))
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)
        sizes = pipe.execute() if names else []
        return cls(len(names), sum(int(size or 0) for size in sizes))


@dataclass
class Bench:
    """A prepared run: Redis with what the mode needs precomputed, a warmed-up server, and where
    Locust writes. Several measurements may follow one another on it (a capacity ladder)."""

    server: ServerProcess
    redis: redis.Redis
    registry: Path
    version: str
    space: KeySpace
    key_count: int
    precompute: tuple[float, float]
    workdir: Path
    server_cores: int


@contextmanager
def prepared(spec: RunSpec, registry: Path) -> Iterator[Bench]:
    """A fresh Redis and server process for ``spec``, the mode prepared and the server warmed up."""
    artifact = resolve(registry, spec.model_name)
    card = artifact.card()
    space = key_space_for(card, artifact.path)
    key_count = space.count
    server_cores, load_cores = _cores()
    with tempfile.TemporaryDirectory(prefix="hybridserve-run-") as tmp, EmbeddedRedis() as redis_server:
        os.sched_setaffinity(redis_server.pid or 0, load_cores)  # Redis shares the generator's core
        workdir = Path(tmp)
        client = redis.Redis.from_url(redis_server.url)
        settings = Settings(redis_url=redis_server.url, registry=registry, model_name=spec.model_name, mode=spec.mode,
                            l1_size=spec.l1_size, head_size=spec.head_size, **dict(spec.settings))
        baseline = int(client.info("memory")["used_memory"])
        pre = _prepare(spec, settings, space, workdir)
        if spec.redis_maxmemory is not None:
            # After the precompute (a batch job must not meet OOM half-way); the head counts in the budget.
            _limit_memory(redis_server, baseline, spec.redis_maxmemory, spec.redis_eviction)
        try:
            with ServerProcess(settings, server_cores) as server:
                _warm_up(server.url, spec, space)
                yield Bench(server, client, registry, artifact.version, space, key_count, pre, workdir,
                            len(server_cores or os.sched_getaffinity(0)))
        finally:
            client.close()


def measure(bench: Bench, spec: RunSpec, prices: cost.Prices, target: cost.Scenario | None = None) -> RunResult:
    """One Locust run of ``spec`` against a prepared bench, with what it cost."""
    server, client = bench.server, bench.redis
    namespace = server.settings.redis_namespace
    stored0 = StoredKeys.read(client, namespace)
    idle = _idle_cpu_s_per_s(server, client)
    before, cpu0, rcpu0 = _server_snapshot(server.url), server.cpu_s(), _redis_cpu_s(client)
    started = time.monotonic()
    server_cores, load_cores = _cores()
    with CoreSpeedProbe(server_cores) as server_probe, CoreSpeedProbe(load_cores) as load_probe:
        if spec.instances:
            with MonitoringSampler(server.url) as sampler:
                locust, locust_cpu = _run_locust(spec, server.url, bench.registry, bench.workdir)
        else:
            locust, locust_cpu = _run_locust(spec, server.url, bench.registry, bench.workdir)
    outside = max(0.0, time.monotonic() - started - locust["span_s"])  # Locust starting and stopping
    after, cpu1, rcpu1 = _server_snapshot(server.url), server.cpu_s(), _redis_cpu_s(client)
    stored1 = StoredKeys.read(client, namespace)
    # The warm-up's keys: the same shape as those L1 held.
    l1_entry_bytes = measure_l1_bytes_per_entry(
        key_stream(spec.distribution, bench.space, seed=spec.seed, stream=98).take(WARMUP_REQUESTS))
    result = _result(spec, bench.version, bench.key_count, locust, locust_cpu, before, after,
                     (_less_idle(cpu1 - cpu0, idle[0] * outside), _less_idle(rcpu1 - rcpu0, idle[1] * outside)), (stored0, stored1),
                     bench.precompute, prices, target, l1_entry_bytes=l1_entry_bytes)
    result.idle_cpu_ms_per_s = {"server": idle[0] * 1e3, "redis": idle[1] * 1e3}
    result.core_speed = {"server": _probe_record(server_probe), "redis": _probe_record(load_probe)}
    if spec.instances:
        result.drift = sampler.record(_shift_at_s(bench.workdir, sampler.started))
    stream = key_stream(spec.distribution, bench.space, seed=spec.seed)
    if isinstance(stream, TraceKeys):
        result.unknown_key_share, result.trace_keys_mapped = stream.unknown_share, stream.remap
    return result


def _probe_record(probe: CoreSpeedProbe) -> dict[str, float]:
    """The probe's reading; empty for a window too short to sample (the CPU stays as measured)."""
    return probe.reading.as_record() if probe.reading else {}


def _idle_cpu_s_per_s(server: ServerProcess, client: redis.Redis) -> tuple[float, float]:
    """Server and Redis CPU seconds a second with no traffic, over :data:`IDLE_SAMPLE_S`."""
    cpu0, rcpu0, start = server.cpu_s(), _redis_cpu_s(client), time.monotonic()
    time.sleep(IDLE_SAMPLE_S)
    elapsed = time.monotonic() - start
    return (server.cpu_s() - cpu0) / elapsed, (_redis_cpu_s(client) - rcpu0) / elapsed


def _less_idle(used: float, idle: float) -> float:
    """CPU ``used`` in the window less the ``idle`` estimate for its seconds without traffic; never
    below zero (a process that was idle all along, e.g. Redis in dynamic mode, would otherwise go
    negative by the noise of a half-second idle sample)."""
    return max(0.0, used - idle)


def _shift_at_s(workdir: Path, started: float) -> float | None:
    """Seconds from the start of the run to the first shifted instance (the locustfile's note), or None."""
    path = workdir / SHIFT_FILE
    if not path.exists():
        return None
    shift_at = json.loads(path.read_text())["shift_started_at"] - started
    path.unlink()  # a later run on the same bench writes its own
    return max(0.0, shift_at)


def run_one(spec: RunSpec, registry: Path, prices: cost.Prices, target: cost.Scenario | None = None) -> RunResult:
    """Run one cell of the matrix end to end and measure it."""
    with prepared(spec, registry) as bench:
        return measure(bench, spec, prices, target)


def fell_behind(achieved_rps: float, offered_rps: float, span_s: float) -> bool:
    """Whether a run achieved less than the offered rate could have sent: under ``SATURATION_SHARE``
    of it, less what Poisson arrivals vary by (``POISSON_SLACK_SD`` standard deviations of the
    count: 3 x sqrt(200) is 21% of the 200 arrivals of 2 s at 100/s, but 3% of 12 s at 300/s)."""
    expected = offered_rps * max(span_s, 1e-9)
    return achieved_rps * span_s < SATURATION_SHARE * expected - POISSON_SLACK_SD * math.sqrt(expected)


def _result(spec: RunSpec, version: str, key_count: int, locust: dict[str, Any], locust_cpu: float,
            before: dict[str, Any], after: dict[str, Any], cpu: tuple[float, float], stored: tuple[StoredKeys, StoredKeys],
            pre: tuple[float, float], prices: cost.Prices, target: cost.Scenario | None,
            l1_entry_bytes: float = 0.0) -> RunResult:
    counts = _delta_counts(before, after)
    requests = max(1, counts["requests"] + counts["errors"])
    achieved = locust["rps"]
    saturated = fell_behind(achieved, spec.rate, locust["span_s"]) or locust_cpu >= LOCUST_CPU_SATURATED
    result = RunResult(
        spec=spec, model_version=version, key_count=key_count, requests=locust["requests"], failures=locust["failures"],
        failure_reasons=locust["failure_reasons"], duration_s=locust["span_s"], offered_rps=spec.rate, achieved_rps=achieved,
        latency_ms=locust["latency_ms"], server_latency_ms=_histogram_quantiles(before["histogram"], after["histogram"]),
        hit_ratio=_hit_ratio(counts), tier_counts=counts,
        server_cpu_us_per_request=cpu[0] / requests * 1e6, redis_cpu_us_per_request=cpu[1] / requests * 1e6,
        redis_bytes=stored[1].bytes, redis_keys=stored[1].keys, redis_keys_added=stored[1].keys - stored[0].keys,
        redis_bytes_added=stored[1].bytes - stored[0].bytes, l1_entries=int(after["stats"]["l1"]["size"]), precompute_s=pre[0],
        precompute_cpu_s=pre[1], load_generator_saturated=saturated, load_generator_cpu_percent=locust_cpu,
        latency_histograms=locust["latency_histograms"],
    )
    result.l1_bytes = round(result.l1_entries * l1_entry_bytes)
    result.cost = _cost(result, prices, target)
    if after["stats"].get("routes"):
        result.split = split.breakdown(before, after, cpu[0], prices.serving_vcpu_hour, _histogram_quantiles)
    return result


def _cost(result: RunResult, prices: cost.Prices, target: cost.Scenario | None) -> dict[str, Any]:
    predictions = max(1, result.tier_counts["keys"])
    duration = max(result.duration_s, 1e-3)
    usage = cost.RunUsage(
        mode=result.spec.mode, predictions=predictions, duration_s=duration,
        server_cpu_s=result.server_cpu_us_per_request * max(1, result.tier_counts["requests"]) / 1e6,
        redis_cpu_s=result.redis_cpu_us_per_request * max(1, result.tier_counts["requests"]) / 1e6,
        cache_bytes=float(result.redis_bytes + result.l1_bytes), key_count=result.key_count, precompute_cpu_s=result.precompute_cpu_s,
    )
    scenario = target or cost.measured_scenario(usage)
    estimate = cost.estimate(usage, scenario, prices)
    return json.loads(json.dumps(asdict(estimate)))


# ----- the comparison matrix ---------------------------------------------------------------------

QUICK_DURATION_S = 8.0
FULL_DURATION_S = 25.0


def matrix(duration_s: float, rate: float, distribution: str = "zipf:1.1",
           models: tuple[str, ...] = DEMO_PROFILES, load_workers: int = 0) -> list[RunSpec]:
    """Each model (demo profiles, or registered names) x three modes on ``distribution``, plus
    hybrid on uniform traffic per model (unless ``distribution`` is uniform already)."""
    specs = [RunSpec(p, m, distribution, rate=rate, duration_s=duration_s, load_workers=load_workers)
             for p in models for m in ("static", "dynamic", "hybrid")]
    if distribution != "uniform":
        specs += [RunSpec(p, "hybrid", "uniform", rate=rate, duration_s=duration_s, load_workers=load_workers)
                  for p in models]
    return specs


def compare(
    registry: Path,
    specs: list[RunSpec],
    prices: cost.Prices = cost.Prices(),
    target: cost.Scenario | None = None,
    progress: bool = True,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """Run every spec in turn; returns results.json records, one per spec.

    With ``repeats`` > 1 the whole list is run that many times over (rounds, so that a slow spell
    of a shared machine touches every spec alike rather than all repeats of one), and each spec's
    record is its median run by server + Redis CPU per request at one core speed
    (:func:`median_run`): identical runs on a small VM differ by 10-20% in CPU per request.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    runs: list[list[dict[str, Any]]] = [[] for _ in specs]
    total = len(specs) * repeats
    for round_ in range(repeats):
        for i, spec in enumerate(specs):
            if progress:
                print(f"[{round_ * len(specs) + i + 1}/{total}] {spec.label}: {spec.duration_s:.0f}s at {spec.rate:.0f} req/s ...",
                      flush=True)
            result = run_one(spec, registry, prices, target)
            if progress:
                print(f"        achieved {result.achieved_rps:.0f} req/s, p99 {result.latency_ms['p99']:.1f} ms, "
                      f"hit ratio {result.hit_ratio['total']:.2f}, server CPU {result.server_cpu_us_per_request:.0f} µs/req, "
                      f"failures {result.failures}", flush=True)
            runs[i].append(result.as_record())
    return [median_run(spec_runs) if repeats > 1 else spec_runs[0] for spec_runs in runs]


def median_run(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of identical specs whose server + Redis CPU per request, at the runs' median core
    speed (:func:`loadtests.tier_costs.at_speed`), is the median (the lower of the middle two for
    an even count), with every run's CPU, core speed and p99 under ``repeats``. A whole run, not
    medians of each figure, so its latency, counts and cost stay those of one real run."""
    reference = speed_reference(records)
    ordered = sorted(records, key=lambda record: cpu_us_at_speed(record, reference))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repeats"] = [{"server_cpu_us_per_request": r["server_cpu_us_per_request"],
                          "redis_cpu_us_per_request": r["redis_cpu_us_per_request"],
                          "core_speed": r.get("core_speed", {}), "p99_ms": r["latency_ms"]["p99"]} for r in records]
    return chosen
