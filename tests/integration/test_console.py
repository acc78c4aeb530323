"""The fault console's backend against a real stack (specs/console.allium): `docket
console` as a subprocess on free ports (its own broker, instances a, b, c, the Clerk,
a workload), driven through its API only (the page has its own test,
test_console_browser.py).

Start and wait until a, b, c and the Clerk are ready and results flow; kill b (dead,
results keep flowing with a and c), restart it (ready again); corrupt a with bitflips
(withheld positions with a outvoted appear on the strip), turn it off; stop the broker
and start it again (results flow again); the safety panel reads 0 wrong results at
every poll; POST /api/stop and the console exits 0, leaving no process behind and no
ERROR in its output."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from launcher.broker import free_port, set_parent_death_signal
from tests.integration.procs import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
START_S = 120  # broker JVM + four Faust workers on 2 busy cores
RESTART_S = 90  # the dead member's session timeout (6 s), a rebalance, recovery
FLOW_S = 60
STOP_S = 60


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.last: dict | None = None
        self.wrong_seen = 0

    async def state(self) -> dict | None:
        try:
            async with self.session.get(self.base + "/api/state", headers=self.headers) as resp:
                if resp.status != 200:
                    return None
                state = await resp.json()
        except aiohttp.ClientError:
            return None  # not serving yet
        self.last = state
        # safety, at every poll of the whole test
        assert state["safety"]["wrong"] == 0, state["safety"]
        assert state["score"]["safety_unbroken"]
        return state

    async def post(self, path: str, body=None) -> tuple[int, dict]:
        async with self.session.post(self.base + path, json=body, headers=self.headers) as resp:
            return resp.status, await resp.json()

    def node(self, name: str) -> dict:
        return next(n for n in self.last["nodes"] if n["name"] == name)

    def detail(self) -> str:
        if self.last is None:
            return "no state yet"
        nodes = ", ".join(f"{n['name']}={n['state']}" for n in self.last["nodes"])
        return f"t={self.last['t']} {nodes}; {self.last['safety']['text']}; log {self.last['log'][-5:]}"


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def test_console_backend_kill_restart_corrupt_broker_stop(tmp_path) -> None:
    """ConsoleKillsNode, ConsoleRestartsNode, ConsoleCorruptsInstance, PositionWithheld,
    ConsoleStopsBroker, ConsoleRefusesBrokerStopWhenStopped, ConsoleStartsBroker,
    ConsoleRefusesBrokerStartWhenRunning, ConsoleChecksEveryResult, ConsoleStopsEverything:
    the whole backend on a real stack, safety unbroken throughout."""
    port = free_port()
    token = secrets.token_urlsafe(18)
    data_dir = tmp_path / "console"
    log_path = tmp_path / "console.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    env.update(DOCKET_API_TOKENS=f"test:{token}", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", "from app.cli import main; main()", "console", "--port", str(port),
           "--rate", "50", "--seed", "7", "--data-dir", str(data_dir)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=set_parent_death_signal)  # noqa: PLW1509
    api = Api(port, token)

    def detail() -> str:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        return f"{api.detail()}\n--- console output ---\n{tail}"

    async def ready(*names: str) -> bool:
        state = await api.state()
        return state is not None and all(api.node(n)["state"] == "ready" for n in names)

    async def checked_beyond(n: int) -> bool:
        state = await api.state()
        return state is not None and state["safety"]["checked"] > n

    try:
        await wait_for(lambda: ready("a", "b", "c", "clerk", "broker"), START_S, "a, b, c and the Clerk ready",
                       interval_s=0.5, detail=detail)
        await wait_for(lambda: checked_beyond(50), FLOW_S, "results flowing", interval_s=0.5, detail=detail)
        assert f"http://127.0.0.1:{port}/#token={token}" in log_path.read_text()

        # kill b: dead; a and c keep the Clerk publishing
        status, body = await api.post("/api/nodes/b/kill")
        assert status == 200 and body["node"]["state"] == "dead", body
        status, body = await api.post("/api/nodes/b/kill")
        assert (status, body["error"]) == (409, "already_dead")
        await api.state()
        assert api.node("b")["state"] == "dead"
        base = api.last["safety"]["checked"]
        await wait_for(lambda: checked_beyond(base + 100), FLOW_S, "results without b", interval_s=0.5, detail=detail)
        assert api.node("b")["state"] == "dead"

        # restart b: ready again
        status, body = await api.post("/api/nodes/b/restart")
        assert status == 200 and body["node"]["starts"] == 2, body
        await wait_for(lambda: ready("b"), RESTART_S, "b ready again", interval_s=0.5, detail=detail)

        # corrupt a: its copies are outvoted by b and c, the results stand
        status, body = await api.post("/api/nodes/a/corrupt", {"kind": "bitflip"})
        assert status == 200 and body["node"]["state"] == "faulty", body

        async def withheld() -> bool:
            state = await api.state()
            return state is not None and any(p["fate"] == "withheld" and p.get("outvoted") == ["a"]
                                             for p in state["strip"]["positions"])

        await wait_for(withheld, FLOW_S, "withheld positions with a outvoted", interval_s=0.5, detail=detail)
        status, body = await api.post("/api/nodes/a/corrupt", {"kind": None})
        assert status == 200 and body["node"]["corrupt"] is None

        # the broker: stop, refused twice, start, results flow again
        status, body = await api.post("/api/nodes/broker/stop")
        assert status == 200 and body["node"]["state"] == "stopped", body
        status, body = await api.post("/api/nodes/broker/stop")
        assert (status, body["error"]) == (409, "already_stopped")
        status, body = await api.post("/api/nodes/broker/start")
        assert status == 200 and body["node"]["state"] in ("starting", "ready"), body
        status, body = await api.post("/api/nodes/broker/start")
        assert (status, body["error"]) == (409, "already_running")
        await wait_for(lambda: ready("broker"), RESTART_S, "the broker ready again", interval_s=0.5, detail=detail)
        base = api.last["safety"]["checked"]
        await wait_for(lambda: checked_beyond(base + 100), RESTART_S, "results after the broker restart",
                       interval_s=0.5, detail=detail)
        state = await api.state()
        assert state["safety"]["balance_ok"], state["safety"]
        assert state["liveness"]["series"] and state["produced"] > 0

        # stop: everything goes, exit status 0
        status, body = await api.post("/api/stop")
        assert (status, body) == (200, {"ok": True})
        await wait_for(lambda: proc.poll() is not None, STOP_S, "the console to exit", interval_s=0.2,
                       detail=detail)
        assert proc.returncode == 0, detail()
        assert _processes_naming(str(data_dir)) == [], "processes of the console still run"
        output = log_path.read_text(errors="replace")
        assert " ERROR " not in output and "Traceback" not in output, output[-3000:]
    finally:
        await api.session.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_console_stops_on_ctrl_c_even_with_its_broker_stopped(tmp_path) -> None:
    """ConsoleStopsEverything: Ctrl-C (SIGINT) once the console is up stops the workload,
    the workers and the broker; exit status 0, no process left, no ERROR. Here with the
    broker stopped from the page first: the monitor's Kafka reader then ends in a
    cancellation, which once kept the console from stopping its workers (they outlived it)."""
    port = free_port()
    token = secrets.token_urlsafe(18)
    data_dir = tmp_path / "console"
    log_path = tmp_path / "console.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    env.update(DOCKET_API_TOKENS=f"test:{token}", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", "from app.cli import main; main()", "console", "--port", str(port),
           "--data-dir", str(data_dir)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=set_parent_death_signal)  # noqa: PLW1509
    try:
        await wait_for(lambda: "the console: http://127.0.0.1:" in log_path.read_text(), START_S,
                       "the console's URL", interval_s=0.5, detail=lambda: log_path.read_text()[-2000:])
        assert _processes_naming(str(data_dir)), "no process of the console's stack runs"
        api = Api(port, token)
        try:
            status, body = await api.post("/api/nodes/broker/stop")
        finally:
            await api.session.close()
        assert status == 200 and body["node"]["state"] == "stopped", body
        proc.send_signal(signal.SIGINT)
        # the workers may wait for a broker that is gone until the SIGKILL after STOP_TIMEOUT_S
        await wait_for(lambda: proc.poll() is not None, STOP_S + 60, "the console to exit", interval_s=0.2,
                       detail=lambda: log_path.read_text()[-2000:])
        output = log_path.read_text(errors="replace")
        assert proc.returncode == 0, output[-2000:]
        assert _processes_naming(str(data_dir)) == []
        assert " ERROR " not in output and "Traceback" not in output, output[-3000:]
        assert "stopped: every process the console started has exited" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
