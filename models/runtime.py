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


def run(sess: ort.InferenceSession, X: np.ndarray, input_name: str | None = None) -> np.ndarray:
    """Predictions for float32 rows as a flat float32 array, in calls of at most
    :data:`MAX_ROWS_PER_CALL` rows (the kNN graph allocates rows x observations distances)."""
    name = input_name or sess.get_inputs()[0].name
    rows = np.ascontiguousarray(X, dtype=np.float32)
    if len(rows) <= MAX_ROWS_PER_CALL:
        return np.asarray(sess.run(None, {name: rows})[0], dtype=np.float32).reshape(-1)
    parts = [sess.run(None, {name: rows[i : i + MAX_ROWS_PER_CALL]})[0] for i in range(0, len(rows), MAX_ROWS_PER_CALL)]
    return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1) for p in parts])
