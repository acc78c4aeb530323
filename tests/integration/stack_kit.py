"""The whole docket stack as processes for integration tests: a real broker (the session's),
instances a and b, the Clerk and ``docket api``, each a subprocess with a log per start
(tests/integration/procs.py, clerk_kit.py), HTTP over loopback.

    with running_stack(kafka_bootstrap, root, token) as stack:
        get_json(stack.url + "/readyz"); stack.start_api()   # a second API process
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson

from app.settings import Settings, load
from launcher.broker import free_port
from tests.integration.clerk_kit import DocketProc
from tests.integration.procs import wait_for, worker_env

STACK_PARTITIONS = 4
API_TIMEOUT_MS = 20_000  # generous: two cores shared with Faust workers and the broker


def ApiProc(env: dict[str, str], log_dir: Path, name: str = "api", args: tuple[str, ...] = ()) -> DocketProc:  # noqa: N802
    """``docket api [args]`` as a subprocess (procs.Worker's lifecycle and logs)."""
    return DocketProc(instance=name, env=env, data_dir=log_dir, log_dir=log_dir, command="api", args=args)


@dataclasses.dataclass
class Stack:
    settings: Settings
    url: str
    token: str
    env: dict[str, str]
    log_dir: Path
    a: DocketProc
    b: DocketProc
    clerk: DocketProc
    api: DocketProc
    extra: list[DocketProc] = dataclasses.field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def logs(self) -> str:
        return "\n".join(p.log_tail(15) for p in (self.a, self.b, self.clerk, self.api, *self.extra))

    async def start_api(self, name: str = "api2", **env: str) -> tuple[DocketProc, str]:
        """Another ``docket api`` process on a free port, ready; (process, base URL).
        It is killed with the stack."""
        port = free_port()
        proc = ApiProc({**self.env, "DOCKET_API_PORT": str(port), **env}, self.log_dir, name)
        self.extra.append(proc)
        proc.start()
        url = f"http://127.0.0.1:{port}"
        await wait_for(lambda: get_json(url + "/readyz")[0] == 200, 120, f"{name} to be ready",
                       detail=proc.log_tail)
        return proc, url


def get_json(url: str, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET; (0, {}) when nothing answers."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


def post_json(url: str, body: dict, key: str, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a POST of ``body`` with Idempotency-Key ``key``."""
    req = urllib.request.Request(url, data=orjson.dumps(body), method="POST",
                                 headers={"Content-Type": "application/json", "Idempotency-Key": key,
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")


def stack_settings(kafka_bootstrap: str, root: Path, partitions: int = STACK_PARTITIONS,
                   domain: str = "inventory") -> Settings:
    """Settings of a stack of its own: a fresh topic prefix, data under ``root``."""
    env_over = {"DOCKET_KAFKA_BOOTSTRAP": kafka_bootstrap, "DOCKET_TOPIC_PREFIX": f"st{secrets.token_hex(4)}",
                "DOCKET_PARTITIONS": str(partitions), "DOCKET_INSTANCES": "a,b",
                "DOCKET_DATA_ROOT": str(root / "data"), "DOCKET_DOMAIN": domain}
    saved = {k: os.environ.get(k) for k in env_over}
    os.environ.update(env_over)
    try:
        return load()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def running_stack(kafka_bootstrap: str, root: Path, token: str,
                  api_timeout_ms: int = API_TIMEOUT_MS, more_tokens: tuple[str, ...] = (),
                  domain: str = "inventory", warm_up: dict | None = None) -> Iterator[Stack]:
    """Topics, instances a and b, the Clerk and the API on a free port, evaluating
    ``domain``; yields once one event (``warm_up``, a request body; default an inventory
    receipt) went through end to end. The API accepts ``token`` (Stack.auth) and
    ``more_tokens`` (DOCKET_API_TOKENS entries, e.g. ``name:token``). Every process is
    killed on exit."""
    from app.topics import create_topics

    settings = stack_settings(kafka_bootstrap, root, domain=domain)
    asyncio.run(create_topics(settings))
    port = free_port()
    env = worker_env(settings, DOCKET_API_TOKENS=",".join((token, *more_tokens)), DOCKET_API_PORT=str(port),
                     DOCKET_API_TIMEOUT_MS=str(api_timeout_ms))
    logs = root / "logs"

    def proc(name: str, command: str) -> DocketProc:
        role = name if command == "instance" else "clerk"
        return DocketProc(instance=name, env=env, data_dir=settings.data_root / settings.app_id(role),
                          log_dir=logs, command=command)

    s = Stack(settings, f"http://127.0.0.1:{port}", token, env, logs, proc("a", "instance"),
              proc("b", "instance"), proc("clerk", "clerk"), ApiProc(env, logs))
    try:
        for p in (s.a, s.b, s.clerk, s.api):
            p.start()
        asyncio.run(wait_for(lambda: get_json(s.url + "/readyz")[0] == 200, 120, "the API to be ready",
                             detail=s.logs))
        # the pipeline flows end to end: one event decided through the API
        status, body = post_json(s.url + "/v1/events", warm_up or {"event_name": "stock.adjust", "payload": {
            "warehouse": "warm", "sku": "warm-up", "delta": 1}}, "warm-up-1", s.auth)
        assert status in (200, 202), body
        asyncio.run(wait_for(lambda: get_json(s.url + "/v1/events/warm-up-1", s.auth)[1].get("state") == "decided",
                             180, "the warm-up event to be decided", detail=s.logs))
        yield s
    finally:
        for p in (s.a, s.b, s.clerk, s.api, *s.extra):
            p.kill()
