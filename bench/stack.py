"""The docket stack a benchmark drives: instances a and b, the Clerk and the REST API as
OS processes (the same commands `make run` starts), on a broker the caller started,
with topics of a fresh prefix so no earlier run's backlog or state is in the way.

    async with BenchStack(settings, work, name="native-1") as stack:
        stack.api_url, stack.token, stack.metrics_urls, stack.pids

Every component serves /metrics on a port of its own (instances and the Clerk through
Faust's web server). Processes die with the benchmark (PR_SET_PDEATHSIG) and are
stopped on exit: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app.settings import Settings
from app.topics import create_topics
from bench.common import say
from chaos.stack import ROOT, Proc, component_env
from launcher.broker import free_ports, set_parent_death_signal


def _get(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except OSError as exc:
        return getattr(exc, "code", None)


class BenchStack:
    """Topics ``<name>-<time>.*``, then a, b, the Clerk and the API, each ready."""

    def __init__(self, settings: Settings, work: Path, *, name: str, api: bool = True,
                 ready_timeout_s: float = 180.0) -> None:
        prefix = f"{name}-{int(time.time() * 1000)}"
        self.settings = dataclasses.replace(settings, topic_prefix=prefix, data_root=work / prefix / "data")
        self.work = work / prefix
        self.with_api = api
        self.ready_timeout_s = ready_timeout_s
        self.token = secrets.token_urlsafe(16)
        roles = (*self.settings.instances, "clerk", "api")
        self.ports = dict(zip(roles, free_ports(len(roles)), strict=True))
        self.procs: dict[str, Proc] = {}
        self.api: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def metrics_urls(self) -> dict[str, str]:
        urls = {role: f"http://127.0.0.1:{port}/metrics" for role, port in self.ports.items()}
        if not self.with_api:
            urls.pop("api")
        return urls

    @property
    def pids(self) -> dict[str, int]:
        pids = {role: p.pid for role, p in self.procs.items() if p.pid is not None}
        if self.api is not None:
            pids["api"] = self.api.pid
        return pids

    async def __aenter__(self) -> BenchStack:
        s = self.settings
        await create_topics(s)
        env = component_env(s)
        logs = self.work / "logs"
        try:
            for role in (*s.instances, "clerk"):
                proc = Proc(role, env, s.data_root / s.app_id(role), logs,
                            args=("--web-port", str(self.ports[role])))
                self.procs[role] = proc.start()
            if self.with_api:
                with open(logs / "api.log", "wb") as log:
                    self.api = subprocess.Popen(
                        [sys.executable, "-c", "from app.cli import main; main()", "api",
                         "--port", str(self.ports["api"])],
                        env={**env, "DOCKET_API_TOKENS": self.token, "DOCKET_LOG_LEVEL": "warning",
                             "DOCKET_API_TIMEOUT_MS": str(s.api_timeout_ms)}, cwd=ROOT,
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        preexec_fn=set_parent_death_signal if sys.platform == "linux" else None,  # noqa: PLW1509
                    )
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_ready(self) -> None:
        began = time.monotonic()
        deadline = began + self.ready_timeout_s
        while True:
            down = [r for r, p in self.procs.items() if not p.alive]
            if self.api is not None and self.api.poll() is not None:
                down.append("api")
            if down:
                raise RuntimeError(f"{', '.join(down)} exited while starting; logs in {self.work / 'logs'}")
            waiting = [r for r, p in self.procs.items() if not p.ready]
            if self.api is not None and _get(f"{self.api_url}/readyz") != 200:
                waiting.append("api")
            if not waiting:
                say(f"stack {self.settings.topic_prefix} ready in {time.monotonic() - began:.0f} s")
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{', '.join(waiting)} not ready within {self.ready_timeout_s:.0f} s; "
                                   f"logs in {self.work / 'logs'}")
            await asyncio.sleep(0.5)  # poll interval of the readiness condition

    async def stop(self) -> None:
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.stop(timeout_s=30) for p in self.procs.values()))
        if self.api is not None:
            try:
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.api.kill()
                self.api.wait(timeout=15)

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
