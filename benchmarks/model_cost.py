"""Model cost: how much slower one heavy-profile inference is than one light-profile inference.

Trains both profiles at the default key space (as ``hybridserve train`` builds them) into a
temporary registry and prints each model card's single-row ONNX Runtime time and their ratio.
The heavy profile exists to be the regime where caching pays, so it should cost well over
``EXPECTED_RATIO`` light inferences; the kNN model's cost grows with its history, which is why this
needs the default size and is a benchmark, not a test: on the small test registry, or on a loaded
machine, the gap is smaller and noisier. Exits 1 when the ratio falls below ``EXPECTED_RATIO``.

Example::

    python benchmarks/model_cost.py            # default 200 segments
    python benchmarks/model_cost.py --segments 400
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.publish import build_and_publish  # noqa: E402

DEFAULT_SEGMENTS = 200  # `hybridserve train`'s default key space
EXPECTED_RATIO = 20.0  # heavy single-row time over light, at the default key space


def single_row_us(profile: str, registry: Path, segments: int) -> float:
    """Train and publish ``profile``; its card's single-row inference time in microseconds."""
    card = build_and_publish(profile, registry, segments=segments).card()  # type: ignore[arg-type]
    return float(card["inference_time"]["single_row_us"])


def main(argv: list[str] | None = None) -> int:
    """Print light and heavy single-row times and their ratio; 1 if below ``EXPECTED_RATIO``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=DEFAULT_SEGMENTS, help="road segments (key space = segments x 168)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hybridserve-model-cost-") as tmp:
        light = single_row_us("light", Path(tmp), args.segments)
        heavy = single_row_us("heavy", Path(tmp), args.segments)
    ratio = heavy / light
    print(f"segments {args.segments}: light {light:.1f} us/row, heavy {heavy:.1f} us/row, heavy/light {ratio:.1f}x "
          f"(expected >= {EXPECTED_RATIO:.0f}x)")
    return 0 if ratio >= EXPECTED_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
