"""DOCKET_* parsing: defaults, topic names, and errors that name the variable at fault."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SETTINGS, ConfigError, load


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from the defaults, whatever the developer's shell exports."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)


def test_defaults() -> None:
    s = load()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.topic_prefix == "docket"
    assert s.instances == ("a", "b")
    assert s.required_copies == 2
    assert s.broker_port == 9092
    assert s.partitions >= 1
    assert s.fetch_idle_wait_ms == 500  # core.allium fetch_idle_wait
    assert s.data_root.is_absolute() and s.broker_dir.is_absolute() and s.broker_cache.is_absolute()


def test_the_default_bootstrap_follows_the_local_broker_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandsFindTheLocalBroker: without DOCKET_KAFKA_BOOTSTRAP every command
    connects to the local broker on DOCKET_BROKER_PORT (a user's `docket domain activate` once went to 9092 while
    `make run` ran its broker on another port); a given bootstrap wins."""
    monkeypatch.setenv("DOCKET_BROKER_PORT", "19392")
    assert load().kafka_bootstrap == "127.0.0.1:19392"
    # `docket config` (and README's table) shows that default as it is computed, not as 9092
    shown = next(s.default for s in SETTINGS if s.env == "DOCKET_KAFKA_BOOTSTRAP")
    assert shown.replace("$DOCKET_BROKER_PORT", "19392") == load().kafka_bootstrap
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "kafka-1:9093")
    assert load().kafka_bootstrap == "kafka-1:9093"


def test_topic_names_follow_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKET_TOPIC_PREFIX", "t1.x")
    monkeypatch.setenv("DOCKET_INSTANCES", "a, b ,c")
    monkeypatch.setenv("DOCKET_REQUIRED_COPIES", "3")
    s = load()
    assert s.instances == ("a", "b", "c")
    assert s.all_topics() == [
        "t1.x.input",
        "t1.x.output.a",
        "t1.x.output.b",
        "t1.x.output.c",
        "t1.x.results",
        "t1.x.divergences",
        "t1.x.entities",
        "t1.x.status",
    ]
    assert s.app_id("clerk") == "t1.x-clerk"


def test_blank_value_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKET_PARTITIONS", "  ")
    monkeypatch.setenv("DOCKET_BROKER_PORT", "")
    assert load().broker_port == 9092
    assert load().partitions == int(next(s.default for s in SETTINGS if s.env == "DOCKET_PARTITIONS"))


def test_broker_cache_follows_xdg_cache_home_by_default(tmp_path: Path) -> None:
    # In a subprocess: the default is computed when app.settings is imported.
    env = {k: v for k, v in os.environ.items() if k != "DOCKET_BROKER_CACHE"} | {"XDG_CACHE_HOME": str(tmp_path)}
    code = "from app.settings import load; print(load().broker_cache)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert Path(out.strip()) == tmp_path / "docket"


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("DOCKET_PARTITIONS", "eight", "DOCKET_PARTITIONS='eight' is not a whole number"),
        ("DOCKET_PARTITIONS", "0", "DOCKET_PARTITIONS=0 must be at least 1"),
        ("DOCKET_BROKER_PORT", "-1", "DOCKET_BROKER_PORT=-1 must be at least 1"),
        ("DOCKET_FETCH_MIN_BYTES", "0", "DOCKET_FETCH_MIN_BYTES=0 must be at least 1"),
        ("DOCKET_FETCH_MIN_BYTES", "1MiB", "DOCKET_FETCH_MIN_BYTES='1MiB' is not a whole number"),
        ("DOCKET_FETCH_IDLE_WAIT_MS", "-1", "DOCKET_FETCH_IDLE_WAIT_MS=-1 must be at least 0"),
        ("DOCKET_FETCH_IDLE_WAIT_MS", "10001", "DOCKET_FETCH_IDLE_WAIT_MS=10001 must be at most 10000"),
        ("DOCKET_TOPIC_PREFIX", "bad/prefix", "DOCKET_TOPIC_PREFIX='bad/prefix' may only use"),
        ("DOCKET_INSTANCES", " , ", "DOCKET_INSTANCES names no instance"),
        ("DOCKET_INSTANCES", "a,b!", "instance id 'b!' may only use"),
        ("DOCKET_INSTANCES", "a,b,a", "names an instance twice"),
        ("DOCKET_INSTANCES", "a,,b", "has an empty entry (entry 2 of 3)"),
        ("DOCKET_KAFKA_BOOTSTRAP", " , ", "'' (entry 1 of 2) is not host:port"),
        ("DOCKET_KAFKA_BOOTSTRAP", "h:1,,h:2", "'' (entry 2 of 3) is not host:port"),
        ("DOCKET_KAFKA_BOOTSTRAP", "[::1", "'[::1' is not host:port"),
        ("DOCKET_KAFKA_BOOTSTRAP", "a b:1", "'a b:1' is not host:port"),
        ("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:99999", "'127.0.0.1:99999' names port 99999, not a TCP port"),
        ("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:0", "names port 0, not a TCP port"),
        # the twelfth fresh-user trial: each passed the check and failed later
        ("DOCKET_INSTANCES", "a,clerk", "instance id 'clerk' may not be 'clerk' in any case: the Clerk's consumer group"),
        ("DOCKET_INSTANCES", "a,Clerk", "instance id 'Clerk' may not be 'clerk' in any case: the Clerk's consumer group"),
        ("DOCKET_INSTANCES", "\u00e9,b", "instance id '\u00e9' may only use ASCII letters"),
        ("DOCKET_TOPIC_PREFIX", "dock\u00e9t", "may only use ASCII letters"),
        ("DOCKET_BROKER_PORT", "\u0663", "DOCKET_BROKER_PORT='\u0663' is not a whole number"),
        ("DOCKET_PARTITIONS", "1_000", "DOCKET_PARTITIONS='1_000' is not a whole number"),
        ("DOCKET_PARTITIONS", "3000000000", "DOCKET_PARTITIONS=3000000000 must be at most 2147483647"),
        ("DOCKET_FETCH_MAX_WAIT_MS", "9" * 20, f"DOCKET_FETCH_MAX_WAIT_MS={'9' * 20} must be at most 2147483647"),
        ("DOCKET_FETCH_MIN_BYTES", "2147483648", "must be at most 2147483647"),
        ("DOCKET_SESSION_TIMEOUT_MS", "100000", "DOCKET_SESSION_TIMEOUT_MS=100000 must be at most 90000"),
        ("DOCKET_IDEMPOTENCY_TTL_MS", "9" * 20, "must be at most 31536000000"),
        ("DOCKET_API_TIMEOUT_MS", "3600001", "DOCKET_API_TIMEOUT_MS=3600001 must be at most 3600000"),
        ("DOCKET_KAFKA_REPLICATION_FACTOR", "40000", "DOCKET_KAFKA_REPLICATION_FACTOR=40000 must be at most 32767"),
        ("DOCKET_INSTANCES", "a,b,", "has an empty entry (entry 3 of 3)"),
        ("DOCKET_REQUIRED_COPIES", "3", "DOCKET_REQUIRED_COPIES=3 exceeds the 2 instances"),
        ("DOCKET_LOG_LEVEL", "loud", "DOCKET_LOG_LEVEL='loud' must be one of"),
        # the value as given, not lower-cased (a fresh-user trial)
        ("DOCKET_LOG_LEVEL", "LOUD", "DOCKET_LOG_LEVEL='LOUD' must be one of"),
        ("DOCKET_LOG_FORMAT", "XML", "DOCKET_LOG_FORMAT='XML' must be text or json"),
        ("DOCKET_FAUST_METRICS", "Maybe", "DOCKET_FAUST_METRICS='Maybe' must be on or off"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str) -> None:
    """SettingValuesRefusedWhenUnusable and the settings' other checks: each bad value
    is a ConfigError naming the variable and what it takes."""
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as excinfo:
        load()
    assert message in str(excinfo.value)


def test_cli_reports_config_errors_in_one_line_with_exit_code_2() -> None:
    docket = Path(sys.executable).with_name("docket")
    env = {**os.environ, "DOCKET_PARTITIONS": "many"}
    proc = subprocess.run(
        [str(docket), "topics", "create"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "docket: configuration error: DOCKET_PARTITIONS='many' is not a whole number"
    assert "Traceback" not in proc.stderr


def test_config_command_lists_every_setting() -> None:
    docket = Path(sys.executable).with_name("docket")
    out = subprocess.run([str(docket), "config"], capture_output=True, text=True, timeout=60, check=True).stdout
    for setting in SETTINGS:
        assert f"`{setting.env}`" in out


def test_readme_configuration_table_is_current() -> None:
    """README.md embeds `docket config`; the default cache path is shown as ~/.cache/docket."""
    docket = Path(sys.executable).with_name("docket")
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"} | {"HOME": "/HOME"}
    table = subprocess.run([str(docket), "config"], env=env, capture_output=True, text=True, timeout=60, check=True)
    expected = table.stdout.replace("/HOME/", "~/").strip()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    embedded = readme.split("<!-- docket config -->", 1)[1].split("<!-- /docket config -->", 1)[0].strip()
    assert embedded == expected, "README.md's configuration table is stale: paste `.venv/bin/docket config` into it"


def test_warn_is_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKET_LOG_LEVEL takes WARN, Faust's and logging's other spelling, as warning (it
    was refused as 'warn': a fresh-user trial)."""
    monkeypatch.setenv("DOCKET_LOG_LEVEL", "WARN")
    assert load().log_level == "warning"


def test_the_event_loop_setting_names_the_value_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import event_loop_setting

    monkeypatch.setenv("DOCKET_EVENT_LOOP", "Trio")
    with pytest.raises(ConfigError, match="DOCKET_EVENT_LOOP='Trio' must be uvloop or asyncio"):
        event_loop_setting()


@pytest.mark.parametrize("env", ["DOCKET_DATA_ROOT", "DOCKET_BROKER_DIR", "DOCKET_BROKER_CACHE"])
def test_a_path_setting_naming_a_file_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             env: str) -> None:
    """SettingValuesRefusedWhenUnusable, the path settings: a file where a directory (or one of its parents) should be is a ConfigError
    naming the variable (the twelfth fresh-user trial: NotADirectoryError and
    FileExistsError tracebacks from `docket clerk`, `broker start` and `broker stop`); a
    directory that does not exist yet is fine."""
    (tmp_path / "f").write_text("")
    monkeypatch.setenv(env, str(tmp_path / "f"))
    with pytest.raises(ConfigError, match=f"{env}='.*f' is not a directory: point it at a directory"):
        load()
    monkeypatch.setenv(env, str(tmp_path / "f" / "below"))
    with pytest.raises(ConfigError, match=r"is not a directory \(.*/f is not a directory\)"):
        load()
    monkeypatch.setenv(env, str(tmp_path / "new" / "deeper"))
    assert str(tmp_path / "new" / "deeper") in {str(p) for p in vars(load()).values() if isinstance(p, Path)}


def test_a_data_dir_that_cannot_be_made_is_an_error_naming_it(tmp_path: Path) -> None:
    """SettingValuesRefusedWhenUnusable: a worker's --data-dir that cannot be created (a file in the way) is a
    ClickException naming it, not an OSError traceback (the twelfth fresh-user trial:
    `docket clerk --data-dir /proc/self`)."""
    import click

    from agents.plumbing import claim_data_dir

    (tmp_path / "f").write_text("")
    with pytest.raises(click.ClickException, match=r"cannot use .*f/d as this worker's data directory"):
        claim_data_dir(tmp_path / "f" / "d")
    # a directory nothing can be created in, and a file that exists (the thirteenth trial:
    # --data-dir /proc/self was a FileNotFoundError traceback, /dev/null "File exists")
    with pytest.raises(click.ClickException, match=r"cannot use /proc/self as this worker's data directory"):
        claim_data_dir(Path("/proc/self"))
    with pytest.raises(click.ClickException, match=r"f as this worker's data directory \(not a directory\)"):
        claim_data_dir(tmp_path / "f")


@pytest.mark.parametrize("given", ["127.0.0.1:9092", " localhost:9092 ", "[::1]:9092", "a.example:9093, b-2.example:9094",
                                   "kafka_1:19092", "localhost"])
def test_a_bootstrap_of_host_port_entries_is_taken_as_given(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    """SettingValuesRefusedWhenUnusable: well-formed servers pass, stripped."""
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", given)
    assert load().kafka_bootstrap == ",".join(e.strip() for e in given.split(","))
