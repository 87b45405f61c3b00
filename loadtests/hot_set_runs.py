"""Load tests of the hot set (serving/hot_set.py, serving/head_refresh.py), each with and without:

- **drift**: a drifting hot set (``drift:hot=H,p=P,period=T``) on hybrid, with admission that keeps
  keys missed only a few times out of the caches, with and without head refresh (the Jaccard
  threshold): the hit ratio over time, sampled from ``/v1/cache/stats`` every second.
- **switch**: a version switch mid-run (``POST /v1/admin/reload`` to a second version of the same
  model, trained with another seed) with and without warm start: client-side p99 per one-second
  window (Locust's per-second histograms, ``RunSpec.latency_windows``) across the switch.

Each run is a normal load-test run (:func:`loadtests.runner.prepared` and
:func:`loadtests.runner.measure`: fresh Redis and server, head precomputed, warm-up, Locust at a
fixed rate in its own process) with a :class:`Sampler` thread beside it. The series go into each
run's results.json record under ``hot_set``; :mod:`loadtests.hot_set_report` draws them.

Example (``make hotset``)::

    python -m loadtests.hot_set_runs --registry registry --out out/hotset --seconds 40
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from loadtests import cost, report
from loadtests.hot_set_report import hot_set_section, summary
from loadtests.runner import RunSpec, latency_windows, measure, prepared
from models.publish import build_and_publish
from models.registry import RegistryError, model_name, resolve, set_latest

SAMPLE_S = 1.0
ADMIN_TOKEN = "hot-set-runs"
SECOND_VERSION_SEED = 123
# The drifting hot set: 300 keys take 90% of the requests and move every 10 s.
DRIFT = "drift:hot=300,p=0.9,period=10"
# Admission that keeps a key out of the caches until it has missed this often: without it every
# miss is cached at once and a refresh has little left to add (the README says so).
DRIFT_ADMISSION = "after:4"
SWITCH_DIST = "zipf:1.1"
SWITCH_PROFILE = "heavy"  # a model call that costs something, so a cold cache shows in p99
WARM_START_KEYS = 1000
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Scenario:
    """One run: its load-test spec, and when (seconds after the traffic starts) to switch versions."""

    name: str
    variant: str
    spec: RunSpec
    switch_after_s: float | None = None


def scenarios(seconds: float, rate: float, warm_start_keys: int = WARM_START_KEYS) -> list[Scenario]:
    """The four runs: drift with and without head refresh, a switch with and without warm start."""
    admin = (("admin_token", ADMIN_TOKEN),)
    drift = RunSpec("light", "hybrid", DRIFT, rate=rate, duration_s=seconds, head_size=300, l1_size=10_000,
                    settings=(*admin, ("admission", DRIFT_ADMISSION), ("hot_set", True), ("hot_set_half_life_s", 2.0)))
    refresh = (("head_refresh_threshold", 0.2),)
    switch = RunSpec(SWITCH_PROFILE, "hybrid", SWITCH_DIST, rate=rate, duration_s=seconds, head_size=2000, l1_size=10_000,
                     latency_windows=True, settings=(*admin, ("hot_set", True), ("hot_set_capacity", 8192)))
    warm = (("warm_start", True), ("warm_start_keys", warm_start_keys))
    return [
        Scenario("drift", "no refresh", drift),
        Scenario("drift", "head refresh", replace(drift, settings=drift.settings + refresh)),
        Scenario("switch", "cold start", switch, switch_after_s=seconds / 2),
        Scenario("switch", "warm start", replace(switch, settings=switch.settings + warm), switch_after_s=seconds / 2),
    ]


class Sampler(threading.Thread):
    """Every ``SAMPLE_S``: the server's counters and head-refresh status; once the traffic has
    started and ``switch_after_s`` passed, one reload to ``switch_to``."""

    def __init__(self, url: str, switch_after_s: float | None = None, switch_to: str | None = None) -> None:
        super().__init__(daemon=True)
        self.samples: list[dict[str, Any]] = []
        self.switch: dict[str, Any] | None = None
        self._url = url
        self._switch_after_s, self._switch_to = switch_after_s, switch_to
        self._stop_event = threading.Event()
        self._reloader: threading.Thread | None = None

    def run(self) -> None:
        traffic_from: float | None = None
        with httpx.Client(base_url=self._url, timeout=30.0) as client:
            while not self._stop_event.is_set():
                stats = client.get("/v1/cache/stats").json()
                now = time.time()
                self.samples.append({"unix": now, "counts": stats["counts"], "model_version": stats["model_version"],
                                     "head_refresh": stats["head_refresh"]})
                if traffic_from is None and len(self.samples) > 1 and stats["counts"]["requests"] > self.samples[0]["counts"]["requests"]:
                    traffic_from = now
                if (self._switch_to and self._reloader is None and traffic_from is not None
                        and now - traffic_from >= (self._switch_after_s or 0.0)):
                    # In a thread of its own: a warm start makes the reload take a while, and the
                    # samples must go on at their pace meanwhile.
                    self._reloader = threading.Thread(target=self._reload, daemon=True)
                    self._reloader.start()
                self._stop_event.wait(SAMPLE_S)

    def _reload(self) -> None:
        start = time.time()
        with httpx.Client(base_url=self._url, timeout=60.0) as client:
            answer = client.post("/v1/admin/reload", json={"version": self._switch_to},
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        answer.raise_for_status()
        # "unix": when the new version took traffic (the reload answers right after the swap).
        self.switch = {"requested_unix": start, "unix": time.time(), "reload_s": time.time() - start, "to": self._switch_to}

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_event.set()
        self.join(STOP_TIMEOUT_S)
        if self._reloader is not None:
            self._reloader.join(STOP_TIMEOUT_S)


def series(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sampling interval: requests, keys by tier and the hit ratio of that interval."""
    out = []
    for before, after in zip(samples, samples[1:]):
        delta = {k: after["counts"][k] - before["counts"][k] for k in ("requests", "l1_hits", "redis_hits", "model_rows")}
        served = delta["l1_hits"] + delta["redis_hits"] + delta["model_rows"]
        refresh = after["head_refresh"] or {}
        out.append({"unix": after["unix"], **delta, "hit_ratio": (delta["l1_hits"] + delta["redis_hits"]) / served if served else None,
                    "model_version": after["model_version"], "refreshes": refresh.get("refreshes", 0),
                    "hot_set_distance": refresh.get("distance")})
    return out


def run_scenario(scenario: Scenario, registry: Path, second_version: str | None, prices: cost.Prices) -> dict[str, Any]:
    """One run with its sampler; the results.json record with ``hot_set`` added."""
    with prepared(scenario.spec, registry) as bench:
        sampler = Sampler(bench.server.url, scenario.switch_after_s, second_version if scenario.switch_after_s else None)
        sampler.start()
        try:
            result = measure(bench, scenario.spec, prices)
        finally:
            sampler.stop()
        windows = latency_windows(bench.workdir) if scenario.spec.latency_windows else {}
    record = result.as_record()
    record["hot_set"] = {"scenario": scenario.name, "variant": scenario.variant, "series": series(sampler.samples),
                         "latency_windows": [{"unix": s, **w} for s, w in windows.items()], "switch": sampler.switch,
                         "drift": scenario.spec.distribution if scenario.name == "drift" else None}
    return record


def _registry_with_two_versions(source: Path, workdir: Path, profiles: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A private copy of ``source`` with each profile trained (if missing) and a second version of
    the switch's model (another seed), latest left on the first; returns it and ``{name: second}``."""
    registry = workdir / "registry"
    if source.exists():
        shutil.copytree(source, registry)
    for profile in profiles:
        try:
            resolve(registry, model_name(profile))
        except RegistryError:
            build_and_publish(profile, registry)
    name = model_name(SWITCH_PROFILE)
    first = resolve(registry, name).version
    second = build_and_publish(SWITCH_PROFILE, registry, seed=SECOND_VERSION_SEED).version
    set_latest(registry, name, first)
    return registry, {name: second}


def main(argv: list[str] | None = None) -> int:
    """Run the four scenarios and write results.json and report.html (with the hot-set section)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registry", type=Path, default=Path("registry"), help="registry to copy the models from "
                        "(missing demo profiles are trained into the copy)")
    parser.add_argument("--out", type=Path, default=Path("out/hotset"))
    parser.add_argument("--seconds", type=float, default=40.0, help="measured seconds per run")
    parser.add_argument("--rate", type=float, default=200.0, help="offered requests/s per run")
    parser.add_argument("--only", choices=("drift", "switch"), default=None, help="run one scenario's pair only")
    parser.add_argument("--warm-start-keys", type=int, default=WARM_START_KEYS, help="hot keys the warm start computes")
    args = parser.parse_args(argv)
    prices = cost.Prices()
    chosen = [s for s in scenarios(args.seconds, args.rate, args.warm_start_keys) if args.only in (None, s.name)]
    records = []
    with tempfile.TemporaryDirectory(prefix="hybridserve-hotset-") as tmp:
        registry, second = _registry_with_two_versions(args.registry, Path(tmp), ("light", SWITCH_PROFILE))
        for i, scenario in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {scenario.name} / {scenario.variant}: {args.seconds:.0f}s at {args.rate:.0f} req/s ...", flush=True)
            record = run_scenario(scenario, registry, second.get(scenario.spec.model_name), prices)
            records.append(record)
            print("        " + json.dumps(summary([record])[0]), flush=True)
    context = {"machine": f"{platform.node()}, Python {platform.python_version()}",
               "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "duration_s": args.seconds,
               "prices": prices, "target": "as measured"}
    results, html_path = report.write_report(records, args.out, context, [hot_set_section(records)],
                                             {"hot_set_summary": summary(records)})
    print(f"wrote {results}\nwrote {html_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
