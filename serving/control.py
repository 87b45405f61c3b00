"""Admin changes that reach every worker and every replica: a control record every process follows.

An admin request (reload, flush, policy, routes) lands on one worker of one server. That worker applies it
and then publishes the *desired state* in one small record; every process polls the record every
``Settings.control_poll_s`` and brings itself to it. The record is state, not a log of events, so a
worker that missed a poll, or a replica started later, converges all the same: it serves the
rolled-out version and policy from its first poll.

Where the record lives (:func:`control_channel`):

- with a prediction store (static, hybrid): in the store itself, key ``{ns}@control:{model}`` (the
  ``@`` keeps it out of every model's key prefix, so a flush by namespace never deletes it). The
  store is what every worker and every replica already share, on one machine or many.
- without one (dynamic): a JSON file in ``Settings.worker_dir``, the directory the CLI makes for
  the workers of one ``serve --workers N``; replaced atomically (write, then rename), re-read only
  when its mtime changes. It reaches the workers of one server, not other machines: replicas of a
  dynamic server elsewhere have no shared medium, and are reloaded one by one.

The record outlives restarts on purpose (a worker the supervisor restarts must come back on the
rolled-out version, not the configured one); after publishing a new model, a reload to ``latest``
moves everyone, and deleting the key returns servers to their configured version.

Convergence: a change is in force on every worker at most ``control_poll_s`` (0.25 s by default)
plus the time to apply it (a model load: tens of milliseconds for the demo models) after the admin
request returns. Two admin changes at the same instant on two workers: the later write wins.

Example::

    follower = ControlFollower(control_channel(settings, store), service, settings.control_poll_s)
    await follower.start()
    ...
    await follower.publish(version="aefc319c136c")   # after a reload applied here
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from serving.errors import ServingError, StoreError
from serving.routes import Routes
from serving.service import PredictionService
from serving.settings import Settings
from serving.store import PredictionStore

CONTROL_FILE = "control.json"


@dataclass(frozen=True)
class ControlState:
    """What every process of a deployment should be doing. ``generation`` grows with every change;
    ``version`` is the model version to serve (``None``: the configured one; modes without a model
    follow the store's pointer); ``policy`` the run-time cache policy (empty: as configured);
    ``l1_flushes`` counts L1 flushes (a process empties its L1 when it sees the count grow);
    ``routes`` the traffic split in its settings form, versions concrete (``None``: as configured;
    ``""``: no split, ``version`` served alone, which is what a reload records)."""

    generation: int = 0
    version: str | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    l1_flushes: int = 0
    routes: str | None = None

    def encode(self) -> bytes:
        """Stored form."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> ControlState | None:
        """From the stored form; ``None`` for no record or one that does not parse."""
        if not raw:
            return None
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None  # a foreign or damaged record is ignored, never half-applied


class ControlChannel(Protocol):
    """Where the control record is read and written."""

    async def read(self) -> bytes | None:
        """The record's bytes, or ``None``."""
        ...

    async def write(self, raw: bytes) -> None:
        """Replace the record."""
        ...


class StoreChannel:
    """The record in the prediction store (shared by every worker and replica)."""

    def __init__(self, store: PredictionStore, model: str) -> None:
        self._store = store
        self._model = model

    async def read(self) -> bytes | None:
        return await self._store.get_control(self._model)

    async def write(self, raw: bytes) -> None:
        await self._store.set_control(self._model, raw)


class FileChannel:
    """The record in a file the workers of one server share; re-read only when it changed."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int] | None = None
        self._raw: bytes | None = None

    async def read(self) -> bytes | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        if (stat.st_mtime_ns, stat.st_size) != self._seen:
            self._raw = self._path.read_bytes()
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return self._raw

    async def write(self, raw: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".control-")
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.replace(tmp, self._path)  # atomic: a reader sees the old record or the new one


def control_channel(settings: Settings, store: PredictionStore | None) -> ControlChannel | None:
    """The store when there is one, else a file in ``settings.worker_dir``, else ``None`` (one
    process alone, nothing to tell)."""
    if store is not None:
        return StoreChannel(store, settings.model_name)
    if settings.worker_dir is not None:
        return FileChannel(settings.worker_dir / CONTROL_FILE)
    return None


class ControlFollower:
    """Polls the control record and applies it to this process's service; publishes changes."""

    def __init__(self, channel: ControlChannel | None, service: PredictionService, poll_s: float) -> None:
        self._channel = channel
        self._service = service
        self._poll_s = poll_s
        self._applied = ControlState()
        self._task: asyncio.Task[None] | None = None
        self.applied_changes = 0  # records applied that came from another process

    async def start(self) -> None:
        """Adopt the record in force (a replica started after a rollout), then follow it."""
        if self._channel is None:
            return
        await self._poll(first=True)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await self._poll()

    async def _poll(self, first: bool = False) -> None:
        assert self._channel is not None
        try:
            state = ControlState.decode(await self._channel.read())
        except (StoreError, OSError):
            return  # the record cannot be read now: the next poll tries again
        if state is None or state.generation == self._applied.generation:
            return
        try:
            await self._apply(state, flush_l1=not first)
        except ServingError:
            return  # e.g. a version this process's registry lacks: retried on the next poll
        self._applied = state
        self.applied_changes += 1

    async def _apply(self, state: ControlState, flush_l1: bool) -> None:
        service = self._service
        if service.computes and state.routes:
            if str(service.routes) != state.routes:
                await service.set_routes(Routes.parse(state.routes))
        elif service.computes and state.version and (_served_version(service) != state.version
                                                     or (state.routes == "" and service.routes)):
            await service.load_model(state.version)  # ends a split: the version alone
        elif not service.computes:
            await service.reload("latest")  # re-read the store's pointer now, not within the second
        if state.policy and state.policy != service.policy():
            service.configure(**state.policy)
        if flush_l1 and state.l1_flushes > self._applied.l1_flushes:
            await service.flush(l1=True, redis=False)

    async def publish(self, *, version: str | None = None, policy: dict[str, Any] | None = None, l1_flush: bool = False,
                      routes: str | None = None) -> bool:
        """Record a change already applied here, for every other process; ``False`` if the record
        could not be written (the change holds here only). ``routes``: the split now in force
        (``""``: none, ``version`` alone; ``None``: unchanged)."""
        if self._channel is None:
            return True
        try:
            current = ControlState.decode(await self._channel.read()) or self._applied
            state = replace(current, generation=max(current.generation, self._applied.generation) + 1,
                            version=version or current.version, policy=policy or current.policy,
                            l1_flushes=current.l1_flushes + int(l1_flush),
                            routes=current.routes if routes is None else routes)
            await self._channel.write(state.encode())
        except (StoreError, OSError):
            return False
        self._applied = state
        return True


def _served_version(service: PredictionService) -> str | None:
    try:
        return service.state.version
    except ServingError:
        return None  # nothing served yet
