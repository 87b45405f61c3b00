"""The locustfile, run as users run it: a ``locust`` subprocess against a tiny real HTTP server.

The locustfile is never imported here: locust monkey-patches the standard library with gevent
on import, which would break the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import LOCUSTFILE, locustfile_constant

pytestmark = pytest.mark.slow  # every test runs Locust processes (a few seconds of start-up and load)

REPO = Path(__file__).resolve().parents[1]
# The server knows segments below this; the load test asks for twice as many, so about half
# of a uniform stream's keys are unknown (404).
KNOWN_SEGMENTS = 2
RUN_SECONDS = 3
USERS = 2
# Requests per second the paced run asks for.
RATE = 40
# After a stall a user sends its missed slots back to back, but never more than this many seconds of them.
MAX_CATCH_UP_S = locustfile_constant("MAX_CATCH_UP_S")
# A trace with repeats: four distinct keys in seven requests.
TRACE_KEYS = ("road-a", "road-b", "road-a", "road-c", "road-b", "road-d", "road-a")
PROCESS_TIMEOUT_S = 40


@dataclass
class Received:
    """What the fake server saw, by request kind."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    keys: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def add(self, kind: str, keys: list[str]) -> None:
        with self.lock:
            self.times.append(time.monotonic())
            self.counts[kind] += 1
            self.keys += keys
            if kind == "post":
                self.batch_sizes[len(keys)] += 1


def _known(key: str) -> bool:
    segment, _, hour = key.partition(":")
    return segment.isdigit() and hour.isdigit() and int(segment) < KNOWN_SEGMENTS


def _prediction(key: str) -> dict[str, object]:
    return {"key": key, "prediction": 1.0, "source": "model", "model_version": "test"}


class PredictHandler(BaseHTTPRequestHandler):
    """Answers the predict contract: GET /v1/predict/{key} and POST /v1/predict."""

    received: Received

    def do_GET(self) -> None:
        key = self.path.removeprefix("/v1/predict/")
        if not _known(key):
            self.received.add("get_404", [key])
            self._send(404, {"error": "unknown_key", "detail": f"no prediction for key {key}"})
            return
        self.received.add("get_200", [key])
        self._send(200, _prediction(key))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        keys = body["keys"]
        self.received.add("post", keys)
        self._send(200, {"model_version": "test", "predictions": [_prediction(key) for key in keys]})

    def _send(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output quiet


class QuietHTTPServer(ThreadingHTTPServer):
    """Does not print a traceback when locust drops a connection at the end of its run."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@contextmanager
def fake_server() -> Iterator[tuple[str, Received]]:
    """A predict server on a free loopback port: its URL and what it received."""
    received = Received()
    handler = type("Handler", (PredictHandler,), {"received": received})
    httpd = QuietHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class LocustRun:
    """One finished ``locust`` process: exit code, final stats (``--json``) and its log."""

    returncode: int
    stats: dict[str, dict[str, object]]
    log: str


def start_locust(host: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(USERS), "-r", str(USERS)]
    command += ["-t", f"{RUN_SECONDS}s", "--host", host, "--only-summary", "--json", *args]
    return subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen[str]) -> LocustRun:
    """Wait for a locust process; its stdout is the final stats (JSON), stderr the log and error report."""
    try:
        stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"locust did not finish in {PROCESS_TIMEOUT_S} s:\n{stderr}")
    assert "Traceback" not in stderr, stderr
    stats = {entry["name"]: entry for entry in json.loads(stdout)} if stdout.strip() else {}
    return LocustRun(process.returncode, stats, stderr)


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "trace.txt"
    path.write_text("\n".join(TRACE_KEYS) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(trace_file: Path) -> dict[str, tuple[LocustRun, Received]]:
    """Three load tests at once, each against its own server: single-key GETs, batch POSTs
    configured by environment variables, and a closed-loop single-pass trace.

    The first two are paced: all three servers share this process (and its GIL) on a small
    machine, and a closed-loop flood from one run would starve the others.
    """
    arguments: dict[str, tuple[list[str], dict[str, str]]] = {
        "single": (["--key-dist", "uniform", "--segments", str(2 * KNOWN_SEGMENTS), "--rate", str(RATE)], {}),
        "batch": (
            ["--segments", str(KNOWN_SEGMENTS), "--rate", str(RATE)],
            {"HYBRIDSERVE_LOAD_BATCH_SIZE": "4", "HYBRIDSERVE_LOAD_KEY_DIST": "zipf:1.2", "HYBRIDSERVE_LOAD_ARRIVALS": "even"},
        ),
        "trace": (["--key-dist", f"trace:{trace_file}", "--segments", str(KNOWN_SEGMENTS), "--batch-size", "3"], {}),
    }
    with ExitStack() as stack:
        servers = {name: stack.enter_context(fake_server()) for name in arguments}
        processes = {
            name: start_locust(servers[name][0], *args, env=env) for name, (args, env) in arguments.items()
        }
        finished = {name: (finish(process), servers[name][1]) for name, process in processes.items()}
    for name, (run, _) in finished.items():
        # Every one of these runs prints final statistics; without them, show why.
        assert run.stats, f"{name}: locust exited {run.returncode} without statistics:\n{run.log[-3000:]}"
    return finished


Runs = dict[str, tuple[LocustRun, Received]]


def test_single_key_requests_are_grouped_under_one_name(runs: Runs) -> None:
    run, _ = runs["single"]
    assert list(run.stats) == ["/v1/predict/[key]"]
    assert run.stats["/v1/predict/[key]"]["method"] == "GET"
    assert run.returncode == 1  # locust's exit code when any request failed


def test_rate_paces_the_offered_load(runs: Runs) -> None:
    entry = runs["single"][0].stats["/v1/predict/[key]"]
    per_second = entry["num_reqs_per_sec"]
    assert isinstance(per_second, dict)
    # Closed-loop, two users against this server send hundreds a second; paced, about RATE.
    # The bounds hold on a loaded 2-core machine, whatever it stalls: in any one second a user
    # sends its slots of that second plus at most MAX_CATCH_UP_S of missed ones, and Locust counts
    # a request in the second it completes, which adds at most one in-flight request per user.
    # A stall lowers the counts; the catch-up after it stays within these bounds.
    assert max(per_second.values()) <= RATE * (1 + MAX_CATCH_UP_S) + 2 * USERS
    # Arrivals are Poisson: RATE * RUN_SECONDS on average, within four standard deviations. No floor
    # on the rate: a user waits for each response, and on a loaded machine this process's fake
    # server (sharing the GIL with two others) answered 2 users at 6 requests/s.
    expected = RATE * RUN_SECONDS
    assert USERS <= entry["num_requests"] <= expected + 4 * expected**0.5 + USERS  # type: ignore[operator]


def _gaps_once_both_users_run(received: Received) -> list[float]:
    # Locust starts the second user 1 / USERS s after the first.
    times = sorted(received.times)
    both = [t for t in times if t > times[0] + 1.5 / USERS]
    return [later - earlier for earlier, later in zip(both, both[1:])]


def test_paced_users_share_one_poisson_stream(runs: Runs) -> None:
    # Poisson arrivals: a share 1 - e^-0.25 (22%) of the gaps is under a quarter of the mean gap;
    # about 100 gaps put that share within 8-38% (three standard errors and some). Evenly spaced
    # arrivals give none; schedules of their own, counted from each user's start, put the two
    # users (started a whole number of their intervals apart) into pairs, about 50%.
    gaps = _gaps_once_both_users_run(runs["single"][1])
    short = sum(gap < 0.25 / RATE for gap in gaps) / len(gaps)
    assert len(gaps) > RATE
    assert 0.08 <= short <= 0.38, f"{short:.0%} of {len(gaps)} gaps under {250 / RATE:.1f} ms"


def test_even_arrivals_are_spaced_one_interval_apart(runs: Runs) -> None:
    # HYBRIDSERVE_LOAD_ARRIVALS=even. Stalls of a loaded machine make a few short gaps (a late
    # request, then the next on time), hence a share, not none; Poisson would give 22%.
    gaps = _gaps_once_both_users_run(runs["batch"][1])
    short = sum(gap < 0.25 / RATE for gap in gaps)
    assert len(gaps) > RATE
    assert short <= 0.1 * len(gaps), f"{short} of {len(gaps)} gaps under {250 / RATE:.1f} ms"


def test_failures_carry_the_server_error_code_and_detail(runs: Runs) -> None:
    run, received = runs["single"]
    entry = run.stats["/v1/predict/[key]"]
    failures = entry["num_failures"]
    assert 0 < failures < entry["num_requests"]  # type: ignore[operator]
    # Requests in flight when the run stops reach the server but not the stats.
    assert 0 <= received.counts["get_404"] - failures <= USERS  # type: ignore[operator]
    assert "GET /v1/predict/[key]: HTTP 404 unknown_key: no prediction for key" in run.log


def test_batches_are_posted_with_the_configured_size(runs: Runs) -> None:
    run, received = runs["batch"]
    entry = run.stats["/v1/predict"]
    assert run.returncode == 0 and entry["method"] == "POST" and entry["num_failures"] == 0
    assert 0 <= received.counts["post"] - entry["num_requests"] <= USERS  # type: ignore[operator]
    assert entry["num_requests"] > 0 and set(received.batch_sizes) == {4}


def test_a_single_pass_trace_is_sent_once_then_ends_the_test(runs: Runs) -> None:
    run, received = runs["trace"]
    assert run.returncode == 0 and "the trace replay has finished" in run.log
    # 7 keys in batches of 3: 3 + 3 + 1. Two users may deliver the batches in either order,
    # but each trace key maps to one model key, so the repeat counts match the trace's.
    assert run.stats["/v1/predict"]["num_requests"] == 3
    assert received.batch_sizes == Counter({3: 2, 1: 1})
    assert sorted(Counter(received.keys).values()) == sorted(Counter(TRACE_KEYS).values())


def test_bad_options_fail_before_the_test_starts() -> None:
    # Nothing listens on the discard port; the run must end before it would connect.
    run = finish(start_locust("http://127.0.0.1:9", "--key-dist", "zipf:-1"))
    assert run.returncode != 0 and not run.stats
    assert "bad key distribution 'zipf:-1'" in run.log


def test_an_unknown_arrival_process_fails_before_the_test_starts() -> None:
    run = finish(start_locust("http://127.0.0.1:9", "--rate", "10", "--arrivals", "burst"))
    assert run.returncode != 0 and not run.stats
    assert "unknown arrival process 'burst': use one of poisson, even" in run.log
