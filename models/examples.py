"""A second shipped example, unlike the road-traffic demo: purchase propensity keyed by user ids.

About a million users (string ids, not a grid) with customer features, and a gradient-boosted
classifier of whether a user buys in the next 30 days; the served number is that probability. It
is generated deterministically (same seed, same files, same version), needs no download, and goes
through the same door as a user's own model: files on disk, then ``hybridserve import``.

Example::

    model_path, table_path = write_propensity_example(Path("examples"), users=1_000_000)
    import_model("propensity", model_path, table_path, "user_id", Path("registry"))
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.ensemble import HistGradientBoostingClassifier

DEFAULT_USERS = 1_000_000
# Users the classifier is fit on: enough for a stable model, seconds to train on one core.
TRAIN_USERS = 100_000
KEY_COLUMN = "user_id"
MODEL_FILE = "propensity.joblib"
TABLE_FILE = "users.parquet"
FEATURES = ("age", "tenure_days", "visits_30d", "spend_90d", "region", "device", "email_opt_in")


def users(count: int, seed: int = 3) -> dict[str, np.ndarray]:
    """Synthetic customers: ids ``u0000001``..., and features with plausible shapes (skewed spend
    and visits, a few regions and devices)."""
    rng = np.random.default_rng(seed)
    visits = rng.poisson(rng.gamma(1.5, 3.0, count))
    return {
        KEY_COLUMN: np.array([f"u{i:07d}" for i in range(count)]),
        "age": rng.integers(18, 85, count),
        "tenure_days": rng.integers(0, 3650, count),
        "visits_30d": visits,
        "spend_90d": np.round(rng.lognormal(3.0, 1.2, count) * (visits > 0), 2),
        "region": rng.integers(0, 8, count),
        "device": rng.choice(3, count, p=[0.55, 0.35, 0.10]),
        "email_opt_in": (rng.random(count) < 0.4).astype(np.int64),
    }


def _purchases(table: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """Who buys: more likely with recent visits, spend and opt-in; less with age; noisy."""
    rng = np.random.default_rng(seed + 1)
    logit = (-3.0 + 0.25 * np.minimum(table["visits_30d"], 12) + 0.4 * np.log1p(table["spend_90d"])
             + 0.6 * table["email_opt_in"] - 0.01 * (table["age"] - 40) + 0.2 * (table["device"] == 1)
             + rng.normal(0, 0.5, len(table["age"])))
    return (rng.random(len(logit)) < 1 / (1 + np.exp(-logit))).astype(np.int64)


def write_propensity_example(out: Path, users_count: int = DEFAULT_USERS, seed: int = 3) -> tuple[Path, Path]:
    """Write ``propensity.joblib`` and ``users.parquet`` under ``out``; returns their paths."""
    if users_count < 1000:
        raise ValueError(f"the example needs at least 1000 users, got {users_count}")
    out.mkdir(parents=True, exist_ok=True)
    table = users(users_count, seed)
    X = np.column_stack([table[name] for name in FEATURES]).astype(np.float64)
    y = _purchases(table, seed)
    train = np.random.default_rng(seed + 2).choice(users_count, min(TRAIN_USERS, users_count), replace=False)
    model = HistGradientBoostingClassifier(max_iter=100, max_leaf_nodes=31, random_state=seed).fit(X[train], y[train])
    joblib.dump(model, out / MODEL_FILE)
    pq.write_table(pa.table(table), out / TABLE_FILE)
    return out / MODEL_FILE, out / TABLE_FILE
