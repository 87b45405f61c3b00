"""How fast a core runs while a load test measures CPU on it.

On a shared VM the same work does not take the same CPU time: on this project's 2-core VM a fixed
pure-Python loop took anywhere from 84 to 152 ms of *process CPU time*, half a second apart, on an
idle machine (another tenant on the host's sibling hyperthread, or the host's clock). There is no
hardware counter inside the VM to count instructions instead. So a load test's "CPU per request"
carries that factor, and two runs of the same configuration a minute apart read up to 1.6x apart.

A :class:`CoreSpeedProbe` measures the factor where it applies: a small process pinned to the
same core as the measured process wakes every ``interval_s``, runs a fixed unit of work (about
half a millisecond) and records its own CPU time for it. The run's mean unit time, over the
run's window, says how slow the core was while the server's CPU was being counted. It costs the
core about 1% and does not touch the server.

A CPU figure times a reference unit time over the run's mean unit time is the CPU it would have
taken at the reference speed (:func:`loadtests.tier_costs.at_speed`), so runs made at different
moments compare: on this VM that took the spread of five identical heavy dynamic runs from 1.15x to
1.08x (light static, whose cost is mostly system calls, from 1.55x to 1.33x). The raw figures stay
in ``results.json`` as measured, and dollars are priced on them.

Example::

    with CoreSpeedProbe([1]) as probe:
        ...  # the load test
    probe.reading.unit_us  # mean CPU microseconds of one unit of work during the run
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

INTERVAL_S = 0.05
"""Seconds between two units of work: 20 samples a second, about 240 over a 12 s run."""
UNIT_ITERATIONS = 4_000
"""Iterations of the fixed unit of work: about half a millisecond of CPU on this project's VM."""
STOP_TIMEOUT_S = 5.0
_REPO_ROOT = Path(__file__).resolve().parents[2]


class ProbeError(RuntimeError):
    """The probe process failed or reported nothing."""


@dataclass(frozen=True)
class ProbeReading:
    """What a probe saw over its window."""

    unit_us: float
    """Mean CPU microseconds of one unit of work."""
    samples: int
    spread: float
    """Slowest over fastest sample: how much the speed moved during the window."""

    def as_record(self) -> dict[str, float]:
        """JSON-ready."""
        return asdict(self)


def _unit() -> int:
    """The fixed unit of work: integer arithmetic and a small dict, as an interpreter serving
    requests does (no allocation that would grow, no I/O)."""
    table: dict[int, int] = {}
    total = 0
    for i in range(UNIT_ITERATIONS):
        total += (i * i) % 7
        table[i & 63] = total
    return total + len(table)


def sample_units(stop_fd: int, interval_s: float) -> list[float]:
    """Run units every ``interval_s`` until ``stop_fd`` is readable (closed); their CPU µs."""
    samples: list[float] = []
    while not select.select([stop_fd], [], [], interval_s)[0]:
        start = time.thread_time_ns()
        _unit()
        samples.append((time.thread_time_ns() - start) / 1e3)
    return samples


def reading_of(samples: list[float]) -> ProbeReading | None:
    """The reading of a window's unit times; None for a window shorter than one interval."""
    if not samples:
        return None
    return ProbeReading(unit_us=statistics.fmean(samples), samples=len(samples),
                        spread=max(samples) / max(min(samples), 1e-9))


class CoreSpeedProbe:
    """A probe process pinned to ``cores`` for the duration of a ``with`` block."""

    def __init__(self, cores: list[int] | None, interval_s: float = INTERVAL_S) -> None:
        self.cores = cores
        self.interval_s = interval_s
        self._process: subprocess.Popen[str] | None = None
        self.reading: ProbeReading | None = None

    def __enter__(self) -> Self:
        cores = self.cores
        self._process = subprocess.Popen(
            [sys.executable, "-m", "loadtests.harness.core_speed", str(self.interval_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_REPO_ROOT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        process = self._process
        if process is None:
            return
        try:
            out, _ = process.communicate(input="", timeout=STOP_TIMEOUT_S)  # closes stdin: stop
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            if exc_type is None:
                raise ProbeError(f"the core speed probe did not stop within {STOP_TIMEOUT_S:.0f} s") from None
            return
        if exc_type is None:
            if process.returncode != 0 or not out.strip():
                raise ProbeError(f"the core speed probe exited with {process.returncode} and reported {out!r}")
            self.reading = reading_of(json.loads(out))


def main() -> None:
    """The probe process: sample until stdin closes, then print the samples as JSON."""
    interval = float(sys.argv[1]) if len(sys.argv) > 1 else INTERVAL_S
    print(json.dumps(sample_units(sys.stdin.fileno(), interval)))


if __name__ == "__main__":
    main()
