"""The local broker's configuration and the launcher's behaviour without a broker:
single-node settings, loopback listeners, bounded heap, atomic jar cache, clear errors
when Java or Maven is missing."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import broker as launcher

DOCKET = Path(sys.executable).with_name("docket")


def props(port: int = 19092, controller: int = 19093, data: Path = Path("/x/data")) -> dict[str, str]:
    rendered = launcher.render_properties(launcher.broker_properties(port, controller, data))
    return launcher.parse_properties(rendered)  # check what is written, not the dict


def test_single_node_replication_settings() -> None:
    p = props()
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
        "min.insync.replicas",
    ):
        assert p[key] == "1", key


def test_group_and_topic_behaviour() -> None:
    p = props()
    assert p["group.initial.rebalance.delay.ms"] == "0"
    assert p["auto.create.topics.enable"] == "false"
    # Event-time records may be old; time-based retention must not delete them.
    assert p["log.retention.ms"] == "-1"
    assert 0 < int(p["log.retention.bytes"])
    # the cleaner takes each entities partition soon after it rolls (app/topics.py)
    assert int(p["log.cleaner.backoff.ms"]) <= 1000


def test_kraft_combined_node_on_loopback_only() -> None:
    p = props(port=29092, controller=41234, data=Path("/srv/k/data"))
    assert p["process.roles"] == "broker,controller"
    assert p["controller.quorum.voters"] == f"{p['node.id']}@127.0.0.1:41234"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:41234"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert p["controller.listener.names"] == "CONTROLLER"
    assert p["log.dirs"] == "/srv/k/data"
    hosts = re.findall(r"//([^:,]+):", p["listeners"] + "," + p["advertised.listeners"])
    assert hosts and set(hosts) == {"127.0.0.1"}


def heap_bytes(flag: str) -> int:
    number, unit = re.fullmatch(r"-Xm[xs](\d+)([kmgKMG]?)", flag).groups()
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit.lower()]


def test_java_command_fixes_and_caps_heap_and_sets_logging(tmp_path: Path) -> None:
    cmd = launcher.java_command("/usr/bin/java", tmp_path / "jars", tmp_path)
    [xmx] = [a for a in cmd if a.startswith("-Xmx")]
    [xms] = [a for a in cmd if a.startswith("-Xms")]
    assert heap_bytes(xmx) <= 2**30
    # a fixed heap, touched at start: the broker's RSS holds still under a steady load
    assert heap_bytes(xms) == heap_bytes(xmx)
    assert "-XX:+AlwaysPreTouch" in cmd
    assert f"-Dlog4j2.configurationFile={tmp_path / launcher.LOG4J_FILE}" in cmd
    assert cmd[cmd.index("-cp") + 1] == f"{tmp_path / 'jars'}/*"
    assert cmd[-1] == "kafka.Kafka"


def test_cluster_ids_are_valid_kafka_uuids() -> None:
    ids = {launcher.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid) and not cid.startswith("-")


def test_kafka_version_comes_from_the_pom(tmp_path: Path) -> None:
    version = launcher.kafka_version()
    assert re.fullmatch(r"4\.\d+\.\d+", version)
    assert f"<kafka.version>{version}</kafka.version>" in launcher.POM.read_text()


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("something else", None),
    ],
)
def test_java_version_parsing(output: str, major: int | None) -> None:
    assert launcher._java_major(output) == major


# --------------------------------------------------------------------------- CLI, no broker


def run_docket(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DOCKET), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def isolated_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_") and k != "JAVA_HOME"}
    env["DOCKET_BROKER_DIR"] = str(tmp_path / "broker")
    env["DOCKET_BROKER_CACHE"] = str(tmp_path / "cache")
    return env


def empty_path(tmp_path: Path) -> str:
    (tmp_path / "empty-bin").mkdir(exist_ok=True)
    return str(tmp_path / "empty-bin")


def test_missing_java_is_one_clear_sentence(isolated_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_docket("broker", "start", env={**isolated_env, "PATH": empty_path(tmp_path)})
    assert proc.returncode == 2
    assert "Java 17+" in proc.stderr and "apt-get install openjdk-17-jre-headless" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_missing_maven_is_one_clear_sentence(isolated_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_docket("broker", "fetch", env={**isolated_env, "PATH": empty_path(tmp_path)})
    assert proc.returncode == 2
    assert "Maven" in proc.stderr and "apt-get install maven" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_failed_download_never_looks_complete(isolated_env: dict[str, str], tmp_path: Path) -> None:
    # A Maven that writes part of the jars, then fails (like a dropped connection).
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    mvn = fake_bin / "mvn"
    mvn.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in -DoutputDirectory=*) d="${a#-DoutputDirectory=}";; esac; done\n'
        'mkdir -p "$d" && touch "$d/kafka_2.13-0.jar"\n'
        "echo 'Could not transfer artifact' >&2\nexit 1\n"
    )
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    proc = run_docket("broker", "fetch", env={**isolated_env, "PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert proc.returncode == 1
    assert "Could not transfer artifact" in proc.stderr and "docket broker fetch" in proc.stderr
    cache = tmp_path / "cache"
    assert list(cache.iterdir()) == []  # neither kafka-<version> nor a partial directory remains


def test_status_and_stop_without_a_broker(isolated_env: dict[str, str]) -> None:
    status = run_docket("broker", "status", env=isolated_env)
    assert status.returncode == 1 and "not running" in status.stdout
    for _ in range(2):  # stop is idempotent
        stop = run_docket("broker", "stop", env=isolated_env)
        assert stop.returncode == 0 and "no broker running" in stop.stderr


def test_stop_is_refused_while_a_stack_holds_the_broker_directory(isolated_env: dict[str, str]) -> None:
    """BrokerStopLeavesAStacksBrokerAlone: `docket broker stop` beside a running `make
    run` stopped the stack's broker and tore the stack down (exit 143) with no word of
    why (the thirteenth fresh-user trial); it refuses, naming the stack's pid and how
    to stop it. (This test process holds the stack lock, as `docket stack run` does.)"""
    from launcher import stacklock

    assert stacklock.hold(Path(isolated_env["DOCKET_BROKER_DIR"]), wait_s=0) is None
    stop = run_docket("broker", "stop", env=isolated_env)
    assert stop.returncode == 1, stop.stderr
    assert f"is the one a `make run` stack (`docket stack run`, pid {os.getpid()}) runs: stop the stack with Ctrl-C" in stop.stderr, stop.stderr


def test_pid_file_of_another_process_is_not_the_broker(tmp_path: Path) -> None:
    # A stale pid file whose pid now belongs to some other process (here: this one).
    (tmp_path / launcher.PID_FILE).write_text(f"{os.getpid()}\n")
    assert launcher.running_pid(tmp_path) is None
    assert launcher.stop_broker(tmp_path) is None
    assert not (tmp_path / launcher.PID_FILE).exists()


def test_busy_port_is_refused_with_advice(isolated_env: dict[str, str], tmp_path: Path) -> None:
    import socket

    from app.settings import load

    cache = load().broker_cache
    if not launcher.jars_dir(load()).is_dir():
        pytest.skip("needs the cached broker jars (`docket broker fetch`)")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # The real jar cache: the check must fail on the port, not on a download.
        env = {**isolated_env, "DOCKET_BROKER_PORT": str(port), "DOCKET_BROKER_CACHE": str(cache)}
        proc = run_docket("broker", "start", env=env)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr and "DOCKET_BROKER_PORT" in proc.stderr


def test_a_failed_start_shows_the_first_errors_before_the_tail() -> None:
    """BrokerFailureShowsItsFirstErrors: the bind failure logged 61 lines before the end
    comes first, marked with how far back it is, then the last 25 lines; a log whose
    errors are in its tail shows the tail alone."""
    from launcher.broker import _tail_text

    log = ["[2026-12-05 03:00:00,000] INFO starting (kafka.Kafka$)"] * 10
    log.append("[2026-12-05 03:00:01,000] ERROR [KafkaServer id=1] Fatal error during KafkaServer startup. "
               "Socket server failed to bind to 127.0.0.1:39592: Address already in use. (kafka.server.KafkaServer)")
    log += ["[2026-12-05 03:00:01,100] INFO shutting down (kafka.server.KafkaServer)"] * 60
    shown = _tail_text("\n".join(log)).splitlines()
    assert shown[0] == "    (the first errors, 36 lines before the last 25:)"  # 71 lines, the error 11th
    assert "Address already in use" in shown[1] and shown[2] == "    (...)"
    assert len(shown) == 3 + 25 and all("shutting down" in line for line in shown[3:])
    short = _tail_text("\n".join(log[:12])).splitlines()
    assert len(short) == 12 and "Address already in use" in short[10]


def fake_java_home(tmp_path: Path, script: str) -> str:
    """A JAVA_HOME whose bin/java is the shell ``script``."""
    java = tmp_path / "fake-jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n" + script)
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return str(java.parent.parent)


def test_a_stop_while_the_broker_checks_java_is_a_stop_not_a_missing_java(isolated_env, tmp_path: Path) -> None:
    """StackStopsOnSignal: the stack's SIGTERM reaches `docket broker run` and the
    `java -version` it runs alike (one process group); the check's failure is the
    stop's: exit 0 and "stopped before it started". It said "docket needs Java 17+
    ... cannot tell the version" and exited 2 (a fresh-user trial: Ctrl-C 0.5 s into
    `make run`). Here the fake java sends the SIGTERM to its parent, then gets one."""
    home = fake_java_home(tmp_path, "kill -TERM $PPID\nsleep 0.2\nkill -TERM $$\n")
    proc = run_docket("broker", "run", env={**isolated_env, "JAVA_HOME": home})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = proc.stdout + proc.stderr
    assert "SIGTERM received: stopping the broker" in said and "broker stopped before it started" in said, said
    assert "Java 17+" not in proc.stdout + proc.stderr


def test_a_java_killed_while_telling_its_version_is_named(isolated_env, tmp_path: Path) -> None:
    """A `java -version` killed by a signal when no stop was asked for is named as such,
    not "cannot tell the version"."""
    home = fake_java_home(tmp_path, "kill -TERM $$\n")
    proc = run_docket("broker", "run", env={**isolated_env, "JAVA_HOME": home})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "-version` was killed by SIGTERM" in proc.stderr and "Java 17+" in proc.stderr, proc.stderr


def test_a_broker_stopped_during_its_start_is_a_stop_not_a_failure(isolated_env, tmp_path: Path) -> None:
    """StackStopsOnSignal: `docket broker run` asked to stop before Kafka is ready exits
    0 ("broker stopped during its start") whatever status the JVM ends with: Kafka
    stopped while its controller starts reports a fatal fault and exits 1, which was
    printed as a failure with the log's tail and status 1 (a fresh-user trial: 8 of 20
    tries 2.0 to 2.5 s in). A stand-in for the JVM that exits 1 on SIGTERM and never
    answers; the SIGTERM comes from a timer in the same process, as from the stack."""
    script = (
        "import os, signal, sys, threading\n"
        "from app.settings import load\n"
        "from launcher import broker\n"
        "jvm = ('import signal, sys, time\\n'\n"
        "       'signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))\\n'\n"
        "       'time.sleep(60)\\n')\n"
        "broker._prepare = lambda settings, broker_dir, step, secure=None: ([sys.executable, '-c', jvm], '127.0.0.1:1')\n"
        "threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "sys.exit(broker.run_broker(load()))\n")
    proc = subprocess.run([sys.executable, "-c", script], env=isolated_env, cwd=Path(__file__).parents[2],
                          capture_output=True,
                          text=True, timeout=60)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said
    assert "broker stopped during its start (Kafka exited with code 1;" in said, said
    assert "Last lines" not in said, said
