"""DOCKET_EVENT_LOOP (app/event_loop.py): which loop docket's processes run on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.event_loop import install
from app.settings import ConfigError, event_loop_setting

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restored_policy():
    before = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(before)


def test_the_default_is_uvloop(monkeypatch) -> None:
    monkeypatch.delenv("DOCKET_EVENT_LOOP", raising=False)
    assert event_loop_setting() == "uvloop"


@pytest.mark.parametrize("raw", ["trio", "uv", "aio"])
def test_an_unknown_loop_is_refused_naming_the_variable(monkeypatch, raw) -> None:
    monkeypatch.setenv("DOCKET_EVENT_LOOP", raw)
    with pytest.raises(ConfigError, match=f"DOCKET_EVENT_LOOP='{raw}' must be uvloop or asyncio"):
        install()


@pytest.mark.parametrize("name, module", [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_install_makes_every_new_loop_of_that_kind(monkeypatch, restored_policy, name, module) -> None:
    monkeypatch.setenv("DOCKET_EVENT_LOOP", name.upper())  # read case-insensitively
    assert install() == name
    loop = asyncio.new_event_loop()
    try:
        assert type(loop).__module__.split(".")[0] == module
    finally:
        loop.close()


@pytest.mark.parametrize("command", ["instance", "clerk"])
@pytest.mark.parametrize("name, module", [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_workers_run_on_the_configured_loop(monkeypatch, restored_policy, command, name, module) -> None:
    from click.testing import CliRunner

    import agents.clerk
    import agents.instance

    mod = agents.instance if command == "instance" else agents.clerk
    seen = []
    monkeypatch.setenv("DOCKET_EVENT_LOOP", name)
    monkeypatch.setattr(mod, "preflight", lambda *a, **k: None)
    monkeypatch.setattr(mod, "build", lambda *a, **k: None)
    monkeypatch.setattr(mod, "run_worker", lambda app, settings: seen.append(type(asyncio.get_event_loop())))
    args = ["--id", "a"] if command == "instance" else []
    result = CliRunner().invoke(getattr(mod, command), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [t.__module__.split(".")[0] for t in seen] == [module]


def test_the_api_and_other_commands_stay_on_asyncio() -> None:
    # what `docket` does before any command; the command is replaced by a print of the
    # loop it would run on
    code = ("import asyncio\n"
            "from app import cli\n"
            "cli.cli.main = lambda **kw: print(type(asyncio.new_event_loop()).__module__)\n"
            "cli.main()\n")
    env = {**os.environ, "DOCKET_EVENT_LOOP": "uvloop"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("asyncio")


def test_a_bad_value_stops_a_worker_with_its_configuration_error() -> None:
    env = {**os.environ, "DOCKET_EVENT_LOOP": "trio"}
    out = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "clerk"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "docket: configuration error: DOCKET_EVENT_LOOP='trio' must be uvloop or asyncio" in out.stderr


def test_the_workers_environment_keeps_the_loop_choice(monkeypatch) -> None:
    from app.settings import load
    from chaos.stack import component_env

    monkeypatch.setenv("DOCKET_EVENT_LOOP", "asyncio")
    assert component_env(load())["DOCKET_EVENT_LOOP"] == "asyncio"
