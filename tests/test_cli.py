"""hybridserve/cli.py: commands fail with one clear line and exit status 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridserve.cli import main
from loadtests.harness.redis_server import free_port


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--mode", "dynamic", "--registry", "{empty}"], "run `hybridserve train"),
        (["precompute", "--redis-url", "redis://127.0.0.1:{port}/0", "--registry", "{registry}"], "Redis:"),
        (["predict", "1:1", "--url", "http://127.0.0.1:{port}"], "cannot reach the server"),
        (["train", "--profile", "light", "--segments", "0", "--registry", "{empty}"], "segment count"),
        (["precompute", "--head", "--keys-file", "{empty}/none.keys", "--registry", "{registry}",
          "--redis-url", "redis://127.0.0.1:{port}/0"], "does not exist"),
    ],
)
def test_clear_errors(argv: list[str], message: str, registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = {"empty": str(tmp_path), "registry": str(registry), "port": str(free_port())}
    assert main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybridserve: ") and message in err and "Traceback" not in err


def test_invalid_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HYBRIDSERVE_MODE", "bogus")
    assert main(["serve"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_train_prints_version_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--profile", "light", "--segments", "3", "--registry", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    version = out.split()[2]
    assert out.startswith("traffic-light version ") and str(tmp_path / "traffic-light" / version) in out
