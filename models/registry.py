"""The model registry, read side: ``<registry>/<model-name>/<version>/`` with ``model.onnx``,
``card.json`` and ``features.npy`` (the feature row of every key), plus a ``latest`` pointer per
model name.

The version is a hash of the model and feature bytes, so the same training run always gives the
same version and a changed model always gives a new one. This module only finds and reads versions
(what a server needs); :mod:`models.publish` trains, exports and writes them, and is never imported
by the server.

Example::

    artifact = resolve(Path("registry"), "traffic-light", "latest")
    artifact.card()["key_count"]
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
FEATURES_FILE = "features.npy"
LATEST_FILE = "latest"
VERSION_HEX_CHARS = 12


def model_name(profile: str) -> str:
    """Registry name of a demo profile's model (``light`` -> ``traffic-light``): spelled here only."""
    return f"traffic-{profile}"


class RegistryError(LookupError):
    """A model or version is missing or unreadable in the registry."""


@dataclass(frozen=True)
class ModelArtifact:
    """One published model version on disk."""

    name: str
    version: str
    path: Path

    @property
    def model_path(self) -> Path:
        """The ONNX file."""
        return self.path / MODEL_FILE

    @property
    def features_path(self) -> Path:
        """The float32 feature table, one row per key."""
        return self.path / FEATURES_FILE

    def card(self) -> dict[str, Any]:
        """The parsed model card."""
        return json.loads((self.path / CARD_FILE).read_text())


def content_version(onnx_bytes: bytes, features: np.ndarray, *more: np.ndarray) -> str:
    """Version id derived from the model, the feature table and ``more`` arrays (an imported
    table's keys)."""
    digest = hashlib.sha256(onnx_bytes)
    for array in (features, *more):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:VERSION_HEX_CHARS]


def set_latest(registry: Path, name: str, version: str) -> None:
    """Atomically point ``<registry>/<name>/latest`` at ``version``."""
    pointer = registry / name / LATEST_FILE
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(version + "\n")
    os.replace(tmp, pointer)


def resolve(registry: Path, name: str, version: str = "latest") -> ModelArtifact:
    """Find a published version (``latest`` follows the pointer); :class:`RegistryError` if absent."""
    if version == "latest":
        pointer = registry / name / LATEST_FILE
        if not pointer.is_file():
            raise RegistryError(
                f"no model {name!r} in registry {registry} (missing {pointer}); "
                f"run `hybridserve train --profile ...` first"
            )
        version = pointer.read_text().strip()
    path = registry / name / version
    if not (path / CARD_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise RegistryError(f"model {name!r} version {version!r} not found under {registry}")
    return ModelArtifact(name, version, path)


def versions(registry: Path, name: str) -> list[str]:
    """Published versions of ``name``, oldest first by card creation time."""
    root = registry / name
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / CARD_FILE).is_file()]
    return [p.name for p in sorted(found, key=lambda p: (p / CARD_FILE).stat().st_mtime)]
