"""`docket console`: the fault console (issue 16; specs/console.allium).

Starts a stack of its own, in ``--data-dir`` (wiped at start): a broker on a free port,
the topics, instances a, b and c (two required copies) and the Clerk as subprocesses,
an inventory workload at ``--rate`` events/s; serves the page on 127.0.0.1:``--port``
and prints its URL with the token. Ctrl-C, SIGTERM, SIGHUP or the page's stop button
stop everything it started (the workers with SIGTERM, then the broker); exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

import click

from app.cli_types import SEED, EnvOption, FiniteRange

log = logging.getLogger("docket.console")

START_DEADLINE_S = 180.0  # broker boot + Faust start-up + the first rebalance on a busy 2-core machine
# events/s: the highest rate tried whose decision latency p99 stayed under 100 ms on the
# 2-core box (2026-12-01, the console's liveness.window over 60 s, the machine otherwise
# quiet: 50/s 13 ms, 100/s 23 ms, 200/s 28 and 46 ms; with other work loading it, every
# rate went over: 50/s 76-396 ms, 200/s 312-1248 ms)
DEFAULT_RATE = 200


def console_token(api_clients) -> str:
    """The run's bearer token: the first of DOCKET_API_TOKENS when set, else a fresh one."""
    return api_clients[0][1] if api_clients else secrets.token_urlsafe(24)


async def run_console(port: int, rate: float, partitions: int, seed: int, data_dir: Path, fault_rate: float,
                      open_browser: bool, say=click.echo) -> int:
    from app.settings import load
    from app.registry import registry
    from app.topics import create_topics
    from chaos.stack import BrokerKeeper
    from launcher.broker import BrokerError
    from console.monitor import Monitor
    from console.safety import SafetyCheck
    from console.stack import Controller, Feeder, build_procs, console_settings
    from console.web import make_app, serve

    # aiokafka logs every retry of the console's own clients (the broker stopped on
    # purpose, a topic just created) at ERROR; the page shows what matters.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    controller = None

    def on_signal() -> None:
        if stopping.is_set() and controller is not None:
            say("a second stop signal: SIGKILL to every worker")
            controller.hurry()
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)

    wipe(data_dir)
    base = load()
    token = console_token(base.api_clients)
    settings = console_settings(base, data_dir, partitions)
    keeper = BrokerKeeper(settings)
    procs, ports, fault_files = build_procs(settings, data_dir)
    controller = Controller(procs, keeper, fault_files, fault_rate)
    feeder = Feeder(settings, rate, seed, broker_ready=lambda: controller.broker_state() == "ready",
                    note=controller.note)
    safety = SafetyCheck(registry.versions(settings.domain), partitions, settings.idempotency_ttl_ms)
    monitor = Monitor(settings, controller, ports, feeder, safety)
    runner = None
    started_feeder = started_monitor = False
    url = f"http://127.0.0.1:{port}/#token={token}"
    try:
        # the page first: a port in use fails before anything starts, and the page can
        # show the stack coming up
        try:
            runner = await serve(make_app(controller, monitor.state, feeder.set_rate, token, stopping.set), port)
        except OSError as exc:
            raise click.ClickException(f"cannot serve on 127.0.0.1:{port} ({exc.strerror}): choose another "
                                       "--port (or DOCKET_CONSOLE_PORT)") from None
        say(f"docket console: data in {data_dir}; seed {seed}")
        say(f"starting a broker on {settings.kafka_bootstrap} ...")
        try:
            took = await _until_stopped(controller.boot_broker(), stopping)
        except BrokerError as exc:
            raise click.ClickException(f"the console's broker did not start: {exc}") from None
        say(f"broker up in {took:.1f} s")
        report = await _until_stopped(create_topics(settings), stopping)
        say(f"topics: {len(report.created)} created ({settings.topic_prefix}.*, {partitions} partitions)")
        for p in procs.values():
            p.start()
        say(f"starting instances a, b, c and the Clerk (logs in {data_dir / 'logs'}) ...")
        await _until_stopped(monitor.start(), stopping)
        started_monitor = True
        began = time.monotonic()
        waiting = dict(procs)
        while waiting and not stopping.is_set():
            for role, p in list(waiting.items()):
                if p.ready:
                    say(f"  {role} ready ({time.monotonic() - began:.1f} s)")
                    del waiting[role]
                elif not p.alive:
                    raise click.ClickException(f"{role} exited while starting (status {p.returncode})\n"
                                               f"{p.log_tail(20)}")
            if time.monotonic() - began > START_DEADLINE_S:
                raise click.ClickException(f"{', '.join(waiting)} not ready after {START_DEADLINE_S:.0f} s\n"
                                           + "\n".join(p.log_tail(20) for p in waiting.values()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.2)  # poll interval of the readiness check
        if not stopping.is_set():
            feeder.start()
            started_feeder = True
            controller.note(f"stack ready; producing {rate:g} events/s")
            say(f"producing an inventory workload at {rate:g} events/s")
            say(f"the console: {url}")
            say("Ctrl-C (or the page's stop button) stops everything it started")
            if open_browser:
                import webbrowser

                webbrowser.open(url)
        await stopping.wait()
        say(f"stopping: workload, workers (SIGTERM, SIGKILL after {controller.stop_timeout_s():g} s; Ctrl-C again "
            "to kill them now), broker ...")
    finally:
        # Each step on its own and bounded: with the broker stopped, the monitor's Kafka
        # reader may end in CancelledError or hang in a retry, and the workers must be
        # stopped whatever happened before (they would outlive the console).
        steps = [(started_feeder, "workload", feeder.stop), (started_monitor, "monitor", monitor.stop),
                 (runner is not None, "web server", lambda: runner.cleanup())]
        for wanted, what, stop in steps:
            if wanted:
                try:
                    await asyncio.wait_for(stop(), CLEANUP_STEP_S)
                except (asyncio.CancelledError, asyncio.TimeoutError, Exception) as exc:  # noqa: PERF203
                    log.warning("stopping the %s: %s; going on", what, type(exc).__name__)
        await controller.shutdown()
    say("stopped: every process the console started has exited")
    return 0


CLEANUP_STEP_S = 15.0  # longest wait for one part of the console to stop

MARKER = ".docket-console"  # in every data directory a console made: it may wipe it


def wipe(data_dir: Path) -> None:
    """Empty ``data_dir`` for a fresh run: only a directory a console made before (it
    holds MARKER) or an empty or missing one, so a mistyped --data-dir never deletes
    anything else (click.ClickException)."""
    try:
        # (a run from before the marker existed left at least faults/ and broker/)
        ours = (data_dir / MARKER).exists() or all((data_dir / d).is_dir() for d in ("faults", "broker"))
        if data_dir.exists() and not data_dir.is_dir():
            raise click.ClickException(f"{data_dir} is not a directory: give --data-dir (or DOCKET_CONSOLE_DATA_DIR) "
                                       "a new or empty directory")
        if data_dir.exists() and any(data_dir.iterdir()) and not ours:
            raise click.ClickException(f"{data_dir} is not empty and not a console's data directory: the console "
                                       "wipes its --data-dir at start, so give it a new or empty directory")
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        (data_dir / MARKER).write_text("docket console data directory: wiped at every start\n")
    except OSError as exc:
        # a file where a directory should be, a read-only place: a traceback before (the
        # thirteenth fresh-user trial: --data-dir below a regular file)
        raise click.ClickException(f"cannot use {data_dir} as the console's data directory ({exc.strerror or exc}): "
                                   "give --data-dir (or DOCKET_CONSOLE_DATA_DIR) a directory it can create") from None


async def _until_stopped(aw, stopping: asyncio.Event):
    """Await ``aw`` unless a stop is asked for first (then raise _Stopped)."""
    task = asyncio.ensure_future(aw)
    waiter = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise _Stopped()
    return task.result()


class _Stopped(Exception):
    """A stop was asked for while the console was still starting."""


@click.command("console")
@click.option("--port", type=click.IntRange(1, 65535), default=8090, show_default=True, cls=EnvOption, envvar="DOCKET_CONSOLE_PORT",
              help="serve the page on 127.0.0.1:PORT [env DOCKET_CONSOLE_PORT]")
@click.option("--rate", type=click.IntRange(1, 2000), default=DEFAULT_RATE, show_default=True,
              cls=EnvOption, envvar="DOCKET_CONSOLE_RATE", help="input events per second, changeable on the page "
                                                 "[env DOCKET_CONSOLE_RATE]")
@click.option("--partitions", type=click.IntRange(1, 64), default=4, show_default=True,
              cls=EnvOption, envvar="DOCKET_CONSOLE_PARTITIONS", help="partitions of every topic [env DOCKET_CONSOLE_PARTITIONS]")
@click.option("--seed", type=SEED, default=None, help="seed of the workload, a 64-bit integer [default: random, printed]")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              cls=EnvOption, envvar="DOCKET_CONSOLE_DATA_DIR",
              help="the console's broker, RocksDB and logs; WIPED at start [env DOCKET_CONSOLE_DATA_DIR; "
                   "default: $DOCKET_DATA_ROOT/console, var/console]")
@click.option("--fault-rate", type=FiniteRange(0, 1, min_open=True), default=0.3, show_default=True,
              cls=EnvOption, envvar="DOCKET_CONSOLE_FAULT_RATE",
              help="share of records a corrupt switch corrupts [env DOCKET_CONSOLE_FAULT_RATE]")
@click.option("--open-browser/--no-open-browser", default=False, show_default=True,
              help="open the page in the default browser once the stack is ready")
def console(port: int, rate: int, partitions: int, seed: int | None, data_dir: Path | None, fault_rate: float,
            open_browser: bool) -> None:
    """The fault console: kill, slow and corrupt a live stack from a web page and watch
    the Clerk hold."""
    if data_dir is None:
        # beside the rest of docket's state (it was var/console whatever DOCKET_DATA_ROOT said)
        from app.settings import load

        data_dir = load().data_root / "console"
    seed = random.SystemRandom().randrange(1, 2**31) if seed is None else seed
    try:
        code = asyncio.run(run_console(port, rate, partitions, seed, data_dir.resolve(), fault_rate, open_browser))
    except _Stopped:
        click.echo("stopped while starting: every process the console started has exited")
        code = 0
    sys.exit(code)
