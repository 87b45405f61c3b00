"""The ``hybridserve`` command line.

Example::

    hybridserve train --profile light
    hybridserve serve --mode hybrid          # embedded Redis, head precomputed, port 8000
    hybridserve predict 17:42 3:8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from httpx import HTTPError
from pydantic import ValidationError
from redis.exceptions import RedisError

from serving.errors import StoreError
from serving.modes import MODES, computes, precomputes, uses_store
from serving.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
DEMO_TRACE_REQUESTS = 100_000
DEMO_VERIFY_REQUESTS = 6_000
DEMO_SLO_P99_MS = 50.0


def _settings(args: argparse.Namespace, **fields: object) -> Settings:
    """Settings from the environment, overridden by the options the user gave."""
    given = {k: v for k, v in fields.items() if v is not None}
    return Settings(**given)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a profile, export it to ONNX, check parity and publish it to the registry."""
    from models.publish import build_and_publish

    artifact = build_and_publish(args.profile, Path(args.registry), segments=args.segments, seed=args.seed)
    card = artifact.card()
    timing = card["inference_time"]
    print(f"{artifact.name} version {artifact.version}")
    print(f"  path: {artifact.path}")
    print(f"  parity max |onnx - sklearn|: {card['parity']['max_abs_diff']:.3g} (tolerance {card['parity']['tolerance']:.3g})")
    print(f"  inference: {timing['single_row_us']:.1f} us single row, {timing['batch_row_us']:.1f} us/row in batches of {timing['batch_size']}")
    return 0


def cmd_redis(args: argparse.Namespace) -> int:
    """Run an embedded Redis (or with ``--cluster N`` a local Redis Cluster) in the foreground
    until interrupted; prints its URL first."""
    from loadtests.harness.redis_server import EmbeddedRedis

    if args.cluster:
        return _run_cluster(args.cluster, args.replicas)
    with EmbeddedRedis(port=args.port) as server:
        print(server.url, flush=True)
        _wait_while(lambda: server.pid is not None)
    return 0


def _run_cluster(masters: int, replicas: int) -> int:
    from loadtests.harness.redis_cluster import RedisCluster

    with RedisCluster(masters=masters, replicas=replicas) as cluster:
        print(cluster.url, flush=True)
        _wait_while(lambda: bool(cluster.live_nodes()))
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: through the context managers' cleanup


def _wait_while(alive: Callable[[], bool]) -> None:
    """Sleep while ``alive()``, until Ctrl-C or SIGTERM (the servers stop on the way out)."""
    import signal
    import time

    signal.signal(signal.SIGTERM, _interrupted)
    try:
        while alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def _keys_for(args: argparse.Namespace, settings: Settings, head: bool) -> list[str] | None:
    from serving import precompute as job
    from serving.model import LoadedModel

    if not head and args.keys_file is None and args.top_k is None:
        return None
    top_k = args.top_k if args.top_k is not None else settings.head_size
    if args.keys_file is not None:
        return job.top_keys_from_file(Path(args.keys_file), top_k)
    return job.popularity_prior(LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version), top_k)


def cmd_precompute(args: argparse.Namespace) -> int:
    """Precompute every key (static table) or the top-K keys (hybrid head) into Redis."""
    from serving.precompute import precompute

    settings = _settings(args, redis_url=args.redis_url, model_name=args.model, registry=args.registry)
    if args.engine == "dask":
        report = _precompute_on_dask(args, settings)
    else:
        report = precompute(settings, _keys_for(args, settings, args.head), progress=not args.quiet)
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def _precompute_on_dask(args: argparse.Namespace, settings: Settings) -> Any:
    """The whole table on Dask (a local cluster, or ``--scheduler``'s); see serving.precompute_dask."""
    if args.head or args.keys_file or args.top_k:
        raise ValueError("--engine dask precomputes the whole static table; a hybrid head runs in process")
    try:
        from serving.precompute_dask import precompute_on_dask
    except ImportError as exc:
        raise RuntimeError(f"--engine dask needs the scale extra: pip install 'hybridserve[scale]' ({exc})") from None
    return precompute_on_dask(settings, scheduler=args.scheduler, workers=args.dask_workers, partition_keys=args.partition_keys)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve over HTTP; with no Redis URL, start an embedded Redis and precompute what the mode needs."""
    import uvicorn

    from serving.precompute import precompute
    from loadtests.harness.redis_server import EmbeddedRedis

    settings = _settings(args, mode=args.mode, host=args.host, port=args.port, workers=args.workers,
                         model_name=args.model, registry=args.registry, redis_url=args.redis_url)
    if computes(settings.mode):
        from models.registry import resolve

        resolve(settings.registry, settings.model_name, settings.model_version)  # fail here, not in a worker
    embedded = None
    if settings.redis_url is None and uses_store(settings.mode):
        embedded = EmbeddedRedis().start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
        print(f"embedded Redis at {embedded.url}", flush=True)
    try:
        if embedded is not None and not args.no_precompute:
            head = precomputes(settings.mode) == "head"
            report = precompute(settings, _keys_for(args, settings, head) if head else None, progress=False)
            print(f"precomputed {report.keys} keys of {report.model_name}@{report.model_version} "
                  f"in {report.seconds:.2f}s ({report.keys_per_s:,.0f} keys/s)", flush=True)
        settings = _with_worker_dir(settings)
        # Hand the final settings to uvicorn's worker processes through the environment.
        os.environ.update(settings.as_env())
        print(f"serving {settings.mode} on http://{settings.host}:{settings.port}", flush=True)
        uvicorn.run("serving.app:app_from_env", factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, loop="uvloop", http="httptools", access_log=False, log_level="warning")
    finally:
        if embedded is not None:
            embedded.close()
    return 0


def _with_worker_dir(settings: Settings) -> Settings:
    """With several workers, a directory they share (control file, metrics snapshots); removed
    when this process exits. One worker alone needs none."""
    if settings.workers < 2 or settings.worker_dir is not None:
        return settings
    import atexit
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="hybridserve-workers-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return settings.model_copy(update={"worker_dir": directory})


def cmd_predict(args: argparse.Namespace) -> int:
    """Ask a running server for predictions of the given keys."""
    import httpx

    url = args.url.rstrip("/")
    with httpx.Client(timeout=10.0) as client:
        if len(args.keys) == 1:
            response = client.get(f"{url}/v1/predict/{args.keys[0]}")
        else:
            response = client.post(f"{url}/v1/predict", json={"keys": args.keys})
    print(json.dumps(response.json(), indent=2))
    return 0 if response.status_code == 200 else 1


def _ensure_models(registry: Path) -> None:
    """Train the profiles the registry lacks (the demo must work on a fresh clone)."""
    from models.registry import RegistryError, model_name, resolve
    from models.publish import build_and_publish

    for profile in ("light", "heavy"):
        try:
            resolve(registry, model_name(profile))
        except RegistryError:
            print(f"training the {profile} profile ...", flush=True)
            artifact = build_and_publish(profile, registry)  # type: ignore[arg-type]
            print(f"  {artifact.name} version {artifact.version}", flush=True)


def _prices_and_target(args: argparse.Namespace) -> tuple[Any, Any]:
    from loadtests import cost

    target = cost.Scenario(qps=args.target_qps, key_count=args.target_keys) if args.target_qps else None
    prices = cost.Prices(serving_vcpu_hour=args.price_vcpu_hour, batch_vcpu_hour=args.price_batch_vcpu_hour,
                         cache_gb_hour=args.price_gb_hour)
    return prices, target


def _run_and_report(args: argparse.Namespace, specs: list[Any], extra_sections: Callable[[list[Any]], list[str]] | None = None,
                    extra_results: dict[str, Any] | None = None) -> int:
    """Run load-test specs, then write results.json and report.html and print the summary."""
    import platform
    from datetime import datetime, timezone

    from loadtests import report, runner

    prices, target = _prices_and_target(args)
    records = runner.compare(Path(args.registry), specs, prices, target)
    context = {"machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
               "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "duration_s": specs[0].duration_s,
               "prices": prices, "target": {"qps": args.target_qps, "key_count": args.target_keys} if target else "as measured"}
    sections = extra_sections(records) if extra_sections else []
    results, html_path = report.write_report(records, Path(args.out), context, sections, extra_results)
    print()
    print(report.summary_table(records))
    print()
    for line in report.verdict(records):
        print(f"- {line}")
    print(f"\nwrote {results}\nwrote {html_path}  (open it in a browser; it needs no network)")
    return 0


def _matrix(args: argparse.Namespace) -> list[Any]:
    from loadtests import runner

    _ensure_models(Path(args.registry))
    duration = args.duration or (runner.QUICK_DURATION_S if args.quick else runner.FULL_DURATION_S)
    return runner.matrix(duration, args.rate, args.dist, load_workers=args.load_workers)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison matrix and write results.json and report.html."""
    return _run_and_report(args, _matrix(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """Train both profiles if needed, run the comparison, a capacity ladder, the projection and a
    tuning pass (``make demo``)."""
    specs = _matrix(args)
    figures: dict[str, Any] = {}
    return _run_and_report(args, specs, lambda records: [*_capacity_sections(args, records, figures), _demo_tuning_section(args)],
                           figures)


def _capacity_sections(args: argparse.Namespace, records: list[Any], figures: dict[str, Any]) -> list[str]:
    """Capacity per mode of the light profile and the projection to the user's target, as report
    sections; their figures go into ``figures`` (results.json's ``capacity`` and ``projection``)."""
    from loadtests import capacity, projection, report

    rates = capacity.QUICK_RATES if args.quick else capacity.DEFAULT_RATES
    duration = capacity.QUICK_DURATION_S if args.quick else capacity.FULL_DURATION_S
    print(flush=True)
    curves = capacity.measure_capacity(Path(args.registry), "light", MODES, rates, args.slo_p99_ms, duration)
    target = projection.Target(qps=args.project_qps, keys=args.project_keys)
    rows = projection.project(records, curves, target, _prices_and_target(args)[0])
    figures["capacity"] = [dict(c.as_dict(), provisioning=capacity.provisioning(c, target.qps)) for c in curves]
    figures["projection"] = {"target": vars(target), "formulas": projection.projection_formulas(), "rows": [p.as_dict() for p in rows]}
    return [report.capacity_section(curves, target.qps), report.projection_section(rows, target)]


def cmd_capacity(args: argparse.Namespace) -> int:
    """The capacity ladder of each mode: highest rate per core under the SLO; writes capacity.json
    and capacity.html (latency against throughput, knee marked)."""
    from loadtests import capacity, report

    _ensure_models(Path(args.registry))
    rates = tuple(float(r) for r in args.rates.split(","))
    curves = capacity.measure_capacity(Path(args.registry), args.profile, tuple(args.modes.split(",")), rates,
                                       args.slo_p99_ms, args.duration)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = [dict(c.as_dict(), provisioning=capacity.provisioning(c, args.project_qps)) for c in curves]
    (out / "capacity.json").write_text(json.dumps(document, indent=2))
    (out / "capacity.html").write_text('<!doctype html><meta charset="utf-8"><title>hybridserve capacity</title>'
                                       + report.capacity_section(curves, args.project_qps))
    for curve in document:
        print(f"{curve['profile']}/{curve['mode']}: {curve['capacity_rps_per_core']:.0f} req/s per core "
              f"({curve['broke_because']}); {args.project_qps:g} req/s need {curve['provisioning']['cores']} cores")
    print(f"wrote {out / 'capacity.json'}\nwrote {out / 'capacity.html'}")
    return 0


def _demo_tuning_section(args: argparse.Namespace) -> str:
    """Tune the cache for a synthetic Zipf trace of the demo's traffic and render it for the report."""
    from models.registry import resolve
    from tuning.report_section import tuning_section
    from tuning.synth import write_synthetic_trace
    from tuning.tune import run_tune

    out = Path(args.out) / "tune"
    out.mkdir(parents=True, exist_ok=True)
    registry = Path(args.registry)
    segments = int(resolve(registry, "traffic-heavy").card()["segments"])
    trace = write_synthetic_trace(args.dist, requests=DEMO_TRACE_REQUESTS, segments=segments, seed=11, out=out / "trace.keys")
    print(f"\ntuning the heavy profile's cache for {DEMO_TRACE_REQUESTS:,} requests of {args.dist} ...", flush=True)
    settings = Settings(registry=registry, model_name="traffic-heavy")
    run_tune(Path(trace), settings, slo_p99_ms=DEMO_SLO_P99_MS, qps=args.target_qps or 1000.0, out=out,
             verify_live=True, verify_requests=DEMO_VERIFY_REQUESTS)
    return tuning_section(out)


def cmd_loadtest(args: argparse.Namespace) -> int:
    """One load test: one profile, one mode, one distribution."""
    from loadtests.runner import RunSpec

    _ensure_models(Path(args.registry))
    spec = RunSpec(args.profile, args.mode, args.dist, rate=args.rate, users=args.users, duration_s=args.duration,
                   batch_size=args.batch_size, seed=args.seed, head_size=args.head_size, l1_size=args.l1_size,
                   load_workers=args.load_workers)
    return _run_and_report(args, [spec])


def cmd_trace_synth(args: argparse.Namespace) -> int:
    """Write a synthetic trace (one model key per line) drawn from a load-test key distribution."""
    from tuning.synth import write_synthetic_trace

    path = write_synthetic_trace(args.dist, requests=args.requests, segments=args.segments, seed=args.seed, out=args.out)
    print(f"wrote {args.requests} requests of {args.dist} to {path}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Recommend a cache configuration for a trace under a p99 SLO; optionally verify it live."""
    from tuning.tune import run_tune

    from models.registry import model_name

    settings = _settings(args, model_name=model_name(args.profile), registry=args.registry)
    return run_tune(Path(args.trace), settings, slo_p99_ms=args.slo_p99_ms, qps=args.qps, out=Path(args.out),
                    verify_live=args.verify, verify_requests=args.verify_requests)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, export and publish a model profile")
    train.add_argument("--profile", choices=("light", "heavy"), required=True)
    train.add_argument("--registry", default="registry")
    train.add_argument("--segments", type=int, default=200, help="road segments (key space = segments x 168)")
    train.add_argument("--seed", type=int, default=7)
    train.set_defaults(func=cmd_train)

    red = sub.add_parser("redis", help="run an embedded redis-server (or a local cluster) in the foreground")
    red.add_argument("--port", type=int, default=None)
    red.add_argument("--cluster", type=int, default=0, metavar="N",
                     help="a local Redis Cluster of N masters instead (URL: redis+cluster://...)")
    red.add_argument("--replicas", type=int, default=0, help="with --cluster: replicas per master")
    red.set_defaults(func=cmd_redis)

    pre = sub.add_parser("precompute", help="precompute predictions into Redis")
    pre.add_argument("--redis-url", default=None)
    pre.add_argument("--model", default=None, help="model name, e.g. traffic-light")
    pre.add_argument("--registry", default=None)
    pre.add_argument("--head", action="store_true", help="only the top-K keys (hybrid head), no pointer switch")
    pre.add_argument("--top-k", type=int, default=None, help="how many keys (default: head_size)")
    pre.add_argument("--keys-file", default=None, help="rank keys by frequency in this file (one key per line)")
    pre.add_argument("--quiet", action="store_true")
    pre.add_argument("--engine", choices=("process", "dask"), default="process",
                     help="dask: the whole table computed and written by Dask workers (extra 'scale')")
    pre.add_argument("--scheduler", default=None, help="with --engine dask: tcp://HOST:8786 (default: a local cluster)")
    pre.add_argument("--dask-workers", type=int, default=2, help="with --engine dask and no scheduler: local worker processes")
    pre.add_argument("--partition-keys", type=int, default=250_000, help="with --engine dask: keys per task")
    pre.set_defaults(func=cmd_precompute)

    serve = sub.add_parser("serve", help="serve predictions over HTTP")
    serve.add_argument("--mode", choices=MODES, default=None)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.add_argument("--model", default=None)
    serve.add_argument("--registry", default=None)
    serve.add_argument("--redis-url", default=None)
    serve.add_argument("--no-precompute", action="store_true", help="with the embedded Redis: start empty")
    serve.add_argument("--top-k", type=int, default=None, help="hybrid head size to precompute")
    serve.add_argument("--keys-file", default=None, help="choose the hybrid head from this trace")
    serve.set_defaults(func=cmd_serve)

    pred = sub.add_parser("predict", help="query a running server")
    pred.add_argument("keys", nargs="+")
    pred.add_argument("--url", default=DEFAULT_URL)
    pred.set_defaults(func=cmd_predict)
    for name, func, text in (("compare", cmd_compare, "run the static/dynamic/hybrid comparison and write the report"),
                             ("demo", cmd_demo, "train both profiles if needed, compare and tune (make demo)"),
                             ("loadtest", cmd_loadtest, "one load test of one mode, with the same report")):
        cmp = sub.add_parser(name, help=text)
        _load_options(cmp, single=name == "loadtest")
        if name == "demo":
            _capacity_options(cmp)
        cmp.set_defaults(func=func)
    cap = sub.add_parser("capacity", help="offered-load ladder per mode: highest rate per core under a p99 SLO")
    cap.add_argument("--registry", default="registry")
    cap.add_argument("--out", default="out/capacity")
    cap.add_argument("--profile", choices=("light", "heavy"), default="light")
    cap.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    cap.add_argument("--rates", default="100,200,400,800,1600,3200", help="comma-separated offered rates, ascending")
    cap.add_argument("--duration", type=float, default=6.0, help="seconds per rate")
    _capacity_options(cap)
    cap.set_defaults(func=cmd_capacity)
    trace = sub.add_parser("trace", help="access traces").add_subparsers(dest="trace_command", required=True)
    synth = trace.add_parser("synth", help="write a synthetic trace from a key distribution")
    synth.add_argument("--dist", default="zipf:1.1", help="zipf:S, uniform, drift:... (see loadtests.keys)")
    synth.add_argument("--requests", type=int, default=100_000)
    synth.add_argument("--segments", type=int, default=200, help="key space = segments x 168")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True)
    synth.set_defaults(func=cmd_trace_synth)

    tune = sub.add_parser("tune", help="recommend a cache configuration for a trace under a p99 SLO")
    tune.add_argument("--trace", required=True, help="trace file (.txt/.keys one key per line, .csv, .oracleGeneral)")
    tune.add_argument("--slo-p99-ms", type=float, default=50.0)
    tune.add_argument("--qps", type=float, default=1000.0, help="predictions per second to price")
    tune.add_argument("--out", default="out/tune", help="where tuning.json and the plots go")
    tune.add_argument("--verify", action="store_true", help="replay the trace on a live server running the result")
    tune.add_argument("--verify-requests", type=int, default=20_000, help="requests replayed by --verify")
    tune.add_argument("--profile", choices=("light", "heavy"), default="light")
    tune.add_argument("--registry", default=None)
    tune.set_defaults(func=cmd_tune)
    return parser


def _capacity_options(parser: argparse.ArgumentParser) -> None:
    """Options of the capacity ladder and the projection (capacity, demo)."""
    parser.add_argument("--slo-p99-ms", type=float, default=DEMO_SLO_P99_MS, help="p99 SLO a rate must meet")
    parser.add_argument("--project-qps", type=float, default=1e5, help="project cores and cost to this many requests/s")
    parser.add_argument("--project-keys", type=int, default=100_000_000, help="... and this key space")


def _load_options(parser: argparse.ArgumentParser, single: bool) -> None:
    """Options shared by compare, demo and loadtest."""
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--out", default="out", help="where results.json and report.html go")
    parser.add_argument("--rate", type=float, default=400.0, help="offered requests/s per run (open loop)")
    parser.add_argument("--dist", default="zipf:1.1", help="key distribution: zipf:S, uniform, drift:..., trace:FILE")
    parser.add_argument("--target-qps", type=float, default=None, help="project cost to this many predictions/s")
    parser.add_argument("--target-keys", type=int, default=1_680_000, help="... and this key space")
    parser.add_argument("--price-vcpu-hour", type=float, default=0.05, help="USD per serving vCPU-hour")
    parser.add_argument("--price-batch-vcpu-hour", type=float, default=0.02, help="USD per batch vCPU-hour")
    parser.add_argument("--price-gb-hour", type=float, default=0.02, help="USD per GB-hour of cache memory")
    parser.add_argument("--load-workers", type=int, default=0, metavar="N",
                        help="drive Locust as a master with N worker processes (0: one process)")
    if not single:
        parser.add_argument("--quick", action="store_true", help="short runs (about two minutes in all)")
        parser.add_argument("--duration", type=float, default=None, help="seconds per run (overrides --quick)")
        return
    parser.add_argument("--profile", choices=("light", "heavy"), default="light")
    parser.add_argument("--mode", choices=MODES, default="hybrid")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    parser.add_argument("--users", type=int, default=20, help="Locust users (>= rate x p99 seconds)")
    parser.add_argument("--batch-size", type=int, default=1, help="keys per request (1: GET, more: POST)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--head-size", type=int, default=5000, help="hybrid: keys precomputed into Redis")
    parser.add_argument("--l1-size", type=int, default=10_000, help="hybrid: in-process L1 entries")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hybridserve`` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as exc:
        print(f"hybridserve: invalid settings:\n{exc}", file=sys.stderr)
    except (ValueError, LookupError, FileNotFoundError, RuntimeError) as exc:
        print(f"hybridserve: {exc}", file=sys.stderr)
    except RedisError as exc:
        print(f"hybridserve: Redis: {exc}", file=sys.stderr)
    except StoreError as exc:
        print(f"hybridserve: Redis: {exc.detail}", file=sys.stderr)
    except HTTPError as exc:
        print(f"hybridserve: cannot reach the server: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
