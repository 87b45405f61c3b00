"""Load for fault tests: a few threads sending GET /v1/predict/{key}, every answer recorded with its
time, bounded in request count and in time, to 127.0.0.1 only.

Example::

    with LoadThreads(server_url, ["1:1", "2:2"]) as load:
        load.wait_for(50, source="redis")
        ...                                  # inject the fault
    assert load.failures() == []
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

MAX_REQUESTS_PER_THREAD = 4000
MAX_LOAD_S = 60.0
WAIT_BOUND_S = 20.0


@dataclass(frozen=True)
class Answer:
    """One response (status 0: no response at all)."""

    t: float
    key: str
    status: int
    prediction: float | None
    source: str | None
    version: str | None
    error: str | None


@dataclass
class LoadThreads:
    """``threads`` clients cycling over ``keys`` (each from its own offset) until stopped."""

    url: str
    keys: list[str]
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self, offset: int) -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            for i in range(MAX_REQUESTS_PER_THREAD):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                self.answers.append(self._ask(client, self.keys[(i + offset) % len(self.keys)]))

    @staticmethod
    def _ask(client: httpx.Client, key: str) -> Answer:
        try:
            response = client.get(f"/v1/predict/{key}")
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return Answer(time.monotonic(), key, 0, None, None, None, repr(exc))
        ok = response.status_code == 200
        return Answer(time.monotonic(), key, response.status_code, body.get("prediction"), body.get("source"),
                      body.get("model_version"), None if ok else response.text)

    def __enter__(self) -> LoadThreads:
        self._workers = [threading.Thread(target=self._run, args=(i * 7,), daemon=True) for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(15)

    def failures(self) -> list[Answer]:
        """Answers that are not a 200."""
        return [a for a in self.answers[:] if a.status != 200]

    def wrong(self, truth: dict[str, float]) -> list[Answer]:
        """200 answers whose value is not the model's."""
        return [a for a in self.answers[:] if a.status == 200 and a.prediction != truth[a.key]]

    def first_source_after(self, source: str, since: float) -> float | None:
        """Time of the first answer from ``source`` at or after ``since``."""
        return next((a.t for a in self.answers[:] if a.t >= since and a.source == source), None)

    def wait_for(self, count: int, since: float = 0.0, source: str | None = None, timeout_s: float = WAIT_BOUND_S) -> None:
        """Wait (bounded) until ``count`` answers at or after ``since`` (from ``source``) are in."""
        deadline = time.monotonic() + timeout_s
        while sum(1 for a in self.answers[:] if a.t >= since and (source is None or a.source == source)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} answers from {source or 'any tier'} in {timeout_s}s"
            time.sleep(0.05)
