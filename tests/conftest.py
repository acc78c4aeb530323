"""Shared fixtures.

Integration tests run against a real Kafka broker, chosen once per session:

1. ``DOCKET_KAFKA_BOOTSTRAP`` from the environment, if set (a broker you run yourself);
2. else a container (testcontainers) if a Docker engine answers;
3. else the project's own launcher (launcher.broker) on a free port with a throw-away directory.

The broker starts only when a test asks for it, and is always stopped: fixture teardown,
an atexit hook (Ctrl-C), a SIGTERM handler, and on Linux a parent-death signal that ends
the broker even if pytest itself is killed with SIGKILL.

Tests share the broker and isolate themselves by topic prefix and group id
(``unique_prefix``).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# Property tests draw new examples on every run here, but in CI (CI=true) the same ones
# every run, seeded from each test: a CI run on a fresh machine then fails only where a
# run here fails too (one once failed on an example no run here had drawn).
# `pytest --hypothesis-profile thorough` draws 20 times as many, to look for such examples.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    hypothesis_settings.load_profile("ci")

from app.settings import Settings, load
from launcher import broker as launcher


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that needs the broker is an integration test, whether or not its module
    # remembered the marker, so `-m "not integration"` really runs without Kafka.
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


# --------------------------------------------------------------------------- the broker


@dataclasses.dataclass
class SessionBroker:
    bootstrap: str
    # Set only for the local launcher: the settings it was started with, so a test can
    # stop and restart it on the same directory and port.
    settings: Settings | None = None


def _docker_engine_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False  # no engine configured: decide without importing docker
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return False


def _container_broker() -> Iterator[SessionBroker]:
    """Apache Kafka's own image at the version pinned in broker/pom.xml, configured with
    the same single-node properties as the local launcher."""
    from testcontainers.core.container import DockerContainer

    host_port = launcher.free_port()
    props = launcher.broker_properties(9092, 9093, Path("/tmp/kraft-combined-logs"))
    props["listeners"] = "PLAINTEXT://0.0.0.0:9092,CONTROLLER://127.0.0.1:9093"
    props["advertised.listeners"] = f"PLAINTEXT://127.0.0.1:{host_port}"
    container = DockerContainer(f"apache/kafka:{launcher.kafka_version()}").with_bind_ports(9092, host_port)
    for key, value in props.items():  # the image maps KAFKA_FOO_BAR to foo.bar
        container = container.with_env("KAFKA_" + key.upper().replace(".", "_"), value)
    container.start()
    try:
        bootstrap = f"127.0.0.1:{host_port}"
        deadline = time.monotonic() + 120
        while not launcher.broker_answers(bootstrap, timeout=2.0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka container did not answer on {bootstrap} within 120 s")
            time.sleep(0.2)  # poll interval of the readiness condition
        yield SessionBroker(bootstrap)
    finally:
        container.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBroker]:
    # `make test` passes a fixed directory so it can double-check afterwards that no
    # broker survived; otherwise a fresh temporary one.
    fixed = os.environ.get("DOCKET_TEST_BROKER_DIR")
    if fixed:
        broker_dir = Path(fixed).resolve()
        launcher.stop_broker(broker_dir, timeout=10)  # a leftover from a killed run
        shutil.rmtree(broker_dir, ignore_errors=True)
    else:
        broker_dir = tmp_path_factory.mktemp("kafka")
    settings = dataclasses.replace(load(), broker_dir=broker_dir, broker_port=launcher.free_port())

    def stop() -> None:
        launcher.stop_broker(broker_dir, timeout=15)

    atexit.register(stop)
    previous_term = signal.getsignal(signal.SIGTERM)
    if previous_term is signal.SIG_DFL:
        # SIGTERM would end pytest without teardown or atexit; make it an interrupt.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        handle = launcher.start_broker(settings, timeout=90, die_with_parent=True)
        yield SessionBroker(handle.bootstrap, settings)
    finally:
        stop()
        atexit.unregister(stop)
        if previous_term is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBroker]:
    external = os.environ.get("DOCKET_KAFKA_BOOTSTRAP", "").strip()
    if external:
        yield SessionBroker(external)
    elif _docker_engine_answers():
        yield from _container_broker()
    else:
        yield from _local_broker(tmp_path_factory)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: SessionBroker) -> str:
    """host:port of the session's Kafka broker."""
    return kafka_broker.bootstrap


# --------------------------------------------------------------------------- isolation


@pytest.fixture
def unique_prefix() -> str:
    """A topic prefix / group id stem no other test (or earlier run) uses."""
    return f"t{secrets.token_hex(5)}"


@pytest.fixture
async def docket_settings(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings for one test: its own topic prefix (topics created), its own data root,
    the session broker. Set through the environment, so subprocesses inherit them."""
    from app.topics import create_topics

    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("DOCKET_TOPIC_PREFIX", unique_prefix)
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(tmp_path / "data"))
    settings = load()
    await create_topics(settings)
    return settings


@pytest.fixture
def offline_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """docket's settings from the defaults alone (every DOCKET_* variable of the
    environment removed), with a Kafka address nobody listens on, so nothing a test
    builds can connect, and the data root in the test's own directory."""
    from app.settings import SETTINGS, load

    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nobody listens: nothing may connect
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(tmp_path / "data"))
    return load()
