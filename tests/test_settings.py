"""serving/settings.py: one Settings object, read from HYBRIDSERVE_* and validated."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.settings import Settings


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDSERVE_MODE", "static")
    monkeypatch.setenv("HYBRIDSERVE_L1_SIZE", "42")
    monkeypatch.setenv("HYBRIDSERVE_BATCHING", "false")
    settings = Settings()
    assert settings.mode == "static" and settings.l1_size == 42 and settings.batching is False


def test_admission_is_normalised() -> None:
    assert Settings(admission="AFTER:1").admission == "always"
    assert Settings(admission="after:3").admission_rule.min_requests == 3


@pytest.mark.parametrize(
    "fields",
    [{"mode": "cached"}, {"admission": "sometimes"}, {"l1_size": -1}, {"max_batch_size": 0}, {"redis_timeout_s": 0},
     {"model_name": "../etc"}, {"redis_namespace": "a*b"}, {"unknown_field": 1}],
)
def test_invalid_values_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**fields)  # type: ignore[arg-type]


def test_env_vars_round_trip_and_refuse_unknown_names() -> None:
    from serving.settings import env_vars

    settings = Settings(mode="static", l1_size=7, batching=False, admin_token="secret")
    env = settings.as_env()
    assert env["HYBRIDSERVE_L1_SIZE"] == "7" and env["HYBRIDSERVE_BATCHING"] == "false"
    assert env["HYBRIDSERVE_ADMIN_TOKEN"] == "secret"
    with pytest.raises(KeyError, match="head"):
        env_vars({"head": 3})


def test_updated_validates_like_start_up() -> None:
    settings = Settings()
    assert settings.updated(l1_size=5, admission="AFTER:2").admission == "after:2"
    for bad in ({"l1_size": -1}, {"admission": "sometimes"}, {"head": 1}):
        with pytest.raises(ValidationError):
            settings.updated(**bad)
