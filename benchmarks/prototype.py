"""The naive prototype the benchmark compares against: FastAPI calling scikit-learn's ``predict``
for one row per request (light profile, retrained at startup; no ONNX, no cache, no batching).

Run: ``python benchmarks/prototype.py PORT``
"""

from __future__ import annotations

import sys

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
import orjson
from fastapi.responses import Response

from models import data
from models.train import train_profile

_result = train_profile("light")
_features = data.feature_table(_result.segments).astype(np.float64)
_segments = _result.segments.count

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/predict/{key}")
async def predict(key: str) -> Response:
    try:
        segment, hour = (int(p) for p in key.split(":"))
    except ValueError:
        raise HTTPException(422, "bad key") from None
    if not (0 <= segment < _segments and 0 <= hour < data.HOURS_PER_WEEK):
        raise HTTPException(404, "unknown key")
    row = _features[data.key_index(segment, hour)][None, :]
    value = float(_result.model.predict(row)[0])
    return Response(orjson.dumps({"key": key, "prediction": value, "source": "sklearn"}), media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning")
