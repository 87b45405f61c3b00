"""hybridserve/cli.py: commands fail with one clear line and exit status 2, never a traceback; the
embedded Redis's password is printed by ``hybridserve redis`` only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

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


def _cli(*argv: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDSERVE_")}
    return subprocess.Popen([sys.executable, "-m", "hybridserve.cli", *argv], cwd=Path(__file__).resolve().parents[1],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lines_until(process: subprocess.Popen[str], marker: str, limit: int = 20) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    while len(lines) < limit and (line := process.stdout.readline()):
        lines.append(line.strip())
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in {lines}")


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_redis_command_prints_a_url_with_a_working_password() -> None:
    process = _cli("redis")
    try:
        url = _lines_until(process, "redis://")[-1]
        assert urlsplit(url).password
        assert redis.Redis.from_url(url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=urlsplit(url).port, password="guess").ping()
    finally:
        _stop(process)


def test_serve_shows_the_embedded_redis_address_never_its_url(registry: Path) -> None:
    process = _cli("serve", "--mode", "hybrid", "--no-precompute", "--registry", str(registry), "--port", str(free_port()))
    try:
        lines = _lines_until(process, "serving hybrid")
    finally:
        _stop(process)
    assert any("embedded Redis at 127.0.0.1:" in line for line in lines), lines
    assert not any("redis://" in line for line in lines), lines
