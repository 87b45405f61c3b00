"""ONNX export with a parity check against scikit-learn, and inference timing.

ONNX Runtime computes in float32 while scikit-learn computes in float64. Inputs are float32-exact
(see :mod:`models.data`), so the only differences are float32 rounding of thresholds, leaf values
and sums. Float32 carries a 24-bit mantissa (relative error 6e-8 a step); a prediction sums at most
a few hundred rounded terms (100 trees, or 10 neighbours and distances), so the accumulated relative
error stays below ~1e-5 of the prediction scale. :data:`PARITY_RELATIVE_TOLERANCE` allows 1e-4 of the
target range: ten times that bound, yet far below any real disagreement (a tree taking a different
branch, a different neighbour set), which moves a prediction by whole vehicles per hour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.base import RegressorMixin, is_classifier
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from models.runtime import run

TARGET_OPSET = 17
PARITY_RELATIVE_TOLERANCE = 1e-4
TIMING_BATCH = 64
TIMING_MIN_SECONDS = 0.3


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with scikit-learn by more than the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime is from scikit-learn on the held-out rows."""

    rows: int
    max_abs_diff: float
    tolerance: float
    ambiguous_rows: int = 0


@dataclass(frozen=True)
class Timing:
    """Measured ONNX Runtime inference time, one intra-op thread."""

    single_row_us: float
    batch_row_us: float
    batch_size: int


def to_onnx_bytes(model: RegressorMixin, sample: np.ndarray) -> bytes:
    """Convert a fitted regressor or classifier (or a Pipeline ending in one) to a serialized ONNX
    model with one float32 input ``X``; a classifier's probabilities come out as a plain tensor."""
    onx = to_onnx(model, sample[:1].astype(np.float32), target_opset=TARGET_OPSET, options=_options(model))
    _canonicalize(onx)
    return onx.SerializeToString()


def snap_thresholds_to_float32(model: Any) -> int:
    """Round every tree split threshold down to the float32 grid, in place; returns how many moved.

    Served features are float32. A scikit-learn tree compares ``x <= t`` in float64; ONNX's tree
    ensembles hold float32 thresholds, rounded to the nearest float32, so a float32 ``x`` lying
    between ``t`` and its rounding goes left in one and right in the other (seen: 49 of 5,000 rows
    of an imported gradient-boosting classifier, off by up to 0.2). No float32 lies strictly between
    ``t`` and ``t`` rounded *down*, so moving thresholds there changes no prediction on float32
    inputs and makes the conversion exact. Covers decision trees and forests, gradient boosting and
    histogram gradient boosting, bare or as Pipeline steps.
    """
    moved = 0
    for _, step in getattr(model, "steps", [(None, model)]):
        for predictors in getattr(step, "_predictors", []):  # HistGradientBoosting*
            for predictor in predictors:
                moved += _snap(predictor.nodes["num_threshold"])
        trees = getattr(step, "estimators_", None)
        for tree in np.ravel(trees) if trees is not None else [step]:
            if hasattr(tree, "tree_"):
                moved += _snap(tree.tree_.threshold)
    return moved


def _snap(thresholds: np.ndarray) -> int:
    """Round float64 thresholds down to float32 values, in place (leaves' -2 markers stay)."""
    rounded = thresholds.astype(np.float32)
    up = rounded.astype(np.float64) > thresholds
    rounded[up] = np.nextafter(rounded[up], np.float32(-np.inf))
    thresholds[:] = rounded.astype(np.float64)
    return int(up.sum())


def _options(model: RegressorMixin) -> dict[int, dict[str, Any]]:
    """Converter options: kNN distances through ONNX Runtime's CDist kernel; classifiers without ZipMap.

    skl2onnx's default kNN graph loops over the stored observations in a Scan, paying per-iteration
    overhead that dwarfs the arithmetic; CDist computes the same distances as one dense kernel, so
    the cost per row is the real work (and batching saves what it really saves).
    """
    steps = getattr(model, "steps", [(None, model)])
    options: dict[int, dict[str, Any]] = {}
    for _, step in steps:
        if isinstance(step, (KNeighborsRegressor, KNeighborsClassifier)):
            options[id(step)] = {"optim": "cdist"}
        if is_classifier(step):
            # A probability tensor rather than skl2onnx's default list of dicts (ZipMap), which
            # ONNX Runtime returns as Python objects, slowly.
            options.setdefault(id(step), {})["zipmap"] = False
    return options


def _canonicalize(model: onnx.ModelProto) -> None:
    """Make the serialized bytes a function of the model alone, so its content version is too.

    skl2onnx numbers some names with a process-wide counter, and writes ``opset_import`` entries in
    an order that changes from process to process (``ai.onnx.ml`` before or after the default
    domain), so the same model exported twice would differ byte-wise and get a new version (and a
    cold cache). Opset entries are sorted by domain, and nodes and intermediate tensors renamed in
    traversal order (subgraphs included). Internal names carry no meaning; the model's own input
    and output names are kept.
    """
    opsets = sorted(model.opset_import, key=lambda entry: (entry.domain, entry.version))
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    _rename_graph(graph, rename, iter(range(1 << 30)))


def _rename_graph(graph: onnx.GraphProto, rename: Callable[[str], str], counter: Iterator[int]) -> None:
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = rename(value.name)
    for node in graph.node:
        node.name = f"n{next(counter)}"
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attribute.g, rename, counter)
            for sub in attribute.graphs:
                _rename_graph(sub, rename, counter)


def check_parity(
    model: RegressorMixin,
    sess: ort.InferenceSession,
    X: np.ndarray,
    y: np.ndarray,
    ambiguous: np.ndarray | None = None,
) -> ParityReport:
    """Compare ONNX Runtime with scikit-learn on ``X``; raise :class:`ParityError` past tolerance.

    Rows flagged in ``ambiguous`` (exact neighbour ties, see ``models.train.ambiguous_rows``) have
    more than one right answer and are left out of the comparison, and counted in the report.
    """
    keep = np.ones(len(X), dtype=bool) if ambiguous is None else ~ambiguous
    expected = model.predict(X[keep].astype(np.float64))
    got = run(sess, X[keep]).astype(np.float64)
    diff = float(np.max(np.abs(expected - got)))
    scale = max(1.0, float(np.max(y) - np.min(y)))
    tolerance = PARITY_RELATIVE_TOLERANCE * scale
    if not diff <= tolerance:
        raise ParityError(
            f"ONNX Runtime differs from scikit-learn by {diff:.6g} on {len(X)} held-out rows "
            f"(tolerance {tolerance:.6g} = {PARITY_RELATIVE_TOLERANCE} x target range)"
        )
    return ParityReport(int(keep.sum()), diff, tolerance, int(len(X) - keep.sum()))


def _time_per_call(fn: object, min_seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        fn()  # type: ignore[operator]
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 5:
            return elapsed / calls


def measure(sess: ort.InferenceSession, X: np.ndarray, min_seconds: float = TIMING_MIN_SECONDS) -> Timing:
    """Median-free but warmed-up mean time of single-row and batched calls."""
    row = np.ascontiguousarray(X[:1], dtype=np.float32)
    batch = np.ascontiguousarray(np.resize(X, (TIMING_BATCH, X.shape[1])), dtype=np.float32)
    run(sess, batch)
    single = _time_per_call(lambda: run(sess, row), min_seconds)
    batched = _time_per_call(lambda: run(sess, batch), min_seconds) / TIMING_BATCH
    return Timing(single_row_us=single * 1e6, batch_row_us=batched * 1e6, batch_size=TIMING_BATCH)
