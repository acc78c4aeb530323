"""The local stack: `docket stack run | topics | health`.

``make run`` sets up the virtualenv and the broker's jars, then runs ``docket stack run``:
it chooses the API token (DOCKET_API_TOKENS, or one generated once and kept in
``$DOCKET_DATA_ROOT/api-token``), prints the API's address and a curl example, and hands
over to honcho, which runs the Procfile:

    broker      docket broker run            Kafka in the foreground, data in var/broker
    topics      docket stack topics          creates the topics, announces readiness, idles
    instance-a  docket instance --id a       the two redundant instances
    instance-b  docket instance --id b
    clerk       docket clerk                 compares their copies, publishes results
    api         docket api                   the REST API

honcho starts every process at once and stops all of them as soon as one exits, so
nothing may exit early and nothing may crash because another is not up yet: every
component takes ``--wait SECONDS`` and polls for Kafka and its topics (see
:func:`wait_for_topics`) instead of failing, and the one-shot topic creation stays alive
after its work, announcing when the whole pipeline is ready.

``docket stack run`` drives honcho's process manager with one change,
:class:`OrderedManager`: on Ctrl-C (or when a process exits) it stops every component
first and the broker only once they have exited. Plain honcho signals all of them at
once; the workers then lose the broker in the middle of leaving their consumer groups,
the broker keeps them as members, and the next start waits a session timeout (about a
minute) before the groups rebalance.

Closing the terminal stops the stack the same way, by two routes. The terminal's SIGHUP
(from the shell, and from the kernel to the foreground process group once the session
leader has exited) reaches ``docket stack run`` and honcho's relay processes, which it
forks and which stay in its process group; the components themselves run in sessions of
their own and see nothing. But when make itself leads the terminal's session (``tmux
new-session 'make run'``, ``xterm -e make run``, ``ssh -t host make run``), the kernel
signals make alone, and GNU make catches SIGHUP and waits for its children: no signal
reaches ``docket stack run``. So it also watches its terminal (:class:`TerminalWatch`,
the terminal of its stdin, stdout or stderr, if any) and takes the hang-up itself.
SIGINT, SIGTERM, SIGHUP and the hang-up only record the cause; the manager's loop starts
the stop on the first one and ignores the rest (nothing is written from a signal
handler). The relays ignore the signals (they must live to pass on output and exit
statuses), and once writing to the terminal fails (EIO of a hung-up terminal, EPIPE of
a closed pipe) the manager's output goes on in ``$DOCKET_DATA_ROOT/stack.log``
(:class:`StackOutput`), so the ordered stop runs to its end and leaves a record.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import json
import logging
import os
import re
import secrets
import select
import shlex
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from app.cli_types import Seconds
from app.logs import QUIET_START_S
from app.settings import Settings, instance_id_problem, load

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
TOKEN_FILE = "api-token"  # under DOCKET_DATA_ROOT
STACK_LOG = "stack.log"  # under DOCKET_DATA_ROOT: `stack run`'s output once the terminal is gone
# The signals that stop the stack; the relays ignore them (see _relay).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
HANGUP = "hangup"  # the other cause: TerminalWatch saw the terminal hang up, whatever signals came
# How `stack run` logs each cause (before ": stopping the components, ..."), and its exit
# code (128 + the signal's number; a hang-up is what SIGHUP means).
STOP_CAUSES: dict[object, tuple[str, int]] = {
    signal.SIGINT: ("SIGINT received", 130), signal.SIGTERM: ("SIGTERM received", 143),
    signal.SIGHUP: ("SIGHUP received", 129), HANGUP: ("the terminal {terminal} closed (hang-up)", 129)}


class StackError(click.ClickException):
    """The stack cannot start or a component gave up waiting; the message says why."""


# --------------------------------------------------------------------------- waiting


async def wait_for_topics(
    settings: Settings,
    topics: list[str],
    wait_s: float,
    *,
    echo: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    warn_after_s: float = QUIET_START_S,
    interval_s: float = 0.5,
) -> float:
    """Poll until Kafka answers and every topic in ``topics`` exists; return the seconds
    waited. After ``wait_s`` seconds raise StackError saying what was missing. ``echo``
    gets one line when waiting starts (not one per attempt); ``warn``, when given, one
    more if the wait is still on after ``warn_after_s`` seconds, saying what to check
    (a stack starting its broker beside the workers waits a few seconds as a rule, and
    that is no warning: WorkerRefusesToStartWithoutTopics)."""
    from app.kafka_admin import KafkaUnreachable, connect_admin

    began = time.monotonic()
    deadline = began + wait_s
    told = warned = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            admin = await connect_admin(settings.kafka_bootstrap, max(1.0, min(5.0, remaining)), settings)
        except KafkaUnreachable:
            missing_what = f"Kafka at {settings.kafka_bootstrap}"
        else:
            try:
                existing = set(await admin.list_topics())
            except Exception as exc:  # noqa: BLE001  a broker still starting may fail requests
                missing_what = f"an answer from Kafka at {settings.kafka_bootstrap} ({exc.__class__.__name__})"
            else:
                missing = [t for t in topics if t not in existing]
                if not missing:
                    return time.monotonic() - began
                missing_what = f"topic(s) {', '.join(missing)}"
            finally:
                await admin.close()
        if time.monotonic() >= deadline:
            raise StackError(
                f"gave up after {wait_s:g} s waiting for {missing_what}; start the broker "
                "(`docket broker start`) and create the topics (`docket topics create`)"
            )
        if not told and echo is not None:
            echo(f"waiting up to {wait_s:g} s for {missing_what}")
            told = True
        if not warned and warn is not None and time.monotonic() - began >= warn_after_s:
            warn(f"still waiting for {missing_what} after {time.monotonic() - began:.0f} s (up to {wait_s:g} s): "
                 "is the broker running (`docket broker start`), and are the topics created "
                 "(`docket topics create`)?")
            warned = True
        await asyncio.sleep(interval_s)  # poll interval of the condition above


def wait_for_topics_cli(settings: Settings, topics: list[str], wait_s: float) -> None:
    """``--wait`` of the component commands: wait (if ``wait_s`` > 0), in a private loop.
    What it waits for is one INFO line of ``docket.stack`` (a log record, so
    DOCKET_LOG_FORMAT=json holds JSON only: it was a plain line, a fresh-clone user
    check), and one WARNING if it still waits after 15 s. Ctrl-C (SIGINT) meanwhile ends
    the process with status 130 and one INFO line, not click's "Aborted!" and status 1:
    nothing was started, so there is nothing to stop."""
    if wait_s > 0:
        log = logging.getLogger("docket.stack")
        waiting = wait_for_topics(settings, topics, wait_s, echo=lambda line: log.info("%s", line),
                                  warn=lambda line: log.warning("%s", line))
        try:
            asyncio.run(waiting)
        except KeyboardInterrupt:
            # interrupted before asyncio.run started it, the coroutine is closed here, or
            # Python warns at exit that it was never awaited (a fresh-user trial)
            waiting.close()
            log.info("interrupted while waiting for Kafka and its topics; nothing was started")
            raise SystemExit(130) from None


def local_url(bind_host: str, port: int) -> str:
    """``http://host:port`` where clients on this host reach a server bound to
    ``bind_host`` (a wildcard bind address means loopback; an IPv6 one is bracketed)."""
    from app.ports import url_host

    return f"http://{url_host('127.0.0.1' if bind_host in ('0.0.0.0', '::', '') else bind_host)}:{port}"


def api_base_url(settings: Settings) -> str:
    """Where clients on this host reach the API."""
    return local_url(settings.api_host, settings.api_port)


def api_ready(base_url: str, timeout_s: float = 2.0) -> bool:
    """True if the API answers GET /readyz with 200."""
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


async def group_states(settings: Settings, groups: list[str]) -> dict[str, tuple[str, int]]:
    """group id -> (state, member count), from a DescribeGroups request.

    Sent as version 2: aiokafka 0.14's describe_consumer_groups asks for version 3 and
    decodes the answer with the version 2 schema, which fails on a Kafka 4 broker."""
    from aiokafka.protocol.admin import DescribeGroupsRequest, DescribeGroupsRequest_v2

    from app.kafka_admin import connect_admin

    class _V2(DescribeGroupsRequest):
        def build(self, request_struct_class):
            return DescribeGroupsRequest_v2(self._groups)

    admin = await connect_admin(settings.kafka_bootstrap, 5.0, settings)
    try:
        found: dict[str, tuple[str, int]] = {}
        for group in groups:
            node = await admin.find_coordinator(group)
            response = await admin._client.send(node, _V2([group]))
            for error_code, gid, state, _ptype, _protocol, members in response.groups:
                found[gid] = (state if error_code == 0 else f"error {error_code}", len(members))
        return found
    finally:
        await admin.close()


def stack_groups(settings: Settings) -> list[str]:
    """The consumer groups of the pipeline: every instance, and the Clerk."""
    return [settings.app_id(i) for i in settings.instances] + [settings.app_id("clerk")]


async def pipeline_members(settings: Settings) -> tuple[list[str], bool]:
    """(the instances whose consumer group is stable with a member, whether the
    Clerk's is); ([], False) while Kafka cannot say."""
    try:
        states = await group_states(settings, stack_groups(settings))
    except Exception:  # noqa: BLE001  not reachable, coordinator loading: not ready
        return [], False

    def up(group: str) -> bool:
        return states.get(group, ("", 0))[0] == "Stable" and states[group][1] > 0

    return [i for i in settings.instances if up(settings.app_id(i))], up(settings.app_id("clerk"))


def pipeline_is_ready(settings: Settings, members: tuple[list[str], bool]) -> bool:
    """The pipeline can decide: the Clerk and DOCKET_REQUIRED_COPIES instances are in
    their consumer groups. An instance of DOCKET_INSTANCES that is not running (more
    instances than required copies, one stopped or run by hand later) does not hold
    readiness back: the stack said it was never ready while a and b decided."""
    running, clerk = members
    return clerk and len(running) >= settings.required_copies


def metrics_url(settings: Settings, port: int) -> str:
    """The /metrics page a stack worker serves on ``port``, on DOCKET_METRICS_HOST."""
    return local_url(settings.metrics_host, port) + "/metrics"


# an instance's /metrics line once it has said it is ready (agents/instance.py)
_INSTANCE_READY = re.compile(rb"^docket_instance_ready 1(\.0)?$", re.MULTILINE)


def workers_serving(settings: Settings, running: list[str], timeout_s: float = 2.0) -> bool:
    """True when the Clerk and each instance of ``running`` that the stack gives a web
    port (DOCKET_CLERK_WEB_PORT, DOCKET_INSTANCE_A/B_WEB_PORT) answer /metrics with 200,
    each instance's showing ``docket_instance_ready 1.0``. Faust starts a worker's web
    server only once its first assignment's table recovery has completed, so this is the
    worker holding partitions, where a stable consumer group is not: after a run that was
    killed, the group still lists the dead members (stable) until their session times
    out, and the stack said ready 9 s before the instances could judge (the first
    requests answered 202; a fresh-clone user check). The instance's ready gauge follows
    its ready line, which comes up to 0.2 s after the web server: "docket is ready" came
    before an instance's line in 3 of 8 starts (a fresh-user trial)."""
    instance_ports = {port for ident, port in settings.instance_web_ports if ident in running}
    for port in [settings.clerk_web_port, *sorted(instance_ports)]:
        try:
            with urllib.request.urlopen(metrics_url(settings, port), timeout=timeout_s) as response:
                if response.status != 200:
                    return False
                if port in instance_ports and not _INSTANCE_READY.search(response.read()):
                    return False
        except (urllib.error.URLError, OSError, ValueError):
            return False
    return True


async def pipeline_ready(settings: Settings) -> bool:
    """:func:`pipeline_is_ready` with the groups' states read from Kafka now."""
    return pipeline_is_ready(settings, await pipeline_members(settings))


# --------------------------------------------------------------------------- token and banner


def stack_token(settings: Settings) -> tuple[str, str]:
    """(token, where it came from): the first of DOCKET_API_TOKENS when set, otherwise
    the token in ``$DOCKET_DATA_ROOT/api-token``, generated (owner-only) on first use."""
    if settings.api_tokens:
        return settings.api_tokens[0], "DOCKET_API_TOKENS"
    path = settings.data_root / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        tmp.replace(path)
        return token, f"generated, kept in {path}"
    return token, f"kept in {path}"


def example_kit(settings: Settings):
    """The kit (app/domains/kit.py) of the configured domain, or None when it has none."""
    import app.domains  # noqa: F401  registers the built-in domains
    from app.registry import registry

    try:
        return registry.kit(settings.domain)
    except LookupError:
        return None


def curl_example(base_url: str, token: str, idempotency_key: str, event: tuple[str, dict], *,
                 one_line: bool = False) -> str:
    """A curl command that submits ``event`` ((event_name, payload): the domain kit's
    example, which applies on a fresh stack) and prints the answer."""
    name, payload = event
    body = json.dumps({"event_name": name, "payload": payload})
    parts = [
        "curl -sS -i -X POST " + shlex.quote(f"{base_url}/v1/events"),
        "-H " + shlex.quote(f"Authorization: Bearer {token}"),
        "-H " + shlex.quote(f"Idempotency-Key: {idempotency_key}"),
        "-H 'Content-Type: application/json'",
        "-d " + shlex.quote(body),
    ]
    return " ".join(parts) if one_line else " \\\n     ".join(parts)


def banner(settings: Settings, token: str, token_source: str, idempotency_key: str,
           kafka: StackKafka | None = None) -> str:
    base = api_base_url(settings)
    kafka = kafka or StackKafka(True, settings.kafka_bootstrap, f"a local broker, data in {settings.broker_dir}")
    names = ("broker, " if kafka.local else "") + "topics, instance-a, instance-b, clerk, api"
    return f"""\
docket: starting the stack ({names}) with honcho
  Kafka      {kafka.why}
  API        {base}   (OpenAPI: {base}/openapi.json)
  token      {token}   ({token_source})
  metrics    {base}/metrics, Clerk: {metrics_url(settings, settings.clerk_web_port)}
             {", ".join(f"instance {i}: {metrics_url(settings, p)}" for i, p in settings.instance_web_ports)}
  state      {settings.data_root} (RocksDB of each worker, the token){"; broker: " + str(settings.broker_dir) if kafka.local else ""}
  stop       Ctrl-C (or closing the terminal) stops the components{", then the broker" if kafka.local else ""}; `make run` again
             resumes the same state

{_example_text(settings, base, token, idempotency_key)}"""


def _example_text(settings: Settings, base: str, token: str, idempotency_key: str) -> str:
    kit = example_kit(settings)
    if kit is None:
        return (f'Once the "topics" line reports the stack ready, submit {settings.domain} events with POST {base}/v1/events\n'
                f"(their schemas: {base}/openapi.json).\n")
    return f"""\
Once the "topics" line reports the stack ready, {kit.example_summary}:

  {curl_example(base, token, idempotency_key, kit.example_event)}

200 with the agreed outcome; the same Idempotency-Key again answers the original outcome
(a replay). `make demo` submits a few thousand events and checks the domain's invariants.
"""


# --------------------------------------------------------------------------- which Kafka


@dataclass(frozen=True)
class StackKafka:
    """Which Kafka `docket stack run` uses. ``local``: it starts its own broker (the
    Procfile's ``broker``) on 127.0.0.1:DOCKET_BROKER_PORT; otherwise the one at
    ``bootstrap`` (DOCKET_KAFKA_BOOTSTRAP), and the Procfile's ``broker`` is left out.
    ``why`` says so in the banner's words."""

    local: bool
    bootstrap: str
    why: str


def stack_kafka(settings: Settings, env: Mapping[str, str], *, port_free: Callable[[int], bool] | None = None,
                own_broker_runs: Callable[[], bool] | None = None,
                own_broker_background: Callable[[], bool] | None = None,
                stack_holder: Callable[[], str | None] | None = None) -> StackKafka:
    """The stack's Kafka: its own broker when DOCKET_KAFKA_BOOTSTRAP is unset (in ``env``)
    or names that broker's address (127.0.0.1 or localhost, DOCKET_BROKER_PORT) while
    the port is free or held by the broker of DOCKET_BROKER_DIR in the foreground (an
    earlier stack's, still stopping); the broker of DOCKET_BROKER_DIR as it is when it
    runs in the background (`docket broker start`: the stack neither starts a second
    one on its directory nor stops it); the Kafka at DOCKET_KAFKA_BOOTSTRAP otherwise,
    also when it names the foreground broker of another stack that runs from
    DOCKET_BROKER_DIR (the variable says to use it: waiting for that stack's lock, the
    second stack failed after 20 s; the tenth fresh-user trial). StackError, saying
    what to do, when the variable is unset and another process holds the port.
    ``port_free(port)``, ``own_broker_runs()``, ``own_broker_background()`` and
    ``stack_holder()`` (the pid of the stack holding DOCKET_BROKER_DIR, or None) default
    to the launcher's checks (tests pass their own)."""
    from launcher import broker as launcher

    port_free = port_free or launcher._port_free
    own_broker_runs = own_broker_runs or (lambda: launcher.running_pid(settings.broker_dir) is not None)
    own_broker_background = own_broker_background or (lambda: launcher.background_pid(settings.broker_dir) is not None)
    port = settings.broker_port
    given = (env.get("DOCKET_KAFKA_BOOTSTRAP") or "").strip()
    local_names = {f"{launcher.HOST}:{port}", f"localhost:{port}"}
    if given and given not in local_names:
        return StackKafka(False, given, f"your Kafka at {given} (DOCKET_KAFKA_BOOTSTRAP); no local broker is started")
    if own_broker_background():
        # the address it was started with (its config), which DOCKET_BROKER_PORT may no longer name
        bootstrap = given or launcher.configured_bootstrap(settings.broker_dir) or f"{launcher.HOST}:{port}"
        return StackKafka(False, bootstrap, f"the local broker already running on {bootstrap} from "
                          f"{settings.broker_dir} (`docket broker start`); this stack neither starts nor stops it "
                          "(`docket broker stop` does)")
    if not port_free(port) and given and own_broker_runs():
        from launcher import stacklock

        holder = (stack_holder or (lambda: stacklock.holder(settings.broker_dir)))()
        if holder is not None:
            return StackKafka(False, given, f"the Kafka at {given} (DOCKET_KAFKA_BOOTSTRAP): the broker of the "
                              f"docket stack running from {settings.broker_dir} (pid {holder}); this stack neither "
                              "starts nor stops it, and loses Kafka when that stack stops")
    if port_free(port) or own_broker_runs():
        return StackKafka(True, f"{launcher.HOST}:{port}", f"a local broker on {launcher.HOST}:{port}, data in "
                          f"{settings.broker_dir}")
    if given:
        return StackKafka(False, given, f"the Kafka already listening at {given} (DOCKET_KAFKA_BOOTSTRAP; the port "
                          "is taken, so no local broker is started)")
    raise StackError(
        f"port {port} on {launcher.HOST} is already in use by another process, so docket cannot start its broker "
        "there. If that is a Kafka docket should use, run again with "
        f"DOCKET_KAFKA_BOOTSTRAP={launcher.HOST}:{port} (and the DOCKET_KAFKA_* security settings it needs; "
        "see \"Use your own Kafka\" in the README): the stack then starts no broker. Otherwise free the port, or "
        "give docket's broker another one: DOCKET_BROKER_PORT=<port> (with DOCKET_KAFKA_BOOTSTRAP unset).")


def busy_ports(settings: Settings, free: Callable[[str, int], bool] | None = None) -> list[str]:
    """What the default Procfile's servers could not listen on now: one message per port
    another process holds (the REST API's, the Clerk's and each instance's /metrics),
    naming the setting that moves it (app/ports.py). ``free(host, port)`` defaults to
    app.ports.bindable (tests pass their own). The broker's port is stack_kafka's."""
    from app.ports import bindable, port_in_use

    free = free or bindable
    return [port_in_use(host, port, what, setting) for host, port, what, setting in _servers(settings)
            if not free(host, port)]


def _servers(settings: Settings) -> list[tuple[str, int, str, str]]:
    """(host, port, what, setting) of each server of the default Procfile."""
    servers = [(settings.api_host, settings.api_port, "the REST API", "DOCKET_API_PORT"),
               (settings.metrics_host, settings.clerk_web_port, "the Clerk's /metrics", "DOCKET_CLERK_WEB_PORT")]
    return servers + [(settings.metrics_host, port, f"instance {i}'s /metrics", f"DOCKET_INSTANCE_{i.upper()}_WEB_PORT")
                      for i, port in settings.instance_web_ports]


def shared_ports(settings: Settings, broker_port: int | None = None) -> list[str]:
    """One message per port that two of the stack's servers are set to (the REST API,
    the Clerk's and each instance's /metrics, and ``broker_port``, the stack's own
    broker's, when it runs one), naming their settings: each would start, and the
    second to bind fail, which one varying from run to run (the tenth fresh-user trial:
    DOCKET_INSTANCE_A_WEB_PORT = DOCKET_INSTANCE_B_WEB_PORT ended in Faust's traceback,
    or in a message blaming "another process"). Servers on different hosts, neither a
    wildcard address, do not clash."""
    from launcher import broker as launcher

    servers = [(host, port, setting) for host, port, _what, setting in _servers(settings)]
    if broker_port is not None:
        servers.append((launcher.HOST, broker_port, "DOCKET_BROKER_PORT"))
    wildcard = ("0.0.0.0", "::", "")
    clashes: dict[int, list[str]] = {}
    for i, (host, port, setting) in enumerate(servers):
        for other_host, other_port, other in servers[:i]:
            if port and port == other_port and (host == other_host or host in wildcard or other_host in wildcard):
                names = clashes.setdefault(port, [other])
                names.append(setting)
                break
    return [f"{' and '.join(names)} are {'both' if len(names) == 2 else 'all'} {port}: each server of the stack "
            "needs a port of its own" for port, names in sorted(clashes.items())]


_PROCFILE_INSTANCE = re.compile(r"\bdocket\s+instance\b[^\n]*?\s--id[=\s]+([^\s]+)")


def instance_mismatch(settings: Settings, procfile_text: str) -> str | None:
    """Why the instances a Procfile runs (its ``docket instance --id X`` lines) cannot
    make the stack ready with DOCKET_INSTANCES and DOCKET_REQUIRED_COPIES, or None: an
    instance it runs that DOCKET_INSTANCES does not name (the Clerk does not read its
    copies), or fewer of DOCKET_INSTANCES' instances than a decision needs. The
    twelfth fresh-user trial's DOCKET_INSTANCES=x,y started a and b, whose copies no
    one read, and waited for "docket is ready" for good. A Procfile that runs no
    instance (the instances run elsewhere) is not checked."""
    ran = list(dict.fromkeys(_PROCFILE_INSTANCE.findall(procfile_text)))
    if not ran:
        return None
    named = ",".join(settings.instances)
    strangers = [i for i in ran if i not in settings.instances]
    if strangers:
        return (f"the Procfile runs instance(s) {', '.join(strangers)}, which DOCKET_INSTANCES={named} does not name: "
                f"the Clerk would not read their copies and the stack would never be ready; add them to "
                f"DOCKET_INSTANCES (e.g. DOCKET_INSTANCES={','.join(dict.fromkeys([*settings.instances, *ran]))})")
    if len(ran) < settings.required_copies:
        return (f"the Procfile runs {len(ran)} instance(s) ({', '.join(ran)}) but DOCKET_REQUIRED_COPIES="
                f"{settings.required_copies}: no event could be decided until more run; start the others "
                f"of DOCKET_INSTANCES={named} as well")
    return None


def refuse_busy_ports(settings: Settings, broker_port: int | None = None) -> None:
    """StackError naming every busy port of the stack's servers (:func:`busy_ports`),
    a port two of them share (:func:`shared_ports`; ``broker_port``: the stack's own
    broker's, when it runs one), a host they cannot listen on (app/ports.py
    host_problem) or a port of 0: nothing is started, since the components would each
    fail on them."""
    from app.ports import host_problem

    hosts = [(settings.api_host, "the REST API", "DOCKET_API_HOST"),
             (settings.metrics_host, "the workers' /metrics", "DOCKET_METRICS_HOST")]
    busy = [problem for host, what, setting in hosts if (problem := host_problem(host, what, setting))]
    # 0 picks a free port for one server run alone; the stack names its servers' ports
    # to its clients and its readiness check (the ninth fresh-user trial's stack
    # printed http://127.0.0.1:0 and never became ready)
    busy += [f"{setting}=0 ({what}) picks a free port, which the stack cannot name to its clients: set a port "
             "(1-65535)" for _host, port, what, setting in _servers(settings) if port == 0]
    busy += shared_ports(settings, broker_port)
    busy = busy or busy_ports(settings)
    if busy:
        raise StackError("; ".join(busy))


STACK_LOCK_WAIT_S = 20.0  # for a stack still stopping on the same broker directory (its broker stops last)


def hold_broker_dir(broker_dir: Path, wait_s: float = STACK_LOCK_WAIT_S, echo=click.echo) -> None:
    """Hold ``broker_dir`` for this stack (launcher/stacklock.py), waiting up to ``wait_s``
    seconds, with one line saying so, for a stack that is still stopping there; StackError
    saying what to do when another stack runs on it."""
    from launcher import stacklock
    from launcher.broker import _check_broker_dir

    _check_broker_dir(broker_dir.resolve())  # before the lock file: nothing written in a directory not docket's
    pid = stacklock.holder(broker_dir)
    if pid is not None:
        echo(f"another `docket stack run` (pid {pid}) has its broker in {broker_dir}; waiting up to {wait_s:g} s "
             "for it to stop", err=True)
    pid = stacklock.hold(broker_dir, wait_s)
    if pid is not None:
        raise StackError(
            f"another `docket stack run` (pid {pid}) runs its broker from {broker_dir}, and two stacks must not share "
            "one: stop it (Ctrl-C in its terminal), or give this stack a DOCKET_BROKER_DIR and a DOCKET_BROKER_PORT "
            "of its own")


# --------------------------------------------------------------------------- running the Procfile


class StackOutput:
    """Where `docket stack run` writes its output (honcho's printer): file descriptor
    ``fd`` (stdout) while writing to it works; once a write fails (the terminal hung up:
    EIO; a closed pipe: EPIPE), the file ``fallback``, opened for appending and put in
    place of stdout and stderr (``dup2``), so that this and everything after it (a
    traceback, the interpreter's last flush) is kept there. Unbuffered: a failed write
    wrote nothing, so no line is lost or doubled at the switch. ``on_switch`` is called
    once, after the switch (e.g. to stop colouring the output); ``also`` names the other
    descriptors the file replaces (stderr)."""

    def __init__(self, fd: int, fallback: Path, on_switch: Callable[[], None] | None = None, *,
                 also: tuple[int, ...] = (2,)) -> None:
        self.fd = fd
        self.fallback = fallback
        self.on_switch = on_switch
        self.also = also  # further descriptors the fallback replaces (stderr)
        self.switched = False
        try:
            self._tty = os.isatty(fd)
        except OSError:
            self._tty = False

    def isatty(self) -> bool:
        return self._tty and not self.switched

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        while data:
            try:
                written = os.write(self.fd, data)
            except OSError as exc:
                if self.switched:
                    raise  # the file fails too: nothing left to write to
                self._switch(exc)
                continue
            data = data[written:]
        return len(text)

    def flush(self) -> None:
        """Nothing to flush: every write goes straight to the file descriptor."""

    def _switch(self, exc: OSError) -> None:
        self.fallback.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.fallback, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for target in (self.fd, *self.also):
                os.dup2(fd, target)
        finally:
            os.close(fd)
        self.switched = True
        self._tty = False
        why = errno.errorcode.get(exc.errno or 0, "") or exc.__class__.__name__
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        os.write(self.fd, f"--- {now}: writing to the terminal failed ({why}: {exc.strerror}); the output of "
                          f"`docket stack run` (pid {os.getpid()}) goes on here ---\n".encode())
        if self.on_switch is not None:
            self.on_switch()


class TerminalWatch:
    """The terminal `docket stack run` runs in: the first of ``fds`` (stdin, stdout,
    stderr) that is a terminal, watched through a descriptor of its own (``dup``: the
    output's switch to the fallback file replaces stdout and stderr, not this). Without a
    terminal (CI, stdin from /dev/null and the output to a file or pipe) it watches
    nothing, and :meth:`hung_up` is always false.

    :meth:`hung_up` asks the kernel without waiting (``poll`` with no events requested
    and a zero timeout: only POLLHUP, POLLERR and POLLNVAL can come back, and a terminal
    reports them once it has hung up, e.g. when the master side of a pseudo-terminal is
    closed). One system call; the manager asks at most every ``interval_s``."""

    def __init__(self, fds: tuple[int, ...] = (0, 1, 2), interval_s: float = 0.1) -> None:
        self.fd: int | None = None
        self.name = ""
        self.interval_s = interval_s
        self._next = 0.0
        for fd in fds:
            try:
                if os.isatty(fd):
                    self.name = os.ttyname(fd)
                    self.fd = os.dup(fd)
                    break
            except OSError:
                continue  # closed, or not a terminal after all
        self._poll = select.poll()
        if self.fd is not None:
            self._poll.register(self.fd, 0)

    @property
    def watching(self) -> bool:
        return self.fd is not None

    def hung_up(self) -> bool:
        """True once the terminal has hung up (then it is no longer watched); false
        without asking when asked again within ``interval_s``."""
        if self.fd is None:
            return False
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        if not any(revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL)
                   for _fd, revents in self._poll.poll(0)):
            return False
        self.close()
        return True

    def close(self) -> None:
        if self.fd is not None:
            self._poll.unregister(self.fd)
            os.close(self.fd)
            self.fd = None


def _ignore_signal(signum: int, frame: object) -> None:
    """A caught signal that does nothing (see :func:`_relay`)."""


def _relay(process, events) -> None:
    """The body of one of honcho's relay processes, which the manager forks per Procfile
    process: it starts the process (its own session) and passes its output and exit
    status to the manager. A relay stays in the manager's process group, the terminal's
    foreground group, so it gets the terminal's SIGHUP as it gets Ctrl-C's SIGINT; dying
    of it would cut the component's output pipe and lose its exit status, and the
    ordered stop would hang. So it ignores SIGINT, SIGTERM and SIGHUP, with handlers
    that do nothing rather than SIG_IGN, which the component would inherit. The manager
    forks it with the three blocked, so no signal finds the manager's own handler here."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _ignore_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    process.run(events, True)


def ordered_manager(last: tuple[str, ...] = ("broker",), grace_s: float = 30.0, kill_s: float = 30.0,
                    printer=None, watch: TerminalWatch | None = None):
    """A honcho Manager (imported lazily: only `stack run` needs honcho) that stops in two
    steps: SIGTERM to every process whose Procfile name is not in ``last``; once they have
    exited (SIGKILL, once, to any still running after ``grace_s``), SIGTERM to the
    ``last`` ones (SIGKILL after ``kill_s``). SIGINT (Ctrl-C), SIGTERM, SIGHUP and the hang-up of the
    terminal ``watch`` watches start that stop; the first of them is logged and sets the
    exit code, later ones change nothing. Otherwise it is honcho's: the same output, and
    when any process exits, the others are stopped. Its relay processes run
    :func:`_relay`."""
    import multiprocessing
    import queue

    from honcho.manager import Manager

    class OrderedManager(Manager):
        def __init__(self) -> None:
            super().__init__(printer)
            self._phase = None  # None, "first", "last", "kill"
            self._phase_began = None
            self.requested = False  # stopped by a signal or the hang-up, not because a process exited
            self.forced = False  # some process needed SIGKILL
            self.cause = None  # the first stop cause (a key of STOP_CAUSES), set by _note
            self.first_ended: str | None = None  # the component whose exit set returncode
            self._killed: set[str] = set()  # components sent SIGKILL after grace_s

        def _is_last(self, name: str) -> bool:
            return name.rsplit(".", 1)[0] in last

        def _running(self, which) -> list[str]:
            return [n for n, p in self._processes.items() if "returncode" not in p and which(n)]

        def _signal(self, names: list[str], force: bool, why: str = "") -> list[str]:
            """Signal each of ``names`` whose pid is known; return those signalled. One
            whose relay has not reported its pid yet is signalled when it does
            (:meth:`_started`)."""
            sent = []
            for n in names:
                pid = self._processes[n].get("pid")
                if pid is None:
                    continue
                self._system_print(f"sending {'SIGKILL' if force else 'SIGTERM'} to {n} (pid {pid}){why}\n")
                self.forced = self.forced or force
                (self._procmgr.kill if force else self._procmgr.terminate)(pid)
                sent.append(n)
            return sent

        def _started(self, name: str, pid: int) -> None:
            """A relay reported its process's pid. During a stop, that process gets the
            signal its step has sent the others: a Ctrl-C in the first tenths of a second
            of `make run` came before the relays' reports, the components were sent
            nothing and were SIGKILLed 35 s later (a fresh-user trial)."""
            self._processes[name]["pid"] = pid
            self._system_print(f"{name} started (pid={pid})\n")
            if not self._terminating:
                return
            if self._phase == "kill":
                self._signal([name], force=True)
            elif self._phase == "last" or not self._is_last(name):
                # a first one after grace_s had passed gets SIGKILL as the others did
                late = self._phase == "first" and self._elapsed() > datetime.timedelta(seconds=grace_s)
                if late:
                    self._killed.add(name)
                self._signal([name], force=late)

        def terminate(self) -> None:
            if self._terminating:
                return
            self._terminating = True
            self._enter("first")
            self._signal(self._running(lambda n: not self._is_last(n)), force=False)

        def kill(self) -> None:
            self._signal(self._running(lambda n: True), force=True)

        def _start(self) -> None:
            # The relays are forked with the stop signals blocked (and unblock them once
            # their own handlers are in place); one that arrives meanwhile is delivered
            # to this process when they are unblocked here.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                for name, p in self._processes.items():
                    p["process"] = multiprocessing.Process(name=name, target=_relay, args=(p["obj"], self.events))
                    p["process"].start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

        def _enter(self, phase: str) -> None:
            self._phase, self._phase_began = phase, self._clock.now()

        def _elapsed(self) -> datetime.timedelta:
            return self._clock.now() - self._phase_began

        def _advance(self) -> None:
            if self._phase == "first":
                firsts = self._running(lambda n: not self._is_last(n))
                if firsts and self._elapsed() > datetime.timedelta(seconds=grace_s):
                    # once each: the loop comes by every 0.1 s until the kernel reaps it
                    unkilled = [n for n in firsts if n not in self._killed]
                    self._killed.update(self._signal(unkilled, force=True,
                                                     why=f": still running {grace_s:g} s after SIGTERM"))
                elif not firsts:
                    self._enter("last")
                    self._signal(self._running(self._is_last), force=False)
            elif self._phase == "last" and self._elapsed() > datetime.timedelta(seconds=kill_s):
                self._enter("kill")
                self.kill()

        def _note(self, cause) -> None:
            """Keep the first stop cause. Signal handlers call it, so it writes nothing: a
            line written from a handler would interrupt whatever the loop was writing,
            the output's switch to its fallback file included, and come out twice with
            it when the signal comes twice (an interactive shell passes its SIGHUP on to
            the job, then the kernel sends the job one more)."""
            if self.cause is None:
                self.cause = cause

        def _take_stop_request(self) -> None:
            """Start the stop for the first cause, once, from the loop."""
            if self.cause is None and watch is not None and watch.hung_up():
                self._note(HANGUP)
            if self.cause is None or self.requested:
                return
            text, code = STOP_CAUSES[self.cause]
            what = text.format(terminal=watch.name if watch is not None else "")
            then = f", then {', '.join(last)}" if last else ""
            self._system_print(f"{what}: stopping the components{then}\n")
            self.returncode = code
            self.requested = True
            self.terminate()

        def loop(self) -> None:
            for sig in STOP_SIGNALS:
                signal.signal(sig, lambda signum, frame: self._note(signum))
            self._start()
            while True:
                try:
                    msg = self.events.get(timeout=0.1)
                except queue.Empty:
                    if self._all_started() and self._all_stopped():
                        break
                    msg = None
                if msg is not None:
                    if msg.type == "line":
                        self._printer.write(msg)
                    elif msg.type == "start":
                        self._started(msg.name, msg.data["pid"])
                    elif msg.type == "stop":
                        self._processes[msg.name]["returncode"] = msg.data["returncode"]
                        self._system_print(f"{msg.name} stopped (rc={msg.data['returncode']})\n")
                        if self.returncode is None:
                            self.returncode = msg.data["returncode"]
                            self.first_ended = msg.name
                self._take_stop_request()
                if not self._terminating and self._all_started() and self._any_stopped():
                    # nothing asked for this stop: say which component began it (the
                    # fifteenth fresh-user trial saw the others stopped without a word why)
                    code = self.returncode if self.returncode is not None else 1
                    self._system_print(f"{self.first_ended} ended by itself (rc={code}): stopping the other "
                                       f"components; the stack exits {exit_status(code)}\n")
                    self.terminate()
                if self._terminating:
                    self._advance()

    return OrderedManager()


# What a component gets beyond its own stop deadline before SIGKILL: a worker that hits
# DOCKET_STOP_TIMEOUT_MS logs why and exits 75 itself (agents/stopping.py), and the
# stack should let it rather than kill it at the same moment without a word.
STOP_MARGIN_S = 5.0


def stop_grace_s(settings) -> float:
    """Seconds the stack waits for its components after SIGTERM before SIGKILL:
    DOCKET_STOP_TIMEOUT_MS plus :data:`STOP_MARGIN_S` (35 s by default)."""
    return settings.stop_timeout_ms / 1000 + STOP_MARGIN_S


def run_procfile(procfile: Path, env: dict[str, str], *, colour: bool, fallback_log: Path,
                 skip: tuple[str, ...] = (), grace_s: float = 30.0) -> int:
    """Run every process of ``procfile`` like `honcho start`, stopping in order. Returns 0
    when stopped by SIGINT/SIGTERM/SIGHUP or the terminal's hang-up (:class:`TerminalWatch`)
    and every process exited with 0 on its own, otherwise honcho's code (the first process
    to exit, or 128 + the signal). The output goes to stdout, and to ``fallback_log`` once
    stdout fails (:class:`StackOutput`). The processes named in ``skip`` are not run
    (``broker`` when the stack uses a Kafka of its user's). ``grace_s``: how long the
    components may take to stop before they get SIGKILL (:func:`stop_grace_s`)."""
    from honcho.environ import expand_processes, parse_procfile
    from honcho.printer import Printer

    processes = {name: p for name, p in parse_procfile(procfile.read_text()).processes.items() if name not in skip}
    if not processes:
        raise StackError(f"{procfile} names no process")
    sys.stdout.flush()  # what was printed before goes first; the printer bypasses sys.stdout
    output = StackOutput(sys.stdout.fileno(), fallback_log)
    printer = Printer(output, colour=colour, prefix=True)
    output.on_switch = lambda: setattr(printer, "colour", False)
    watch = TerminalWatch()
    # with your own Kafka the Procfile's broker is skipped, and the stop names none
    manager = ordered_manager(last=tuple(n for n in ("broker",) if n in processes), printer=printer, watch=watch,
                              grace_s=grace_s)
    for p in expand_processes(processes, env=None):
        manager.add_process(p.name, p.cmd, quiet=p.quiet, env={**env, **p.env}, cwd=str(procfile.parent))
    try:
        manager.loop()
    finally:
        watch.close()
    codes = [p.get("returncode") for p in manager._processes.values()]
    if manager.requested and not manager.forced and all(c == 0 for c in codes):
        return 0  # Ctrl-C and every process stopped cleanly (make then reports no error)
    return exit_status(manager.returncode)


def exit_status(code: int | None) -> int:
    """The stack's exit status for the return code of the component that ended first:
    128 + N for one killed by signal N (returncode -N), as a shell reports it
    (sys.exit(-9) left 247, which make reported as "Error 247"); 1 for one that ended
    by itself with 0, since nothing asked the stack to stop, or for none at all."""
    if not code:
        return 1
    return 128 - code if code < 0 else code


# --------------------------------------------------------------------------- CLI


@click.group()
def stack() -> None:
    """The local stack that `make run` starts (Procfile, run by honcho)."""


@stack.command("run")
@click.option("--procfile", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=PROCFILE,
              show_default=True, help="the Procfile to run")
def run_cmd(procfile: Path) -> None:
    """Choose the API token, print the address and a curl example, then run the Procfile
    with honcho's process manager. Ctrl-C, SIGTERM, SIGHUP or closing the terminal stops
    the components, then the broker; once the terminal is gone, the output goes on in
    $DOCKET_DATA_ROOT/stack.log."""
    settings = load()
    mismatch = instance_mismatch(settings, procfile.read_text())
    if mismatch is not None:
        raise StackError(mismatch)
    # the Procfile's broker (`docket broker run`) fetches its jars itself, so a stack on
    # the user's own Kafka needs neither Java nor Maven
    kafka = stack_kafka(settings, os.environ)
    from launcher import stacklock

    own_procfile = procfile.resolve() == PROCFILE.resolve()
    # The ports are checked before the stack lock is taken, so a refused start writes
    # nothing in the broker directory; but a stack still stopping there may hold them a
    # moment longer, so while one holds the lock they are checked once it has let go.
    stopping = kafka.local and stacklock.holder(settings.broker_dir) is not None
    broker_port = settings.broker_port if kafka.local else None
    if own_procfile and not stopping:
        refuse_busy_ports(settings, broker_port)
    if kafka.local:
        hold_broker_dir(settings.broker_dir)
    if own_procfile and stopping:
        refuse_busy_ports(settings, broker_port)
    token, source = stack_token(settings)
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # `docket` of this virtualenv
    # honcho runs the processes in the Procfile's directory: relative paths would land
    # under it, not where the banner says; so every path setting goes in absolute
    env["DOCKET_DATA_ROOT"] = str(settings.data_root)
    env["DOCKET_BROKER_DIR"] = str(settings.broker_dir)
    env["DOCKET_BROKER_CACHE"] = str(settings.broker_cache)
    # as given (names and all), or the stack's own token
    env["DOCKET_API_TOKENS"] = ",".join(f"{name}:{tok}" for name, tok in settings.api_clients) or token
    env["PYTHONUNBUFFERED"] = "1"  # honcho relays output line by line
    env["DOCKET_STACK_STARTED"] = f"{time.time():.3f}"
    env["DOCKET_KAFKA_BOOTSTRAP"] = kafka.bootstrap
    click.echo(banner(settings, token, source, f"example-{secrets.token_hex(4)}", kafka))
    sys.stdout.flush()
    code = run_procfile(procfile.resolve(), env, colour=sys.stdout.isatty(),
                        fallback_log=settings.data_root / STACK_LOG, skip=() if kafka.local else ("broker",),
                        grace_s=stop_grace_s(settings))
    sys.exit(code)


@stack.command("topics")
@click.option("--wait", "wait_s", type=Seconds(zero_ok=True), default=120.0, show_default=True,
              help="seconds to wait for the broker, then for the API")
def topics_cmd(wait_s: float) -> None:
    """The Procfile's one-shot setup: wait for the broker, create the topics, announce
    when the API is ready, then idle until stopped.

    honcho stops the whole stack when any process exits, so this one stays alive (doing
    nothing) after its work; SIGTERM or SIGINT ends it with exit code 0."""
    from app.kafka_admin import KafkaUnreachable, connect_admin
    from app.topics import TopicError, create_topics

    settings = load()
    began = time.monotonic()
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)

    async def broker_answers() -> bool:
        # Also wait for the group coordinator: asking for it makes the broker create its
        # offsets topic, so the components (which wait for the topics created next) do
        # not start while it is still being created.
        try:
            admin = await connect_admin(settings.kafka_bootstrap, 3.0, settings)
        except KafkaUnreachable:
            return False
        try:
            await admin.find_coordinator(settings.app_id("clerk"))
            return True
        except Exception:  # noqa: BLE001  coordinator not available yet
            return False
        finally:
            await admin.close()

    def until(condition: Callable[[], bool], deadline: float) -> bool:
        while not stopping:
            if condition():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)  # poll interval of the condition
        return False

    deadline = began + wait_s
    if not until(lambda: asyncio.run(broker_answers()), deadline):
        if stopping:
            return
        raise StackError(f"Kafka did not answer at {settings.kafka_bootstrap} within {wait_s:g} s")
    while True:  # a broker that has only just started may still refuse the first request
        try:
            report = asyncio.run(create_topics(settings))
            break
        except TopicError as exc:
            if stopping or time.monotonic() >= deadline or "disagree" in str(exc) or exc.permanent:
                raise
            time.sleep(1.0)  # retry interval while the broker finishes starting
    made = f"created {len(report.created)}" if report.created else "all exist"
    click.echo(f"topics ready: {len(report.created) + len(report.existing)} under prefix "
               f"{settings.topic_prefix!r}, {settings.partitions} partitions ({made})")

    base = api_base_url(settings)
    seen: list[tuple[list[str], bool]] = [([], False)]  # the groups as the last check read them

    def ready() -> bool:
        if not api_ready(base):
            return False
        seen[0] = asyncio.run(pipeline_members(settings))
        return pipeline_is_ready(settings, seen[0]) and workers_serving(settings, seen[0][0])

    if until(ready, time.monotonic() + wait_s):
        since = _since_stack_start() or (time.monotonic() - began)
        running = seen[0][0]
        missing = [i for i in settings.instances if i not in running]
        which = ("instances and Clerk are" if not missing else
                 f"instances {', '.join(running)} and the Clerk are (not {', '.join(missing)}: "
                 f"{settings.required_copies} matching copies decide)")
        click.echo(f"docket is ready in {since:.1f} s: the API answers at {base}, {which} in their consumer "
                   "groups with their partitions (Ctrl-C stops everything)")
    elif not stopping:
        click.echo(f"warning: the stack was not ready within {wait_s:g} s after the topics (the API at {base} "
                   f"answers /readyz: {api_ready(base)}; instances and Clerk in their consumer groups: "
                   f"{asyncio.run(pipeline_ready(settings))}; their /metrics pages answer (Faust serves them once "
                   f"a worker's partitions are recovered): {workers_serving(settings, seen[0][0])})")
    while not stopping:  # idle; not signal.pause(), which a signal just before it would miss
        time.sleep(0.5)


def _since_stack_start() -> float | None:
    """Seconds since `docket stack run` handed over to honcho, if it did."""
    try:
        return time.time() - float(os.environ["DOCKET_STACK_STARTED"])
    except (KeyError, ValueError):
        return None


@stack.command("health")
@click.argument("component", type=click.Choice(["kafka", "topics", "instance", "clerk", "api"]))
@click.argument("ident", required=False)
def health_cmd(component: str, ident: str | None) -> None:
    """Exit 0 if COMPONENT is healthy (the compose file's healthchecks): Kafka answers;
    the topics exist; instance IDENT / the Clerk has a stable consumer group with a
    member; the API answers /readyz. Exit 2 (a usage error) for an IDENT that is not an
    instance id, or one given to a component that takes none."""
    # checked before anything connects: an invalid id was a silent exit 1 (its consumer
    # group simply not found), and an argument to another component was ignored
    if component != "instance" and ident is not None:
        raise click.UsageError(f"Got unexpected extra argument ({ident}): only `instance` takes an id, "
                               f"e.g. `docket stack health {component}`")
    if component == "instance" and ident is None:
        raise click.UsageError("instance needs its id, e.g. `docket stack health instance a`")
    problem = ident is not None and instance_id_problem(ident)
    if problem:
        raise click.BadParameter(f"{ident!r}: {problem}", param_hint="'IDENT'")
    settings = load()
    if component == "api":
        sys.exit(0 if api_ready(api_base_url(settings)) else 1)
    sys.exit(0 if asyncio.run(_healthy(settings, component, ident)) else 1)


async def _healthy(settings: Settings, component: str, ident: str | None) -> bool:
    from app.kafka_admin import KafkaUnreachable, connect_admin

    try:
        if component in ("instance", "clerk"):
            group = settings.app_id(ident if component == "instance" else "clerk")
            state, members = (await group_states(settings, [group])).get(group, ("", 0))
            return state == "Stable" and members > 0
        admin = await connect_admin(settings.kafka_bootstrap, 5.0, settings)
    except (KafkaUnreachable, Exception):  # noqa: BLE001  any failure means "not healthy"
        return False
    try:
        return component == "kafka" or set(settings.all_topics()) <= set(await admin.list_topics())
    except Exception:  # noqa: BLE001
        return False
    finally:
        await admin.close()
