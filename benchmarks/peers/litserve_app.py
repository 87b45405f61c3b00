"""The ONNX model behind LitServe, for ``make bench-peers`` (runs in the LitServe venv).

``POST /predict`` with ``{"input": [feature, ...]}`` (one row) answers ``{"prediction": value}``.
``PEER_MAX_BATCH`` > 1 turns on LitServe's batching (``PEER_BATCH_TIMEOUT_S`` to wait for company).

Run: ``python litserve_app.py MODEL.onnx PORT``
"""

import os
import sys

import litserve as ls
import numpy as np
import onnxruntime as ort

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "1"))
BATCH_TIMEOUT_S = float(os.environ.get("PEER_BATCH_TIMEOUT_S", "0.002"))


class OnnxAPI(ls.LitAPI):
    """One ONNX Runtime session on the CPU, one thread (the server is pinned to one core)."""

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.dtype = np.float64 if self.session.get_inputs()[0].type == "tensor(double)" else np.float32

    def decode_request(self, request: dict) -> list[float]:
        return request["input"]

    def batch(self, inputs: list[list[float]]) -> np.ndarray:
        return np.asarray(inputs, dtype=self.dtype)

    def predict(self, x):  # type: ignore[no-untyped-def]
        rows = np.asarray(x, dtype=self.dtype)
        return self.session.run(None, {self.input: rows.reshape(-1, rows.shape[-1])})[0].reshape(-1)

    def unbatch(self, output: np.ndarray) -> list[float]:
        return list(output)

    def encode_response(self, output) -> dict:  # type: ignore[no-untyped-def]
        return {"prediction": float(np.asarray(output).reshape(-1)[0])}


if __name__ == "__main__":
    api = OnnxAPI(max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S if MAX_BATCH > 1 else 0.0)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[2]), num_api_servers=1, log_level="warning", generate_client_file=False)
