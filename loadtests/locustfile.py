"""Locust load test of the hybridserve prediction API.

Web UI (options editable in the start form)::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Headless::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 50 -r 10 -t 2m \\
        --key-dist zipf:1.1 --segments 200 --batch-size 1 --rate 500 --seed 7 --csv results/run

Options (each falls back to the environment variable in brackets, then to the default):

- ``--key-dist`` [HYBRIDSERVE_LOAD_KEY_DIST]: key distribution spec, see ``loadtests.keys``
  (``zipf:1.1``, ``uniform``, ``drift:hot=500,p=0.9,period=30``, ``trace:PATH``).
- ``--segments`` [HYBRIDSERVE_LOAD_SEGMENTS]: segment count; must match the server's key space.
- ``--batch-size`` [HYBRIDSERVE_LOAD_BATCH_SIZE]: 1 sends ``GET /v1/predict/{key}``; more sends
  ``POST /v1/predict`` with that many keys.
- ``--rate`` [HYBRIDSERVE_LOAD_RATE]: target requests per second over all users of this Locust
  process (per worker in a distributed run); 0 runs closed-loop, as fast as responses come back.
- ``--seed`` [HYBRIDSERVE_LOAD_SEED]: fixes which keys are popular, the request sequence and the
  Poisson arrival gaps.
- ``--arrivals`` [HYBRIDSERVE_LOAD_ARRIVALS]: ``poisson`` (default) or ``even`` send times at ``--rate``.
- ``--instances`` [HYBRIDSERVE_LOAD_INSTANCES]: send raw-feature instances of ``--model`` instead of
  keys (``POST /v1/predict {"instances": [...]}``, ``--batch-size`` per request): ``training``, or
  ``drift:at=0.5,shift=2.0`` (after half the run every feature moves by 2 training standard
  deviations; ``features=a+b`` names those shifted), see ``loadtests.drift_traffic``.

Pacing. Locust users are closed loops: a user waits for its response before its next request.
With ``--rate`` the users send on a fixed schedule of ``rate`` requests a second, measured from
the schedule rather than from each user's last response, so the offered load stays at ``rate``
whatever the latency, as long as some user is free when a request is due. A
late request is sent at once and the schedule catches up back to back, but never more than
``MAX_CATCH_UP_S`` behind: older slots are dropped rather than sent as a burst after a stall.
The send times come from one arrival stream per process (``loadtests.arrivals``), which free users
take turns at: Poisson arrivals by default, as independent clients send them, or evenly spaced
ones with ``--arrivals even``.
(Locust's ``constant_throughput`` instead restarts the interval after every slow request, which
silently lowers the offered load exactly when the server is slowest.) Once users saturate the
achieved RPS falls below ``--rate`` and latency percentiles, measured from each send, miss the
time requests waited for a free user; compare achieved RPS with ``--rate`` and raise ``-u``
(users >= rate x p99 latency) until they match.

All users of one process share one key stream, so the process sends exactly the stream's
sequence (a trace is replayed in order); in a distributed run each worker uses its own stream
of the same seed. A single-pass trace ends the test when it runs out.

This is the only module that imports locust: locust monkey-patches the standard library with
gevent at import, which must not happen inside the server or the test process.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import gevent
from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner
from locust.util.timespan import parse_timespan

import numpy as np

from loadtests.arrivals import DEFAULT_PROCESS, PROCESSES, ArrivalStream, check_process
from loadtests.drift_traffic import InstanceSpec, InstanceStream
from loadtests.keys import KeysExhausted, KeyStream, key_stream, parse_spec
from models.keyspace import GridKeySpace, KeySpace, key_space_for
from models.registry import RegistryError, resolve

PREDICT_ONE_PATH = "/v1/predict/{key}"
PREDICT_BATCH_PATH = "/v1/predict"
# Stats group by endpoint, not by key: one row for all single-key requests.
PREDICT_ONE_NAME = "/v1/predict/[key]"
PREDICT_BATCH_NAME = "/v1/predict"
PREDICT_INSTANCES_NAME = "/v1/predict [instances]"
# How far a user's schedule may fall behind before missed slots are dropped (see module doc).
MAX_CATCH_UP_S = 1.0
# When a trace runs out, how long other users may take to finish their requests in flight
# before the test ends anyway, and how often to look.
END_TEST_GRACE_S = 10.0
END_TEST_POLL_S = 0.05
# Longest slice of a non-JSON error body quoted in a failure message.
FAILURE_BODY_CHARS = 200

DEFAULT_KEY_DIST = "zipf:1.1"
DEFAULT_SEGMENTS = 200
DEFAULT_BATCH_SIZE = 1
DEFAULT_RATE = 0.0
DEFAULT_SEED = 0

logger = logging.getLogger(__name__)


# Each option falls back to HYBRIDSERVE_LOAD_<NAME> in the environment (e.g. --batch-size:
# HYBRIDSERVE_LOAD_BATCH_SIZE); a prefix of its own, so the server's Settings never read them.
ENV_PREFIX = "HYBRIDSERVE_LOAD_"
# (flag, type, default, help) of every option this locustfile adds.
OPTIONS: tuple[tuple[str, type, object, str], ...] = (
    (
        "--key-dist",
        str,
        DEFAULT_KEY_DIST,
        "Key distribution: zipf:S, uniform, drift:hot=H,p=P,period=T|every=N, trace:[loop:][map:]PATH",
    ),
    ("--model", str, "", "Registry model whose keys to send (its card's key space); empty: the demo grid of --segments"),
    ("--registry", str, "registry", "Model registry directory (with --model)"),
    ("--segments", int, DEFAULT_SEGMENTS, "Without --model: segment count of the demo key space (keys = segments x 168)"),
    ("--batch-size", int, DEFAULT_BATCH_SIZE, "Keys per request: 1 uses GET /v1/predict/{key}, more POST /v1/predict"),
    ("--rate", float, DEFAULT_RATE, "Target requests/s over all users of this process (open loop); 0: closed loop"),
    ("--seed", int, DEFAULT_SEED, "Seed of the key distribution (which keys are popular, and the request sequence)"),
    ("--arrivals", str, DEFAULT_PROCESS, f"With --rate: send times as a {' or '.join(PROCESSES)} process"),
    ("--latency-file", str, "", "Write a 2%-resolution latency histogram (JSON) here when the test stops "
                                "({worker} in the path: the worker's index, in a distributed run)"),
    ("--instances", str, "", "Raw-feature instances of --model instead of keys: training, or "
                             "drift:at=A,shift=S[,features=a+b] (shifted by S std after share A of the run)"),
    ("--shift-file", str, "", "With --instances drift:...: write the unix time the shift began here"),
    ("--latency-after-s", float, 0.0, "Leave the first seconds of a run (users starting, connections opening) "
                                      "out of the --latency-file histogram"),
    ("--latency-windows-file", str, "", "Also write one latency histogram per wall-clock second (JSON: unix second -> "
                                        "histogram) here when the test stops, for latency over time ({worker} as above)"),
)


def env_var(flag: str) -> str:
    """The environment variable an option falls back to: ``--batch-size`` -> ``HYBRIDSERVE_LOAD_BATCH_SIZE``."""
    return ENV_PREFIX + flag.removeprefix("--").replace("-", "_").upper()


@events.init_command_line_parser.add_listener
def add_arguments(parser: LocustArgumentParser) -> None:
    """Register the hybridserve options (shown in the web UI's start form too)."""
    group = parser.add_argument_group("hybridserve", "Key distribution, batching and pacing of predict requests")
    for flag, kind, default, help_text in OPTIONS:
        group.add_argument(flag, type=kind, default=default, env_var=env_var(flag), help=help_text)


@dataclass(frozen=True)
class LoadOptions:
    """The hybridserve options of one test run, validated."""

    key_dist: str
    model: str
    registry: str
    segments: int
    batch_size: int
    rate: float
    seed: int
    instances: str = ""
    arrivals: str = DEFAULT_PROCESS

    @classmethod
    def from_parsed(cls, parsed: Any) -> LoadOptions:
        """Read and check the options from Locust's parsed options; ``ValueError`` if invalid."""
        options = cls(
            key_dist=str(parsed.key_dist),
            model=str(parsed.model or ""),
            registry=str(parsed.registry),
            segments=int(parsed.segments),
            batch_size=int(parsed.batch_size),
            rate=float(parsed.rate),
            seed=int(parsed.seed),
            instances=str(getattr(parsed, "instances", "") or ""),
            arrivals=str(getattr(parsed, "arrivals", "") or DEFAULT_PROCESS),
        )
        check_process(options.arrivals)
        parse_spec(options.key_dist)
        if options.instances:
            InstanceSpec.parse(options.instances)
            if not options.model:
                raise ValueError("--instances needs --model (the registry model whose features to send)")
        if options.segments < 1:
            raise ValueError(f"--segments must be >= 1, got {options.segments}")
        if options.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {options.batch_size}")
        if not options.rate >= 0:
            raise ValueError(f"--rate must be >= 0, got {options.rate}")
        return options

    def key_space(self) -> KeySpace:
        """The keys to send: the model's (from its card in the registry), or the demo grid."""
        if not self.model:
            return GridKeySpace(self.segments)
        return key_space_for(*self._artifact())

    def _artifact(self) -> tuple[dict[str, Any], Path]:
        """The card and version directory of ``--model`` in ``--registry``."""
        try:
            artifact = resolve(Path(self.registry), self.model)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        return artifact.card(), artifact.path

    def instance_stream(self) -> InstanceStream | None:
        """The raw-feature instances to send (``--instances``), or None to send keys."""
        if not self.instances:
            return None
        card, path = self._artifact()
        return InstanceStream(InstanceSpec.parse(self.instances), card, np.load(path / "features.npy", mmap_mode="r"), self.seed)


@dataclass
class LoadPlan:
    """What every user of this process shares during one test run: options and the key stream."""

    options: LoadOptions
    keys: KeyStream
    instances: InstanceStream | None = None
    started: float = 0.0  # monotonic time the plan was built (the run's start, for --instances drift)
    run_time_s: float = 0.0  # -t of a headless run (0: none given)
    shift_file: str = ""
    arrivals: ArrivalStream | None = None  # send times (None: closed loop)

    @classmethod
    def build(cls, environment: Environment) -> LoadPlan:
        """Options from the command line (or web UI form) and a fresh stream for this process."""
        options = LoadOptions.from_parsed(environment.parsed_options)
        # Workers share the seed (the same popular keys) but draw independent sequences.
        stream = getattr(environment.runner, "worker_index", 0)
        keys = key_stream(options.key_dist, options.key_space(), seed=options.seed, stream=stream)
        parsed = environment.parsed_options
        run_time = getattr(parsed, "run_time", None) or 0
        instances = options.instance_stream()
        if instances is not None and instances.spec.at is not None and not run_time:
            raise ValueError("--instances drift:... shifts at a share of the run: give -t/--run-time")
        started = time.monotonic()
        arrivals = (ArrivalStream(options.rate, options.arrivals, seed=options.seed * 1000 + stream, start=started,
                                  max_behind_s=MAX_CATCH_UP_S) if options.rate > 0 else None)
        return cls(options, keys, instances, started,
                   float(parse_timespan(run_time) if isinstance(run_time, str) else run_time),
                   str(getattr(parsed, "shift_file", "") or ""), arrivals)

    def take_instances(self, count: int) -> list[dict[str, float]]:
        """The next instances of this run; the first shifted one notes the time in ``--shift-file``."""
        assert self.instances is not None
        share = (time.monotonic() - self.started) / self.run_time_s if self.run_time_s else 0.0
        if self.shift_file and self.instances.shifted(share):
            with open(self.shift_file, "w", encoding="utf-8") as handle:
                json.dump({"shift_started_at": time.time()}, handle)
            self.shift_file = ""  # once
        return self.instances.take(count, share)


@events.init.add_listener
def check_options(environment: Environment, **_kwargs: Any) -> None:
    """Fail fast on bad options given on the command line, before any user starts."""
    if environment.parsed_options is None or isinstance(environment.runner, MasterRunner):
        return
    try:
        LoadPlan.build(environment)
    except (ValueError, OSError) as exc:
        # SystemExit passes through Locust's event error handling and ends the process.
        raise SystemExit(f"hybridserve locustfile: {exc}") from None


@events.test_start.add_listener
def reset_plan(environment: Environment, **_kwargs: Any) -> None:
    """Every test run (each start in the web UI) begins a fresh stream with current options."""
    PredictUser.plan = None
    PredictUser.ending = False
    LATENCY.clear()
    WINDOWS.clear()
    skip = float(getattr(environment.parsed_options, "latency_after_s", 0.0) or 0.0) if environment.parsed_options else 0.0
    LATENCY.record_from = time.monotonic() + skip


class LatencyHistogram:
    """Response times at 2% resolution (log buckets), from Locust's unrounded request events.

    Locust's own statistics round response times to whole milliseconds below 100 ms, too coarse for
    a cache hit that takes one; this keeps bucket counts (constant memory at any request count).
    """

    FLOOR_MS = 0.01
    GROWTH = 1.02

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self._log_growth = math.log(self.GROWTH)
        self.record_from = 0.0  # monotonic time before which responses are not counted (warm-up)

    def clear(self) -> None:
        """Forget everything (a new test run)."""
        self.counts.clear()

    def add(self, ms: float) -> None:
        """Count one response time in milliseconds."""
        index = max(0, int(math.log(max(ms, self.FLOOR_MS) / self.FLOOR_MS) / self._log_growth))
        self.counts[index] = self.counts.get(index, 0) + 1

    def buckets(self) -> list[tuple[float, int]]:
        """(upper bound in ms, count), ascending."""
        return [(self.FLOOR_MS * self.GROWTH ** (i + 1), n) for i, n in sorted(self.counts.items())]


LATENCY = LatencyHistogram()
WINDOWS: dict[int, LatencyHistogram] = {}
"""One histogram per wall-clock second the response arrived in (``--latency-windows-file``)."""


@events.request.add_listener
def record_latency(response_time: float, **_kwargs: Any) -> None:
    """Every request after the warm-up, failed ones included (their time is part of what users wait)."""
    if time.monotonic() >= LATENCY.record_from:
        LATENCY.add(response_time)
    if WINDOWS_ON:
        second = int(time.time())
        window = WINDOWS.get(second)
        if window is None:
            window = WINDOWS[second] = LatencyHistogram()
        window.add(response_time)


WINDOWS_ON = False  # set at init from --latency-windows-file: no per-request dict lookup otherwise


@events.init.add_listener
def windows_wanted(environment: Environment, **_kwargs: Any) -> None:
    """Keep per-second histograms only when a file for them was asked for."""
    global WINDOWS_ON
    WINDOWS_ON = bool(getattr(environment.parsed_options, "latency_windows_file", "") if environment.parsed_options else "")


@events.test_stop.add_listener
def write_latency(environment: Environment, **_kwargs: Any) -> None:
    """Dump the histogram where ``--latency-file`` says (the runner reads it). In a distributed run
    the master passes its options to every worker, so ``{worker}`` in the path becomes each
    worker's index (one file per worker, merged by the runner); the master, which sends no
    requests, writes none."""
    path = getattr(environment.parsed_options, "latency_file", "") if environment.parsed_options else ""
    if not path or isinstance(environment.runner, MasterRunner):
        return
    path = path.replace("{worker}", str(getattr(environment.runner, "worker_index", 0)))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(LATENCY.buckets(), handle)
    windows = getattr(environment.parsed_options, "latency_windows_file", "")
    if windows:
        windows = windows.replace("{worker}", str(getattr(environment.runner, "worker_index", 0)))
        with open(windows, "w", encoding="utf-8") as handle:
            json.dump({second: hist.buckets() for second, hist in sorted(WINDOWS.items())}, handle)


def failure_message(status: int, body: bytes | None, error: Exception | None) -> str:
    """A failure reason for Locust's failure table: status, the server's error code and detail."""
    if status == 0:
        return f"connection error: {error}"
    text = (body or b"").decode("utf-8", "replace")
    try:
        payload = json.loads(text)
        return f"HTTP {status} {payload['error']}: {payload['detail']}"
    except (ValueError, TypeError, KeyError):
        return f"HTTP {status}: {text[:FAILURE_BODY_CHARS]}"


def end_test(environment: Environment, reason: str) -> NoReturn:
    """Stop this user and end the whole test once the other users have stopped too.

    Locust swallows ``StopTest`` raised by a user, so the runner is asked directly: quit when
    headless, stop (keeping the web UI) otherwise. That happens in a separate greenlet, after
    the other users have finished their requests in flight (they stop at their next key).
    """
    if not PredictUser.ending:
        PredictUser.ending = True
        logger.warning("hybridserve locustfile: %s; ending the test", reason)
        gevent.spawn(_end_when_users_stopped, environment)
    raise StopUser()


def _end_when_users_stopped(environment: Environment) -> None:
    runner = environment.runner
    if runner is None:
        return
    deadline = time.monotonic() + END_TEST_GRACE_S
    while runner.user_count > 0 and time.monotonic() < deadline:
        gevent.sleep(END_TEST_POLL_S)
    headless = bool(getattr(environment.parsed_options, "headless", False))
    runner.quit() if headless else runner.stop()


class PredictUser(FastHttpUser):
    """Sends predict requests with keys from the shared stream, on an open-loop schedule."""

    # One plan per process and test run, built by the first user to start (see reset_plan).
    plan: LoadPlan | None = None
    # Set once a user has begun ending the test (see end_test).
    ending: bool = False

    def on_start(self) -> None:
        """Join the run's plan (building it if first) and wait for the first arrival it takes."""
        if PredictUser.plan is None:
            try:
                PredictUser.plan = LoadPlan.build(self.environment)
            except (ValueError, OSError) as exc:
                end_test(self.environment, str(exc))
        gevent.sleep(self.wait_time())

    def wait_time(self) -> float:
        """Seconds to the next arrival of the process's stream, which this user takes
        (0 when running closed-loop)."""
        arrivals = self._plan.arrivals
        if arrivals is None:
            return 0.0
        now = time.monotonic()
        return max(0.0, arrivals.take(now) - now)

    @property
    def _plan(self) -> LoadPlan:
        assert PredictUser.plan is not None, "on_start builds the plan before any task runs"
        return PredictUser.plan

    @task
    def predict(self) -> None:
        """One request: GET for a single key, POST for a batch."""
        if self._plan.instances is not None:
            self._send_instances()
            return
        try:
            keys = self._plan.keys.take(self._plan.options.batch_size)
        except KeysExhausted:
            end_test(self.environment, "the trace replay has finished")
        if self._plan.options.batch_size == 1:
            request = self.client.get(PREDICT_ONE_PATH.format(key=keys[0]), name=PREDICT_ONE_NAME, catch_response=True)
        else:
            request = self.client.post(PREDICT_BATCH_PATH, json={"keys": keys}, name=PREDICT_BATCH_NAME, catch_response=True)
        # Success bodies are not parsed: the load generator shares the machine with the server,
        # and decoding every response would take CPU from the thing being measured.
        with request as response:
            if not 200 <= response.status_code < 300:
                response.failure(failure_message(response.status_code, response.content, response.error))

    def _send_instances(self) -> None:
        """One raw-feature request of ``--batch-size`` instances (the drift scenario)."""
        body = {"instances": self._plan.take_instances(self._plan.options.batch_size)}
        with self.client.post(PREDICT_BATCH_PATH, json=body, name=PREDICT_INSTANCES_NAME, catch_response=True) as response:
            if not 200 <= response.status_code < 300:
                response.failure(failure_message(response.status_code, response.content, response.error))
