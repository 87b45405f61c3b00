"""Circuit breakers: stop paying a store's timeouts while it is down.

:class:`CircuitBreaker` guards one Redis node; :class:`Breaker` is what a store exposes (one node's
breaker, or the summary of a cluster's per-node breakers, :class:`serving.store.ClusterBreakers`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from serving.logs import log_breaker_transition


class CircuitBreaker:
    """Stops paying Redis timeouts while Redis is down.

    Closed: calls go through. After ``failures`` consecutive failures it opens: calls fail at once.
    After ``reset_s`` one call is let through as a probe; success closes it, failure re-opens it.
    ``clock`` is injectable so tests step time instead of sleeping.
    """

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_to_open = failures
        self.reset_s = reset_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self._probe_started = 0.0
        self.opened_count = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._probing or self._clock() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """Whether a call may go to Redis now."""
        if self._opened_at is None:
            return True
        now = self._clock()
        if now - self._opened_at < self.reset_s:
            return False
        # A probe that never reported back (its request was cancelled, e.g. the client hung up)
        # must not keep the breaker open forever: after another reset_s a new probe may go.
        if self._probing and now - self._probe_started < self.reset_s:
            return False
        if not self._probing:
            log_breaker_transition("open", "half_open", self._consecutive)
        self._probing = True
        self._probe_started = now
        return True

    def success(self) -> None:
        """Record a call that worked."""
        if self._opened_at is not None:
            log_breaker_transition("half_open", "closed", 0)
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        """Record a call that failed or timed out."""
        was_probing = self._probing
        self._consecutive += 1
        self._probing = False
        if self._opened_at is not None or self._consecutive >= self.failures_to_open:
            if self._opened_at is None:
                self.opened_count += 1
                log_breaker_transition("closed", "open", self._consecutive)
            elif was_probing:
                log_breaker_transition("half_open", "open", self._consecutive)
            self._opened_at = self._clock()


class Breaker(Protocol):
    """What a store's breaker offers: :class:`CircuitBreaker`, or a cluster's :class:`ClusterBreakers`."""

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        ...

    def allow(self) -> bool:
        """Whether a call may go to the store now."""
        ...

    def success(self) -> None:
        """Record a call that worked."""
        ...

    def failure(self) -> None:
        """Record a call that failed or timed out."""
        ...
