"""serving/model.py: the loaded ONNX model and the dynamic batcher, on real test-registry models."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serving.model import Batcher, LoadedModel


@pytest.fixture(scope="module", params=["traffic-light", "traffic-heavy"])
def model(request: pytest.FixtureRequest, registry: Path) -> LoadedModel:
    return LoadedModel.from_registry(registry, request.param)


def test_batch_invariant(model: LoadedModel) -> None:
    assert model.batch_invariant
    rows = model.features.rows(np.arange(0, model.features.key_count, 7)[:97])
    whole = model.run(rows)
    one_by_one = np.concatenate([model.run(rows[i : i + 1]) for i in range(len(rows))])
    assert whole.dtype == np.float32 and np.array_equal(whole, one_by_one)


def _infer_all(batcher: Batcher, rows: np.ndarray) -> list[np.ndarray]:
    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.infer(rows[i : i + 1]) for i in range(len(rows))))

    return asyncio.run(run())


def test_concurrent_requests_share_calls(model: LoadedModel) -> None:
    sizes: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(model.run, max_batch=8, max_wait_s=0.05, executor=pool, observe=lambda r, s: sizes.append(r))
        rows = model.features.rows(np.arange(20))
        results = _infer_all(batcher, rows)
    assert np.array_equal(np.concatenate(results), model.run(rows))  # each request got its own rows back
    assert sum(sizes) == 20 and max(sizes) <= 8 and len(sizes) <= 4
    assert batcher.stats.calls == len(sizes) and batcher.stats.rows == 20


def test_disabled_is_one_call_per_request(model: LoadedModel) -> None:
    batcher = Batcher(model.run, max_batch=8, max_wait_s=0.05, executor=None, enabled=False)
    rows = model.features.rows(np.arange(5))
    assert np.array_equal(np.concatenate(_infer_all(batcher, rows)), model.run(rows))
    assert batcher.stats.calls == 5


def test_errors_reach_every_waiting_request() -> None:
    def broken(rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("inference failed")

    batcher = Batcher(broken, max_batch=4, max_wait_s=0.01, executor=None)

    async def run() -> list[object]:
        rows = np.zeros((3, 2), dtype=np.float32)
        return await asyncio.gather(*(batcher.infer(rows[i : i + 1]) for i in range(3)), return_exceptions=True)

    outcomes = asyncio.run(run())
    assert all(isinstance(o, RuntimeError) for o in outcomes)


def test_close_cancels_waiting_requests() -> None:
    async def run() -> bool:
        batcher = Batcher(lambda rows: rows[:, 0], max_batch=100, max_wait_s=10.0, executor=None)
        waiting = asyncio.ensure_future(batcher.infer(np.zeros((1, 2), dtype=np.float32)))
        await asyncio.sleep(0.01)
        await batcher.close()
        try:
            await waiting
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(run())
