"""`make run` with your own Kafka (launcher/stack.py stack_kafka): which Kafka the stack uses,
whether it starts a broker, and what it says when the broker's port is taken. The
stack itself runs on stand-ins (no Kafka needed): a Procfile whose ``broker`` line
would announce itself."""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SETTINGS, load
from launcher.broker import HOST
from launcher.stack import StackError, stack_kafka


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    return dataclasses.replace(load(), broker_port=19092, broker_dir=tmp_path / "broker")


def decide(settings, env: dict, *, free: bool, own: bool = False, background: bool = False,
           holder: str | None = None):
    return stack_kafka(settings, env, port_free=lambda _port: free, own_broker_runs=lambda: own or background,
                       own_broker_background=lambda: background, stack_holder=lambda: holder)


def test_unset_bootstrap_starts_the_local_broker(settings) -> None:
    """StackUsesYourKafka: DOCKET_KAFKA_BOOTSTRAP unset and the port free (or held by the
    broker of DOCKET_BROKER_DIR): the stack starts its own broker, on DOCKET_BROKER_PORT."""
    k = decide(settings, {}, free=True)
    assert k.local and k.bootstrap == f"{HOST}:19092"
    assert decide(settings, {}, free=False, own=True).local


def test_bootstrap_elsewhere_starts_no_broker(settings) -> None:
    """StackUsesYourKafka: DOCKET_KAFKA_BOOTSTRAP names another address: no broker, and the
    banner says whose Kafka it uses."""
    k = decide(settings, {"DOCKET_KAFKA_BOOTSTRAP": "kafka-1.example:9093,kafka-2.example:9093"}, free=True)
    assert not k.local and k.bootstrap == "kafka-1.example:9093,kafka-2.example:9093"
    assert "your Kafka at kafka-1.example:9093" in k.why and "no local broker" in k.why


def test_bootstrap_on_the_taken_local_port_uses_that_kafka(settings) -> None:
    """StackUsesYourKafka: DOCKET_KAFKA_BOOTSTRAP=127.0.0.1:<DOCKET_BROKER_PORT> while
    another process holds that port (a Kafka the user runs there): it is used, no broker
    is started; with the port free, docket's own broker starts there."""
    env = {"DOCKET_KAFKA_BOOTSTRAP": f"{HOST}:19092"}
    k = decide(settings, env, free=False)
    assert not k.local and "already listening" in k.why
    assert decide(settings, env, free=True).local
    assert not decide(settings, {"DOCKET_KAFKA_BOOTSTRAP": "localhost:19092"}, free=False).local


def test_a_background_broker_of_the_broker_dir_is_used_as_it_is(settings) -> None:
    """StackUsesTheBackgroundBroker: the broker of DOCKET_BROKER_DIR started in the
    background (`docket broker start`) is used, whether DOCKET_KAFKA_BOOTSTRAP is unset or
    names it: no second broker on its directory, and the banner says the stack leaves it
    running; one in the foreground (an earlier stack's `broker run`, still stopping) is
    not: the stack's own broker waits for it to go."""
    for env in ({}, {"DOCKET_KAFKA_BOOTSTRAP": f"{HOST}:19092"}, {"DOCKET_KAFKA_BOOTSTRAP": "localhost:19092"}):
        k = decide(settings, env, free=False, background=True)
        assert not k.local, env
        assert k.bootstrap == (env.get("DOCKET_KAFKA_BOOTSTRAP") or f"{HOST}:19092")
        assert "already running" in k.why and "`docket broker start`" in k.why and "neither starts nor stops" in k.why
    assert decide(settings, {}, free=False, own=True).local
    # a bootstrap elsewhere wins over the local broker, whatever runs
    assert decide(settings, {"DOCKET_KAFKA_BOOTSTRAP": "kafka.example:9093"}, free=False,
                  background=True).bootstrap == "kafka.example:9093"


def test_bootstrap_naming_another_running_stacks_broker_uses_it(settings) -> None:
    """StackUsesYourKafka: DOCKET_KAFKA_BOOTSTRAP=127.0.0.1:<port> while another `make
    run` (pid 4242) runs its broker there from the same DOCKET_BROKER_DIR: the second
    stack waited 20 s for that stack's lock and failed (the tenth fresh-user trial); it
    uses that Kafka and starts no broker. Unset, or with no stack holding the directory
    (an earlier stack's broker still stopping), the stack's own broker waits for it."""
    env = {"DOCKET_KAFKA_BOOTSTRAP": f"{HOST}:19092"}
    k = decide(settings, env, free=False, own=True, holder="4242")
    assert not k.local and k.bootstrap == f"{HOST}:19092"
    assert "pid 4242" in k.why and "neither starts nor stops it" in k.why
    assert decide(settings, {}, free=False, own=True, holder="4242").local
    assert decide(settings, env, free=False, own=True, holder=None).local


def test_taken_port_without_bootstrap_says_what_to_do(settings) -> None:
    """BrokerPortTakenSaysWhatToDo: DOCKET_KAFKA_BOOTSTRAP unset and another process on
    the broker's port: refused, naming the port and both ways out (use that Kafka via
    DOCKET_KAFKA_BOOTSTRAP, or free the port / choose DOCKET_BROKER_PORT)."""
    with pytest.raises(StackError) as info:
        decide(settings, {}, free=False)
    text = info.value.message
    assert f"port 19092 on {HOST} is already in use" in text
    assert f"DOCKET_KAFKA_BOOTSTRAP={HOST}:19092" in text and "Use your own Kafka" in text
    assert "free the port" in text and "DOCKET_BROKER_PORT" in text


def _stand_in_procfile(tmp_path: Path) -> Path:
    py = shlex.quote(sys.executable)
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        f"broker: exec {py} -c 'print(\"BROKER STARTED\", flush=True)'\n"
        f"app: exec {py} -c 'import os; print(\"KAFKA=\" + os.environ[\"DOCKET_KAFKA_BOOTSTRAP\"], flush=True)'\n")
    return procfile


def _stack_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    env.update({"DOCKET_DATA_ROOT": str(tmp_path / "var"), "DOCKET_API_TOKENS": "stand-in-token",
                "DOCKET_BROKER_DIR": str(tmp_path / "broker"), "PYTHONUNBUFFERED": "1", **extra})
    return env


def test_stack_run_with_your_kafka_runs_no_broker(tmp_path: Path) -> None:
    """StackUsesYourKafka: `docket stack run` with DOCKET_KAFKA_BOOTSTRAP set elsewhere runs
    every Procfile process but ``broker``, hands them that address, and its banner names
    that Kafka. (The stand-in ``app`` exits at once, which stops the stack.)"""
    procfile = _stand_in_procfile(tmp_path)
    env = _stack_env(tmp_path, DOCKET_KAFKA_BOOTSTRAP="kafka.example:9093")
    proc = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "stack", "run",
                           "--procfile", str(procfile)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    out = proc.stdout + proc.stderr
    assert "KAFKA=kafka.example:9093" in out, out
    assert "BROKER STARTED" not in out and "broker.1" not in out, out
    assert "starting the stack (topics, instance-a, instance-b, clerk, api)" in out, out
    assert "your Kafka at kafka.example:9093 (DOCKET_KAFKA_BOOTSTRAP); no local broker is started" in out, out


def test_stack_run_refuses_a_taken_broker_port(tmp_path: Path) -> None:
    """BrokerPortTakenSaysWhatToDo: `docket stack run` whose broker port another process
    listens on, DOCKET_KAFKA_BOOTSTRAP unset: exits 1 before starting anything, saying
    what to do."""
    procfile = _stand_in_procfile(tmp_path)
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = _stack_env(tmp_path, DOCKET_BROKER_PORT=str(port))
        proc = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "stack", "run",
                               "--procfile", str(procfile)], env=env, capture_output=True, text=True, timeout=60,
                              check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"port {port} on {HOST} is already in use" in proc.stderr
    assert f"DOCKET_KAFKA_BOOTSTRAP={HOST}:{port}" in proc.stderr
    assert "BROKER STARTED" not in proc.stdout and "KAFKA=" not in proc.stdout


@pytest.mark.parametrize("instances, required, running, clerk, ready", [
    (("a", "b"), 2, ["a", "b"], True, True),
    (("a", "b"), 2, ["a"], True, False),
    (("a", "b"), 2, ["a", "b"], False, False),
    (("a", "b", "c"), 2, ["a", "b"], True, True),  # c stopped, or run by hand later
    (("a", "b", "c"), 2, ["c"], True, False),
    (("a", "b", "c"), 3, ["a", "b"], True, False),
])
def test_the_stack_is_ready_once_the_clerk_and_the_required_instances_are(settings, instances, required, running,
                                                                           clerk, ready) -> None:
    """StackReportsReady: `docket is ready` once the Clerk and DOCKET_REQUIRED_COPIES
    instances are in their consumer groups; with a, b, c and 2 required, c not running
    no longer holds it back (a fresh-clone user check saw the stack never ready while a
    and b decided)."""
    from launcher.stack import pipeline_is_ready

    s = dataclasses.replace(settings, instances=instances, required_copies=required)
    assert pipeline_is_ready(s, (running, clerk)) is ready


def test_the_stack_is_ready_only_once_its_workers_serve_metrics(settings) -> None:
    """StackReportsReady: the Clerk and the running instances given a web port must
    answer /metrics (Faust serves it once a worker's partitions are recovered), each
    instance's with docket_instance_ready 1.0 (its ready line logged); a group stable
    with a killed run's dead members made the stack say ready 9 s early, and "docket is
    ready" came before an instance's ready line in 3 of 8 starts."""
    import http.server
    import threading

    from launcher.broker import free_port
    from launcher.stack import metrics_url, workers_serving

    said_ready = {"value": b"1.0"}

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  http.server's name
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            # as prometheus_client writes it: HELP, TYPE, then the sample
            self.wfile.write(b"# HELP docket_instance_ready 1 once ...\n# TYPE docket_instance_ready gauge\n"
                             b"docket_instance_ready " + said_ready["value"] + b"\n")

        def log_message(self, *args) -> None:
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clerk_port, a_port = (server.server_address[1] for server in servers)
        b_port = free_port()  # nobody listens: b has not started serving
        s = dataclasses.replace(settings, metrics_host="127.0.0.1", clerk_web_port=clerk_port,
                                instance_web_ports=(("a", a_port), ("b", b_port)))
        assert workers_serving(s, ["a"]) is True  # b not running: not asked
        assert workers_serving(s, ["a", "b"]) is False
        assert workers_serving(dataclasses.replace(s, clerk_web_port=b_port), ["a"]) is False
        # serving, but its ready line not logged yet (it comes up to 0.2 s after the web server)
        said_ready["value"] = b"0.0"
        assert workers_serving(s, ["a"]) is False
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    for host, url in [("0.0.0.0", "http://127.0.0.1:1/metrics"), ("::", "http://127.0.0.1:1/metrics"),
                      ("10.1.2.3", "http://10.1.2.3:1/metrics"), ("fd00::1", "http://[fd00::1]:1/metrics")]:
        assert metrics_url(dataclasses.replace(settings, metrics_host=host), 1) == url


def test_a_component_killed_by_a_signal_ends_the_stack_with_128_plus_it(tmp_path) -> None:
    """StackStopsBrokerLast: a component that exits by itself stops the others, and the
    stack's status is that component's, 128+N for one killed by signal N (137 for
    SIGKILL) as the docstring said; it was 247 (sys.exit(-9)), which make reported as
    'Error 247' (a fresh-clone user check)."""
    from launcher.stack import run_procfile

    procfile = tmp_path / "Procfile"
    procfile.write_text("victim: sh -c 'sleep 0.5; kill -9 $$'\nbystander: sleep 60\n")
    code = run_procfile(procfile, dict(os.environ), colour=False, fallback_log=tmp_path / "stack.log", grace_s=5.0)
    assert code == 137


def test_a_component_that_ends_by_itself_with_0_is_named_and_the_stack_exits_1(tmp_path, capfd) -> None:
    """StackStopsBrokerLast: nothing asked the stack to stop, so a component that ends
    by itself, even with 0, stops the others with a line naming it, and the stack exits 1,
    as the README says. The fifteenth fresh-user trial saw the broker end with 0 and the
    others stopped without a word why; the README then said the stack exits 0."""
    from launcher.stack import exit_status, run_procfile

    procfile = tmp_path / "Procfile"
    procfile.write_text("quitter: sh -c 'sleep 0.5; exit 0'\nbystander: sleep 60\n")
    code = run_procfile(procfile, dict(os.environ), colour=False, fallback_log=tmp_path / "stack.log", grace_s=5.0)
    out = capfd.readouterr().out
    assert code == 1, out
    assert "quitter.1 ended by itself (rc=0): stopping the other components; the stack exits 1" in out, out
    assert [exit_status(c) for c in (None, 0, 3, -9, -15)] == [1, 1, 3, 137, 143]


def test_a_workers_wait_for_kafka_is_info_then_one_warning(settings) -> None:
    """WorkerRefusesToStartWithoutTopics: `--wait` says it waits once (INFO, through
    ``echo``), warns once if the wait outlasts ``warn_after_s`` naming what to check,
    and gives up after ``wait_s`` with a StackError. Kafka here is a closed port."""
    import asyncio
    import time

    from launcher.stack import wait_for_topics

    with socket.socket() as closed:
        closed.bind((HOST, 0))
        port = closed.getsockname()[1]
    told, warned = [], []
    began = time.monotonic()
    with pytest.raises(StackError, match=r"gave up after 1.5 s waiting for Kafka at .*docket broker start"):
        asyncio.run(wait_for_topics(dataclasses.replace(settings, kafka_bootstrap=f"{HOST}:{port}"), ["t"], 1.5,
                                    echo=told.append, warn=warned.append, warn_after_s=0.4, interval_s=0.1))
    assert time.monotonic() - began >= 1.5
    assert told == [f"waiting up to 1.5 s for Kafka at {HOST}:{port}"], told
    assert len(warned) == 1 and warned[0].startswith(f"still waiting for Kafka at {HOST}:{port} after "), warned
    assert "`docket broker start`" in warned[0] and "`docket topics create`" in warned[0], warned


def test_ctrl_c_while_a_worker_waits_for_kafka_ends_it_quietly_with_130(tmp_path: Path) -> None:
    """WorkerRefusesToStartWithoutTopics: SIGINT during `--wait` ends the worker with
    status 130 and one INFO line; it was click's "Aborted!" and status 1 (a fresh-user
    trial). Kafka here is a closed port, so the worker is still waiting."""
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")} | {
        "DOCKET_KAFKA_BOOTSTRAP": f"{HOST}:1", "DOCKET_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1",
        "DOCKET_DATA_ROOT": str(tmp_path / "data")}
    docket = Path(sys.executable).with_name("docket")
    proc = subprocess.Popen([str(docket), "instance", "--id", "a", "--wait", "60"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:  # blocks until the next line; the wait's line comes within a second or two
            seen.append(line)
            if "waiting up to 60 s for Kafka" in line:
                break
        assert seen and "waiting up to 60 s for Kafka" in seen[-1], seen
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 130, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert "interrupted while waiting for Kafka and its topics; nothing was started" in rest, rest
    assert "Aborted!" not in rest and "Traceback" not in rest, rest


def test_ctrl_c_before_a_commands_own_handling_exits_130_without_aborted() -> None:
    """WorkerRefusesToStartWithoutTopics: SIGINT that reaches a `docket` command before
    it handles Ctrl-C itself (a worker still importing Faust, before its --wait) ends
    it with status 130 and nothing printed; click printed "Aborted!" and exited 1. A
    real SIGINT through `docket`'s own entry point (app.cli.main), sent by a command
    added for the test."""
    script = ("import os, signal, time, click\n"
              "from app import cli\n"
              "@cli.cli.command('interrupted')\n"
              "def interrupted():\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    time.sleep(30)  # the signal's KeyboardInterrupt ends this at once\n"
              "cli.main()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    done = subprocess.run([sys.executable, "-c", script, "interrupted"], env=env, cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stderr == "" and done.stdout == "", (done.stdout, done.stderr)


def test_ctrl_c_while_a_command_imports_is_noted_then_130(tmp_path: Path) -> None:
    """WorkerRefusesToStartWithoutTopics: a SIGINT while `docket` imports the command's
    module does not interrupt the import (a KeyboardInterrupt inside an extension
    module's initialisation segfaulted in orjson 3.13, or printed a traceback: a
    fresh-user trial); once imported, the process ends with status 130, nothing
    printed, and the command does not run. Through the console script's entry point
    (app.entry.main), with a command added for the test whose import sends the SIGINT."""
    (tmp_path / "slow_import.py").write_text(
        "import os, signal, time, click\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)  # a KeyboardInterrupt raised by the signal would end the import here\n"
        "open(os.environ['IMPORTED'], 'w').write('imported')\n"
        "@click.command()\n"
        "def command():\n"
        "    print('ran')\n")
    script = ("from app import cli\n"
              "cli._COMMANDS['slow'] = 'slow_import:command'\n"
              "from app.entry import main\n"
              "main()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")} | {
        "PYTHONPATH": str(tmp_path), "IMPORTED": str(tmp_path / "imported")}
    done = subprocess.run([sys.executable, "-c", script, "slow"], env=env, cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stdout == "" and done.stderr == "", (done.stdout, done.stderr)
    assert (tmp_path / "imported").read_text() == "imported"  # the import ran to its end


def test_a_procfile_instance_outside_docket_instances_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """StackRefusesInstancesItCannotDecideWith: the twelfth fresh-user trial's
    DOCKET_INSTANCES=x,y started instances a and b, whose copies the Clerk never read,
    and waited for "docket is ready" for good; the start is refused before anything
    runs, naming them. The README's DOCKET_INSTANCES=a,b,c with 2 required copies
    (c started elsewhere) and a Procfile running no instance are fine."""
    from launcher.stack import PROCFILE, instance_mismatch

    text = PROCFILE.read_text()
    monkeypatch.setenv("DOCKET_INSTANCES", "x,y")
    said = instance_mismatch(load(), text)
    assert said is not None and "runs instance(s) a, b, which DOCKET_INSTANCES=x,y does not name" in said, said
    assert "DOCKET_INSTANCES=x,y,a,b" in said
    faults = text.replace("--id b --wait 180", "--id b --wait 180 --inject-faults bitflip:0.5")
    monkeypatch.setenv("DOCKET_INSTANCES", "a,c")
    assert "runs instance(s) b, which" in (instance_mismatch(load(), faults) or "")
    monkeypatch.setenv("DOCKET_INSTANCES", "a,b,c")
    monkeypatch.setenv("DOCKET_REQUIRED_COPIES", "2")
    assert instance_mismatch(load(), text) is None
    monkeypatch.setenv("DOCKET_REQUIRED_COPIES", "3")
    said = instance_mismatch(load(), text)
    assert said is not None and "runs 2 instance(s) (a, b) but DOCKET_REQUIRED_COPIES=3" in said, said
    assert instance_mismatch(load(), "api: exec docket api\n") is None
    # through the command: refused before any process, broker or lock
    from click.testing import CliRunner

    from launcher.stack import run_cmd

    monkeypatch.setenv("DOCKET_INSTANCES", "x,y")
    monkeypatch.setenv("DOCKET_REQUIRED_COPIES", "2")
    result = CliRunner().invoke(run_cmd, [], catch_exceptions=False)
    assert result.exit_code == 1 and "does not name: the Clerk would not read their copies" in result.output, \
        result.output
