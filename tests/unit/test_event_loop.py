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


def _loop_of_a_docket_process(env: dict) -> str:
    # What `docket` does before any command: main() installs the loop. The command
    # here is `config`, which needs no broker; the loop it would run is printed.
    code = ("import asyncio, sys\n"
            "from app import cli\n"
            "cli.cli.main = lambda **kw: print(type(asyncio.new_event_loop()).__module__)\n"
            "cli.main()\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_docket_commands_run_on_the_configured_loop() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DOCKET_EVENT_LOOP"}
    assert _loop_of_a_docket_process(env).startswith("uvloop")
    assert _loop_of_a_docket_process({**env, "DOCKET_EVENT_LOOP": "asyncio"}).startswith("asyncio")


def test_a_bad_value_stops_docket_with_its_configuration_error() -> None:
    env = {**os.environ, "DOCKET_EVENT_LOOP": "trio"}
    out = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "config"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "docket: configuration error: DOCKET_EVENT_LOOP='trio' must be uvloop or asyncio" in out.stderr


def test_the_workers_environment_keeps_the_loop_choice(monkeypatch) -> None:
    from app.settings import load
    from chaos.stack import component_env

    monkeypatch.setenv("DOCKET_EVENT_LOOP", "asyncio")
    assert component_env(load())["DOCKET_EVENT_LOOP"] == "asyncio"
