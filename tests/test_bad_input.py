"""Bad input, row by row from the README's "Bad input" table, then fuzzed from the OpenAPI schema.

The table in README.md and :data:`CASES` are kept in step: the test fails if either gains, loses or
changes a row (name, status, error code). Schemathesis then generates requests from the app's own
schema for every operation, a bounded number each: no response may be a 5xx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis

from loadtests.harness.redis_server import EmbeddedRedis
from models.data import FEATURE_NAMES
from serving.settings import Settings
from tests.helpers import ADMIN, running

README = Path(__file__).resolve().parent.parent / "README.md"
FUZZ_EXAMPLES_PER_OPERATION = 40
JSON = {"content-type": "application/json"}
Send = Callable[[httpx.Client], httpx.Response]


# A complete instance of the demo model: every feature, each a number.
INSTANCE = {name: 1.0 for name in FEATURE_NAMES}


def _with_nan() -> bytes:
    """A JSON body with a NaN feature (Python's JSON reads the NaN token, so the server must refuse it)."""
    return json.dumps({"instances": [{**INSTANCE, "lanes": float("nan")}]}).encode()


def _chunked(total: int) -> Iterator[bytes]:
    """A body with no content-length (chunked transfer), so only the streaming limit can stop it."""
    yield b'{"keys": ["1:1"'
    for _ in range(total // 1000):
        yield b', "1:1"' * 142
    yield b"]}"


CASES: list[tuple[str, Send, int, str | None]] = [
    ("unknown key (segment outside the key space)", lambda c: c.get("/v1/predict/99999:1"), 404, "unknown_key"),
    ("unknown key (hour over 167)", lambda c: c.get("/v1/predict/1:168"), 404, "unknown_key"),
    ("malformed key: characters", lambda c: c.get("/v1/predict/abc"), 422, "malformed_key"),
    ("malformed key: not canonical", lambda c: c.get("/v1/predict/01:2"), 422, "malformed_key"),
    ("malformed key: too long", lambda c: c.get("/v1/predict/11111111111111111111:1"), 422, "malformed_key"),
    ("malformed key: control character", lambda c: c.get("/v1/predict/1:1%00"), 422, "malformed_key"),
    ("malformed key: Redis pattern", lambda c: c.get("/v1/predict/*"), 422, "malformed_key"),
    ("malformed key in a batch", lambda c: c.post("/v1/predict", json={"keys": ["1:1", "a:b"]}), 422, "malformed_key"),
    ("empty batch", lambda c: c.post("/v1/predict", json={"keys": []}), 422, "invalid_request"),
    ("too many keys", lambda c: c.post("/v1/predict", json={"keys": ["1:1"] * 257}), 413, "too_many_keys"),
    ("duplicate keys", lambda c: c.post("/v1/predict", json={"keys": ["1:1", "1:1"]}), 200, None),
    ("non-JSON body", lambda c: c.post("/v1/predict", content=b"{not json", headers=JSON), 422, "invalid_request"),
    ("JSON that is not an object", lambda c: c.post("/v1/predict", json=["1:1"]), 422, "invalid_request"),
    ("no body", lambda c: c.post("/v1/predict"), 422, "invalid_request"),
    ("wrong types", lambda c: c.post("/v1/predict", json={"keys": [1, 2]}), 422, "invalid_request"),
    ("keys not a list", lambda c: c.post("/v1/predict", json={"keys": "1:1"}), 422, "invalid_request"),
    ("unknown field", lambda c: c.post("/v1/predict", json={"keys": ["1:1"], "x": 1}), 422, "invalid_request"),
    ("huge body (declared length)", lambda c: c.post("/v1/predict", content=b" " * 70_000, headers=JSON), 413, "body_too_large"),
    ("huge body (chunked, no length)", lambda c: c.post("/v1/predict", content=_chunked(200_000), headers=JSON), 413, "body_too_large"),
    ("unknown route", lambda c: c.get("/nope"), 404, "not_found"),
    ("wrong method", lambda c: c.delete("/v1/predict/1:1"), 405, "method_not_allowed"),
    ("wrong method on admin", lambda c: c.get("/v1/admin/flush"), 405, "method_not_allowed"),
    ("admin without token", lambda c: c.post("/v1/admin/flush", json={}), 401, "unauthorized"),
    ("admin with a wrong token", lambda c: c.post("/v1/admin/flush", json={}, headers={"Authorization": "Bearer nope"}), 403, "forbidden"),
    ("invalid policy", lambda c: c.put("/v1/admin/policy", json={"admission": "after:0"}, headers=ADMIN), 422, "invalid_request"),
    ("unknown model version", lambda c: c.post("/v1/admin/reload", json={"version": "nope"}, headers=ADMIN), 404, "unknown_version"),
    ("path in a version", lambda c: c.post("/v1/admin/reload", json={"version": "../x"}, headers=ADMIN), 422, "invalid_request"),
    ("instance missing a feature", lambda c: c.post("/v1/predict", json={"instances": [{"lanes": 2}]}), 422, "invalid_instance"),
    ("instance with an unknown feature", lambda c: c.post("/v1/predict", json={"instances": [{**INSTANCE, "x": 1}]}), 422, "invalid_instance"),
    ("instance feature not a number", lambda c: c.post("/v1/predict", json={"instances": [{**INSTANCE, "lanes": "2"}]}), 422, "invalid_instance"),
    ("instance feature not finite", lambda c: c.post("/v1/predict", content=_with_nan(), headers=JSON), 422, "invalid_instance"),
    ("keys and instances together", lambda c: c.post("/v1/predict", json={"keys": ["1:1"], "instances": [INSTANCE]}), 422, "invalid_request"),
]


def _readme_rows() -> list[tuple[str, int, str | None]]:
    """(input, status, error) of each row of the README's "Bad input" table."""
    section = README.read_text().split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[2].isdigit():
            continue
        code = re.fullmatch(r"`([a-z_]+)`", cells[3])
        rows.append((cells[0], int(cells[2]), code.group(1) if code else None))
    return rows


def test_readme_table_matches_cases() -> None:
    assert _readme_rows() == [(name, status, error) for name, _, status, error in CASES]


def test_each_row(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid")) as (_, client):
        for name, send, status, error in CASES:
            response = send(client)
            assert response.status_code == status, f"{name}: {response.status_code} {response.text[:200]}"
            if error is None:
                continue
            body = response.json()
            assert set(body) == {"error", "detail"} and body["error"] == error and body["detail"], f"{name}: {body}"
        duplicate = client.post("/v1/predict", json={"keys": ["1:1", "1:1"]}).json()["predictions"]
        assert duplicate[0] == duplicate[1]


# ----- schema fuzzing ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_url(registry: Path, redis_server: EmbeddedRedis) -> Iterator[str]:
    """One hybrid server for all fuzzed operations, in its own Redis namespace."""
    settings = Settings(registry=registry, redis_url=redis_server.url, redis_namespace="fuzz", mode="hybrid",
                        admin_token="test-token")  # type: ignore[arg-type]
    with running(settings) as (server, _):
        yield server.url


@pytest.mark.slow
def test_fuzz_no_5xx(fuzz_url: str) -> None:
    """Every operation of the schema, valid and invalid (negative) inputs, a bounded count each."""
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    sent: dict[str, int] = {}
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _fuzz(operation, mode, sent)
    total = sum(sent.values())
    print(f"\nschemathesis: {total} requests over {len(operations)} operations, no 5xx")
    assert total >= len(operations) * 10


def _fuzz(operation, mode, sent: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=FUZZ_EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def check(case) -> None:  # type: ignore[no-untyped-def]
        # With the admin token, so admin bodies get past authentication and are validated in depth.
        response = case.call(headers=ADMIN, timeout=10)
        sent[operation.label] = sent.get(operation.label, 0) + 1
        assert response.status_code < 500, f"{operation.label}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            assert set(response.json()) == {"error", "detail"}, response.text[:300]

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        # An operation without parameters or body (GET /healthz) has no invalid input to generate.
        if mode is not schemathesis.GenerationMode.NEGATIVE:
            raise
