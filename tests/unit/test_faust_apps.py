"""docket's Faust apps are configured by docket alone, and Faust's own command line runs
them as ``docket instance`` / ``docket clerk`` do (agents/worker.py, docket_apps/;
specs/integration.allium FaustEnvironmentIgnored, FaustCliStartsTheSameWorker). No
broker: the apps are built, never started; the command-line tests stop at the start-up
check against a port nobody listens on."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import faust
import pytest
from yarl import URL

from agents import clerk as clerk_mod
from agents import instance as instance_mod
from agents import worker as worker_mod
from app.settings import SETTINGS, load

ROOT = Path(__file__).resolve().parents[2]

# What a Kubernetes service named `web` injects, and a few more of Faust's variables,
# one of them a secret.
HOSTILE_ENV = {
    "WEB_PORT": "tcp://10.0.0.1:80",
    "WEB_HOST": "web.example",
    "BROKER_URL": "kafka://elsewhere:9092",
    "TOPIC_REPLICATION_FACTOR": "3",
    "TOPIC_PARTITIONS": "99",
    "BROKER_SESSION_TIMEOUT": "60",
    "APP_DATADIR": "/elsewhere",
    "BROKER_CREDENTIALS": "hunter2-secret",
}


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nobody listens: nothing may connect
    monkeypatch.setenv("DOCKET_TOPIC_PREFIX", "fenv")
    monkeypatch.setenv("DOCKET_PARTITIONS", "4")
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(tmp_path / "data"))
    return load()


def test_faust_environment_ignored_web_port_and_broker_are_dockets(settings, tmp_path, monkeypatch, caplog) -> None:
    """FaustEnvironmentIgnored: with WEB_PORT=tcp://10.0.0.1:80, BROKER_URL=kafka://elsewhere:9092
    and more of Faust's variables in the environment, the instance and Clerk apps have
    docket's web port, broker, partitions, replication factor, session timeout and data
    directory; one warning names every variable (with the DOCKET_ setting to use where
    there is one) and shows none of their values. A plain Faust app built the same way
    does take them: the variables are really what Faust reads."""
    for name, value in HOSTILE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(worker_mod, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="docket.worker"):
        a = instance_mod.build(settings, "a", tmp_path / "a", web_port=8123)
        clerk = clerk_mod.build(settings, tmp_path / "clerk", 8124)
    for app, port, data_dir in ((a, 8123, tmp_path / "a"), (clerk, 8124, tmp_path / "clerk")):
        conf = app.conf
        assert conf.web_port == port and conf.web_host == "127.0.0.1" and conf.web_bind == "127.0.0.1"
        assert conf.broker == [URL("kafka://127.0.0.1:1")]
        assert conf.topic_partitions == 4 and conf.topic_replication_factor == 1
        assert conf.broker_session_timeout == settings.session_timeout_ms / 1000 == 10.0
        assert conf.datadir == data_dir
        assert conf.broker_credentials is None
        assert conf.Worker is worker_mod.DocketWorker
    warnings = [r.getMessage() for r in caplog.records if r.name == "docket.worker"]
    assert len(warnings) == 1, warnings  # once per process, not once per app
    text = warnings[0]
    for name in HOSTILE_ENV:
        assert name in text
    assert "BROKER_URL (use DOCKET_KAFKA_BOOTSTRAP)" in text and "WEB_PORT (use --web-port)" in text
    for value in HOSTILE_ENV.values():
        assert value not in text
    # the control: Faust itself lets these override the arguments, and a Kubernetes
    # WEB_PORT (or a string of credentials) stops it from configuring at all
    def plain() -> faust.App:
        return faust.App("fenv-plain", broker="kafka://127.0.0.1:1", topic_replication_factor=1, web_port=8125,
                         datadir=str(tmp_path / "plain"))

    with pytest.raises(faust.exceptions.ImproperlyConfigured, match="Unknown credentials type"):
        plain().conf  # noqa: B018
    monkeypatch.delenv("BROKER_CREDENTIALS")
    with pytest.raises(ValueError, match="tcp://10.0.0.1:80"):
        plain().conf  # noqa: B018
    monkeypatch.delenv("WEB_PORT")
    overridden = plain().conf
    assert overridden.broker == [URL("kafka://elsewhere:9092")]
    assert overridden.topic_replication_factor == 3


def test_faust_environment_ignored_names_prefixed_and_import_time_variables() -> None:
    """FaustEnvironmentIgnored: with APP_ENV_PREFIX=MYAPP Faust reads MYAPP_WEB_PORT, not
    WEB_PORT; FAUST_/F_ DATADIR and WEB_PORT are read at import for defaults; other
    variables are nobody's business. No variable: no warning."""
    env = {"APP_ENV_PREFIX": "MYAPP", "MYAPP_WEB_PORT": "1", "WEB_PORT": "2", "F_DATADIR": "/x",
           "FAUST_WEB_PORT": "3", "PATH": "/bin", "DOCKET_PARTITIONS": "8"}
    assert sorted(worker_mod.faust_env_names(env)) == ["APP_ENV_PREFIX", "FAUST_WEB_PORT", "F_DATADIR",
                                                       "MYAPP_WEB_PORT"]
    warning = worker_mod.faust_env_ignored(env)
    assert "F_DATADIR (use DOCKET_DATA_ROOT)" in warning and "FAUST_WEB_PORT (use --web-port)" in warning
    assert worker_mod.faust_env_ignored({"PATH": "/bin", "DOCKET_WEB": "x"}) is None


def test_docket_worker_runs_preflight_then_tunes_the_process(settings, tmp_path, monkeypatch, capsys) -> None:
    """FaustCliStartsTheSameWorker: the app's Worker class (what `faust worker` starts)
    has no spinner, takes DOCKET_LOG_LEVEL unless Faust's command line gave a level of
    its own, and runs the app's start-up check before anything else: a refusal prints
    `Error: ...` and exits 1 without tuning or starting anything, and leaves the
    worker's event loop current."""
    monkeypatch.setenv("DOCKET_LOG_LEVEL", "error")
    settings = load()
    app = instance_mod.build(settings, "a", tmp_path / "a")
    assert app.docket_log_level == "ERROR"
    loop = asyncio.new_event_loop()
    try:
        worker = app.Worker(loglevel="WARN", loop=loop)  # `faust worker`'s default level
        assert isinstance(worker, worker_mod.DocketWorker)
        assert worker.spinner is None and worker.loglevel == "ERROR"
        assert app.Worker(loglevel="info", loop=loop).loglevel == "info"  # `faust worker -l info`
        tuned: list[bool] = []
        monkeypatch.setattr(worker_mod, "tune_process", lambda: tuned.append(True))

        def refuse() -> None:
            asyncio.run(asyncio.sleep(0))  # as the real check does: a loop of its own
            raise click.ClickException("topic(s) fenv.output.a do not exist; run `docket topics create`")

        app.docket_preflight = refuse
        with pytest.raises(SystemExit) as exited:
            worker.execute_from_commandline()
        assert exited.value.code == 1
        assert "Error: topic(s) fenv.output.a do not exist; run `docket topics create`" in capsys.readouterr().err
        assert tuned == []
        assert asyncio.get_event_loop() is loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _faust(module: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    faust_cli = Path(sys.executable).with_name("faust")
    return subprocess.run([str(faust_cli), "-A", module, "worker", "--without-web"], env=env, cwd="/",
                          capture_output=True, text=True, timeout=90, check=False)


def test_faust_cli_worker_runs_the_start_up_checks(tmp_path) -> None:
    """FaustCliStartsTheSameWorker, UnconfiguredInstanceWarned, WorkerRefusesToStartWithoutTopics:
    `faust -A docket_apps.instance worker` (run from another directory: the modules
    are installed) without DOCKET_INSTANCE_ID exits 2 naming it; with an instance id
    outside DOCKET_INSTANCES it warns as `docket instance` does; with Kafka unreachable
    it and `faust -A docket_apps.clerk worker` exit 1 with docket's message, no
    traceback. FaustEnvironmentIgnored: WEB_PORT=tcp://... neither crashes Faust's
    settings nor goes unmentioned."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")},
           "DOCKET_KAFKA_BOOTSTRAP": "127.0.0.1:1", "DOCKET_DATA_ROOT": str(tmp_path / "data"),
           "WEB_PORT": "tcp://10.0.0.1:80"}
    unset = _faust("docket_apps.instance", env)
    assert unset.returncode == 2, unset.stderr
    assert "DOCKET_INSTANCE_ID is not set" in unset.stderr and "Traceback" not in unset.stderr
    bad = _faust("docket_apps.instance", {**env, "DOCKET_INSTANCE_ID": "a b"})
    assert bad.returncode == 2 and "DOCKET_INSTANCE_ID='a b'" in bad.stderr, bad.stderr
    zz = _faust("docket_apps.instance", {**env, "DOCKET_INSTANCE_ID": "zz"})
    assert zz.returncode == 1, zz.stdout + zz.stderr
    assert "warning: instance 'zz' is not in DOCKET_INSTANCES (a,b); the Clerk will not read its outputs" in zz.stderr
    assert "Error: cannot reach Kafka at 127.0.0.1:1" in zz.stderr and "Traceback" not in zz.stderr
    assert "WEB_PORT (use --web-port) are ignored" in zz.stderr and "10.0.0.1" not in zz.stderr
    clerk = _faust("docket_apps.clerk", env)
    assert clerk.returncode == 1, clerk.stdout + clerk.stderr
    assert "Error: cannot reach Kafka at 127.0.0.1:1" in clerk.stderr and "Traceback" not in clerk.stderr


def test_clerk_ready_marker_matches_the_docket_worker_line(settings, tmp_path) -> None:
    """The chaos harness and the benchmarks (chaos/stack.py READY_FAUST) know a
    Clerk is ready by Faust's `Ready` line, which names the worker's class:
    `[^DocketWorker]: Ready` since the apps run DocketWorker (the marker named
    `[^Worker]`, so no Clerk ever became ready for them)."""
    from chaos.stack import READY_FAUST

    app = clerk_mod.build(settings, tmp_path / "c", None)
    loop = asyncio.new_event_loop()
    try:
        worker = app.Worker(loglevel="info", loop=loop)
        line = worker.log.format(logging.INFO, "Ready")  # as Faust's worker logs it
        assert line == "[^DocketWorker]: Ready" and READY_FAUST in line, line
    finally:
        loop.close()


def readme_faust_settings() -> dict[str, str]:
    """The README's table of the settings docket passes to Faust: setting -> value text."""
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- faust settings -->") == 1, "README.md lost its table of Faust settings"
    table = readme.split("<!-- faust settings -->", 1)[1].split("<!-- /faust settings -->", 1)[0]
    rows = [line for line in table.strip().splitlines()[2:]]
    out = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 2 and cells[0].startswith("`") and cells[0].endswith("`"), row
        out[cells[0].strip("`")] = cells[1]
    return out


def test_readme_lists_every_setting_docket_passes_to_faust(monkeypatch, tmp_path) -> None:
    """Settings hygiene (FaustEnvironmentIgnored): the README's table of what docket
    passes to Faust names exactly the settings the instance's and the Clerk's apps are
    built with (every keyword faust.App gets, under SASL so that broker_credentials is
    among them), so neither can change without the other."""
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("DOCKET_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DOCKET_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DOCKET_KAFKA_USERNAME", "docket")
    monkeypatch.setenv("DOCKET_KAFKA_PASSWORD", "not-shown")
    settings = load()
    built: dict[str, dict] = {}

    class Recording(faust.App):
        def __init__(self, app_id, **conf) -> None:
            built[app_id] = conf
            super().__init__(app_id, **conf)

    monkeypatch.setattr(faust, "App", Recording)
    instance_mod.build(settings, "a", tmp_path / "a", web_port=6067)
    clerk_mod.build(settings, tmp_path / "clerk", 6066)
    instance_conf, clerk_conf = built[settings.app_id("a")], built[settings.app_id("clerk")]
    documented = readme_faust_settings()
    # rows that begin "the Clerk only" are the Clerk's alone
    clerk_only = {k for k, v in documented.items() if v.startswith("the Clerk only")}
    for name, conf, listed in (("instance", instance_conf, set(documented) - clerk_only),
                               ("Clerk", clerk_conf, set(documented))):
        assert set(conf) == listed, (
            f"the {name}'s Faust app gets {sorted(set(conf) - set(documented))} that README.md does not list, "
            f"and README.md lists {sorted(listed - set(conf))} that it does not get")
    # the values the table states outright
    assert instance_conf["store"] == "rocksdb://" and clerk_conf["store"] == "memory://"
    assert instance_conf["env"] == {} and instance_conf["Worker"] is worker_mod.DocketWorker
    assert instance_conf["loghandlers"] == [] and instance_conf["consumer_auto_offset_reset"] == "earliest"
    assert instance_conf["producer_acks"] == -1 and instance_conf["producer_max_batch_size"] == 512 * 1024
    assert "512 KiB" in documented["producer_max_batch_size"] and "`earliest`" in documented["consumer_auto_offset_reset"]
    assert instance_conf["broker"] == "kafka://127.0.0.1:1" and instance_conf["broker_client_id"] == "docket-instance-a"
    assert instance_conf["topic_disable_leader"] is True and clerk_conf["topic_disable_leader"] is True


def test_no_worker_code_waits_on_faust_leader_election() -> None:
    """WorkerDeclaresNoLeaderTopic: the apps run without Faust's leader election
    (topic_disable_leader, in the table above), so a timer or task marked
    ``on_leader=True`` would never run and ``app.is_leader()`` would stay false: no
    worker code asks for either."""
    sources = [p for d in ("agents", "app", "docket_apps", "tables") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(sources) > 20, sources
    users = [str(p.relative_to(ROOT)) for p in sources
             if "on_leader" in p.read_text() or "is_leader(" in p.read_text()]
    assert users == [], f"{users} rely on Faust's leader election: drop topic_disable_leader in agents/plumbing.py"


def test_a_data_directory_is_held_by_one_worker(tmp_path: Path) -> None:
    """WorkerRefusesADataDirectoryInUse: a second claim of a data directory that a
    worker holds (here another process) is refused naming the holder's pid and the
    fix; once the holder has exited, the directory can be claimed."""
    import subprocess
    import sys

    import click

    from agents.plumbing import claim_data_dir

    data = tmp_path / "a-data"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from agents.plumbing import claim_data_dir; "
                               "claim_data_dir(pathlib.Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()",
         str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(click.ClickException, match=rf"data directory {data} is in use by another worker "
                                                       rf"\(pid {holder.pid}\): give each worker its own --data-dir"):
            claim_data_dir(data)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    claim_data_dir(data)  # the holder exited: its lock went with it
    claim_data_dir(data)  # and a worker may check its own again
    assert (data / ".docket-worker.lock").read_text() == str(os.getpid())


def test_a_data_directory_serves_one_domain(tmp_path) -> None:
    """InstanceStartedOnAnotherDomainsData: a data directory is marked with the domain
    of its first worker; a worker of another domain is refused with what to do (`make clean`, or another topic prefix
    and data root), never left to misread the tables (inventory's activation history
    read as accounts versions blocked every partition in a user's check)."""
    import click

    from agents.plumbing import DOMAIN_MARK, claim_domain

    data = tmp_path / "a-data"
    data.mkdir()
    claim_domain(data, "inventory")
    claim_domain(data, "inventory")  # the same domain again: fine
    assert (data / DOMAIN_MARK).read_text() == "inventory\n"
    with pytest.raises(click.ClickException, match=r"holds the state of domain 'inventory', not 'accounts'.*make clean"):
        claim_domain(data, "accounts")
    assert (data / DOMAIN_MARK).read_text() == "inventory\n"


@pytest.mark.parametrize("role", ["instance", "clerk"])
def test_fetch_waits_for_a_round_worker_consumer_takes_min_bytes_and_max_wait(settings, tmp_path, monkeypatch,
                                                                             role) -> None:
    """FetchWaitsForARound: the Kafka consumer Faust builds for an instance's or the
    Clerk's worker asks for DOCKET_FETCH_MIN_BYTES and waits at most
    DOCKET_FETCH_MAX_WAIT_MS (aiokafka's fetch_min_bytes, fetch_max_wait_ms), reading
    committed records only; aiokafka's own defaults (1 byte, 500 ms) and Faust's
    (1,500 ms) are not what runs. Built, never started: nothing connects."""
    monkeypatch.setenv("DOCKET_FETCH_MIN_BYTES", "4096")
    monkeypatch.setenv("DOCKET_FETCH_MAX_WAIT_MS", "37")
    settings = load()
    assert (settings.fetch_min_bytes, settings.fetch_max_wait_ms) == (4096, 37)
    app = (instance_mod.build(settings, "a", tmp_path / "a") if role == "instance"
           else clerk_mod.build(settings, tmp_path / "clerk", None))

    async def create():  # aiokafka binds its consumer to the running loop
        return app.consumer._thread._create_worker_consumer(app.transport)

    consumer = asyncio.run(create())
    assert consumer._fetch_min_bytes == 4096
    assert consumer._fetch_max_wait_ms == 37
    assert consumer._isolation_level == "read_committed"


@pytest.mark.parametrize("idle_wait_ms", ["500", "0"])
def test_fetch_waits_for_the_first_record_when_idle_worker_consumer_is_paced(settings, tmp_path, monkeypatch,
                                                                             idle_wait_ms) -> None:
    """FetchWaitsForTheFirstRecordWhenIdle: with DOCKET_FETCH_IDLE_WAIT_MS > 0 the
    consumer Faust builds for a worker paces its fetcher once started (app/faust_tuning.py
    pace; tests/unit/test_fetch_pacer.py has the pacing itself); with 0 it starts as
    aiokafka's, every fetch a round. Built, never started: nothing connects."""
    monkeypatch.setenv("DOCKET_FETCH_IDLE_WAIT_MS", idle_wait_ms)
    settings = load()
    assert settings.fetch_idle_wait_ms == int(idle_wait_ms)
    app = instance_mod.build(settings, "a", tmp_path / "a")

    async def create():
        return app.consumer._thread._create_worker_consumer(app.transport)

    consumer = asyncio.run(create())
    assert (consumer.start.__name__ == "start_paced") == (idle_wait_ms != "0")


def test_fetch_waits_for_a_round_defaults_a_mebibyte_and_20_ms(settings) -> None:
    """FetchWaitsForARound: by default a worker's fetch waits for 1 MiB or 20 ms
    (specs/core.allium fetch_min_bytes, fetch_max_wait), whichever comes first."""
    assert (settings.fetch_min_bytes, settings.fetch_max_wait_ms) == (1_048_576, 20)
