"""The local Apache Kafka broker: `docket broker fetch | start | run | stop | status`.

Hosts without Docker run the same Apache Kafka (KRaft, one combined broker+controller
node on 127.0.0.1) that the compose file runs. Its jars come from Maven Central through
the pinned ``broker/pom.xml`` and are cached outside the checkout (DOCKET_BROKER_CACHE),
so every clone and CI run on a machine shares one download.

Everything the test fixture and the chaos harness need is importable:
:func:`start_broker`, :func:`stop_broker`, :func:`running_pid`; :func:`run_broker` runs it in
the foreground (the Procfile's broker). Restarting on the same
directory keeps the broker's data (storage is formatted only once).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import click

from app.cli_types import Seconds
from app.kafka_admin import quiet
from app.settings import Settings, load
from launcher.clean import broker_made, checkouts, home, refusal

POM = Path(__file__).resolve().parent.parent / "broker" / "pom.xml"
HOST = "127.0.0.1"
MIN_JAVA = 17
# The issue caps the broker at 1 GiB; it shares 2 cores with everything else. The heap is
# fixed at that size (-Xms = -Xmx, as Kafka's operations guide sets it) and touched at
# start (-XX:+AlwaysPreTouch), so the broker's RSS does not creep up for minutes while G1
# grows the heap: `make soak` read that fill as growth (+17% per 10 min at 2,000/s).
HEAP_MIN = "1g"
HEAP_MAX = "1g"

CONFIG_FILE = "server.properties"
LOG4J_FILE = "log4j2.properties"
LOG_FILE = "broker.log"
PID_FILE = "broker.pid"
# The pid of a broker started in the background (`docket broker start`), as against one
# in the foreground under `docket broker run` (a stack's): `make run` uses the first as
# it is and starts no broker of its own (launcher/stack.py stack_kafka).
BACKGROUND_FILE = "broker.background"

NEED_JAVA = (
    "docket needs Java {min}+ to run the local Kafka broker "
    "(Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`; or set JAVA_HOME){found}."
)
NEED_MAVEN = "docket needs Maven to download the Kafka broker's jars once (Debian/Ubuntu: `apt-get install maven`)."

# A step reporter: a context manager factory that shows "doing <what>" while it runs.
Step = Callable[[str], AbstractContextManager[object]]


def _no_step(_what: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


class BrokerError(click.ClickException):
    """The broker could not be fetched, started or stopped; the message says what to do."""


class MissingTool(BrokerError):
    """Java or Maven is not installed: exit code 2, like a usage error."""

    exit_code = 2


# --------------------------------------------------------------------------- jars


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version pinned in broker/pom.xml (``<kafka.version>``)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise BrokerError(f"{pom} has no <kafka.version> property")
    return node.text.strip()


def jars_dir(settings: Settings) -> Path:
    return settings.broker_cache / f"kafka-{kafka_version()}"


def fetch_jars(settings: Settings, step: Step = _no_step) -> Path:
    """Download the broker's jars into the cache unless they are already there.

    mvn writes into a private temporary directory that is renamed into place only after
    mvn succeeded, so an interrupted download never looks like a complete one.
    """
    target = jars_dir(settings)
    if target.is_dir():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MissingTool(NEED_MAVEN)
    settings.broker_cache.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_partials(settings.broker_cache)
    partial = settings.broker_cache / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
    ]  # fmt: skip
    try:
        with step(f"Downloading Apache Kafka {kafka_version()} from Maven Central (once, ~55 MB)"):
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BrokerError(
                f"mvn could not fetch Kafka {kafka_version()} (exit code {proc.returncode}); "
                f"its output ends with:\n{_tail_text(proc.stdout + proc.stderr)}\n"
                "Check access to Maven Central (or the mirrors in ~/.m2/settings.xml), "
                "then run `docket broker fetch` again."
            )
        if not any(partial.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"mvn succeeded but {partial} holds no kafka_2.13 jar; is {POM} intact?")
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent fetch that won the race
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _remove_abandoned_partials(cache: Path) -> None:
    """Delete half-downloaded directories whose fetching process no longer exists."""
    for path in cache.glob(".kafka-*.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- java


def java_executable() -> str:
    """Path of a Java >= 17 runtime (JAVA_HOME first, like Kafka's own scripts), or MissingTool."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise MissingTool(NEED_JAVA.format(min=MIN_JAVA, found=""))
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingTool(NEED_JAVA.format(min=MIN_JAVA, found=f"; `{java} -version` failed: {exc}")) from None
    major = _java_major(out.stderr + out.stdout)
    if out.returncode < 0:
        found = f"; `{java} -version` was killed by {signal.Signals(-out.returncode).name}"
        raise MissingTool(NEED_JAVA.format(min=MIN_JAVA, found=found))
    if major is None or major < MIN_JAVA:
        found = f"; {java} is Java {major}" if major else f"; cannot tell the version of {java}"
        raise MissingTool(NEED_JAVA.format(min=MIN_JAVA, found=found))
    return java


def _java_major(version_output: str) -> int | None:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" means Java 8


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SecureListener:
    """An extra SASL_SSL listener on 127.0.0.1:``port`` beside the PLAINTEXT one (which
    the broker's own readiness probe and inter-broker traffic keep using): TLS with the
    server key and certificate chain in ``keystore`` (PKCS12, ``keystore_password``),
    SASL ``mechanism`` (SCRAM-SHA-512) for the ``users`` ((name, password) pairs), whose
    SCRAM credentials are written into the storage when it is formatted. For tests of
    docket's security settings (tests/integration/test_kafka_security.py); a broker
    directory formatted without the users does not learn them later."""

    port: int
    keystore: Path
    keystore_password: str
    users: tuple[tuple[str, str], ...] = ()
    mechanism: str = "SCRAM-SHA-512"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def properties(self) -> dict[str, str]:
        """The listener's lines of server.properties (listeners are added by the caller)."""
        mech = self.mechanism.lower()
        return {
            "sasl.enabled.mechanisms": self.mechanism,
            f"listener.name.sasl_ssl.{mech}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type": "PKCS12",
            "listener.name.sasl_ssl.ssl.keystore.location": str(self.keystore),
            "listener.name.sasl_ssl.ssl.keystore.password": self.keystore_password,
            "listener.name.sasl_ssl.ssl.key.password": self.keystore_password,
        }


def broker_properties(port: int, controller_port: int, data_dir: Path,
                      secure: SecureListener | None = None) -> dict[str, str]:
    """server.properties for a single KRaft node that is both broker and controller
    (with ``secure``, an extra SASL_SSL listener)."""
    props = _broker_properties(port, controller_port, data_dir)
    if secure is not None:
        props["listeners"] += f",SASL_SSL://{HOST}:{secure.port}"
        props["advertised.listeners"] += f",SASL_SSL://{HOST}:{secure.port}"
        props["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
        props.update(secure.properties())
    return props


def _broker_properties(port: int, controller_port: int, data_dir: Path) -> dict[str, str]:
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # One node: every internal topic can only have one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "min.insync.replicas": "1",
        # Fewer partitions for the internal topics (defaults 50): they are created on the
        # first consumer group / transaction, and 50 of each is slow on two cores.
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.num.partitions": "4",
        # Rebalance at once instead of waiting 3 s for more members (tests, restarts).
        "group.initial.rebalance.delay.ms": "0",
        # docket creates every topic explicitly with the right partition count; a typo
        # must fail, not silently create a 1-partition topic.
        "auto.create.topics.enable": "false",
        # Retention by size, not time: record timestamps are event time (CreateTime) and
        # may be old (replays, fixed-timestamp tests); time retention would delete such
        # records within minutes. 256 MiB per partition bounds the disk of a dev broker.
        "log.retention.ms": "-1",
        "log.retention.bytes": str(256 * 1024 * 1024),
        "log.segment.bytes": str(64 * 1024 * 1024),
        # The log cleaner looks for a log to clean every second when it found none
        # (Kafka's default, 15 s, gathers the entities partitions that rolled meanwhile
        # into one burst of cleaning: app/topics.py ENTITIES_ROLL_JITTER_MS).
        "log.cleaner.backoff.ms": "1000",
    }


# Console appender: the process's stdout goes to broker.log, so JVM crash output and
# log lines end up in one file. INFO start-up lines help diagnose failures; the
# periodic controller statistics are noise.
LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.perf.name = org.apache.kafka.controller.EventPerformanceMonitor
logger.perf.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def render_properties(props: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in props.items())


def parse_properties(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def java_command(java: str, jars: Path, broker_dir: Path, main: str = "kafka.Kafka") -> list[str]:
    return [
        java,
        f"-Xms{HEAP_MIN}",
        f"-Xmx{HEAP_MAX}",
        "-XX:+AlwaysPreTouch",
        # Kafka's own start script uses G1 with short pauses; keep its latency profile.
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={broker_dir / LOG4J_FILE}",
        "-cp",
        f"{jars}/*",  # expanded by java itself, not by a shell
        main,
    ]


def new_cluster_id() -> str:
    """22 characters of URL-safe base64, like `kafka-storage random-uuid`."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # would be parsed as an option by StorageTool
            return cid


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class BrokerHandle:
    pid: int
    bootstrap: str
    broker_dir: Path
    log_path: Path
    already_running: bool = False
    seconds_to_ready: float = 0.0


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (reaping it first if it is our own child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    if not _pid_exists(pid):
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    try:  # no /proc (macOS)
        return subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return ""


def running_pid(broker_dir: Path) -> int | None:
    """pid of the broker started from broker_dir, if it still runs.

    The pid file alone is not trusted: the pid must belong to a kafka.Kafka process using
    this directory's config, so a recycled pid is never mistaken for the broker.
    """
    try:
        pid = int((broker_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if not _alive(pid):
        return None
    cmd = _cmdline(pid)
    if "kafka.Kafka" in cmd and str(broker_dir.resolve() / CONFIG_FILE) in cmd:
        return pid
    return None


def background_pid(broker_dir: Path) -> int | None:
    """pid of the broker of broker_dir if it runs and was started in the background
    (:func:`start_broker`: `docket broker start`, `make broker-start`), not in the
    foreground by `docket broker run`; None otherwise."""
    pid = running_pid(broker_dir)
    try:
        marked = int((broker_dir / BACKGROUND_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid is not None and pid == marked else None


def configured_bootstrap(broker_dir: Path) -> str | None:
    try:
        props = parse_properties((broker_dir / CONFIG_FILE).read_text())
    except OSError:
        return None
    listener = props.get("advertised.listeners", "").split(",")[0]
    return listener.removeprefix("PLAINTEXT://") or None


def _port_free(port: int) -> bool:
    # SO_REUSEADDR like the JVM's server sockets: a port with only TIME_WAIT leftovers of
    # a previous broker counts as free, a port with a listener does not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nobody listens on right now (:func:`free_ports`)."""
    return free_ports(1)[0]


# Where free_ports looks: below Linux's ephemeral range (net.ipv4.ip_local_port_range,
# 32768-60999 by default), from which the kernel gives outgoing connections their local
# ports. A port chosen there (a bind to port 0 picks from it too) can be taken by some
# client's connection between the choice and the server's bind: the console's browser
# test lost instance c that way ("port 45035 ... already in use", CI on 0fa0127).
FREE_PORT_RANGE = (20000, 32767)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports in FREE_PORT_RANGE that nobody listens on right now.

    Every probe socket stays bound until all are chosen, so the ports are distinct
    (ports picked one after the other, each probe closed before the next, can repeat,
    and two components of one stack would race for one port). The candidates are
    drawn at random, so that concurrent test sessions rarely try the same ones; which
    port a component gets is no input of docket's. Raises OSError when no free port is
    found in 10,000 tries."""
    import random

    draw = random.Random()
    with contextlib.ExitStack() as probes:
        ports: list[int] = []
        for _ in range(10_000):
            if len(ports) == count:
                return ports
            port = draw.randint(*FREE_PORT_RANGE)
            if port in ports:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((HOST, port))
            except OSError:
                sock.close()
                continue
            probes.enter_context(sock)
            ports.append(port)
        if len(ports) == count:
            return ports
    raise OSError(f"no {count} free port(s) on {HOST} in {FREE_PORT_RANGE[0]}-{FREE_PORT_RANGE[1]}")


def _controller_port(broker_dir: Path, broker_port: int) -> int:
    """Reuse the previous controller port if it is still free, else let the kernel pick.

    A fixed port+1 would collide with a second broker on the neighbouring port; the quorum
    voter address is configuration, not stored data, so it may change between starts.
    """
    with contextlib.suppress(OSError, ValueError):
        voters = parse_properties((broker_dir / CONFIG_FILE).read_text())["controller.quorum.voters"]
        previous = int(voters.rsplit(":", 1)[1])
        if previous != broker_port and _port_free(previous):
            return previous
    while True:
        port = free_port()
        if port != broker_port:
            return port


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log written)"


# A log4j line of the broker at ERROR or FATAL (LOG4J2_PROPERTIES' pattern: "[time] LEVEL ...")
_ERROR_LINE = re.compile(r"^\[[^\]]*\] (ERROR|FATAL) ")


def _tail_text(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a broker log, indented; when its first ERROR or FATAL
    line lies before them, that line and the next two errors come first: a broker that
    failed to bind its port logged why, then some 60 lines of shutdown, and the tail
    alone showed only the shutdown (a user check)."""
    every = text.rstrip().splitlines()
    tail = every[-lines:]
    errors = [i for i, line in enumerate(every) if _ERROR_LINE.match(line)]
    head = []
    if errors and errors[0] < len(every) - len(tail):
        head = [f"    (the first errors, {len(every) - len(tail) - errors[0]} lines before the last {len(tail)}:)"]
        head += ["    " + every[i][:500] for i in errors[:3] if i < len(every) - len(tail)]
        head.append("    (...)")
    return "\n".join(head + ["    " + line for line in tail]) or "    (empty)"


def set_parent_death_signal() -> None:
    """Linux, as a Popen preexec_fn: the child gets SIGTERM when the process that started
    it dies (even by SIGKILL), so a crashed test session leaves no broker or worker behind."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _format_storage(java: str, jars: Path, broker_dir: Path, step: Step,
                    secure: SecureListener | None = None) -> None:
    cmd = java_command(java, jars, broker_dir, main="kafka.tools.StorageTool")
    cmd += ["format", "-t", new_cluster_id(), "-c", str(broker_dir / CONFIG_FILE)]
    for name, password in secure.users if secure is not None else ():
        cmd += ["--add-scram", f"{secure.mechanism}=[name={name},password={password}]"]
    with step("Formatting the broker's storage"):
        proc = subprocess.run(
            cmd, cwd=broker_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise BrokerError(
            f"formatting the broker's storage in {broker_dir} failed (exit code {proc.returncode}):\n"
            f"{_tail_text(proc.stdout + proc.stderr)}\n"
            f"If the directory holds a broken broker, stop it and delete {broker_dir}."
        )


def _prepare(settings: Settings, broker_dir: Path, step: Step,
             secure: SecureListener | None = None) -> tuple[list[str], str]:
    """Everything before the broker's JVM starts, shared by `broker start` and `broker run`:
    find Java, fetch the jars, check the port, write the config, format the storage on the
    first start, rotate the log. Returns the broker's command line and bootstrap address."""
    java = java_executable()
    jars = fetch_jars(settings, step)
    port = settings.broker_port
    if not _port_free(port):
        raise BrokerError(
            f"port {port} on {HOST} is already in use by another process; stop it, or pick "
            "another port with DOCKET_BROKER_PORT (which every docket command then connects to, while "
            "DOCKET_KAFKA_BOOTSTRAP is unset)."
        )
    if secure is not None and not _port_free(secure.port):
        raise BrokerError(f"port {secure.port} on {HOST} (the SASL_SSL listener) is already in use")
    props = broker_properties(port, _controller_port(broker_dir, port), broker_dir / "data", secure)
    (broker_dir / CONFIG_FILE).write_text(render_properties(props))
    (broker_dir / LOG4J_FILE).write_text(LOG4J2_PROPERTIES)
    if not (broker_dir / "data" / "meta.properties").exists():
        _format_storage(java, jars, broker_dir, step, secure)
    log_path = broker_dir / LOG_FILE
    if log_path.exists():  # keep the previous run's log for post-mortems, one generation
        log_path.replace(broker_dir / (LOG_FILE + ".1"))
    return [*java_command(java, jars, broker_dir), str(broker_dir / CONFIG_FILE)], f"{HOST}:{port}"


def _check_broker_dir(broker_dir: Path) -> None:
    """Raise BrokerError unless ``broker_dir`` (resolved) may be the broker's: not one
    that `make clean` would refuse to delete (launcher/clean.py refusal), such as the
    checkout's own broker/, whose tracked pom.xml a broker's files would sit beside and
    `make clean` once deleted (specs/integration.allium CleanKeepsTrackedFiles); and new,
    empty or one docket's broker made, never a directory of someone else's files
    (BrokerRefusesAForeignDirectory)."""
    why = refusal(broker_dir, checkouts(), keep=(home(),))
    if why is None and broker_dir.is_dir() and not broker_made(broker_dir):
        others = [entry.name for entry in sorted(broker_dir.iterdir())]
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        why = f"it holds files docket's broker did not make ({shown})"
    if why is not None:
        raise BrokerError(f"DOCKET_BROKER_DIR {broker_dir} is not a directory of docket's own: {why}; "
                          "set DOCKET_BROKER_DIR to a new or empty directory (by default var/broker)")


def _spawn(cmd: list[str], broker_dir: Path, log_path: Path, die_with_parent: bool) -> subprocess.Popen:
    """The broker's JVM in a session of its own (Ctrl-C in the starting terminal must
    not reach it), its output appended to ``log_path``; with ``die_with_parent`` it gets
    SIGTERM when this process dies (set_parent_death_signal, Linux only)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            cwd=broker_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # preexec_fn is the only way to set PR_SET_PDEATHSIG; it only calls prctl.
            preexec_fn=set_parent_death_signal if die_with_parent and sys.platform == "linux" else None,  # noqa: PLW1509
        )


def start_broker(
    settings: Settings,
    timeout: float = 60.0,
    *,
    step: Step = _no_step,
    die_with_parent: bool = False,
    secure: SecureListener | None = None,
) -> BrokerHandle:
    """Start a broker from settings.broker_dir on settings.broker_port and wait until it
    answers a metadata request. If one already runs from that directory, return it.

    On failure the child is killed and BrokerError carries the tail of broker.log.
    ``die_with_parent`` (Linux) ties the broker's life to the calling *thread* (that is
    how PR_SET_PDEATHSIG works): call it from the main thread, not a thread pool.
    ``secure`` adds a SASL_SSL listener (:class:`SecureListener`); readiness is still
    probed on the PLAINTEXT one, whose address the handle carries.
    """
    broker_dir = settings.broker_dir.resolve()
    _check_broker_dir(broker_dir)
    broker_dir.mkdir(parents=True, exist_ok=True)
    log_path = broker_dir / LOG_FILE
    pid = running_pid(broker_dir)
    if pid is not None:
        bootstrap = configured_bootstrap(broker_dir) or f"{HOST}:{settings.broker_port}"
        return BrokerHandle(pid, bootstrap, broker_dir, log_path, already_running=True)

    cmd, bootstrap = _prepare(settings, broker_dir, step, secure)
    began = time.monotonic()
    proc = _spawn(cmd, broker_dir, log_path, die_with_parent)
    try:
        _write_atomically(broker_dir / PID_FILE, f"{proc.pid}\n")
        _write_atomically(broker_dir / BACKGROUND_FILE, f"{proc.pid}\n")
        with step(f"Starting Kafka {kafka_version()} on {bootstrap}"):
            _wait_until_ready(proc, bootstrap, began + timeout, log_path, timeout)
    except BaseException:
        _kill(proc)
        (broker_dir / PID_FILE).unlink(missing_ok=True)
        (broker_dir / BACKGROUND_FILE).unlink(missing_ok=True)
        raise
    # The broker outlives this Popen object on purpose (`docket broker start` returns).
    proc.returncode = 0  # silence "subprocess still running" ResourceWarning at exit
    return BrokerHandle(proc.pid, bootstrap, broker_dir, log_path, seconds_to_ready=time.monotonic() - began)


def run_broker(
    settings: Settings,
    timeout: float = 120.0,
    *,
    echo: Callable[[str], None] = print,
    step: Step = _no_step,
) -> int:
    """Run the broker in the foreground until it exits; return the exit code for the caller.

    Same configuration, storage and pid file as :func:`start_broker` (so `broker status` and
    `broker stop` see it), but attached: SIGTERM, SIGINT and SIGHUP are forwarded to the
    broker as SIGTERM (a controlled shutdown) and this returns once it has exited: 0 after
    a requested stop, the broker's own code otherwise. This is the Procfile's broker.

    The JVM runs in its own session, so a process manager's signal to this process group
    (honcho's ``killpg``) reaches only this wrapper, which decides when the broker stops;
    and it gets SIGTERM if this wrapper dies, even by SIGKILL (Linux), so no broker outlives
    it. Its output goes to ``broker.log`` in DOCKET_BROKER_DIR, as with `broker start`.
    """
    broker_dir = settings.broker_dir.resolve()
    _check_broker_dir(broker_dir)
    broker_dir.mkdir(parents=True, exist_ok=True)
    log_path = broker_dir / LOG_FILE
    pid = running_pid(broker_dir)
    if pid is not None:
        # A previous run still shutting down (its wrapper was killed), or a background
        # broker from `docket broker start`: two brokers must never share the directory.
        echo(f"a broker (pid {pid}) still runs from {broker_dir}; waiting up to 20 s for it to exit")
        if not _wait_gone(pid, time.monotonic() + 20):
            raise BrokerError(
                f"a broker (pid {pid}) already runs from {broker_dir}, probably started by "
                "`docket broker start`; stop it with `docket broker stop` and try again."
            )

    stop_requested: list[int] = []
    proc: subprocess.Popen | None = None

    def request_stop(signum: int, _frame: object) -> None:
        if not stop_requested:
            echo(f"{signal.Signals(signum).name} received: stopping the broker (controlled shutdown)")
        stop_requested.append(signum)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, request_stop) for sig in stops}
    try:
        try:
            cmd, bootstrap = _prepare(settings, broker_dir, step)
        except BrokerError:
            # the stop signal reached what _prepare runs too (`java -version` in this
            # process group): its failure is the stop's, not a missing Java (a Ctrl-C
            # 0.5 s into `make run` said "docket needs Java 17+", a fresh-user trial)
            if stop_requested:
                echo("broker stopped before it started")
                return 0
            raise
        if stop_requested:
            return 0
        began = time.monotonic()
        proc = _spawn(cmd, broker_dir, log_path, die_with_parent=True)
        _write_atomically(broker_dir / PID_FILE, f"{proc.pid}\n")
        ready = False
        try:
            try:
                _wait_until_ready(proc, bootstrap, began + timeout, log_path, timeout)
                ready = True
            except BrokerError:
                if not stop_requested:
                    raise
            else:
                echo(f"Kafka {kafka_version()} ready on {bootstrap} in {time.monotonic() - began:.1f} s "
                     f"(pid {proc.pid}; log {log_path})")
            code = proc.wait()  # signal handlers run while waiting; wait() resumes after them
        except BaseException:
            _kill(proc)
            raise
        finally:
            if running_pid(broker_dir) in (None, proc.pid):
                (broker_dir / PID_FILE).unlink(missing_ok=True)
        if stop_requested and code in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
            echo("broker stopped")
            return 0
        if stop_requested and not ready:
            # Kafka stopped while its controller starts ends with a "fatal fault" and
            # status 1: the stop's doing, not a broken broker (a Ctrl-C 2.0 to 2.5 s into
            # `docket broker run`, 8 of 20 tries: a fresh-user trial); broker.log has it
            echo(f"broker stopped during its start (Kafka exited with code {code}; {log_path} says how)")
            return 0
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        echo(f"the broker {how}. Last lines of {log_path}:\n{_tail(log_path)}")
        return 128 - code if code < 0 else (code or 1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def _wait_until_ready(proc: subprocess.Popen, bootstrap: str, deadline: float, log_path: Path, timeout: float) -> None:
    host, port = bootstrap.rsplit(":", 1)
    while True:
        code = proc.poll()
        if code is not None:
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            raise BrokerError(f"the broker {how} during start-up. Last lines of {log_path}:\n{_tail(log_path)}")
        if _tcp_open(host, int(port)) and broker_answers(bootstrap, timeout=2.0):
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"the broker did not answer a metadata request on {bootstrap} within {timeout:g} s "
                f"(stopped it). Last lines of {log_path}:\n{_tail(log_path)}\n"
                "Try again with a longer --timeout if the machine is busy."
            )
        time.sleep(0.1)  # poll interval of the readiness condition above


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def broker_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """True if a broker at bootstrap answers a Metadata request and lists itself."""
    return _run_coroutine(_metadata_probe(bootstrap, timeout))


async def _metadata_probe(bootstrap: str, timeout: float) -> bool:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        with quiet("aiokafka"):  # a refused probe is expected while the broker boots
            await asyncio.wait_for(client.bootstrap(), timeout)
        return bool(client.cluster.brokers())
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()


def _run_coroutine(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from async code (e.g. an async test): run the probe on a private loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def stop_broker(broker_dir: Path, timeout: float = 30.0) -> int | None:
    """Stop the broker started from broker_dir: SIGTERM (controlled shutdown), then
    SIGKILL after ``timeout`` seconds. Returns the pid it stopped, None if none ran."""
    broker_dir = broker_dir.resolve()
    pid = running_pid(broker_dir)
    if pid is None:
        (broker_dir / PID_FILE).unlink(missing_ok=True)
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, time.monotonic() + timeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # session leader: its group is the broker
        if not _wait_gone(pid, time.monotonic() + 10):
            raise BrokerError(f"broker pid {pid} survived SIGKILL; check it with `ps -p {pid}`")
    (broker_dir / PID_FILE).unlink(missing_ok=True)
    (broker_dir / BACKGROUND_FILE).unlink(missing_ok=True)
    return pid


def _wait_gone(pid: int, deadline: float) -> bool:
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # poll interval of the exit condition
    return True


# --------------------------------------------------------------------------- CLI


def _cli_step(what: str) -> AbstractContextManager[object]:
    """A spinner on a terminal; one plain line otherwise (CI logs)."""
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        return console.status(what + " ...")
    click.echo(what + " ...", err=True)
    return contextlib.nullcontext()


@click.group()
def broker() -> None:
    """The local Apache Kafka broker (KRaft, one node on 127.0.0.1)."""


@broker.command()
def fetch() -> None:
    """Download the broker's jars into DOCKET_BROKER_CACHE unless they are there."""
    settings = load()
    cached = jars_dir(settings).is_dir()
    path = fetch_jars(settings, _cli_step)
    click.echo(f"Kafka {kafka_version()} jars {'already cached' if cached else 'fetched'}: {path}", err=True)


@broker.command()
@click.option("--timeout", type=Seconds(), default=60.0, show_default=True, help="Seconds to wait for the broker to answer.")
def start(timeout: float) -> None:
    """Start the broker in the background and print its bootstrap address."""
    settings = load()
    handle = start_broker(settings, timeout, step=_cli_step)
    if handle.already_running:
        click.echo(f"broker already running from {handle.broker_dir} (pid {handle.pid})", err=True)
    else:
        click.echo(
            f"broker ready in {handle.seconds_to_ready:.1f} s (pid {handle.pid}); log: {handle.log_path}",
            err=True,
        )
    if settings.kafka_bootstrap != handle.bootstrap:
        click.echo(
            f"note: DOCKET_KAFKA_BOOTSTRAP is {settings.kafka_bootstrap}; "
            f"set it to {handle.bootstrap} so docket's components use this broker",
            err=True,
        )
    click.echo(handle.bootstrap)


@broker.command()
@click.option("--timeout", type=Seconds(), default=120.0, show_default=True, help="Seconds to wait for the broker to answer.")
def run(timeout: float) -> None:
    """Run the broker in the foreground (the Procfile's broker): Ctrl-C or SIGTERM stops it.

    Formats the storage on the first run; keeps its data in DOCKET_BROKER_DIR and its log
    in broker.log there. Exit code 0 after a requested stop, the broker's otherwise."""
    settings = load()
    sys.exit(run_broker(settings, timeout, echo=lambda line: click.echo(line, err=True), step=_cli_step))


@broker.command()
@click.option("--timeout", type=Seconds(), default=30.0, show_default=True, help="Seconds to wait after SIGTERM before SIGKILL.")
def stop(timeout: float) -> None:
    """Stop the broker (idempotent). Refused while a `make run` stack holds the broker
    directory: its broker is the stack's, and stopping it tore the whole stack down
    (exit 143) with no word of why (the thirteenth fresh-user trial)."""
    from launcher import stacklock

    broker_dir = load().broker_dir
    stack = stacklock.holder(broker_dir)
    if stack is not None:
        raise click.ClickException(f"the broker of {broker_dir} is the one a `make run` stack (`docket stack run`, "
                                   f"pid {stack}) runs: stop the "
                                   "stack with Ctrl-C in its terminal (or `kill -INT` its pid), which stops the "
                                   "broker after its components")
    pid = stop_broker(broker_dir, timeout)
    click.echo(f"broker stopped (pid {pid})" if pid else f"no broker running from {broker_dir}", err=True)


@broker.command()
def status() -> None:
    """Say whether the broker runs; exit code 0 if it does, 1 if not."""
    broker_dir = load().broker_dir
    pid = running_pid(broker_dir)
    if pid is None:
        click.echo(f"not running (dir {broker_dir})")
        sys.exit(1)
    click.echo(f"running: pid {pid}, bootstrap {configured_bootstrap(broker_dir)}, dir {broker_dir}")
