"""A server port another process holds (app/ports.py): each of docket's servers refuses
to start with one line naming the port and the setting that moves it
(specs/integration.allium ServerPortInUseRefusedAtStart). Real sockets, no broker."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.ports import bindable, host_problem
from app.settings import SETTINGS, load
from launcher.stack import busy_ports

HOST = "127.0.0.1"


@pytest.fixture
def held_port():
    """A port a listening socket of this test holds."""
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        yield holder.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    env.update({"DOCKET_DATA_ROOT": str(tmp_path / "var"), "DOCKET_BROKER_DIR": str(tmp_path / "broker"),
                "DOCKET_API_TOKENS": "stand-in-token", **extra})
    return env


def _docket(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_held_port_is_not_bindable_and_a_released_one_is(held_port) -> None:
    """ServerPortInUseRefusedAtStart: bindable tells a port with a listener from a free one."""
    assert not bindable(HOST, held_port)
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        free = probe.getsockname()[1]
    assert bindable(HOST, free)
    assert bindable(HOST, 0)


def test_the_stacks_busy_ports_name_their_settings(held_port, monkeypatch: pytest.MonkeyPatch) -> None:
    """ServerPortInUseRefusedAtStart: each busy port of the stack's servers is named with
    the setting that moves it; free ones are not named."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    settings = dataclasses.replace(load(), api_port=held_port, instance_web_ports=(("a", 0), ("b", held_port)),
                                   clerk_web_port=0)
    busy = busy_ports(settings)
    assert len(busy) == 2, busy
    assert "(the REST API)" in busy[0] and "DOCKET_API_PORT" in busy[0] and f"port {held_port}" in busy[0]
    assert "(instance b's /metrics)" in busy[1] and "DOCKET_INSTANCE_B_WEB_PORT" in busy[1]
    assert busy_ports(settings, free=lambda _host, _port: True) == []


def test_two_servers_of_the_stack_on_one_port_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """ServerPortInUseRefusedAtStart: DOCKET_INSTANCE_A_WEB_PORT = DOCKET_INSTANCE_B_WEB_PORT
    started the stack, and the second instance to bind failed with Faust's traceback or a
    message blaming "another process" (the tenth fresh-user trial); the settings that
    share a port are named, the broker's among them when the stack runs its own."""
    from launcher.stack import shared_ports

    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    settings = dataclasses.replace(load(), api_port=7100, clerk_web_port=7101,
                                   instance_web_ports=(("a", 7102), ("b", 7102)), broker_port=7100)
    assert shared_ports(settings) == ["DOCKET_INSTANCE_A_WEB_PORT and DOCKET_INSTANCE_B_WEB_PORT are both 7102: "
                                      "each server of the stack needs a port of its own"]
    both = shared_ports(settings, broker_port=7100)
    assert both[0].startswith("DOCKET_API_PORT and DOCKET_BROKER_PORT are both 7100") and len(both) == 2
    apart = dataclasses.replace(settings, instance_web_ports=(("a", 7102), ("b", 7103)))
    assert shared_ports(apart) == []
    # on two hosts, neither a wildcard, two servers may share a port number
    assert shared_ports(dataclasses.replace(settings, api_port=7101, api_host="127.0.0.2"),
                        None)[0].startswith("DOCKET_INSTANCE_A")
    assert len(shared_ports(dataclasses.replace(apart, api_port=7101, api_host="0.0.0.0"))) == 1


def test_stack_run_starts_nothing_when_two_servers_share_a_port(tmp_path: Path) -> None:
    """ServerPortInUseRefusedAtStart: `docket stack run` with both instances' /metrics on
    one port exits 1 before starting anything, naming both settings."""
    proc = _docket(["stack", "run"], _env(tmp_path, DOCKET_INSTANCE_A_WEB_PORT="16167",
                                          DOCKET_INSTANCE_B_WEB_PORT="16167",
                                          DOCKET_KAFKA_BOOTSTRAP="kafka.example:9093"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "DOCKET_INSTANCE_A_WEB_PORT and DOCKET_INSTANCE_B_WEB_PORT are both 16167" in proc.stderr
    assert "starting the stack" not in out


def test_docket_api_refuses_a_held_port_in_one_line(tmp_path: Path, held_port) -> None:
    """ServerPortInUseRefusedAtStart: `docket api` on a held port exits 1 with one Error
    line naming DOCKET_API_PORT, before it connects to Kafka (none runs here)."""
    proc = _docket(["api", "--insecure-no-auth"], _env(tmp_path, DOCKET_API_PORT=str(held_port),
                                                      DOCKET_KAFKA_BOOTSTRAP="127.0.0.1:9"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"Error: port {held_port} on {HOST} (the REST API) is already in use" in proc.stderr
    assert "DOCKET_API_PORT (or --port)" in proc.stderr
    assert "Traceback" not in proc.stderr and "listening" not in proc.stdout


def test_stack_run_starts_nothing_on_a_held_api_port(tmp_path: Path, held_port) -> None:
    """ServerPortInUseRefusedAtStart: `docket stack run` (the default Procfile) whose API
    port another process holds exits 1 before starting anything, naming the setting; so
    a second `make run` can no longer report the first stack's API as ready."""
    proc = _docket(["stack", "run"], _env(tmp_path, DOCKET_API_PORT=str(held_port),
                                          DOCKET_KAFKA_BOOTSTRAP="kafka.example:9093"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"port {held_port} on {HOST} (the REST API) is already in use" in proc.stderr
    assert "starting the stack" not in out and "api.1" not in out


def test_stack_run_refused_for_a_held_port_writes_nothing_in_a_new_broker_dir(tmp_path: Path, held_port) -> None:
    """ServerPortInUseRefusedAtStart with the stack's own broker: no stack holds the
    broker directory, so the busy port is refused before the stack lock is taken, and a
    new DOCKET_BROKER_DIR is not created (a user check's refused second `make run` left
    one holding only the lock file)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        broker_port = probe.getsockname()[1]  # free once closed: the stack's Kafka is its own broker
    proc = _docket(["stack", "run"], _env(tmp_path, DOCKET_API_PORT=str(held_port),
                                          DOCKET_BROKER_PORT=str(broker_port)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"port {held_port} on {HOST} (the REST API) is already in use" in proc.stderr
    assert not (tmp_path / "broker").exists(), sorted(p.name for p in (tmp_path / "broker").iterdir())


def _worker_exit(**web) -> int | str | None:
    """The exit code of a Faust worker launched as docket's workers are (agents/worker.py
    DocketWorker) with the ``web`` settings (web_port, web_bind); it must exit before
    Faust starts anything (no broker answers at 127.0.0.1:9)."""
    import asyncio

    import faust

    from agents.worker import DocketWorker

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = faust.App("docket-test-ports", broker="kafka://127.0.0.1:9", **web)
        with pytest.raises(SystemExit) as exited:
            DocketWorker(app, loop=loop, quiet=True).execute_from_commandline()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return exited.value.code


def test_a_worker_refuses_a_held_web_port(held_port, capsys: pytest.CaptureFixture) -> None:
    """ServerPortInUseRefusedAtStart: a Faust worker launched as docket's workers are
    (agents/worker.py DocketWorker) whose web port is held exits 1 with one Error line
    naming --web-port and the stack's settings, before Faust starts anything."""
    assert _worker_exit(web_port=held_port, web_bind=HOST) == 1
    err = capsys.readouterr().err
    assert f"Error: port {held_port} on {HOST} (this worker's web server, /metrics) is already in use" in err
    assert "--web-port" in err and "DOCKET_CLERK_WEB_PORT" in err


NOT_LOCAL = "192.0.2.1"  # TEST-NET-1 (RFC 5737): no machine's own address
UNRESOLVED = "no.such.host.invalid"  # .invalid never resolves (RFC 2606)


def test_a_host_nothing_can_listen_on_is_named_with_its_setting() -> None:
    """ServerHostRefusedAtStart: a host that does not resolve, or an address that is not
    this machine's, is one message naming the setting; this machine's are None."""
    unresolved = host_problem(UNRESOLVED, "the REST API", "DOCKET_API_HOST (or --host)")
    assert unresolved.startswith(f"DOCKET_API_HOST (or --host)={UNRESOLVED} (the REST API) does not resolve ("), \
        unresolved
    foreign = host_problem(NOT_LOCAL, "the REST API", "DOCKET_API_HOST")
    assert foreign.startswith(f"DOCKET_API_HOST={NOT_LOCAL} (the REST API) is not an address of this machine"), foreign
    assert host_problem(HOST, "x", "Y") is None and host_problem("0.0.0.0", "x", "Y") is None
    assert host_problem("localhost", "x", "Y") is None


@pytest.mark.parametrize("host", [NOT_LOCAL, UNRESOLVED])
def test_docket_api_refuses_a_host_it_cannot_listen_on_in_one_line(tmp_path: Path, host: str) -> None:
    """ServerHostRefusedAtStart: `docket api` on such a host exits 1 with one Error line
    naming DOCKET_API_HOST, not a 42-line traceback (the eighth fresh-user trial)."""
    proc = _docket(["api"], _env(tmp_path, DOCKET_API_HOST=host, DOCKET_KAFKA_BOOTSTRAP="127.0.0.1:9"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"Error: DOCKET_API_HOST (or --host)={host} (the REST API) "), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_stack_run_starts_nothing_on_a_metrics_host_it_cannot_listen_on(tmp_path: Path) -> None:
    """ServerHostRefusedAtStart: `docket stack run` with a DOCKET_METRICS_HOST that does
    not resolve exits 1 before starting anything (each worker used to crash with a
    traceback, and the stack with them)."""
    proc = _docket(["stack", "run"], _env(tmp_path, DOCKET_METRICS_HOST=UNRESOLVED,
                                          DOCKET_KAFKA_BOOTSTRAP="kafka.example:9093"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"DOCKET_METRICS_HOST={UNRESOLVED} (the workers' /metrics) does not resolve" in proc.stderr, out
    assert "starting the stack" not in out and "Traceback" not in out


def test_a_worker_refuses_a_web_host_it_cannot_listen_on(capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ServerHostRefusedAtStart: a worker whose web server's host (DOCKET_METRICS_HOST)
    is not this machine's exits 1 with one Error line naming DOCKET_METRICS_HOST, before
    Faust starts."""
    monkeypatch.setenv("DOCKET_METRICS_HOST", NOT_LOCAL)
    assert _worker_exit(web_port=6066, web_bind=NOT_LOCAL) == 1
    err = capsys.readouterr().err
    assert f"Error: DOCKET_METRICS_HOST={NOT_LOCAL} (this worker's web server, /metrics) is not an address" in err


@pytest.mark.parametrize("metrics_host", [None, "127.0.0.1"])
def test_a_worker_names_web_bind_for_a_host_the_variable_did_not_set(capsys: pytest.CaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     metrics_host: str | None) -> None:
    """ServerHostRefusedAtStart: `faust -A docket_apps.instance worker --web-bind
    192.0.2.1` named DOCKET_METRICS_HOST=192.0.2.1, which the user never set (a
    fresh-user trial); a host the variable does not hold came from --web-bind, and the
    message names that option."""
    if metrics_host is None:
        monkeypatch.delenv("DOCKET_METRICS_HOST", raising=False)
    else:
        monkeypatch.setenv("DOCKET_METRICS_HOST", metrics_host)
    assert _worker_exit(web_port=6066, web_bind=NOT_LOCAL) == 1
    err = capsys.readouterr().err
    assert f"Error: --web-bind={NOT_LOCAL} (this worker's web server, /metrics) is not an address" in err, err
    assert "DOCKET_METRICS_HOST" not in err, err


def test_free_ports_are_distinct_and_free() -> None:
    """The ports of one stack (launcher.broker.free_ports) never repeat: probed one at a
    time, 200 bind-to-0 choices among the kernel's ~14,000 odd ports repeat one with a
    probability of about 0.76, so this fails for a picker that closes each probe before
    the next. Each is bindable once they are returned."""
    from launcher.broker import free_ports

    ports = free_ports(200)
    assert len(ports) == 200
    assert len(set(ports)) == 200, sorted(p for p in ports if ports.count(p) > 1)
    assert all(bindable(HOST, port) for port in ports)


def test_free_ports_are_below_the_ephemeral_range() -> None:
    """The kernel gives outgoing connections local ports from its ephemeral range
    (ip_local_port_range); a port chosen there was taken by one before a console worker
    bound it ("port 45035 ... already in use", the fresh-clone CI on 0fa0127). Every
    port free_ports chooses lies below that range."""
    from launcher.broker import free_ports

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(50)
    assert all(1024 <= port < low for port in ports), [p for p in ports if p >= low]


def test_stack_run_refuses_a_server_port_of_zero(tmp_path: Path) -> None:
    """ServerPortInUseRefusedAtStart: 0 picks a free port for a server run alone; the
    stack names its servers' ports to its clients and its readiness check, so it
    refuses 0 before starting anything (the ninth trial's stack printed
    http://127.0.0.1:0 and never became ready)."""
    proc = _docket(["stack", "run"], _env(tmp_path, DOCKET_API_PORT="0", DOCKET_KAFKA_BOOTSTRAP="kafka.example:9093"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DOCKET_API_PORT=0 (the REST API) picks a free port, which the stack cannot name" in proc.stderr
    assert "starting the stack" not in proc.stdout + proc.stderr


def test_an_ipv6_host_is_bracketed_in_urls() -> None:
    """ServerHostRefusedAtStart: an IPv6 bind address is a URL's host only in brackets
    (RFC 3986, 3.2.2): Faust read "http://::1:16966" as a port and every worker crashed
    with DOCKET_METRICS_HOST=::1 (the ninth trial); a link-local address without its
    zone cannot be listened on and is refused in one line."""
    import faust

    from agents.worker import web_host
    from app.ports import url_host

    assert url_host("::1") == "[::1]" and url_host("[::1]") == "[::1]" and url_host(HOST) == HOST
    assert web_host("::1") == "[::1]" and web_host(HOST) == HOST
    app = faust.App("docket-test-ports", web_host=web_host("::1"), web_port=6066, web_bind="::1")
    assert str(app.conf.canonical_url) == "http://[::1]:6066"
    assert "a link-local IPv6 address needs its interface" in host_problem("fe80::1", "x", "Y")
