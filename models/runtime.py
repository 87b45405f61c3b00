"""ONNX Runtime sessions and calls: all the serving side needs of a model file.

Kept apart from :mod:`models.export` (which converts scikit-learn models and needs skl2onnx and
scikit-learn) so that a server process imports ONNX Runtime and numpy only.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

# Largest batch handed to ONNX Runtime at once: the heavy (kNN) graph holds a float32 distance per
# row and stored observation, 64 x 240k x 4 B = 62 MB; larger batches only add memory.
MAX_ROWS_PER_CALL = 64


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    """A single-threaded CPU session: one core per server process, and identical sums per row
    whatever the batch size (multi-threaded tree ensembles split and re-add partial sums)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def input_dtype(sess: ort.InferenceSession) -> type[np.floating]:
    """The numpy type of the model's (first) input: float32 or float64; ``ValueError`` otherwise."""
    declared = sess.get_inputs()[0].type
    if declared not in _INPUT_TYPES:
        raise ValueError(f"the model's input is {declared}; hybridserve feeds one 2-D float or double tensor")
    return _INPUT_TYPES[declared]


def select(output: np.ndarray, column: int | None) -> np.ndarray:
    """The prediction per row as flat float32: ``column`` of a 2-D output (a classifier's
    probability of one class), else the output itself (a regressor's (N,) or (N, 1))."""
    values = np.asarray(output)
    if column is not None:
        values = values[:, column]
    return values.astype(np.float32, copy=False).reshape(-1)


def run(
    sess: ort.InferenceSession,
    X: np.ndarray,
    input_name: str | None = None,
    output_name: str | None = None,
    column: int | None = None,
) -> np.ndarray:
    """Predictions for rows as a flat float32 array, in calls of at most :data:`MAX_ROWS_PER_CALL`
    rows (the kNN graph allocates rows x observations distances)."""
    name = input_name or sess.get_inputs()[0].name
    outputs = [output_name] if output_name else None
    rows = np.ascontiguousarray(X, dtype=input_dtype(sess))
    parts = [select(sess.run(outputs, {name: rows[i : i + MAX_ROWS_PER_CALL]})[0], column)
             for i in range(0, len(rows), MAX_ROWS_PER_CALL)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
