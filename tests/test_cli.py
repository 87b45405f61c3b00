"""hybridserve/cli.py: commands fail with one clear line and exit status 2, never a traceback; the
embedded Redis's password is printed by ``hybridserve redis`` only."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from hybridserve.cli import _parser, main
from loadtests.harness.redis_server import free_port
from serving.settings import Settings, env_var

# Modules `hybridserve --help` must not pay for: each command imports what it needs when it runs.
HEAVY_MODULES = ("numpy", "httpx", "redis", "uvicorn", "fastapi", "onnxruntime", "sklearn", "matplotlib", "locust",
                 "libcachesim", "models", "loadtests", "tuning")


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


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command parser, nested ones (trace synth) included, with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            assert set(action.choices) == helped, f"{path}: commands without a help line: {set(action.choices) - helped}"
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def test_every_option_of_every_command_has_help() -> None:
    commands = list(_commands(_parser()))
    assert len(commands) >= 12  # the top level, ten commands, trace synth
    for path, parser in commands:
        parser.format_help()  # a stray % in a help line fails here
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            where = f"hybridserve {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip() and action.help is not argparse.SUPPRESS, f"{where}: no help"
            if action.option_strings and action.nargs != 0 and action.default is not None:
                shown = parser.formatter_class(prog="hybridserve")._get_help_string(action) or ""
                assert "default:" in shown, f"{where}: the help line does not say its default"
            for var in re.findall(r"HYBRIDSERVE_[A-Z0-9_]+", action.help):
                field = var.removeprefix("HYBRIDSERVE_").lower()
                assert field in Settings.model_fields and var == env_var(field), f"{where}: {var} is no setting"
                assert action.dest == field, f"{where}: names {var} but sets {action.dest}"


def test_settings_options_name_their_default_and_variable() -> None:
    serve = dict(_commands(_parser()))[("serve",)]
    by_flag = {flag: a for a in serve._actions for flag in a.option_strings}
    for flag, field in (("--mode", "mode"), ("--host", "host"), ("--port", "port"), ("--workers", "workers"),
                        ("--model", "model_name"), ("--registry", "registry"), ("--redis-url", "redis_url"),
                        ("--top-k", "head_size"), ("--log-level", "log_level")):
        text = serve.format_help().replace("\n", " ")
        default = Settings.model_fields[field].default
        assert by_flag[flag].dest == field
        assert f"env {env_var(field)}" in " ".join(by_flag[flag].help.split()), flag
        assert f"default: {'unset' if default is None else default}" in by_flag[flag].help, flag
        assert flag in text


def test_help_imports_nothing_heavy() -> None:
    """`hybridserve --help` runs the parser and exits; what it imports is what start-up costs."""
    code = ("import sys, contextlib, io\nfrom hybridserve.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['--help'])\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY_MODULES!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridserve.cli import _settings

    monkeypatch.setenv("HYBRIDSERVE_MODEL_NAME", "from-env")
    monkeypatch.setenv("HYBRIDSERVE_HEAD_SIZE", "17")
    args = _parser().parse_args(["serve", "--top-k", "5"])
    settings = _settings(args)
    assert settings.model_name == "from-env" and settings.head_size == 5


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


@pytest.mark.parametrize("name", ["folder", "garbage.txt", "garbage.bin", "noextension"])
def test_tune_refuses_a_bad_trace_in_one_line(name: str, registry: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    else:
        path.write_bytes(bytes(range(256)) * 24)  # whole 24-byte records, none of them valid
    assert main(["tune", "--trace", str(path), "--registry", str(registry), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hybridserve: {path}") and "Traceback" not in err and "format=" not in err


@pytest.mark.parametrize("seconds", ["0", "-5"])
def test_tune_refuses_a_verification_of_no_time(seconds: str, registry: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.keys"
    trace.write_text("1:1\n2:2\n")
    argv = ["tune", "--trace", str(trace), "--registry", str(registry), "--verify", "--verify-seconds", seconds]
    assert main(argv) == 2
    assert "--verify-seconds must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "option"), [
    (["tune", "--trace", "t.keys", "--calibration-repeats", "0"], "--calibration-repeats"),
    (["tune", "--trace", "t.keys", "--verify-rounds", "0"], "--verify-rounds"),
    (["compare", "--repeats", "-1"], "--repeats"),
    (["loadtest", "--repeats", "two"], "--repeats"),
])
def test_repeat_counts_below_one_are_refused_with_the_option_named(argv: list[str], option: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and ("at least 1" in err or "whole number" in err)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "twelve"])
def test_anchor_seconds_below_zero_or_not_a_number_are_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--trace", "t.keys", "--verify-anchor-seconds", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --verify-anchor-seconds" in err and ("at least 0" in err or "number of seconds" in err)


def test_anchor_runs_shorter_than_a_tier_needs_are_refused_before_any_work(registry: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.keys"
    trace.write_text("1:1\n2:2\n")
    argv = ["tune", "--trace", str(trace), "--registry", str(registry), "--out", str(tmp_path / "out"), "--verify",
            "--verify-anchor-seconds", "0.5"]
    assert main(argv) == 2
    assert "--verify-anchor-seconds must be 0 (no anchor runs) or a finite number of seconds >= 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before calibration


def test_tune_option_defaults_are_the_tuners_own() -> None:
    """The CLI spells its defaults out (--help stays light without importing the tuner): they must
    stay the tuner's."""
    from tuning.verify import ANCHOR_SECONDS, VERIFY_ROUNDS

    args = _parser().parse_args(["tune", "--trace", "t.keys"])
    assert args.verify_anchor_seconds == ANCHOR_SECONDS and args.verify_rounds == VERIFY_ROUNDS
