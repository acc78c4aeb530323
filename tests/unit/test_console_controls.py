"""The fault console's API (specs/console.allium; CONTRACT.md), without a broker: a
real aiohttp server (console/web.py) over the real Controller (console/stack.py),
with real OS processes standing in for the workers: each logs the phase lines that
chaos/stack.py Proc looks for (a stand-in started with STANDIN_MODE=restoring stops
there and never becomes ready), then sleeps until it is signalled."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents.faults import LiveFaults
from app.registry import registry
from app.settings import load
from chaos.stack import BrokerKeeper, Proc
from console.monitor import Monitor
from console.safety import SafetyCheck
from console.stack import Controller, Feeder, console_settings
from console.web import make_app
from tests.integration.procs import wait_for

TOKEN = "s3cret-console-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STANDIN = r"""
import os, time
print("[2026-12-01 10:00:00] Setting newly assigned partitions", flush=True)
print("[^---Recovery]: Highwater for active changelog partitions", flush=True)
if os.environ.get("STANDIN_MODE") != "restoring":
    print("[^---Recovery]: Recovery complete", flush=True)
    print("instance ready: recovery complete, advertising watermarks", flush=True)
    print("[^DocketWorker]: Ready", flush=True)
while True:
    time.sleep(0.05)
"""


class StandIn(Proc):
    """A Proc whose process is the stand-in script instead of a docket worker."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", STANDIN]


class Console:
    def __init__(self, tmp: Path, modes: dict[str, str]) -> None:
        self.settings = console_settings(load(), tmp, 4)
        self.procs = {role: StandIn(role, {**os.environ, "STANDIN_MODE": modes.get(role, "ready")},
                                    tmp / f"data-{role}", tmp / "logs")
                      for role in ("a", "b", "c", "clerk")}
        self.files = {i: tmp / "faults" / f"{i}.faults" for i in ("a", "b", "c")}
        self.controller = Controller(self.procs, BrokerKeeper(self.settings), self.files, fault_rate=0.3)
        self.feeder = Feeder(self.settings, 50, seed=1)
        safety = SafetyCheck(registry.versions(self.settings.domain), 4, self.settings.idempotency_ttl_ms)
        self.monitor = Monitor(self.settings, self.controller, {}, self.feeder, safety)
        self.stopped = asyncio.Event()
        self.app = make_app(self.controller, self.monitor.state, self.feeder.set_rate, TOKEN, self.stopped.set)


@pytest.fixture
async def console(tmp_path):
    modes = {}
    holder: dict = {}

    async def start(**mode):
        modes.update(mode)
        c = Console(tmp_path, modes)
        for p in c.procs.values():
            p.start()
        server = TestServer(c.app)
        client = TestClient(server)
        await client.start_server()
        holder.update(console=c, client=client)
        c.client = client
        return c

    yield start
    if holder:
        await holder["client"].close()
        await holder["console"].controller.shutdown()


async def post(client, path: str, body=None, headers=AUTH):
    resp = await client.post(path, json=body, headers=headers) if body is not None else \
        await client.post(path, headers=headers)
    return resp.status, await resp.json()


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): state T in /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_request_line_the_parser_refuses_logs_nothing_of_the_token(console, caplog) -> None:
    """ConsoleRefusesBadToken: ``GET /api/stream?token=<token>&x=<raw UTF-8 bytes>`` made
    aiohttp log ERROR 'Error handling request' with a traceback quoting the request
    line, the token in it (the tenth fresh-user trial). Served as `docket console`
    serves (console/web.py make_runner): a 400, and no log record holds the token."""
    import logging

    from aiohttp import web

    from console.web import make_runner

    c = await console()
    runner = make_runner(c.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001  the port the kernel chose
        caplog.set_level(logging.DEBUG)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/stream?token={TOKEN}&x=".encode() + "é".encode() + b" HTTP/1.1\r\n"
                     b"Host: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    finally:
        await runner.cleanup()
    assert head.split(b" ")[1] == b"400", head
    logged = "\n".join(r.getMessage() + (caplog.text if r.exc_info else "") for r in caplog.records)
    assert TOKEN not in logged and TOKEN not in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_api_needs_the_token_and_never_echoes_it(console) -> None:
    """ConsoleRefusesMissingToken, ConsoleRefusesBadToken, ConsoleAcceptsToken,
    ConsolePageNeedsNoToken: /api/* without a token is 401 missing_token; a wrong one
    (header or query), or another scheme, is 401 bad_token, and no answer holds what was
    sent; the right one in the header or the query is served; the page needs none; a
    refused kill kills nothing."""
    c = await console()
    client = c.client
    resp = await client.get("/api/state")
    assert resp.status == 401 and (await resp.json())["error"] == "missing_token"
    for headers, query in (({"Authorization": "Bearer wrong-token-xyz"}, ""), ({}, "?token=wrong-token-xyz"),
                           ({"Authorization": f"Basic {TOKEN}"}, ""), ({"Authorization": "Bearer"}, "")):
        resp = await client.get("/api/state" + query, headers=headers)
        text = await resp.text()
        assert resp.status == 401 and (await resp.json())["error"] == "bad_token", (headers, query)
        assert "wrong-token-xyz" not in text and TOKEN not in text
    resp = await client.get(f"/api/state?token={TOKEN}")
    assert resp.status == 200 and (await resp.json())["nodes"][0]["name"] == "a"
    resp = await client.get("/api/state", headers=AUTH)
    assert resp.status == 200
    # a header, when there is one, is what counts
    resp = await client.get(f"/api/state?token={TOKEN}", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    resp = await client.get("/")
    assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
    status, body = await post(client, "/api/nodes/a/kill", headers={})
    assert status == 401 and body["error"] == "missing_token"
    assert c.procs["a"].alive
    status, body = await post(client, "/api/stop", headers={"Authorization": "Bearer nope"})
    assert status == 401 and not c.stopped.is_set()


async def test_unknown_nodes_and_actions_are_refused(console) -> None:
    """ConsoleRefusesUnknownNode, ConsoleRefusesUnknownAction, ConsoleRefusesCorruptOfClerk,
    OnlyInstancesAreCorrupted: an unknown node is 404 listing the nodes; an action the
    node does not have is 400 listing its actions; corrupt on the Clerk is 400
    not_an_instance."""
    c = await console()
    status, body = await post(c.client, "/api/nodes/x/kill")
    assert (status, body["error"]) == (404, "unknown_node")
    assert body["message"] == "no node 'x': nodes are a, b, c, clerk, broker"
    status, body = await post(c.client, "/api/nodes/b/explode")
    assert (status, body["error"]) == (400, "unknown_action")
    assert body["message"].endswith("actions of b: kill, restart, slow, corrupt")
    status, body = await post(c.client, "/api/nodes/broker/kill")
    assert (status, body["error"]) == (400, "unknown_action") and "stop, start" in body["message"]
    status, body = await post(c.client, "/api/nodes/clerk/corrupt", {"kind": "bitflip"})
    assert (status, body["error"]) == (400, "not_an_instance")
    assert c.controller.node("clerk")["corrupt"] is None
    status, body = await post(c.client, "/api/nodes/a/kill", headers={**AUTH, "Content-Type": "application/json"})
    assert status == 200  # an empty body is no body


async def test_kill_double_kill_and_restart(console) -> None:
    """ConsoleKillsNode, ConsoleRefusesDoubleKill, ConsoleRestartsNode: kill SIGKILLs a
    running worker (it is gone, it reads dead); a second kill is 409 already_dead;
    restart starts it again (starts 2) and it becomes ready."""
    c = await console()
    await wait_for(lambda: c.controller.state_of("b") == "ready", 30, "b ready")
    pid = c.procs["b"].pid
    status, body = await post(c.client, "/api/nodes/b/kill")
    assert status == 200 and body == {"ok": True, "node": {
        "name": "b", "kind": "instance", "state": "dead", "pid": None, "starts": 1, "slowed": False, "corrupt": None}}
    assert not _exists(pid)
    assert c.procs["b"].returncode == -9
    status, body = await post(c.client, "/api/nodes/b/kill")
    assert (status, body["error"]) == (409, "already_dead")
    status, body = await post(c.client, "/api/nodes/b/restart")
    assert status == 200 and body["node"]["starts"] == 2 and body["node"]["state"] in ("starting", "restoring", "ready")
    await wait_for(lambda: c.controller.state_of("b") == "ready", 30, "b ready again")
    state = (await (await c.client.get("/api/state", headers=AUTH)).json())
    assert [n["state"] for n in state["nodes"]] == ["ready", "ready", "ready", "ready", "stopped"]
    assert any(e["text"].startswith("killed b (SIGKILL") for e in state["log"])


async def test_restart_while_running_or_restoring_is_refused(console) -> None:
    """ConsoleRefusesRestartWhileRunning: restart of a worker that runs is 409
    already_running, whatever its phase: here a stays restoring (never ready) and the
    clerk is ready."""
    c = await console(a="restoring")
    await wait_for(lambda: c.controller.state_of("a") == "restoring", 30, "a restoring")
    await wait_for(lambda: c.controller.state_of("clerk") == "ready", 30, "clerk ready")
    for name in ("a", "clerk"):
        pid = c.procs[name].pid
        status, body = await post(c.client, f"/api/nodes/{name}/restart")
        assert (status, body["error"]) == (409, "already_running")
        assert c.procs[name].pid == pid and c.procs[name].starts == 1
    assert "restoring" in (await post(c.client, "/api/nodes/a/restart"))[1]["message"]


async def test_slow_duty_cycle_and_refusals(console) -> None:
    """ConsoleSlowsNode, ConsoleRefusesSlowOfDeadNode, OnlyRunningNodesAreSlowed: slow on
    stops the process part of every second (it is seen stopped, state slowed); off
    continues it at once; a kill of a slowed worker ends its duty cycle; slow of a dead
    worker is 409 dead; a body without a boolean "on" is 400."""
    c = await console()
    status, body = await post(c.client, "/api/nodes/c/slow", {"on": True})
    assert status == 200 and body["node"]["slowed"] and body["node"]["state"] == "slowed"
    pid = c.procs["c"].pid
    await wait_for(lambda: _stopped(pid), 5, "c stopped by the duty cycle", interval_s=0.02)
    await wait_for(lambda: not _stopped(pid), 5, "c continued by the duty cycle", interval_s=0.02)
    status, body = await post(c.client, "/api/nodes/c/slow", {"on": False})
    assert status == 200 and not body["node"]["slowed"]
    assert not _stopped(pid)
    await asyncio.sleep(1.2)  # longer than a duty cycle: nothing stops it any more
    assert not _stopped(pid)
    status, body = await post(c.client, "/api/nodes/c/slow", {"on": "yes"})
    assert (status, body["error"]) == (400, "bad_body")
    await post(c.client, "/api/nodes/c/slow", {"on": True})
    await wait_for(lambda: _stopped(pid), 5, "c stopped again", interval_s=0.02)
    status, body = await post(c.client, "/api/nodes/c/kill")  # while stopped
    assert status == 200 and body["node"]["state"] == "dead" and not body["node"]["slowed"]
    assert not _exists(pid)
    status, body = await post(c.client, "/api/nodes/c/slow", {"on": True})
    assert (status, body["error"]) == (409, "dead")
    assert all(n["slowed"] is False or n["state"] != "dead" for n in c.monitor.state()["nodes"])


async def test_corrupt_switches_the_instances_live_fault_file(console, tmp_path) -> None:
    """ConsoleCorruptsInstance, ConsoleRefusesBadFaultKind, OnlyInstancesAreCorrupted:
    corrupt writes the instance's switch file, which the worker's LiveFaults reads as
    on (the console's fault rate) and then off; a bad or missing kind is 400 bad_kind
    and changes nothing; a dead instance may be switched (it reads it when it starts)."""
    c = await console()
    live = LiveFaults(c.files["a"], "a")
    assert live.poll() is None
    status, body = await post(c.client, "/api/nodes/a/corrupt", {"kind": "bitflip"})
    assert status == 200 and body["node"]["corrupt"] == "bitflip" and body["node"]["state"] == "faulty"
    injector = live.poll()
    assert injector is not None and (injector.spec.kind, injector.spec.rate) == ("bitflip", 0.3)
    for bad in ({"kind": "flood"}, {}, {"kind": 3}):
        status, body = await post(c.client, "/api/nodes/a/corrupt", bad)
        assert (status, body["error"]) == (400, "bad_kind"), bad
    assert live.poll() is injector
    status, body = await post(c.client, "/api/nodes/a/corrupt", {"kind": None})
    assert status == 200 and body["node"]["corrupt"] is None
    assert live.poll() is None
    await post(c.client, "/api/nodes/b/kill")
    status, body = await post(c.client, "/api/nodes/b/corrupt", {"kind": "state"})
    assert status == 200 and body["node"]["state"] == "dead" and body["node"]["corrupt"] == "state"
    assert c.files["b"].read_text().strip() == "state:0.3"


async def test_a_second_faulty_instance_is_refused(console) -> None:
    """ConsoleKeepsOneFaultyInstance: with two copies required of three, corrupting a
    second instance while one is faulty is 409 second_faulty_instance, naming it and
    saying why, and changes no switch. A bitflip switch turned off leaves its instance
    sound; a `state` fault leaves it corrupt for good (a user check had a and b agree on
    one wrong quantity, and the safety check blamed docket)."""
    c = await console()
    status, _ = await post(c.client, "/api/nodes/a/corrupt", {"kind": "bitflip"})
    assert status == 200
    switch_b = c.files["b"].read_bytes() if c.files["b"].exists() else None
    status, body = await post(c.client, "/api/nodes/b/corrupt", {"kind": "state"})
    assert (status, body["error"]) == (409, "second_faulty_instance"), body
    assert "a is faulty already" in body["message"] and "tolerates one faulty instance" in body["message"]
    assert c.controller.corrupt["b"] is None
    assert (c.files["b"].read_bytes() if c.files["b"].exists() else None) == switch_b
    status, _ = await post(c.client, "/api/nodes/a/corrupt", {"kind": "bitflip"})  # a again: its own switch
    assert status == 200
    status, body = await post(c.client, "/api/nodes/a/corrupt", {"kind": None})
    assert status == 200 and body["node"]["state"] != "faulty", body  # a bitflip switch off: sound
    status, _ = await post(c.client, "/api/nodes/b/corrupt", {"kind": "state"})  # a is sound again
    assert status == 200
    status, body = await post(c.client, "/api/nodes/b/corrupt", {"kind": None})
    # its state stays corrupt, so its card says faulty, as the refusal below counts it (it
    # showed ready: the fifteenth fresh-user trial)
    assert status == 200 and (body["node"]["corrupt"], body["node"]["state"]) == (None, "faulty"), body
    status, body = await post(c.client, "/api/nodes/c/corrupt", {"kind": "bitflip"})
    assert (status, body["error"]) == (409, "second_faulty_instance")  # b's state stays corrupt
    assert "b is faulty already" in body["message"]
    status, _ = await post(c.client, "/api/nodes/c/corrupt", {"kind": None})  # off is always allowed
    assert status == 200


async def test_broker_stop_when_stopped_is_refused(console) -> None:
    """ConsoleRefusesBrokerStopWhenStopped: stop of a broker that is not running is 409
    already_stopped (here the console's broker was never started)."""
    c = await console()
    status, body = await post(c.client, "/api/nodes/broker/stop")
    assert (status, body["error"]) == (409, "already_stopped")
    assert c.controller.node("broker") == {"name": "broker", "kind": "broker", "state": "stopped", "pid": None,
                                           "starts": 0, "slowed": False, "corrupt": None}


async def test_rate_is_checked(console) -> None:
    """ConsoleSetsRate, RateInRange: a rate from 1 to 2000 events/s is taken; anything
    else is 400 bad_rate and changes nothing."""
    c = await console()
    for bad in ({"rate": 0}, {"rate": 2001}, {"rate": "fast"}, {"rate": True}, {}, [100]):
        status, body = await post(c.client, "/api/rate", bad)
        assert (status, body["error"]) == (400, "bad_rate"), bad
    resp = await c.client.post("/api/rate", data=b"{not json", headers=AUTH)
    assert resp.status == 400
    assert c.feeder.rate == 50
    status, body = await post(c.client, "/api/rate", {"rate": 120})
    assert status == 200 and c.feeder.rate == 120
    assert (await (await c.client.get("/api/state", headers=AUTH)).json())["rate"] == 120


async def test_stream_sends_states(console) -> None:
    """The event stream (EventSource, token in the query): an `event: state` with the
    State JSON at once and again about every 500 ms."""
    c = await console()
    resp = await c.client.get(f"/api/stream?token={TOKEN}")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    got = b""
    while got.count(b"event: state") < 2:
        got += await asyncio.wait_for(resp.content.readany(), 5)
    first = got.split(b"\n\n")[0]
    assert first.startswith(b"event: state\ndata: {")
    assert b'"safety":{"checked":0' in first
    resp.close()


async def test_stop_stops_everything(console) -> None:
    """ConsoleStopsEverything: POST /api/stop answers, then asks the console to stop;
    the shutdown continues a slowed worker and stops every worker."""
    c = await console()
    await post(c.client, "/api/nodes/a/slow", {"on": True})
    pid = c.procs["a"].pid
    await wait_for(lambda: _stopped(pid), 5, "a stopped by the duty cycle", interval_s=0.02)
    status, body = await post(c.client, "/api/stop")
    assert status == 200 and body == {"ok": True}
    await asyncio.wait_for(c.stopped.wait(), 5)
    await c.controller.shutdown()
    assert not c.controller.slowed
    assert all(not p.alive for p in c.procs.values())
    assert c.procs["a"].returncode == -15  # SIGTERM reached it: it was continued first


async def test_a_worker_is_in_a_session_of_its_own(console) -> None:
    """ConsoleStopsEverything: every worker the console (or the resilience harness, the
    same chaos/stack.py Proc) starts leads a session of its own, as the broker does, so
    Ctrl-C in the console's terminal (SIGINT to the terminal's foreground process group)
    reaches the console alone, and a worker's stop is the console's single SIGTERM: a
    graceful one, not a second signal that cuts it short (WorkerStopHasADeadline)."""
    c = await console()
    for role, proc in c.procs.items():
        assert os.getsid(proc.pid) == proc.pid, role
        assert os.getpgid(proc.pid) != os.getpgid(0), role
