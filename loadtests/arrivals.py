"""When a paced load test sends its requests: one arrival stream per load-generator process.

Independent users of a real service send requests at random moments: their arrivals form a
Poisson process, gaps exponentially distributed around ``1 / rate``. What a server does depends on
that: how many requests arrive while a model call runs decides the batch sizes (the heavy demo
model costs 1.3 ms of CPU a request when requests come in bursts of five and 3.2 ms when they come
evenly spaced, both at 300/s), and a repeated key that arrives while its first request is still
computing misses the cache. So the load test sends Poisson arrivals by default, or ``even`` ones
(exactly ``1 / rate`` apart) when asked.

The stream is shared by all Locust users of one process: a free user takes the next arrival and
sends at its time, so the users act as a pool of connections and the arrival process does not
depend on how many there are or when Locust started each (per-user schedules started 50 ms apart
put 20 users at 300/s into four bursts of five). When every user is busy an arrival is sent late,
by the first user to come free; an arrival more than ``max_behind_s`` late is dropped rather
than sent in a burst after a stall.

Example::

    arrivals = ArrivalStream(rate=300.0, process="poisson", seed=7, start=time.monotonic())
    due = arrivals.take(now=time.monotonic())   # sleep until due, then send
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PROCESSES: tuple[str, ...] = ("poisson", "even")
DEFAULT_PROCESS = "poisson"
# Gaps are drawn this many at a time (a numpy call per request would cost the load generator).
_DRAW_BLOCK = 4096


def check_process(process: str) -> str:
    """``process`` if it names an arrival process, else a ValueError that lists them."""
    if process not in PROCESSES:
        raise ValueError(f"unknown arrival process {process!r}: use one of {', '.join(PROCESSES)}")
    return process


@dataclass
class ArrivalStream:
    """Send times at ``rate`` per second from ``start``: Poisson (seeded) or evenly spaced."""

    rate: float
    process: str = DEFAULT_PROCESS
    seed: int = 0
    start: float = 0.0
    max_behind_s: float = 1.0
    dropped: int = 0
    """Arrivals skipped because no user was free to send them within ``max_behind_s``."""
    _next: float = field(init=False)
    _gaps: np.ndarray = field(init=False, repr=False)
    _used: int = field(init=False, repr=False)
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_process(self.process)
        if not self.rate > 0:
            raise ValueError(f"arrival rate must be positive, got {self.rate}")
        self._rng = np.random.default_rng([self.seed, 2])
        self._gaps, self._used = np.empty(0), 0
        self._next = self.start + self._gap()

    def _gap(self) -> float:
        if self.process == "even":
            return 1.0 / self.rate
        if self._used == len(self._gaps):
            self._gaps, self._used = self._rng.exponential(1.0 / self.rate, _DRAW_BLOCK), 0
        self._used += 1
        return float(self._gaps[self._used - 1])

    def take(self, now: float) -> float:
        """The next arrival's send time (may be past: send at once); arrivals more than
        ``max_behind_s`` before ``now`` are dropped first."""
        while self._next < now - self.max_behind_s:
            self._next += self._gap()
            self.dropped += 1
        due = self._next
        self._next += self._gap()
        return due
