"""The model registry, publish side: train a profile, export it to ONNX, check parity, time it and
write the version (``hybridserve train``).

A version directory is written under a temporary name and renamed into place, so a reader never
sees half a version. This is the only registry module that imports the training stack
(scikit-learn, skl2onnx); the server reads versions through :mod:`models.registry`.

Example::

    artifact = build_and_publish("light", Path("registry"))
    same = resolve(Path("registry"), "traffic-light", "latest")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from models import data, export, runtime
from models.reference import REFERENCE_KEY, reference_distribution
from models.registry import CARD_FILE, FEATURES_FILE, MODEL_FILE, ModelArtifact, content_version, model_name, set_latest
from models.train import Profile, TrainResult, ambiguous_rows, train_profile

# Held-out rows compared with scikit-learn (the holdout metrics use every held-out row): enough to
# catch a conversion error, few enough that brute-force kNN in scikit-learn stays quick.
PARITY_ROWS = 2000


def _feature_summary(X: np.ndarray) -> dict[str, dict[str, float]]:
    return {
        name: {
            "mean": float(X[:, i].mean()),
            "std": float(X[:, i].std()),
            "min": float(X[:, i].min()),
            "max": float(X[:, i].max()),
        }
        for i, name in enumerate(data.FEATURE_NAMES)
    }


def _holdout_metrics(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    err = predicted.astype(np.float64) - actual
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}


def _card(result: TrainResult, onnx_bytes: bytes, sess: Any, parity: export.ParityReport) -> dict[str, Any]:
    timing = export.measure(sess, result.X_holdout)
    holdout_predictions = export.run(sess, result.X_holdout)
    return {
        "name": model_name(result.profile),
        "profile": result.profile,
        "estimator": type(result.model).__name__ if not hasattr(result.model, "steps") else "Pipeline("
        + ", ".join(type(s[1]).__name__ for s in result.model.steps)
        + ")",
        "features": list(data.FEATURE_NAMES),
        "target": "traffic volume, vehicles per hour",
        "key_format": "<segment>:<hour_of_week>",
        "segments": result.segments.count,
        "hours_per_week": data.HOURS_PER_WEEK,
        "key_count": result.segments.key_count,
        "seed": result.seed,
        "training_data": {"rows": int(len(result.X_train)), "features": _feature_summary(result.X_train)},
        "holdout_metrics": {"rows": int(len(result.X_holdout)), **_holdout_metrics(holdout_predictions, result.y_holdout)},
        REFERENCE_KEY: reference_distribution(result.X_train, data.FEATURE_NAMES, holdout_predictions,
                                              features_from=f"training rows ({len(result.X_train)})",
                                              predictions_from=f"holdout predictions ({len(result.X_holdout)} rows)"),
        "parity": asdict(parity),
        "inference_time": asdict(timing),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def publish(result: TrainResult, registry: Path) -> ModelArtifact:
    """Export, parity-check, time and write one version; point ``latest`` at it."""
    onnx_bytes = export.to_onnx_bytes(result.model, result.X_train)
    sess = runtime.session(onnx_bytes)
    X_parity, y_parity = result.X_holdout[:PARITY_ROWS], result.y_holdout[:PARITY_ROWS]
    parity = export.check_parity(result.model, sess, X_parity, y_parity, ambiguous_rows(result.model, X_parity))
    features = data.feature_table(result.segments)
    name = model_name(result.profile)
    version = content_version(onnx_bytes, features)
    target = registry / name / version
    if not (target / CARD_FILE).exists():
        write_version(target, onnx_bytes, features, _card(result, onnx_bytes, sess, parity))
    set_latest(registry, name, version)
    return ModelArtifact(name, version, target)


def write_version(
    target: Path, onnx_bytes: bytes, features: np.ndarray, card: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
) -> None:
    """Write a version directory under a temporary name and rename it into place, so a reader never
    sees half a version. ``arrays``: more ``.npy`` files (an imported model's ``keys.npy``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    extra = arrays or {}
    try:
        (staging / MODEL_FILE).write_bytes(onnx_bytes)
        np.save(staging / FEATURES_FILE, features)
        for name, array in extra.items():
            np.save(staging / name, array)
        card["files"] = {f: (staging / f).stat().st_size for f in (MODEL_FILE, FEATURES_FILE, *extra)}
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        if target.exists():  # a half-written leftover without card.json
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_and_publish(profile: Profile, registry: Path, segments: int = 200, seed: int = 7) -> ModelArtifact:
    """Train a profile and publish it: the whole ``hybridserve train`` job."""
    return publish(train_profile(profile, segments, seed), registry)
