"""Shared fixtures: a trained registry, a real embedded Redis and Settings in fresh namespaces.

Chain: registry -> redis -> settings -> running server (``tests.helpers.running``: uvicorn in a
thread, real HTTP) -> client. Fixtures only; helpers that tests import live in ``tests/helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.registry import ModelArtifact
from models.publish import build_and_publish
from loadtests.harness.redis_server import EmbeddedRedis
from serving.settings import Settings
from tests.helpers import ADMIN_TOKEN, TEST_SEGMENTS


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with both profiles trained on a small key space."""
    root = tmp_path_factory.mktemp("registry")
    build_and_publish("light", root, segments=TEST_SEGMENTS)
    build_and_publish("heavy", root, segments=TEST_SEGMENTS)
    return root


@pytest.fixture(scope="session")
def light_artifact(registry: Path) -> ModelArtifact:
    from models.registry import resolve

    return resolve(registry, "traffic-light")


@pytest.fixture(scope="session")
def two_light_versions(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A private registry holding an old and a new version of traffic-light (another seed; latest:
    old): ``(registry, old, new)``."""
    import shutil

    from models.registry import resolve, set_latest

    root = tmp_path_factory.mktemp("two-versions") / "registry"
    shutil.copytree(registry, root)
    old = resolve(root, "traffic-light").version
    new = build_and_publish("light", root, segments=TEST_SEGMENTS, seed=123).version
    assert new != old
    set_latest(root, "traffic-light", old)
    return root, old, new


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session; tests use distinct namespaces or flush it."""
    with EmbeddedRedis() as server:
        yield server


_namespace_counter = iter(range(1_000_000))


@pytest.fixture
def make_settings(registry: Path, redis_server: EmbeddedRedis):  # type: ignore[no-untyped-def]
    """Factory of Settings on the shared registry and Redis, each in a fresh Redis namespace."""

    def make(**fields: object) -> Settings:
        base: dict[str, object] = {
            "registry": registry,
            "redis_url": redis_server.url,
            "redis_namespace": f"t{next(_namespace_counter)}",
            "admin_token": ADMIN_TOKEN,
        }
        base.update(fields)
        return Settings(**base)  # type: ignore[arg-type]

    return make


@pytest.fixture
def ready_settings(make_settings):  # type: ignore[no-untyped-def]
    """Factory of Settings for a mode, ready to serve: static gets its complete table precomputed."""
    from serving.precompute import precompute

    def make(mode: str, **fields: object) -> Settings:
        settings: Settings = make_settings(mode=mode, **fields)
        if mode == "static":
            precompute(settings, progress=False)
        return settings

    return make
