"""Is a Redis hit in a mix priced at the Redis tier's own rate or at the server's total rate?

The cost model prices an L1 hit at the server's total rate (never batched; under Poisson arrivals a
request pays its share of the server's wake-ups) and a Redis hit at the rate the Redis tier serves.
This checks the second rule on the configuration that showed it: L1 (s3fifo, 517) in front of the
full static table, on a 6,000-request Zipf-1.1 replay at 300/s, where a third of the requests are
Redis hits (about 100/s). Each round runs, side by side, static at 300/s and at 75/s, a 50-key hot
set at 300/s (L1 alone), then the configuration; it prices the configuration from that round's runs
with Redis at its own rate (log-interpolated between the two static runs) and at the total rate.

Prints one line per round. ``python benchmarks/redis_pricing.py --registry DIR [--profile heavy] [--rounds 3]``
(a registry with the demo models: ``hybridserve train --profile light --registry DIR``, then heavy).
Measured 2026-12-02 (see tuning.md's hand notes): the better rule differed by profile, inside the noise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests import cost  # noqa: E402
from loadtests.keys import key_stream  # noqa: E402
from loadtests.runner import RunSpec, run_one  # noqa: E402
from loadtests.tier_costs import _cpu_per_request, _interpolate, _shares  # noqa: E402
from models.registry import model_name  # noqa: E402
from tuning.calibrate import L1_HOT_SET  # noqa: E402
from tuning.recommend import Candidate  # noqa: E402
from tuning.verify import _spec  # noqa: E402

RATE = 300.0
LOW_RATE = 75.0
REPLAY = 6000
SEGMENTS = 300
L1_SIZE = 517


def _round(specs: dict[str, RunSpec], registry: Path) -> dict[str, tuple[float, tuple[float, float, float, float]]]:
    """Each run's marginal server + Redis CPU per prediction (us) and its shares."""
    out = {}
    for name, spec in specs.items():
        record = run_one(spec, registry, cost.Prices()).as_record()
        out[name] = (_cpu_per_request(record) * 1e6, _shares(record))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, type=Path)
    parser.add_argument("--profile", default="heavy", choices=("light", "heavy"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keys = SEGMENTS * 168
    candidate = Candidate("hybrid", keys, L1_SIZE, "always", 0.667, 0.333, 0.0, keys, l1_policy="s3fifo", full_table=True)
    with tempfile.TemporaryDirectory(prefix="hybridserve-redis-pricing-") as folder:
        path = Path(folder) / "zipf.keys"
        path.write_text("\n".join(key_stream("zipf:1.1", SEGMENTS, seed=11).take(REPLAY)) + "\n")
        specs = {"static": RunSpec(args.profile, "static", "zipf:1.1", rate=RATE, duration_s=12),
                 "static_low": RunSpec(args.profile, "static", "zipf:1.1", rate=LOW_RATE, duration_s=12),
                 "hot": RunSpec(args.profile, "hybrid", L1_HOT_SET, rate=RATE, duration_s=12),
                 "candidate": _spec(candidate, model_name(args.profile), path, RATE, REPLAY)}
        for number in range(1, args.rounds + 1):
            got = _round(specs, args.registry)
            l1, redis, _, rate = got["candidate"][1]
            measured, hot, high, low = got["candidate"][0], got["hot"][0], got["static"][0], got["static_low"][0]
            redis_rate = redis * rate
            own = _interpolate([(LOW_RATE, low), (RATE, high)], redis_rate)  # in log rate, as the cost model does
            at_own, at_total = l1 * hot + redis * own, l1 * hot + redis * high
            print(f"round {number}: static {high:.0f} us at {RATE:g}/s, {low:.0f} at {LOW_RATE:g}/s; hot set {hot:.0f}; "
                  f"configuration {measured:.0f} (L1 {l1:.3f}, Redis {redis:.3f}) | Redis at its own rate "
                  f"({redis_rate:.0f}/s): {at_own:.0f} ({measured / at_own - 1:+.0%}) | at the total rate: "
                  f"{at_total:.0f} ({measured / at_total - 1:+.0%})", flush=True)


if __name__ == "__main__":
    main()
