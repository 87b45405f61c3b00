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

from serving.errors import StoreError
from serving.modes import MODES, computes, precomputes, uses_store
from serving.settings import LogLevel, Settings

LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")

DEFAULT_URL = "http://127.0.0.1:8000"
DEMO_TRACE_REQUESTS = 100_000
DEMO_VERIFY_SECONDS = 30.0
# One round (its anchor runs, then the candidate) keeps the demo short; tune --verify defaults to 3.
DEMO_VERIFY_ROUNDS = 1
DEMO_SLO_P99_MS = 50.0


def _settings(args: argparse.Namespace, **fields: object) -> Settings:
    """Settings from the environment, overridden by the Settings-backed options the user gave
    (those declared with :func:`_setting`) and then by ``fields``."""
    given = {f: getattr(args, f) for f in getattr(args, "settings_fields", ()) if getattr(args, f) is not None}
    given.update({k: v for k, v in fields.items() if v is not None})
    return Settings(**given)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a profile, export it to ONNX, check parity and publish it to the registry."""
    from models.publish import build_and_publish

    artifact = build_and_publish(args.profile, _settings(args).registry, segments=args.segments, seed=args.seed)
    card = artifact.card()
    timing = card["inference_time"]
    print(f"{artifact.name} version {artifact.version}")
    print(f"  path: {artifact.path}")
    print(f"  parity max |onnx - sklearn|: {card['parity']['max_abs_diff']:.3g} (tolerance {card['parity']['tolerance']:.3g})")
    print(f"  inference: {timing['single_row_us']:.1f} us single row, {timing['batch_row_us']:.1f} us/row in batches of {timing['batch_size']}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import your own model (ONNX, or scikit-learn saved with joblib/pickle) and its feature table
    (CSV or Parquet, one row per key) into the registry; refuses, with one line, anything that
    could not be served right."""
    from models.importer import import_model

    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    artifact = import_model(args.name, Path(args.model_path), Path(args.table), args.key_column, _settings(args).registry,
                            features=features)
    card = artifact.card()
    parity, timing = card["parity"], card["inference_time"]
    print(f"{artifact.name} version {artifact.version}")
    print(f"  path: {artifact.path}")
    print(f"  keys: {card['key_count']:,} from column {args.key_column!r}; features: {', '.join(card['features'])}")
    print(f"  output: {card['output']['meaning']}")
    if parity["max_abs_diff"] is None:
        print(f"  parity: {parity['note']}")
    else:
        print(f"  parity max |onnx - sklearn| on {parity['rows']} rows: {parity['max_abs_diff']:.3g} (tolerance {parity['tolerance']:.3g})")
    print(f"  inference: {timing['single_row_us']:.1f} us single row, {timing['batch_row_us']:.1f} us/row in batches of {timing['batch_size']}")
    print(f"  serve it: hybridserve serve --mode hybrid --model {artifact.name}")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    """Write the second shipped example (purchase propensity keyed by user ids, a binary
    classifier) as files, and import it like a user's own model."""
    from models.examples import KEY_COLUMN, write_propensity_example

    model_path, table_path = write_propensity_example(Path(args.out), args.users, args.seed)
    print(f"wrote {model_path} and {table_path} ({args.users:,} users)")
    args.name, args.model_path, args.table, args.key_column, args.features = "propensity", str(model_path), str(table_path), KEY_COLUMN, None
    return cmd_import(args)


def cmd_redis(args: argparse.Namespace) -> int:
    """Run an embedded Redis (or with ``--cluster N`` a local Redis Cluster) in the foreground
    until interrupted; prints its URL first."""
    from loadtests.harness.redis_server import EmbeddedRedis

    if args.cluster:
        return _run_cluster(args.cluster, args.replicas)
    with EmbeddedRedis(port=args.port) as server:
        # The full URL, password included, for the user who started it: their terminal, not a log.
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

    if not head and args.keys_file is None and args.head_size is None:
        return None
    top_k = settings.head_size
    if args.keys_file is not None:
        return job.top_keys_from_file(Path(args.keys_file), top_k)
    return job.popularity_prior(LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version), top_k)


def cmd_precompute(args: argparse.Namespace) -> int:
    """Precompute every key (static table) or the top-K keys (hybrid head) into Redis."""
    from serving import logs
    from serving.precompute import precompute

    settings = _settings(args)
    logs.configure(settings.log_level)
    if args.engine == "dask":
        report = _precompute_on_dask(args, settings)
    else:
        # The bar is for a person at a terminal; elsewhere the JSON progress lines say the same.
        report = precompute(settings, _keys_for(args, settings, args.head), progress=not args.quiet and sys.stderr.isatty())
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def _precompute_on_dask(args: argparse.Namespace, settings: Settings) -> Any:
    """The whole table on Dask (a local cluster, or ``--scheduler``'s); see serving.precompute_dask."""
    if args.head or args.keys_file or args.head_size:
        raise ValueError("--engine dask precomputes the whole static table; a hybrid head runs in process")
    try:
        from serving.precompute_dask import precompute_on_dask
    except ImportError as exc:
        raise RuntimeError(f"--engine dask needs the scale extra: pip install 'hybridserve[scale]' ({exc})") from None
    return precompute_on_dask(settings, scheduler=args.scheduler, workers=args.dask_workers, partition_keys=args.partition_keys)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve over HTTP; with no Redis URL, start an embedded Redis and precompute what the mode needs."""
    import uvicorn

    from serving import logs
    from serving.precompute import precompute
    from loadtests.harness.redis_server import EmbeddedRedis
    from serving.http_server import uvicorn_options

    settings = _settings(args)
    logs.configure(settings.log_level)
    if computes(settings.mode):
        from models.registry import resolve

        resolve(settings.registry, settings.model_name, settings.model_version)  # fail here, not in a worker
    embedded = None
    if settings.redis_url is None and uses_store(settings.mode):
        embedded = EmbeddedRedis().start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
        print(f"embedded Redis at {embedded.address} (password-protected)", flush=True)
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
                    workers=settings.workers, loop="uvloop", access_log=False,
                    # log_config=None: uvicorn's own lines go through serving.logs as JSON too.
                    log_config=None, log_level=settings.log_level, **uvicorn_options(settings))
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


def _run_and_report(args: argparse.Namespace, specs: list[Any],
                    extra_sections: Callable[[list[dict[str, Any]]], list[str]] | None = None,
                    extra_results: dict[str, Any] | None = None) -> int:
    """Run load-test specs, then write results.json and report.html and print the summary."""
    import platform
    from datetime import datetime, timezone

    from loadtests import report, runner

    prices, target = _prices_and_target(args)
    records = runner.compare(_settings(args).registry, specs, prices, target, repeats=args.repeats)
    context = {"machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
               "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "duration_s": specs[0].duration_s,
               "repeats": args.repeats,
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

    duration = args.duration or (runner.QUICK_DURATION_S if args.quick else runner.FULL_DURATION_S)
    if args.model:  # a user's own model, as registered (hybridserve import)
        return runner.matrix(duration, args.rate, args.dist, models=(args.model,), load_workers=args.load_workers)
    _ensure_models(_settings(args).registry)
    return runner.matrix(duration, args.rate, args.dist, load_workers=args.load_workers)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison matrix and write results.json and report.html."""
    return _run_and_report(args, _matrix(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """Train both profiles if needed, run the comparison, a capacity ladder, the projection and a
    tuning pass (``make demo``)."""
    specs = _matrix(args)
    figures: dict[str, Any] = {}
    return _run_and_report(args, specs, lambda records: [*_capacity_sections(args, records, figures), _demo_tuning_section(args, records)],
                           figures)


def _capacity_sections(args: argparse.Namespace, records: list[Any], figures: dict[str, Any]) -> list[str]:
    """Capacity per mode of the light profile and the projection to the user's target, as report
    sections; their figures go into ``figures`` (results.json's ``capacity`` and ``projection``)."""
    from loadtests import capacity, projection, report

    rates = capacity.QUICK_RATES if args.quick else capacity.DEFAULT_RATES
    duration = capacity.QUICK_DURATION_S if args.quick else capacity.FULL_DURATION_S
    print(flush=True)
    curves = capacity.measure_capacity(_settings(args).registry, "light", MODES, rates, args.slo_p99_ms, duration)
    target = projection.Target(qps=args.project_qps, keys=args.project_keys)
    rows = projection.project(records, curves, target, _prices_and_target(args)[0])
    figures["capacity"] = [dict(c.as_dict(), provisioning=capacity.provisioning(c, target.qps)) for c in curves]
    figures["projection"] = {"target": vars(target), "formulas": projection.projection_formulas(), "rows": [p.as_dict() for p in rows]}
    return [report.capacity_section(curves, target.qps), report.projection_section(rows, target)]


def cmd_capacity(args: argparse.Namespace) -> int:
    """The capacity ladder of each mode: highest rate per core under the SLO; writes capacity.json
    and capacity.html (latency against throughput, knee marked)."""
    from loadtests import capacity, report

    registry = _settings(args).registry
    _ensure_models(registry)
    rates = tuple(float(r) for r in args.rates.split(","))
    curves = capacity.measure_capacity(registry, args.profile, tuple(args.modes.split(",")), rates,
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


def _model_key_space(registry: Path, name: str) -> Any:
    """The key space of a registered model (its latest version)."""
    from models.keyspace import key_space_for
    from models.registry import resolve

    artifact = resolve(registry, name)
    return key_space_for(artifact.card(), artifact.path)


def _demo_tuning_section(args: argparse.Namespace, records: list[dict[str, Any]]) -> str:
    """Tune the cache for a synthetic Zipf trace of the demo's traffic and render it for the report; the
    tier costs are those of the comparison's own runs (``records``), so both price a tier alike."""
    from tuning.report_section import tuning_section
    from tuning.synth import write_synthetic_trace
    from tuning.tune import run_tune

    out = Path(args.out) / "tune"
    out.mkdir(parents=True, exist_ok=True)
    registry = _settings(args).registry
    space = _model_key_space(registry, "traffic-heavy")
    trace = write_synthetic_trace(args.dist, requests=DEMO_TRACE_REQUESTS, space=space, seed=11, out=out / "trace.keys")
    print(f"\ntuning the heavy profile's cache for {DEMO_TRACE_REQUESTS:,} requests of {args.dist} ...", flush=True)
    settings = Settings(registry=registry, model_name="traffic-heavy")
    runs = out / "comparison-runs.json"
    runs.write_text(json.dumps({"runs": records}, default=str))
    run_tune(Path(trace), settings, slo_p99_ms=DEMO_SLO_P99_MS, qps=args.target_qps or 1000.0, out=out,
             verify_live=True, verify_seconds=DEMO_VERIFY_SECONDS, results=runs, verify_rounds=DEMO_VERIFY_ROUNDS)
    return tuning_section(out)


def cmd_loadtest(args: argparse.Namespace) -> int:
    """One load test: one profile, one mode, one distribution."""
    from loadtests.runner import RunSpec

    if not args.model:
        _ensure_models(_settings(args).registry)
    spec = RunSpec(args.model or args.profile, args.mode, args.dist, rate=args.rate, users=args.users, duration_s=args.duration,
                   batch_size=args.batch_size, seed=args.seed, head_size=args.run_head_size, l1_size=args.run_l1_size,
                   load_workers=args.load_workers, instances=args.instances,
                   # A drift run observes every request, so a short run fills the drift window.
                   settings=(*((("drift_sample_rate", 1.0),) if args.instances else ()),
                             *((("routes", args.routes),) if args.routes else ())))
    return _run_and_report(args, [spec])


def cmd_trace_synth(args: argparse.Namespace) -> int:
    """Write a synthetic trace (one model key per line) drawn from a load-test key distribution."""
    from tuning.synth import write_synthetic_trace

    space = _model_key_space(_settings(args).registry, args.model) if args.model else args.segments
    path = write_synthetic_trace(args.dist, requests=args.requests, space=space, seed=args.seed, out=args.out)
    print(f"wrote {args.requests} requests of {args.dist} to {path}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Recommend a cache configuration for a trace under a p99 SLO; optionally verify it live."""
    from tuning.tune import run_tune

    from models.registry import model_name

    settings = _settings(args, model_name=args.model or model_name(args.profile))
    return run_tune(Path(args.trace), settings, slo_p99_ms=args.slo_p99_ms, qps=args.qps, out=Path(args.out),
                    verify_live=args.verify, verify_seconds=args.verify_seconds,
                    results=Path(args.results) if args.results else None, map_keys=args.map_keys,
                    calibration_repeats=args.calibration_repeats, verify_rounds=args.verify_rounds,
                    verify_anchor_seconds=args.verify_anchor_seconds)


class _HelpFormatter(argparse.HelpFormatter):
    """Ends every option's help line with its default, unless the line already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # Identity, not ==: a default of 0 is a default worth showing (0 == False).
        if not action.option_strings or any(action.default is x for x in (None, False, argparse.SUPPRESS)) or "default:" in text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose subcommand parsers inherit the help formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _setting(parser: argparse.ArgumentParser, flag: str, field: str, text: str | None = None, **kwargs: Any) -> None:
    """An option that overrides ``Settings.<field>``. Left out, ``HYBRIDSERVE_<FIELD>`` or the field's
    default applies; the help line says which (text: the field's docstring unless given)."""
    from serving.settings import Settings, env_var

    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    shown = "unset" if default is None else default
    description = (text or info.description or "").replace("``", "'").replace("%", "%%")
    metavar = None if "choices" in kwargs else flag.removeprefix("--").replace("-", "_").upper()
    parser.add_argument(flag, dest=field, default=None, metavar=metavar,
                        help=f"{description} (default: {shown}; env {env_var(field)})", **kwargs)
    parser.set_defaults(settings_fields=(*(parser.get_default("settings_fields") or ()), field))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hybridserve", description="Serve one ONNX model static, dynamic or hybrid (cached), "
                     "load-test the three and tune the cache: which pays at your traffic?",
                     epilog="Each command explains its options: hybridserve COMMAND --help.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_redis_precompute(sub)
    _serve_predict(sub)
    for name, func, text in (("compare", cmd_compare, "run the static/dynamic/hybrid comparison and write the report"),
                             ("demo", cmd_demo, "train both profiles if needed, compare and tune (make demo)"),
                             ("loadtest", cmd_loadtest, "one load test of one mode, with the same report")):
        cmp = sub.add_parser(name, help=text, description=text)
        _load_options(cmp, single=name == "loadtest")
        if name == "demo":
            _capacity_options(cmp)
        cmp.set_defaults(func=func)
    cap = sub.add_parser("capacity", help="offered-load ladder per mode: highest rate per core under a p99 SLO",
                         description=cmd_capacity.__doc__)
    _setting(cap, "--registry", "registry", "model registry directory (missing profiles are trained into it)")
    cap.add_argument("--out", default="out/capacity", help="where capacity.json and capacity.html go")
    cap.add_argument("--profile", choices=("light", "heavy"), default="light", help="model profile to serve")
    cap.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    cap.add_argument("--rates", default="100,200,400,800,1600,3200", help="comma-separated offered rates, ascending")
    cap.add_argument("--duration", type=float, default=6.0, help="seconds per rate")
    _capacity_options(cap)
    cap.set_defaults(func=cmd_capacity)
    _trace_tune(sub)
    return parser


def _train_redis_precompute(sub: Any) -> None:
    train = sub.add_parser("train", help="train, export and publish a model profile", description=cmd_train.__doc__)
    train.add_argument("--profile", choices=("light", "heavy"), required=True,
                       help="light: gradient-boosted trees, ~10 us a row; heavy: kNN, ~1.7 ms a row")
    _setting(train, "--registry", "registry", "model registry directory to publish into")
    train.add_argument("--segments", type=int, default=200, help="road segments (key space = segments x 168)")
    train.add_argument("--seed", type=int, default=7, help="seed of the synthetic traffic data and the model")
    train.set_defaults(func=cmd_train)

    imp = sub.add_parser("import", help="import your own model and feature table into the registry", description=cmd_import.__doc__)
    imp.add_argument("--name", required=True, help="registry name of the model (letters, digits, '_', '.', '-'); "
                     "serve it with --model NAME")
    imp.add_argument("--model", dest="model_path", required=True, metavar="PATH",
                     help="model file: .onnx, or a fitted scikit-learn estimator or Pipeline as .joblib / .pkl")
    imp.add_argument("--table", required=True, metavar="PATH", help="feature table: .csv, .tsv or .parquet, one row per key")
    imp.add_argument("--key-column", required=True, metavar="COL", help="the table's column of key ids (strings)")
    imp.add_argument("--features", default=None, metavar="C1,C2,...",
                     help="feature columns in the model's order (default: the model's feature_names_in_, else every "
                     "column but the key, in table order)")
    _setting(imp, "--registry", "registry", "model registry directory to publish into")
    imp.set_defaults(func=cmd_import)

    ex = sub.add_parser("example", help="write and import the second example: purchase propensity by user id",
                        description=cmd_example.__doc__)
    ex.add_argument("name", choices=("propensity",), help="which example")
    ex.add_argument("--users", type=int, default=1_000_000, help="users (keys) in the table")
    ex.add_argument("--seed", type=int, default=3, help="seed of the synthetic users and the model")
    ex.add_argument("--out", default="examples", help="directory for the model and table files")
    _setting(ex, "--registry", "registry", "model registry directory to publish into")
    ex.set_defaults(func=cmd_example)

    red = sub.add_parser("redis", help="run an embedded redis-server (or a local cluster) in the foreground",
                         description=cmd_redis.__doc__)
    red.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1 (default: a free one)")
    red.add_argument("--cluster", type=int, default=0, metavar="N",
                     help="a local Redis Cluster of N masters instead (URL: redis+cluster://...; 0: one server)")
    red.add_argument("--replicas", type=int, default=0, help="with --cluster: replicas per master")
    red.set_defaults(func=cmd_redis)

    pre = sub.add_parser("precompute", help="precompute predictions into Redis", description=cmd_precompute.__doc__)
    _setting(pre, "--redis-url", "redis_url", "Redis to write into (redis://, rediss:// for TLS)")
    _setting(pre, "--model", "model_name")
    _setting(pre, "--registry", "registry")
    pre.add_argument("--head", action="store_true", help="only the top-K keys (hybrid head), no pointer switch")
    _setting(pre, "--top-k", "head_size", "how many keys; alone (without --head), only these keys and no pointer switch",
             type=int)
    pre.add_argument("--keys-file", default=None, help="rank keys by frequency in this file, one key per line "
                     "(default: rank by predicted traffic)")
    _setting(pre, "--log-level", "log_level", choices=LOG_LEVELS)
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.add_argument("--engine", choices=("process", "dask"), default="process",
                     help="dask: the whole table computed and written by Dask workers (extra 'scale')")
    pre.add_argument("--scheduler", default=None, help="with --engine dask: tcp://HOST:8786 (default: a local cluster)")
    pre.add_argument("--dask-workers", type=int, default=2, help="with --engine dask and no scheduler: local worker processes")
    pre.add_argument("--partition-keys", type=int, default=250_000, help="with --engine dask: keys per task")
    pre.set_defaults(func=cmd_precompute)


def _serve_predict(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve predictions over HTTP", description=cmd_serve.__doc__)
    _setting(serve, "--mode", "mode", choices=MODES)
    _setting(serve, "--host", "host")
    _setting(serve, "--port", "port", type=int)
    _setting(serve, "--workers", "workers", type=int)
    _setting(serve, "--model", "model_name")
    _setting(serve, "--registry", "registry")
    _setting(serve, "--redis-url", "redis_url")
    _setting(serve, "--log-level", "log_level", choices=LOG_LEVELS)
    serve.add_argument("--no-precompute", action="store_true", help="with the embedded Redis: start empty")
    _setting(serve, "--top-k", "head_size", "hybrid head size to precompute into the embedded Redis", type=int)
    serve.add_argument("--keys-file", default=None, help="choose the hybrid head from this trace, one key per line "
                       "(default: rank by predicted traffic)")
    serve.set_defaults(func=cmd_serve)

    pred = sub.add_parser("predict", help="query a running server", description=cmd_predict.__doc__)
    pred.add_argument("keys", nargs="+", help="keys '<segment>:<hour_of_week>', e.g. 17:42")
    pred.add_argument("--url", default=DEFAULT_URL, help="base URL of the server")
    pred.set_defaults(func=cmd_predict)


def _trace_tune(sub: Any) -> None:
    trace = sub.add_parser("trace", help="access traces", description="Access traces.")
    commands = trace.add_subparsers(dest="trace_command", required=True, metavar="COMMAND")
    synth = commands.add_parser("synth", help="write a synthetic trace from a key distribution", description=cmd_trace_synth.__doc__)
    synth.add_argument("--dist", default="zipf:1.1", help="zipf:S, uniform, drift:... (see loadtests.keys)")
    synth.add_argument("--requests", type=int, default=100_000, help="requests (lines) to write")
    synth.add_argument("--model", default=None, metavar="NAME",
                       help="draw from this registry model's keys (default: the demo grid of --segments)")
    _setting(synth, "--registry", "registry", "model registry directory (with --model)")
    synth.add_argument("--segments", type=int, default=200, help="without --model: demo key space = segments x 168")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument("--out", required=True, help="file to write")
    synth.set_defaults(func=cmd_trace_synth)

    tune = sub.add_parser("tune", help="recommend a cache configuration for a trace under a p99 SLO", description=cmd_tune.__doc__)
    tune.add_argument("--trace", required=True, help="trace file (.txt/.keys one key per line, .csv, .oracleGeneral)")
    tune.add_argument("--slo-p99-ms", type=float, default=50.0, help="p99 latency objective, in ms")
    tune.add_argument("--qps", type=float, default=1000.0, help="predictions per second to price")
    tune.add_argument("--out", default="out/tune", help="where tuning.json and the plots go")
    tune.add_argument("--verify", action="store_true", help="load-test the recommended configuration with the trace's keys")
    tune.add_argument("--verify-seconds", type=float, default=240.0,
                      help="longest replay of --verify (the whole trace if it fits, else its steady-state prefix)")
    tune.add_argument("--verify-rounds", type=_at_least_one, default=3, metavar="N",
                      help="rounds of --verify: each runs the tiers' anchor load tests, then the configuration; "
                      "the round with the median CPU error is kept (1: quicker, noisier)")
    tune.add_argument("--verify-anchor-seconds", type=_not_negative, default=12.0, metavar="S",
                      help="length of each anchor load test of --verify (0, or at least 2): the calibration's runs of the "
                      "tiers the configuration uses, made beside each round to re-level the calibration (0: none, quicker; "
                      "the core speed probe alone levels, and reads light configurations low in a fast spell)")
    tune.add_argument("--results", default=None, help="take tier costs from this results.json of the same model "
                      "(hybridserve compare) instead of calibrating by new load tests")
    tune.add_argument("--calibration-repeats", type=_at_least_one, default=3,
                      help="run each calibration load test this many times and keep the median run (1: quicker, noisier)")
    tune.add_argument("--map-keys", action="store_true", help="map the trace's distinct keys onto the model's key "
                      "space (default: use the keys it has, report the share it has not)")
    tune.add_argument("--profile", choices=("light", "heavy"), default="light", help="demo model profile the trace is for")
    tune.add_argument("--model", default=None, metavar="NAME",
                      help="a registered model (e.g. from hybridserve import) instead of a demo profile")
    _setting(tune, "--registry", "registry")
    tune.set_defaults(func=cmd_tune)


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _not_negative(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0 (tuning.verify checks the range it needs)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number, at least 0, got {text}")
    return value


def _capacity_options(parser: argparse.ArgumentParser) -> None:
    """Options of the capacity ladder and the projection (capacity, demo)."""
    parser.add_argument("--slo-p99-ms", type=float, default=DEMO_SLO_P99_MS, help="p99 SLO a rate must meet")
    parser.add_argument("--project-qps", type=float, default=1e5, help="project cores and cost to this many requests/s")
    parser.add_argument("--project-keys", type=int, default=100_000_000, help="... and this key space")


def _load_options(parser: argparse.ArgumentParser, single: bool) -> None:
    """Options shared by compare, demo and loadtest."""
    _setting(parser, "--registry", "registry", "model registry directory (missing profiles are trained into it)")
    parser.add_argument("--out", default="out", help="where results.json and report.html go")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="a registered model (e.g. from hybridserve import) instead of the demo profiles")
    parser.add_argument("--rate", type=float, default=400.0, help="offered requests/s per run (open loop)")
    parser.add_argument("--dist", default="zipf:1.1", help="key distribution: zipf:S, uniform, drift:..., trace:FILE "
                        "(the trace's own keys; trace:map:FILE maps them onto the model's)")
    parser.add_argument("--target-qps", type=float, default=None, help="project cost to this many predictions/s "
                        "(default: the measured rate)")
    parser.add_argument("--target-keys", type=int, default=1_680_000, help="... and this key space")
    parser.add_argument("--price-vcpu-hour", type=float, default=0.05, help="USD per serving vCPU-hour")
    parser.add_argument("--price-batch-vcpu-hour", type=float, default=0.02, help="USD per batch vCPU-hour")
    parser.add_argument("--price-gb-hour", type=float, default=0.02, help="USD per GB-hour of cache memory")
    parser.add_argument("--load-workers", type=int, default=0, metavar="N",
                        help="drive Locust as a master with N worker processes (0: one process)")
    parser.add_argument("--repeats", type=_at_least_one, default=1, metavar="N",
                        help="run every load test N times (in rounds) and report each one's median run by CPU per request")
    if not single:
        parser.add_argument("--quick", action="store_true", help="short runs (about two minutes in all)")
        parser.add_argument("--duration", type=float, default=None, help="seconds per run (overrides --quick; "
                            "default: a full run, or a short one with --quick)")
        return
    parser.add_argument("--profile", choices=("light", "heavy"), default="light", help="model profile to serve")
    parser.add_argument("--mode", choices=MODES, default="hybrid", help="serving mode under test")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    parser.add_argument("--users", type=int, default=20, help="Locust users (>= rate x p99 seconds)")
    parser.add_argument("--batch-size", type=int, default=1, help="keys per request (1: GET, more: POST)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the key sequence")
    parser.add_argument("--instances", default="", metavar="SPEC",
                        help="send raw-feature instances instead of keys: 'training', or 'drift:at=A,shift=S[,features=a+b]' "
                        "(after share A of the run, features move by S training std); the report shows the drift "
                        "statistics over time and when the alert fired")
    # Not Settings-backed: the runner starts its own server with these, whatever the environment says.
    parser.add_argument("--head-size", type=int, default=5000, dest="run_head_size", metavar="HEAD_SIZE", help="hybrid: keys precomputed into Redis")
    parser.add_argument("--l1-size", type=int, default=10_000, dest="run_l1_size", metavar="L1_SIZE", help="hybrid: in-process L1 entries")
    parser.add_argument("--routes", default="", metavar="V:W,V:W[,shadow=V]", help="a traffic split over versions of the "
                        "model (hybridserve train --seed N makes another); the report gets per-version latency and cost")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hybridserve`` console script."""
    args = _parser().parse_args(argv)
    # Imported here, not at the top: `hybridserve --help` stays fast (measured in tests/test_cli.py).
    from httpx import HTTPError
    from pydantic import ValidationError
    from redis.exceptions import RedisError

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
