"""The ONNX model behind BentoML, for ``make bench-peers`` (runs in the BentoML venv).

``POST /predict`` with ``{"x": [[feature, ...]]}`` (one row) answers ``[value]``.
``PEER_MAX_BATCH`` > 1 turns on BentoML's adaptive batching (it picks its own wait within a
1 s latency budget). The model file comes from ``PEER_MODEL``.

Run: ``bentoml serve bentoml_service:OnnxModel --host 127.0.0.1 --port PORT``
"""

import os

import bentoml
import numpy as np

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "1"))
# BentoML validates max_batch_size > 1 even for an API that does not batch: pass it only to one that does.
BATCHING = {"batchable": True, "max_batch_size": MAX_BATCH, "max_latency_ms": 1000} if MAX_BATCH > 1 else {}


@bentoml.service(workers=1)
class OnnxModel:
    """One ONNX Runtime session on the CPU, one thread (the server is pinned to one core)."""

    def __init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(os.environ["PEER_MODEL"], options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.dtype = np.float64 if self.session.get_inputs()[0].type == "tensor(double)" else np.float32

    @bentoml.api(**BATCHING)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.asarray(x, dtype=self.dtype)})[0].reshape(-1)
