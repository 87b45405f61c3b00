"""models/examples.py and a user's model end to end: the propensity example is deterministic, imports
like any user's model, serves string ids, and load-tests with a trace of its own keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridserve.cli import main
from loadtests import cost
from loadtests.runner import RunSpec, compare
from models.examples import KEY_COLUMN, write_propensity_example
from models.importer import import_model
from tests.helpers import running

USERS = 3000


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("example")
    assert main(["example", "propensity", "--users", str(USERS), "--out", str(root / "files"),
                 "--registry", str(root / "registry")]) == 0
    return root


def test_the_example_is_deterministic(imported: Path, tmp_path: Path) -> None:
    model_path, table_path = write_propensity_example(tmp_path, USERS)
    again = import_model("propensity", model_path, table_path, KEY_COLUMN, tmp_path / "registry")
    first = import_model("propensity", imported / "files" / model_path.name, imported / "files" / table_path.name,
                         KEY_COLUMN, imported / "registry")
    assert again.version == first.version  # same seed: same users, same model, same content hash
    card = first.card()
    assert card["key_count"] == USERS and card["output"]["column"] == 1


def test_the_example_serves_user_ids(imported: Path, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="hybrid", registry=imported / "registry", model_name="propensity")
    with running(settings) as (_, client):
        answer = client.get("/v1/predict/u0000042").json()
        assert 0.0 <= answer["prediction"] <= 1.0 and answer["source"] == "model"
        assert client.get("/v1/predict/u0000042").json()["source"] == "l1"
        assert client.get(f"/v1/predict/u{USERS:07d}").status_code == 404  # one past the last user


@pytest.mark.slow
def test_a_trace_of_real_keys_load_tests_without_remapping(imported: Path, tmp_path: Path) -> None:
    trace = tmp_path / "own.trace"
    own = [f"u{i % 50:07d}" for i in range(900)]
    trace.write_text("\n".join(own + ["ghost-1"] * 100) + "\n")  # 10% of the requests for keys the model lacks
    [record] = compare(imported / "registry", [RunSpec("propensity", "hybrid", f"trace:loop:{trace}", rate=80, users=4,
                                                      duration_s=3.0)], cost.Prices(), progress=False)
    assert record["profile"] == "propensity"
    assert record["unknown_key_share"] == pytest.approx(0.1) and record["trace_keys_mapped"] is False
    assert record["key_count"] == USERS and record["hit_ratio"]["total"] > 0.5
    # Unknown keys are sent as they are and answered 404, as users' would be.
    assert all("404" in reason for reason in record["failure_reasons"])
