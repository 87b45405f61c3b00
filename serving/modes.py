"""The serving modes, each an ordered list of tier names; everything a mode needs follows from it.

A tier name is a kind of tier: ``l1`` (in-process cache), ``store`` (Redis), ``model`` (ONNX
Runtime). :mod:`serving.service` turns names into tier objects; :class:`serving.tiers.TierWalk`
walks them. Adding a mode is one line here. This module imports nothing, so settings, the CLI and
the tools can ask what a mode needs without loading the serving stack.

Example::

    MODE_TIERS["hybrid"]        # ("l1", "store", "model")
    precomputes("static")       # "table": every key, then the pointer
"""

from __future__ import annotations

from typing import Literal

MODE_TIERS: dict[str, tuple[str, ...]] = {
    "static": ("store",),
    "dynamic": ("model",),
    "hybrid": ("l1", "store", "model"),
}
MODES: tuple[str, ...] = tuple(MODE_TIERS)


def computes(mode: str) -> bool:
    """Whether the mode runs the model (it needs a registry version and its feature table)."""
    return "model" in MODE_TIERS[mode]


def uses_store(mode: str) -> bool:
    """Whether the mode reads the prediction store (it needs a Redis URL)."""
    return "store" in MODE_TIERS[mode]


def precomputes(mode: str) -> Literal["table", "head"] | None:
    """What must be precomputed into the store before serving: the whole ``table`` when the store
    is the last tier (nothing below can answer a miss), a popular ``head`` when a tier below
    computes the rest, ``None`` without a store."""
    tiers = MODE_TIERS[mode]
    if "store" not in tiers:
        return None
    return "table" if tiers[-1] == "store" else "head"
