"""Shadow traffic: a version that computes on a copy of the requests, compared but never returned.

After a request is answered, :meth:`ShadowRunner.submit` hands its keys (and, for raw-feature
requests, their rows) and the answered values to a background task that resolves them through the
shadow version's own state (its own L1 and its own store namespace, so the answering versions'
caches are never written) and records ``|shadow - answered|`` per key in
:class:`serving.version_metrics.VersionMetrics`.

Bounded: at most ``max_in_flight`` shadow requests run at once; one more is dropped and counted
(``shadow_dropped``), so a slow shadow can never build a queue that grows with the traffic. A task
starts only after the event loop has had a turn (the response is written first), and nothing it
raises reaches a client: it is counted (``shadow_errors``) and logged.

Example::

    runner = ShadowRunner(version_metrics, max_in_flight=4)
    runner.submit(shadow_walk, "5c3b1e0a9d72", answered, rows=None)   # after the response
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from serving.tiers import TierWalk
from serving.version_metrics import SHADOW, VersionMetrics

# Shadow requests running at once per process: enough to keep a shadow busy under load on a
# two-core machine, small enough that the shadow's model calls cannot crowd out the answering ones.
SHADOW_MAX_IN_FLIGHT = 4
_log = logging.getLogger(__name__)


class Answered(Protocol):
    """What the shadow compares with: a key, the value served and the version that served it."""

    key: str
    prediction: float
    model_version: str


class ShadowRunner:
    """Runs shadow requests in the background, at most ``max_in_flight`` at once."""

    def __init__(self, metrics: VersionMetrics, max_in_flight: int = SHADOW_MAX_IN_FLIGHT) -> None:
        self._metrics = metrics
        self._max = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Shadow requests running now."""
        return len(self._tasks)

    def submit(self, walk: TierWalk, version: str, answered: Sequence[Answered], rows: Mapping[str, np.ndarray] | None = None) -> None:
        """Compare ``answered`` with what ``version`` (through ``walk``) computes, in the background;
        dropped and counted when ``max_in_flight`` are already running."""
        if len(self._tasks) >= self._max:
            self._metrics.shadow_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._run(walk, version, list(answered), rows))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, walk: TierWalk, version: str, answered: list[Answered], rows: Mapping[str, np.ndarray] | None) -> None:
        await asyncio.sleep(0)  # the answering request finishes writing its response first
        stats = self._metrics.of(version, SHADOW)
        start = asyncio.get_running_loop().time()
        keys = list(dict.fromkeys(a.key for a in answered))
        try:
            found = await walk.resolve(keys, rows)
        except Exception as exc:  # noqa: BLE001  (a shadow must never fail anything but itself)
            self._metrics.shadow_errors += 1
            _log.warning("shadow version %s failed on %d keys: %s", version, len(keys), exc)
            return
        source = max((found[k][1] for k in keys), key=("l1", "redis", "model").index)
        stats.observe_request(source, asyncio.get_running_loop().time() - start, len(answered))
        for item in answered:
            self._metrics.difference(item.model_version, version).observe(abs(found[item.key][0] - item.prediction))

    async def close(self) -> None:
        """Cancel the shadow requests still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
