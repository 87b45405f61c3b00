"""The served model: an ONNX Runtime session over a registry version, and the dynamic batcher.

ONNX Runtime calls block. A model whose single row costs more than ``offload_above_us`` runs in
one worker thread, so the event loop keeps serving cache hits while it computes; a cheaper model
runs inline, because the hop to a thread and back costs more than the inference itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import runtime
from models.registry import ModelArtifact, resolve
from serving.features import FeatureTable
from models.keyspace import KeySpace, key_space_for

_log = logging.getLogger(__name__)
RunFn = Callable[[np.ndarray], np.ndarray]

# Row-count multiples tried when a model's output for a row depends on the batch it is in.
PAD_CANDIDATES = (1, 2, 4, 8, 16, 32)
INVARIANCE_PROBE_ROWS = 64
INVARIANCE_PROBE_SIZES = (1, 2, 3, 5, 7, 33)


@dataclass
class BatchStats:
    """Counters of model calls, read by the metrics endpoint."""

    calls: int = 0
    rows: int = 0
    seconds: float = 0.0


def _ignore(rows: int, seconds: float) -> None:
    """Default batch observer: nothing to record."""


class LoadedModel:
    """One model version in memory: session, feature table and card."""

    def __init__(self, artifact: ModelArtifact) -> None:
        self.artifact = artifact
        self.name = artifact.name
        self.version = artifact.version
        self.card: dict[str, Any] = artifact.card()
        self.key_space: KeySpace = key_space_for(self.card, artifact.path)
        self.features = FeatureTable.load(artifact.features_path, self.key_space)
        self._session = runtime.session(artifact.model_path.read_bytes())
        self._input = self._session.get_inputs()[0].name
        # Which output is the prediction, and which column of it (a classifier's probabilities:
        # the positive class); the card says, defaulting to the first output's only column.
        output = self.card.get("output", {})
        self._outputs = [output.get("name") or self._session.get_outputs()[0].name]
        self._column: int | None = output.get("column")
        self._input_type = runtime.input_dtype(self._session)
        self.pad_multiple = self._invariant_multiple()
        if self.pad_multiple is None:
            _log.warning("model %s@%s is not batch-invariant: a key's value may differ in its last "
                         "bits between batches", self.name, self.version)

    @classmethod
    def from_registry(cls, registry: Path, name: str, version: str = "latest") -> LoadedModel:
        """Load a registry version (``latest`` follows the pointer)."""
        return cls(resolve(registry, name, version))

    @property
    def single_row_us(self) -> float:
        """Single-row inference time measured at export (model card)."""
        return float(self.card.get("inference_time", {}).get("single_row_us", 0.0))

    @property
    def batch_invariant(self) -> bool:
        """Whether every row's prediction is the same float whatever it is batched with."""
        return self.pad_multiple is not None

    def _raw_run(self, rows: np.ndarray) -> np.ndarray:
        return runtime.run(self._session, rows, self._input, self._outputs[0], self._column)

    def _padded_run(self, rows: np.ndarray, multiple: int) -> np.ndarray:
        short = -len(rows) % multiple
        if short == 0:
            return self._raw_run(rows)
        padding = np.repeat(rows[:1], short, axis=0)
        return self._raw_run(np.concatenate([rows, padding]))[: len(rows)]

    def _invariant_multiple(self) -> int | None:
        """Smallest batch-size multiple at which predictions do not depend on batch composition.

        ONNX Runtime kernels vectorise differently by batch size; for some graphs (the kNN one:
        odd batch sizes) a row's result then moves by one float32 ulp with its batch. Padding every
        call to a multiple found here keeps each key's value identical in every mode. ``None``: no
        candidate worked, and values may differ in the last bits between batches.
        """
        step = max(1, self.features.key_count // INVARIANCE_PROBE_ROWS)
        probe = self.features.rows(np.arange(0, self.features.key_count, step)[:INVARIANCE_PROBE_ROWS])
        for multiple in PAD_CANDIDATES:
            reference = self._padded_run(probe, multiple)
            if all(
                np.array_equal(self._padded_run(probe[i : i + n], multiple), reference[i : i + n])
                for n in INVARIANCE_PROBE_SIZES
                for i in range(0, len(probe) - n + 1, max(n, 9))
            ):
                return multiple
        return None

    def run(self, rows: np.ndarray) -> np.ndarray:
        """Predictions (float32) for float32 feature rows, padded for batch invariance. Blocking."""
        if self.pad_multiple == 1 and len(rows) <= runtime.MAX_ROWS_PER_CALL and self._input_type is np.float32:
            # The common case in one call: rows from the feature table are float32 and contiguous.
            return runtime.select(self._session.run(self._outputs, {self._input: rows})[0], self._column)
        return self._padded_run(rows, self.pad_multiple or 1)

    def predict_indices(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Predictions for feature-table rows. Blocking."""
        return self.run(self.features.rows(indices))


class Batcher:
    """Groups concurrent inference requests into batched model calls.

    A batch closes when it holds ``max_batch`` rows or ``max_wait_s`` after its first request
    arrived (0: whatever is waiting when the worker is free). With ``executor`` the call runs in
    that thread, else inline on the event loop. With ``enabled=False`` every request is its own call.
    ``observe(rows, seconds)`` is told of every call (metrics).

    Example::

        batcher = Batcher(model.run, max_batch=32, max_wait_s=0.002, executor=pool)
        predictions = await batcher.infer(rows)
    """

    def __init__(
        self,
        run: RunFn,
        max_batch: int,
        max_wait_s: float,
        executor: ThreadPoolExecutor | None,
        enabled: bool = True,
        observe: Callable[[int, float], None] = _ignore,
    ) -> None:
        self._run = run
        self._observe = observe
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._executor = executor
        self.enabled = enabled
        self.stats = BatchStats()
        self._pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._pending_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._worker: asyncio.Task[None] | None = None

    async def infer(self, rows: np.ndarray) -> np.ndarray:
        """Predictions for ``rows`` (float32), computed in some batch."""
        if not self.enabled:
            return self._run_inline(rows) if self._executor is None else await self._call(rows)
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work())
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((rows, future))
        self._pending_rows += len(rows)
        assert self._wakeup is not None
        if self._pending_rows >= self.max_batch or self.max_wait_s == 0:
            self._wakeup.set()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._wakeup.set)
        return await future

    def _run_inline(self, rows: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self._run(rows)
        self._record(len(rows), time.perf_counter() - start)
        return out

    async def _call(self, rows: np.ndarray) -> np.ndarray:
        start = asyncio.get_running_loop().time()
        if self._executor is None:
            out = self._run(rows)
        else:
            out = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, rows)
        self._record(len(rows), asyncio.get_running_loop().time() - start)
        return out

    def _record(self, rows: int, seconds: float) -> None:
        self.stats.calls += 1
        self.stats.rows += rows
        self.stats.seconds += seconds
        self._observe(rows, seconds)

    def _take_batch(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        taken, rows = [], 0
        while self._pending and (not taken or rows + len(self._pending[0][0]) <= self.max_batch):
            item = self._pending.pop(0)
            taken.append(item)
            rows += len(item[0])
        self._pending_rows -= rows
        return taken

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            while self._pending:
                batch = self._take_batch()
                await self._run_batch(batch)
                if self._pending and self._pending_rows < self.max_batch and self.max_wait_s > 0:
                    # Fewer than a full batch arrived during the call: let them wait out their
                    # window (their timer is already running) for more to join.
                    if self._timer is None:
                        self._timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._wakeup.set)
                    break

    async def _run_batch(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        rows = batch[0][0] if len(batch) == 1 else np.concatenate([r for r, _ in batch])
        try:
            out = await self._call(rows)
        except Exception as exc:  # noqa: BLE001  (handed to every waiting request)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        offset = 0
        for part, future in batch:
            if not future.done():
                future.set_result(out[offset : offset + len(part)])
            offset += len(part)

    async def close(self) -> None:
        """Stop the worker; waiting requests are cancelled."""
        if self._timer is not None:
            self._timer.cancel()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pending_rows = 0
