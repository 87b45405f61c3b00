"""Raw-feature requests: instances checked against the model card's feature schema, and named by a
canonical hash of their float32 vector so hybrid can cache them like keys.

``POST /v1/predict {"instances": [{"age": 41, "spend": 52.5, "region": 2}, ...]}``: every instance
must give every feature of the model, as a JSON number, finite, and nothing else. Values outside
the range seen in the training table are served but counted per feature (the start of drift
monitoring). A validated instance becomes a float32 row in the model's feature order; its cache
key is :data:`INSTANCE_KEY_PREFIX` plus a 128-bit BLAKE2b hash of those bytes, so the same vector
always hits the same cache entry of the same model version (the version is in the store's key and
L1 is per version), and it can never collide with a user's key (the key rule forbids spaces).

Example::

    schema = FeatureSchema.from_card(card)
    rows, outside = schema.rows([{"age": 41, "spend": 52.5, "region": 2}])
    instance_key(rows[0])        # "@f 3c9a..."
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import InvalidInstance

INSTANCE_KEY_PREFIX = "@f "
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_PROBLEMS_IN_DETAIL = 3


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name, type (``int`` or ``float``) and the range seen in training."""

    name: str
    kind: str
    low: float
    high: float


class FeatureSchema:
    """The features a model takes, in its order, with what the training table held."""

    def __init__(self, specs: Sequence[FeatureSpec]) -> None:
        self.specs = tuple(specs)
        self.names = tuple(spec.name for spec in specs)
        self._known = frozenset(self.names)

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> FeatureSchema:
        """From an imported model's ``feature_schema``, or a demo card's training summary."""
        names = list(card["features"])
        schema = card.get("feature_schema")
        if schema is None:  # a demo model: ranges from its training data, every feature a float
            summary = card.get("training_data", {}).get("features", {})
            return cls([FeatureSpec(n, "float", summary.get(n, {}).get("min", -math.inf), summary.get(n, {}).get("max", math.inf))
                        for n in names])
        return cls([FeatureSpec(n, schema[n]["type"], schema[n]["min"], schema[n]["max"]) for n in names])

    def rows(self, instances: Sequence[object]) -> tuple[np.ndarray, list[str]]:
        """Float32 rows of valid ``instances`` and the features of each value outside the training
        range; :class:`InvalidInstance` naming the instance, the feature and the rule otherwise."""
        block = np.empty((len(instances), len(self.specs)), dtype=np.float32)
        outside: list[str] = []
        for i, instance in enumerate(instances):
            block[i] = self._row(i, instance, outside)
        return block, outside

    def _row(self, index: int, instance: object, outside: list[str]) -> list[float]:
        if not isinstance(instance, dict):
            raise InvalidInstance(f"instances[{index}]: an instance is an object of feature values, got {type(instance).__name__}")
        problems = [f"unknown feature {name!r}" for name in instance if name not in self._known]
        values: list[float] = []
        for spec in self.specs:
            if spec.name not in instance:
                problems.append(f"feature {spec.name!r} is missing")
                continue
            value = instance[spec.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"feature {spec.name!r} must be a number, got {type(value).__name__}")
                continue
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                # Past float32's range a value would be served as infinity: refuse it as not finite.
                problems.append(f"feature {spec.name!r} must be finite in float32 (|x| <= {FLOAT32_MAX:.4g}), got {value}")
                continue
            if not spec.low <= value <= spec.high:
                outside.append(spec.name)
            values.append(float(value))
        if problems:
            shown = "; ".join(problems[:MAX_PROBLEMS_IN_DETAIL])
            more = f" (and {len(problems) - MAX_PROBLEMS_IN_DETAIL} more)" if len(problems) > MAX_PROBLEMS_IN_DETAIL else ""
            raise InvalidInstance(f"instances[{index}]: {shown}{more}; the model's features: {', '.join(self.names)}")
        return values


def instance_key(row: np.ndarray) -> str:
    """The cache key of one validated float32 vector (``-0.0`` and ``0.0`` are the same input)."""
    canonical = np.ascontiguousarray(row, dtype=np.float32) + np.float32(0.0)
    return INSTANCE_KEY_PREFIX + hashlib.blake2b(canonical.tobytes(), digest_size=16).hexdigest()
