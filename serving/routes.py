"""Traffic split: which model version answers which key.

A :class:`Routes` value is a weighted split over versions of the served model plus an optional
shadow version. It is written as ``HYBRIDSERVE_ROUTES="VERSION:WEIGHT,VERSION:WEIGHT[,shadow=VERSION]"``
or as the JSON of ``PUT /v1/admin/routes``
(``{"routes": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}], "shadow": "v3"}``).
Weights are relative: 90:10 is the same split as 9:1.

Routing is sticky by key: a key's bucket is a stable hash of the key (BLAKE2b, not Python's
``hash()``, which is salted per process), and the buckets are cut into ranges by the cumulative
weights (:class:`Router`). The same key therefore goes to the same version on every request, every
worker and after a restart, for as long as the split is unchanged; a raw-feature instance routes
by its instance key (the hash of its vector).

Example::

    routes = Routes.parse("a16b398c84f1:90,7e01c2d9f3aa:10,shadow=5c3b1e0a9d72")
    router = Router(routes)
    router.version_for("17:42")        # "a16b398c84f1" on every call, in every process
"""

from __future__ import annotations

import hashlib
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from serving.errors import InvalidRoutes

# Buckets a key hashes into: fine enough that a weight is honoured to 0.01 %, coarse enough that
# the table of cut points stays a handful of integers.
BUCKETS = 10_000
SHADOW_PREFIX = "shadow="
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # the rule of Settings.model_version
SYNTAX = "VERSION:WEIGHT,VERSION:WEIGHT[,shadow=VERSION]"


@dataclass(frozen=True)
class Route:
    """One version of the split and its relative weight."""

    version: str
    weight: float


@dataclass(frozen=True)
class Routes:
    """A weighted split over versions and an optional shadow; empty: no split (serve the one
    configured version). Construct through :meth:`parse`, :meth:`from_json` or :meth:`of`, which
    check every rule and raise :class:`serving.errors.InvalidRoutes` (422) saying what is wrong."""

    split: tuple[Route, ...] = ()
    shadow: str | None = None

    def __bool__(self) -> bool:
        return bool(self.split)

    @classmethod
    def of(cls, split: Iterable[tuple[str, float]], shadow: str | None = None) -> Routes:
        """Routes from ``(version, weight)`` pairs, checked."""
        routes = cls(tuple(Route(v, w) for v, w in split), shadow)
        routes.check()
        return routes

    @classmethod
    def parse(cls, text: str) -> Routes:
        """From ``VERSION:WEIGHT,VERSION:WEIGHT[,shadow=VERSION]``; blank text is no split."""
        if not text.strip():
            return cls()
        split: list[tuple[str, float]] = []
        shadow: str | None = None
        for part in (p.strip() for p in text.split(",")):
            if part.startswith(SHADOW_PREFIX):
                if shadow is not None:
                    raise InvalidRoutes(f"routes: more than one shadow in {text!r}; give at most one 'shadow=VERSION'")
                shadow = part[len(SHADOW_PREFIX):].strip()
                continue
            version, sep, weight = part.rpartition(":")
            if not sep or not version.strip():
                raise InvalidRoutes(f"routes: {part!r} is not VERSION:WEIGHT; the form is {SYNTAX!r}")
            try:
                split.append((version.strip(), float(weight)))
            except ValueError:
                raise InvalidRoutes(f"routes: weight {weight!r} of {version.strip()!r} is not a number; "
                                    f"the form is {SYNTAX!r}") from None
        return cls.of(split, shadow)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Routes:
        """From ``{"routes": [{"version": V, "weight": W}, ...], "shadow": V | null}``; an empty
        ``routes`` list is no split."""
        items = body.get("routes") or []
        return cls.of(((item["version"], item["weight"]) for item in items), body.get("shadow"))

    def as_json(self) -> dict[str, Any]:
        """The JSON form (what :meth:`from_json` reads)."""
        return {"routes": [{"version": r.version, "weight": r.weight} for r in self.split], "shadow": self.shadow}

    def __str__(self) -> str:
        """The settings form (what :meth:`parse` reads)."""
        parts = [f"{r.version}:{r.weight:g}" for r in self.split]
        return ",".join(parts + ([f"{SHADOW_PREFIX}{self.shadow}"] if self.shadow else []))

    @property
    def versions(self) -> tuple[str, ...]:
        """The versions of the split, in order."""
        return tuple(r.version for r in self.split)

    def check(self) -> None:
        """Raise :class:`InvalidRoutes` unless every rule holds (versions are not looked up here:
        see :meth:`resolved`)."""
        if self.shadow is not None and not self.split:
            raise InvalidRoutes("routes: a shadow needs a split to shadow; give at least one VERSION:WEIGHT")
        for version in (*self.versions, *([self.shadow] if self.shadow is not None else [])):
            if not isinstance(version, str) or not VERSION_PATTERN.match(version):
                raise InvalidRoutes(f"routes: {version!r} is not a version name (letters, digits, '_', '.', '-'; 1 to 64)")
        for route in self.split:
            weight = route.weight
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 or weight == float("inf"):
                raise InvalidRoutes(f"routes: the weight of {route.version!r} must be a positive finite number, got {weight!r}")
        if self.split and not math.isfinite(sum(r.weight for r in self.split)):
            raise InvalidRoutes("routes: the weights add up past the largest float; give smaller relative weights")
        seen = [v for i, v in enumerate(self.versions) if v in self.versions[:i]]
        if seen:
            raise InvalidRoutes(f"routes: version {seen[0]!r} appears more than once in the split; give each version once")
        if self.shadow is not None and self.shadow in self.versions:
            raise InvalidRoutes(f"routes: the shadow {self.shadow!r} is also in the split; a shadow is compared "
                                "with the answering versions, so it cannot be one of them")

    def resolved(self, resolve: Callable[[str], str | None], known: Callable[[], Sequence[str]]) -> Routes:
        """The same routes with every version concrete (``latest`` -> the version it names).
        ``resolve`` returns ``None`` for a version that does not exist; the error lists ``known()``.
        Two names that resolve to one version are duplicates."""
        def concrete(version: str) -> str:
            found = resolve(version)
            if found is None:
                listed = ", ".join(known()) or "none"
                raise InvalidRoutes(f"routes: unknown version {version!r}; the registry has: {listed}")
            return found

        return Routes.of(((concrete(r.version), r.weight) for r in self.split),
                         concrete(self.shadow) if self.shadow is not None else None)


def bucket(key: str) -> int:
    """The key's bucket in ``[0, BUCKETS)``: the same in every process and on every run."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Router:
    """Key -> version for one split: bucket ranges in proportion to the weights, in split order."""

    def __init__(self, routes: Routes) -> None:
        if not routes:
            raise ValueError("a router needs a split")
        self.versions = routes.versions
        total = sum(r.weight for r in routes.split)
        cumulative = list(accumulate(r.weight for r in routes.split))
        # Cut points; the last is BUCKETS exactly, so float rounding never leaves a bucket unrouted.
        self._cuts = [round(c / total * BUCKETS) for c in cumulative[:-1]] + [BUCKETS]

    def version_for(self, key: str) -> str:
        """The version that answers ``key``."""
        return self.versions[bisect_right(self._cuts, bucket(key))]

    def group(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """``{version: its keys}`` (unique, in request order), the versions in the order first met."""
        groups: dict[str, list[str]] = {}
        for key in dict.fromkeys(keys):
            groups.setdefault(self.version_for(key), []).append(key)
        return groups
