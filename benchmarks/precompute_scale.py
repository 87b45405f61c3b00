"""Precompute at scale: keys/s of the in-process job against the same job on Dask (a local cluster
of worker processes); writes benchmarks/precompute_scale.md.

The model is the light profile trained on a small key space and then *widened*: the same ONNX
model published with the feature table of ``--keys`` keys (``make_segments``: the same synthetic
road attributes, more roads), so a million-key table needs no million-row training. Each job
writes the whole table into its own fresh embedded Redis and switches the pointer.

Run: ``.venv/bin/python benchmarks/precompute_scale.py --keys 1000000 --workers 2``. Bounded by the
key count asked for; on the shared 2-core development machine 1e6 keys take tens of seconds per
job, so 1e7 (about ten times that, and ~1 GB of Redis memory per job) is left to a machine that is
not shared (same command, ``--keys 10000000``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from loadtests.harness.redis_server import EmbeddedRedis  # noqa: E402  (after the path)
from models import data  # noqa: E402
from models.publish import build_and_publish, write_version  # noqa: E402
from models.registry import content_version, resolve, set_latest  # noqa: E402
from serving.precompute import precompute  # noqa: E402
from serving.precompute_dask import precompute_on_dask  # noqa: E402
from serving.settings import Settings  # noqa: E402

OUT = ROOT / "benchmarks" / "precompute_scale.md"
TRAIN_SEGMENTS = 20
# Measured once on the development machine (pip install into a fresh venv from the package index).
DEPENDENCY_WEIGHT = (
    ("Dask (dask[distributed])", "11 s", "~25 MB (dask 17 MB + distributed 7 MB; pure Python)"),
    ("Ray Data (ray[data])", "170 s", "617 MB site-packages (ray, pyarrow, pandas, grpcio ...)"),
    ("Apache Beam", "not installed", "its dependency list (grpcio, pyarrow, fastavro, ...) is heavier than Ray's core"),
)


def widened_registry(root: Path, keys: int) -> Path:
    """A registry whose traffic-light serves ``keys`` keys (rounded up to whole roads)."""
    small = build_and_publish("light", root, segments=TRAIN_SEGMENTS)
    segments = math.ceil(keys / data.HOURS_PER_WEEK)
    features = data.feature_table(data.make_segments(segments))
    onnx_bytes = small.model_path.read_bytes()
    version = content_version(onnx_bytes, features)
    card = dict(small.card(), segments=segments, key_count=segments * data.HOURS_PER_WEEK)
    write_version(root / small.name / version, onnx_bytes, features, card)
    set_latest(root, small.name, version)
    return root


def run(keys: int, workers: int, rounds: int) -> dict[str, dict[str, float]]:
    """Alternating rounds (other work on the machine hits both jobs alike); one row per job and round."""
    with tempfile.TemporaryDirectory(prefix="hybridserve-scale-") as tmp:
        registry = widened_registry(Path(tmp), keys)
        total = int(resolve(registry, "traffic-light").card()["key_count"])
        figures = {}
        jobs = [(f"in process, round {r + 1}", lambda s: precompute(s, progress=False)) for r in range(rounds)]
        jobs = [job for r in range(rounds) for job in (jobs[r], (f"Dask, {workers} local workers, round {r + 1}",
                                                                 lambda s: precompute_on_dask(s, workers=workers)))]
        for name, job in jobs:
            with EmbeddedRedis() as redis_server:
                settings = Settings(redis_url=redis_server.url, registry=registry, model_name="traffic-light")
                start = time.perf_counter()
                report = job(settings)
                elapsed = time.perf_counter() - start
            figures[name] = {"keys": total, "job_s": report.seconds, "with_startup_s": elapsed,
                             "keys_per_s": report.keys_per_s, "cpu_s": report.cpu_seconds}
            print(name, json.dumps(figures[name]), flush=True)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    figures = run(args.keys, args.workers, args.rounds)
    rows = "\n".join(f"| {name} | {f['keys']:,} | {f['job_s']:.1f} | {f['with_startup_s']:.1f} | {f['keys_per_s']:,.0f} | {f['cpu_s']:.1f} |"
                     for name, f in figures.items())
    weight = "\n".join(f"| {name} | {t} | {size} |" for name, t, size in DEPENDENCY_WEIGHT)
    OUT.write_text(f"""# Precompute at scale: in process vs Dask

Written by `benchmarks/precompute_scale.py --keys {args.keys} --workers {args.workers}` ({platform.node()},
Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). The light model
widened to the key count; each job writes the whole static table into its own embedded Redis, then
switches the pointer. A shared 2-core machine (other work running): compare the ratio, not the
absolute figures; rounds alternate so that load from others hits both jobs alike, and the spread
between rounds shows how much that load moves them. The in-process job alternates model calls and
one pipelined write at a time, so it waits on Redis much of its wall time (CPU well under wall);
Dask's workers overlap one's writes with another's model calls, but here they, Redis and everyone
else share two cores, and the LocalCluster start-up (processes importing the stack: 8-20 s here)
is paid once per job. The gain Dask is for comes from more cores and machines than this one has.

| job | keys | job s | with start-up s | keys/s | CPU s (workers' for Dask) |
|---|---|---|---|---|---|
{rows}

Dependency weight of the candidate engines:

| engine | install time | size |
|---|---|---|
{weight}

Choice: Dask. It is the lightest by far (an optional extra, `pip install 'hybridserve[scale]'`, also in
`dev` so CI tests it: `tests/test_precompute_dask.py`), runs the same partition function on a
LocalCluster and on a remote scheduler, and its throughput is bounded by the same thing as the
in-process job's (model calls and store writes per key), so it scales with worker processes and
Redis nodes rather than with the engine. Ray Data's throughput was not measured: its 617 MB install
is out of proportion for a job that maps key ranges to store writes. 10 million keys were not run
on this shared machine (minutes per job, ~1 GB Redis per job); the command above with
`--keys 10000000` does it.

On a cluster: `dask scheduler` on one machine, `dask worker tcp://HOST:8786 --nthreads 1` per core on
each worker machine (registry at the same path, store reachable), then
`hybridserve precompute --engine dask --scheduler tcp://HOST:8786 --redis-url redis+cluster://...`.
""")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
