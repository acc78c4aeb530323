"""docket over a SASL_SSL listener of a real Kafka broker (specs/integration.allium,
Kafka connection rules).

The module starts its own broker (launcher/broker.py, KRaft, from the cached jars) with a
PLAINTEXT listener and an extra SASL_SSL one: a CA and the broker's PKCS12 keystore
made at test time (tests/tls_kit.py), a SCRAM-SHA-512 user ``docket`` written into the
storage when it is formatted. Every docket process and every client of the test itself
is pointed at the SASL_SSL listener only, through the DOCKET_KAFKA_* settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import app.domains  # noqa: F401  registers the built-in domains
from launcher.broker import free_port
from app.settings import Settings, load
from chaos import workload
from launcher import broker as launcher
from tests.integration.clerk_kit import DocketProc, TopicTail, read_all
from tests.integration.procs import wait_for, worker_env
from tests.integration.test_clerk import (
    assert_one_result_each,
    oracle_for,
    start_clerk,
    start_instances,
    stop_all,
    wait_answered,
    wait_ready,
)
from tests.tls_kit import Pki, make_pki

pytestmark = pytest.mark.integration

USER = "docket"
EVENTS = 600
PARTITIONS = 4
FAIL_FAST_S = 30.0  # a refused login or an untrusted CA must stop a component within this
API_TOKEN = "sectest-" + secrets.token_hex(8)


@dataclasses.dataclass(frozen=True)
class SecureBroker:
    plaintext: str  # host:port of the PLAINTEXT listener (the launcher's readiness probe)
    sasl_ssl: str  # host:port of the SASL_SSL listener
    pki: Pki
    password: str


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A broker of this module's own with a SASL_SSL listener; always stopped."""
    base = tmp_path_factory.mktemp("secure-kafka")
    pki = make_pki(base / "pki")
    password = "pw-" + secrets.token_hex(8)
    secure = launcher.SecureListener(port=launcher.free_port(), keystore=pki.keystore,
                                     keystore_password=pki.keystore_password, users=((USER, password),))
    settings = dataclasses.replace(load(), broker_dir=base / "broker", broker_port=launcher.free_port())
    try:
        handle = launcher.start_broker(settings, timeout=120, die_with_parent=True, secure=secure)
        yield SecureBroker(handle.bootstrap, secure.bootstrap, pki, password)
    finally:
        launcher.stop_broker(settings.broker_dir, timeout=15)


def security_env(broker: SecureBroker, **override: str) -> dict[str, str]:
    """The DOCKET_KAFKA_* variables that point a component at the SASL_SSL listener."""
    return {
        "DOCKET_KAFKA_BOOTSTRAP": broker.sasl_ssl,
        "DOCKET_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "DOCKET_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "DOCKET_KAFKA_USERNAME": USER,
        "DOCKET_KAFKA_PASSWORD": broker.password,
        "DOCKET_KAFKA_SSL_CA_FILE": str(broker.pki.ca),
        "DOCKET_KAFKA_CLIENT_ID_PREFIX": "sectest",
        **override,
    }


@pytest.fixture
async def secure_settings(secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings of one test on the SASL_SSL listener (own prefix, 4 partitions, own data
    root), set in the environment so that subprocesses and the test's own clients use
    them; the topics are created through the SASL_SSL listener."""
    from app.topics import create_topics

    for key, value in security_env(secure_broker).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DOCKET_TOPIC_PREFIX", f"t{secrets.token_hex(5)}")
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("DOCKET_PARTITIONS", str(PARTITIONS))
    monkeypatch.setenv("DOCKET_INSTANCES", "a,b")
    settings = load()
    await create_topics(settings)
    return settings


@pytest.fixture
def spawn(secure_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., DocketProc]]:
    """``spawn(name, *args, command="instance", **env)`` -> DocketProc (not started), with
    the test's settings and ``env`` on top; SIGKILLed at teardown if still running."""
    spawned: list[DocketProc] = []

    def make(name: str, *args: str, command: str = "instance", **env: str) -> DocketProc:
        role = name if command == "instance" else "clerk"
        proc = DocketProc(instance=name, env=worker_env(secure_settings, **env),
                          data_dir=secure_settings.data_root / f"{secure_settings.app_id(role)}-{name}",
                          log_dir=tmp_path / "logs", command=command, args=tuple(args))
        spawned.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in spawned:
            proc.kill()
        assert not [p.pid for p in spawned if p.alive], "processes survived teardown"


def api_env() -> dict[str, str]:
    """What `docket api` needs beside the Kafka settings: a token and a free port."""
    return {"DOCKET_API_TOKENS": API_TOKEN, "DOCKET_API_PORT": str(free_port())}


def http(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers=headers or {}, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


async def api_ready(api: DocketProc, port: str) -> None:
    def ready() -> bool:
        api.assert_alive()
        try:
            return http(f"http://127.0.0.1:{port}/readyz")[0] == 200
        except OSError:
            return False

    await wait_for(lambda: asyncio.to_thread(ready), 120, "the API to answer /readyz 200", interval_s=0.5,
                   detail=api.log_tail)


async def test_pipeline_runs_end_to_end_over_sasl_ssl(secure_settings, spawn) -> None:
    """EveryKafkaClientUsesTheConnectionSettings, TopicsCreatedWithConfiguredReplication:
    with only the SASL_SSL listener's address and DOCKET_KAFKA_* security settings
    (SCRAM-SHA-512, the test CA), `docket topics create` (the fixture), instances a and
    b, the Clerk, the REST API, the workload producer and the test's readers all connect
    through TLS and SCRAM: an event POSTed to the API is answered 200 applied, and every
    one of the events gets exactly one agreed result equal to the pure replay's; no
    divergence. (KafkaLoginRefusedFailsFast's check passes for the right credentials.)"""
    s = secure_settings
    assert s.kafka.security_protocol == "SASL_SSL"
    insts = start_instances(spawn, "a,b")
    clerk, _port = start_clerk(spawn)
    env = api_env()
    api = spawn("api", command="api", **env).start()
    procs = [*insts.values(), clerk, api]
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    try:
        await wait_ready(s, insts, clerk)
        await api_ready(api, env["DOCKET_API_PORT"])
        status, answer = await asyncio.to_thread(
            http, f"http://127.0.0.1:{env['DOCKET_API_PORT']}/v1/events",
            {"event_name": "stock.adjust", "payload": {"warehouse": "w1", "sku": "sku-sec", "delta": 7}},
            {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "sec-1", "Content-Type": "application/json",
             "Prefer": "wait=60"})
        assert status == 200 and answer["outcome"]["status"] == "applied", (status, answer)
        positions = await workload.produce(s.kafka_bootstrap, s.input_topic,
                                           list(workload.inventory(20261201, EVENTS)), rate=300)
        expected = set(positions) | {(answer["position"]["partition"], answer["position"]["offset"])}
        assert len(expected) == EVENTS + 1
        await wait_answered(s, expected, results, divergences, procs, 180)
    finally:
        await results.stop()
        await divergences.stop()
    await stop_all(procs)
    _inputs, oracle = await oracle_for(s, expected)
    assert_one_result_each(await read_all(s.kafka_bootstrap, s.results_topic), expected, oracle)
    reports = await read_all(s.kafka_bootstrap, s.divergences_topic)
    assert reports == [], f"{len(reports)} divergence records over SASL_SSL, e.g. {reports[:2]}"


async def _fails_fast(proc: DocketProc, must_name: str, secret: str) -> str:
    began = time.monotonic()
    proc.start()
    await wait_for(lambda: not proc.alive, FAIL_FAST_S, f"{proc.instance} to exit on its own",
                   detail=proc.log_tail)
    took = time.monotonic() - began
    text = proc.log_text()
    assert proc.proc.returncode == 2, f"exit code {proc.proc.returncode}\n{text}"
    assert must_name in text, text
    assert "Traceback" not in text, text
    assert secret not in text, "the password appeared in the output"
    print(f"\n{proc.instance}: refused in {took:.1f} s: {text.strip().splitlines()[-1]}")
    return text


def refused_component(spawn, command: str, **env: str) -> DocketProc:
    """A worker as the Procfile starts it (--wait 180, which waits for an unreachable
    broker), or the API (which serves at once and connects in the background)."""
    if command == "api":
        return spawn("api", command="api", **api_env(), **env)
    return spawn("a" if command == "instance" else "clerk", "--wait", "180", command=command, **env)


@pytest.mark.parametrize("command", ["instance", "clerk", "api"])
async def test_wrong_password_fails_fast_naming_the_setting(secure_broker, spawn, command: str) -> None:
    """KafkaLoginRefusedFailsFast: a worker started with a wrong SCRAM password (and the
    Procfile's --wait 180) exits within 20 s with a configuration error naming
    DOCKET_KAFKA_PASSWORD, never showing the password; so does the API, which would
    otherwise retry its connection every second forever."""
    wrong = "wrong-" + secrets.token_hex(6)
    proc = refused_component(spawn, command, DOCKET_KAFKA_PASSWORD=wrong)
    text = await _fails_fast(proc, "DOCKET_KAFKA_PASSWORD", wrong)
    assert "refused the SASL SCRAM-SHA-512 login of DOCKET_KAFKA_USERNAME='docket'" in text


@pytest.mark.parametrize("command", [("topics", "create"), ("divergences",)])
async def test_wrong_password_file_is_named(secure_settings, tmp_path: Path, command: tuple[str, ...]) -> None:
    """KafkaLoginRefusedFailsFast: with the password from DOCKET_KAFKA_PASSWORD_FILE the
    message names that variable; `docket topics create` and `docket divergences` fail
    fast too (exit 2)."""
    import subprocess
    import sys

    wrong = "wrong-" + secrets.token_hex(6)
    pw = tmp_path / "pw"
    pw.write_text(wrong + "\n")
    env = worker_env(secure_settings, DOCKET_KAFKA_PASSWORD="", DOCKET_KAFKA_PASSWORD_FILE=str(pw))
    began = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).with_name("docket")), *command], env=env,
                          capture_output=True, text=True, timeout=FAIL_FAST_S, check=False)
    took = time.monotonic() - began
    assert proc.returncode == 2, proc.stderr
    assert "check the password in DOCKET_KAFKA_PASSWORD_FILE" in proc.stderr, proc.stderr
    assert wrong not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    print(f"\n{' '.join(command)}: refused in {took:.1f} s: {proc.stderr.strip().splitlines()[-1]}")


@pytest.mark.parametrize("command", ["instance", "api"])
async def test_untrusted_ca_fails_fast_naming_the_setting(secure_broker, spawn, command: str) -> None:
    """KafkaLoginRefusedFailsFast: a worker, or the API, whose DOCKET_KAFKA_SSL_CA_FILE did
    not sign the broker's certificate exits within 20 s naming DOCKET_KAFKA_SSL_CA_FILE."""
    proc = refused_component(spawn, command, DOCKET_KAFKA_SSL_CA_FILE=str(secure_broker.pki.other_ca))
    text = await _fails_fast(proc, "is not trusted by DOCKET_KAFKA_SSL_CA_FILE=", secure_broker.password)
    assert "set DOCKET_KAFKA_SSL_CA_FILE to the PEM file of the CA" in text


@pytest.mark.parametrize("protocol, listener, must_name", [
    ("SASL_SSL", "plaintext", "dropped it at the TLS handshake"),
    ("SSL", "plaintext", "dropped it at the TLS handshake"),
    ("SASL_PLAINTEXT", "plaintext", "answered, but not as a SASL listener"),
])
async def test_a_protocol_the_listener_does_not_speak_fails_fast_naming_the_setting(
        secure_broker, spawn, protocol: str, listener: str, must_name: str) -> None:
    """KafkaLoginRefusedFailsFast: a worker (with the Procfile's --wait 180) whose
    DOCKET_KAFKA_SECURITY_PROTOCOL does not match the listener it is pointed at exits
    within 20 s naming DOCKET_KAFKA_SECURITY_PROTOCOL, instead of waiting for a Kafka
    that "cannot be reached" although it answered."""
    env = {"DOCKET_KAFKA_BOOTSTRAP": getattr(secure_broker, listener), "DOCKET_KAFKA_SECURITY_PROTOCOL": protocol}
    if protocol == "SSL":
        env.update(DOCKET_KAFKA_SASL_MECHANISM="", DOCKET_KAFKA_USERNAME="", DOCKET_KAFKA_PASSWORD="")
    if protocol == "SASL_PLAINTEXT":
        env.update(DOCKET_KAFKA_SSL_CA_FILE="")
    proc = refused_component(spawn, "instance", **env)
    text = await _fails_fast(proc, f"DOCKET_KAFKA_SECURITY_PROTOCOL={protocol} does not match", secure_broker.password)
    assert must_name in text, text


async def test_more_replicas_than_brokers_fails_fast_naming_the_setting(secure_broker, tmp_path: Path) -> None:
    """TopicsCreatedWithConfiguredReplication: on a one-broker cluster,
    DOCKET_KAFKA_REPLICATION_FACTOR=3 is refused for good: `docket stack topics` (as
    `make run` starts it, with --wait 180) stops within 20 s naming the setting and
    the broker count, instead of retrying the refusal until its deadline."""
    import os
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")},
           "DOCKET_KAFKA_BOOTSTRAP": secure_broker.plaintext, "DOCKET_TOPIC_PREFIX": f"rf{secrets.token_hex(4)}",
           "DOCKET_KAFKA_REPLICATION_FACTOR": "3", "DOCKET_DATA_ROOT": str(tmp_path)}
    began = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).with_name("docket")), "stack", "topics", "--wait", "180"],
                          env=env, capture_output=True, text=True, timeout=FAIL_FAST_S, check=False)
    took = time.monotonic() - began
    assert proc.returncode != 0, proc.stdout
    assert "has 1 broker(s), too few for DOCKET_KAFKA_REPLICATION_FACTOR=3: set it to at most 1" in proc.stderr, (
        proc.stderr)
    print(f"\nstack topics: refused in {took:.1f} s: {proc.stderr.strip().splitlines()[-1]}")
