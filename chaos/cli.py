"""`docket chaos`: the resilience suite. Runs the real stack as OS processes (its own
broker on a free port in a temporary directory, instance a, instance b, the Clerk),
feeds the domain's workload (chaos/workload.py, with the domain's kit: ``--domain`` or
DOCKET_DOMAIN) Kafka-natively at a steady rate, and
kills things while it flows (chaos/scenarios.py). After each scenario has drained
it checks the invariants (chaos/verify.py) against the pure replay of the input
(chaos/replay.py) and the stopped workers' RocksDB (tables/dump.py).

    docket chaos --scenario all --events 2000 --kills 2 --seed 7 --report chaos.json
    docket chaos --domain accounts --scenario kill-a --events 2000 --seed 7

Output: a live display while it runs, a table per scenario, a summary table, and with
``--report`` a JSON report: top-level ``passed``, and one entry per scenario with its
``kills`` and each invariant's result. Exit code 1 if any invariant fails.
``make resilience`` is the full run (100,000 events per scenario).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import click
import orjson
from rich.markup import escape

from app.cli_types import SEED, FiniteRange, Seconds
from app.settings import MAX_IDEMPOTENCY_TTL_MS, MAX_SESSION_TIMEOUT_MS, MIN_SESSION_TIMEOUT_MS
from chaos.scenarios import SCENARIOS, Events, Options, Scenario
from chaos.verify import invariants


def _kit(domain: str):
    import app.domains  # noqa: F401  registers the built-in domains
    from app.registry import registry

    return registry.kit(domain)


def _fmt_s(values: list) -> str:
    return ", ".join("-" if v is None else f"{v:.1f}" for v in values) or "-"


# --------------------------------------------------------------------------- display


class Display:
    """A live status panel on a terminal (rich), a status line every 10 s otherwise."""

    def __init__(self, console, live: bool) -> None:
        self.console = console
        self.events = Events(say=self.say)
        self.live_enabled = live
        self._live = None
        self._task: asyncio.Task | None = None

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def render(self):
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        s = self.events.status
        if not s:
            return Panel("starting the broker ...")
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        events = max(1, s["events"])
        t.add_row("produced", ProgressBar(total=events, completed=s["acked"], width=40))
        t.add_row("", f"{s['acked']:,} of {s['events']:,} events acknowledged")
        t.add_row("answered", ProgressBar(total=events, completed=min(events, s["answered"]), width=40))
        t.add_row("", f"{s['answered']:,} input events have a result (max lag {s['max_clerk_lag']:,})")
        procs = "  ".join(f"{r} [{'green' if ph == 'ready' else 'yellow' if ph != 'down' else 'red'}]{ph}[/]"
                          for r, ph in s["procs"].items())
        t.add_row("processes", f"{procs}  broker [{'green' if s['broker'] == 'up' else 'red'}]{s['broker']}[/]")
        trouble = []
        if s["duplicates"]:
            trouble.append(f"[red]{s['duplicates']} duplicate results[/red]")
        if s["divergences"]:
            trouble.append(f"[red]{s['divergences']} divergences[/red]")
        if s["unexpected"]:
            trouble.append(f"[red]{s['unexpected']} unexpected exits[/red]")
        t.add_row("kills", f"{s['kills']}  " + "  ".join(trouble))
        return Panel(t, title=f"docket chaos: {s['scenario']} ({s['state']}, {s['elapsed']:.0f} s)",
                     title_align="left")

    async def _plain(self) -> None:
        while True:
            await asyncio.sleep(10)  # a status line every 10 s in a log
            s = self.events.status
            if s:
                self.say(escape(f"[{s['scenario']} +{s['elapsed']:6.1f}s]") + f" {s['state']}: {s['acked']:,}/{s['events']:,} "
                         f"produced, {s['answered']:,} answered, {s['kills']} kills, "
                         + " ".join(f"{r}={ph}" for r, ph in s["procs"].items()) + f" broker={s['broker']}")

    def __enter__(self) -> Display:  # noqa: PYI034
        if self.live_enabled:
            from rich.live import Live

            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.__enter__()
        else:
            self._task = asyncio.get_running_loop().create_task(self._plain())
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
        if self._task is not None:
            self._task.cancel()


def scenario_table(entry: dict):
    from rich.table import Table

    ok = "[green]pass[/green]" if entry["passed"] else "[red]FAIL[/red]"
    t = Table(title=f"{entry['name']}: {ok}  ({entry.get('input_records', entry['events']):,} input events, "
                    f"{entry['kill_count']} kills, max Clerk lag {entry['max_clerk_lag']:,} events, "
                    f"{len(entry['unexpected_exits'])} unexpected exits, {entry['wall_s']:.0f} s)",
              title_justify="left")
    t.add_column("invariant")
    t.add_column("result")
    t.add_column("detail", overflow="fold")
    for name, res in entry["invariants"].items():
        t.add_row(name, "[green]pass[/green]" if res["passed"] else "[red]FAIL[/red]", res["detail"])
    k = Table(title_justify="left")
    k.add_column("round", justify="right")
    k.add_column("victims")
    k.add_column("kills", justify="right")
    k.add_column("back (s)", justify="right")
    k.add_column("recovered (s)", justify="right")
    k.add_column("note")
    for r in entry["recoveries"]:
        note = []
        if "mode" in r:
            note.append(f"{r['mode']}: {r['before_ready']} kills before ready")
        if "down_s" in r:
            note.append(f"broker down {r['down_s']:.1f} s")
        if r.get("error"):
            note.append(r["error"])
        k.add_row(str(r["round"]), "+".join(r["victims"]), str(r["kills"]), _fmt_s([r.get("back_s")]),
                  _fmt_s([r.get("recover_s")]), "; ".join(note))
    return t, k


def summary_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    names = invariants(_kit(report["options"].get("domain", "inventory")))
    head = ["scenario", "events", "kills", "recover s (each)", "max Clerk lag", *names.values(), "result"]
    rows = []
    for e in report["scenarios"]:
        inv = [("pass" if e["invariants"][i]["passed"] else "FAIL") for i in names]
        rows.append([e["name"], f"{e.get('input_records', e['events']):,}", str(e["kill_count"]),
                     _fmt_s(e["recover_s"]), f"{e['max_clerk_lag']:,}", *inv,
                     "pass" if e["passed"] else "FAIL"])
    return head, rows


def summary_table(report: dict):
    from rich.table import Table

    head, rows = summary_rows(report)
    verdict = "[green]passed[/green]" if report["passed"] else "[red]FAILED[/red]"
    t = Table(title=f"docket chaos, seed {report['seed']}: {verdict} in {report['wall_s']:.0f} s", title_justify="left")
    for h in head:
        t.add_column(h, justify="right" if h in ("events", "kills", "max Clerk lag") else "left")
    for row in rows:
        t.add_row(*[f"[red]{c}[/red]" if c == "FAIL" else c for c in row])
    return t


def markdown(report: dict) -> str:
    head, rows = summary_rows(report)
    lines = [f"# docket resilience run {report['started_at']}", "",
             (f"`docket chaos --domain {report['options'].get('domain', 'inventory')} "
              f"--scenario {','.join(e['name'] for e in report['scenarios'])} "
             f"--events {report['options']['events']} --seed {report['seed']} --kills {report['options']['kills']}` "
             f"on {report['host']['cpus']} cores: **{'passed' if report['passed'] else 'FAILED'}**, "
             f"wall time {report['wall_s'] / 60:.1f} min ({report['wall_s']:.0f} s); "
             f"{sum(e.get('input_records', e['events']) for e in report['scenarios']):,} input events, "
             f"{sum(e['kill_count'] for e in report['scenarios'])} kills in all."), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", ("recover s: from each kill (broker: stop) until every event produced before it has a result. "
                   "max Clerk lag: most input events without a result yet, sampled every second."), ""]
    for e in report["scenarios"]:
        lines.append(f"- **{e['name']}** ({e['wall_s']:.0f} s): " + "; ".join(
            f"{k['kind']}{' (' + ', '.join(k['phase'].values()) + ')' if k['kind'] == 'before ready' else ''} "
            f"{'+'.join(k['victims'])} at event {k['at_event']:,}" for k in e["kills"]))
        if e.get("error"):
            lines.append(f"  - error: {e['error'].splitlines()[0]}")
        for x in e["unexpected_exits"]:
            lines.append(f"  - {x['role']} exited by itself at {x['t_s']:.0f} s (rc {x['rc']})")
        for name, res in e["invariants"].items():
            if not res["passed"]:
                lines.append(f"  - {name} FAILED: {res['detail']}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the run


async def run_all(names: list[str], opts: Options, workdir: Path, display: Display) -> dict:
    from launcher.broker import free_port
    from chaos.stack import BrokerKeeper
    from app.settings import load

    began = time.monotonic()
    report = {
        "passed": False, "seed": opts.seed, "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "options": dataclasses.asdict(opts), "workdir": str(workdir),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "scenarios": [],
    }
    base = load()
    broker_settings = dataclasses.replace(base, broker_dir=workdir / "broker", broker_port=free_port())
    keeper = BrokerKeeper(broker_settings)
    try:
        display.say(f"starting a broker on 127.0.0.1:{broker_settings.broker_port} in {workdir / 'broker'}")
        boot = await keeper.start()
        display.say(f"broker {keeper.bootstrap} ready in {boot:.1f} s")
        for name in names:
            scenario = Scenario(name, opts, base, keeper, workdir, display.events)
            entry = await scenario.run()
            report["scenarios"].append(entry)
            display.events.status.clear()
            for table in scenario_table(entry):
                display.console.print(table)
            if entry["passed"]:
                shutil.rmtree(scenario.settings.data_root, ignore_errors=True)  # RocksDB copies: disk
            if not keeper.up:  # a failed broker restart: the next scenario needs one
                await keeper.start()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, keeper.close)
        report["wall_s"] = round(time.monotonic() - began, 1)
        report["passed"] = bool(report["scenarios"]) and len(report["scenarios"]) == len(names) and all(
            e["passed"] for e in report["scenarios"])
    return report


def _scenarios(value: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for v in value or ("all",):
        for part in v.split(","):
            part = part.strip()
            if part == "all":
                names += [s for s in SCENARIOS if s not in names]
            elif part in SCENARIOS:
                if part not in names:
                    names.append(part)
            elif part:
                raise click.BadParameter(f"unknown scenario {part!r}; one of {', '.join(SCENARIOS)} or all",
                                         param_hint="--scenario")
    if not names:
        # `--scenario ,` started a broker, ran nothing and reported FAILED (the twelfth trial)
        raise click.BadParameter(f"names no scenario; one of {', '.join(SCENARIOS)} or all", param_hint="--scenario")
    return names


def usable_workdir(workdir: Path) -> Path:
    """``--workdir`` resolved, made if missing, and checked by making (and removing) a
    directory in it, as the run makes its broker's and workers' there. Raises
    click.BadParameter saying why it cannot be used: a path below a file or in /proc
    gave a traceback from the broker's start (the sixteenth fresh-user trial)."""
    workdir = workdir.resolve()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=".probe-", dir=workdir)).rmdir()
    except OSError as exc:
        raise click.BadParameter(f"{workdir} cannot hold the run's directories: {exc.strerror or exc}",
                                 param_hint="'--workdir'") from None
    return workdir


@click.command("chaos")
@click.option("--scenario", "scenario", multiple=True, metavar="NAME|all",
              help=f"scenario(s) to run, comma-separated or repeated: {', '.join(SCENARIOS)}, or all [default: all]")
@click.option("--events", type=click.IntRange(min=200), default=10_000, show_default=True,
              help="input events per scenario")
@click.option("--seed", type=SEED, default=None,
              help="seed of the workload and of every kill timing, a 64-bit integer [default: random, printed]")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the JSON report here")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the summary as a Markdown table here")
@click.option("--rate", type=FiniteRange(min=1), default=500.0, show_default=True,
              help="input events per second (a fixed schedule, so kills land mid-stream)")
@click.option("--kills", type=click.IntRange(min=1), default=3, show_default=True,
              help="kill rounds per scenario")
@click.option("--recovery-kills", type=click.IntRange(min=1), default=2, show_default=True,
              help="kill-during-recovery: kills before the restarted worker is ready, per round")
@click.option("--broker-restarts", type=click.IntRange(min=1), default=2, show_default=True,
              help="broker-restart: broker stops and restarts")
@click.option("--partitions", type=click.IntRange(1, 64), default=4, show_default=True,
              help="partitions of every topic, at most 64 as the console's (each one is a consumer and a "
                   "RocksDB store in every worker of the run's stack)")
# the bounds DOCKET_IDEMPOTENCY_TTL_MS and DOCKET_SESSION_TIMEOUT_MS have: a value past
# them was taken, and every worker the run started refused it and was restarted, over
# and over, the reason only in their logs (the fifteenth fresh-user trial)
@click.option("--ttl-ms", type=click.IntRange(1, MAX_IDEMPOTENCY_TTL_MS), default=2_000, show_default=True,
              help="the Warden's TTL (stream time; the workload spans 1 ms per event, so keys expire mid-run)")
@click.option("--session-timeout-ms", type=click.IntRange(MIN_SESSION_TIMEOUT_MS, MAX_SESSION_TIMEOUT_MS),
              default=6_000, show_default=True,
              help="the workers' consumer-group session timeout (how soon a killed worker's partitions move)")
@click.option("--drain-timeout", "drain_timeout_s", type=Seconds(), default=None,
              help="seconds to wait for every event's result after producing, more than 0 "
                   "[default: 300 + events/100]")
@click.option("--domain", default=None, metavar="NAME",
              help="the domain the instances evaluate and the workload is made for (one with a kit) "
                   "[default: DOCKET_DOMAIN, else inventory]")
@click.option("--activate", default=None, metavar="VERSION",
              help="activate this version of the domain (e.g. inventory/2) live once half the events are "
                   "produced, as `docket domain activate` does [default: none]")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the broker, RocksDB and logs go [default: a new temporary directory]")
@click.option("--keep", is_flag=True, help="keep the work directory even if everything passed")
def chaos(scenario, events, seed, report_path, markdown_path, rate, kills, recovery_kills, broker_restarts,
          partitions, ttl_ms, session_timeout_ms, drain_timeout_s, domain, activate, workdir, keep) -> None:
    """Kill instances, the Clerk and the broker while a workload flows; check nothing is
    lost, duplicated or wrong."""
    from rich.console import Console

    from app.registry import NoKit, UnknownDomain
    from app.settings import load

    names = _scenarios(scenario)
    domain = domain or load().domain
    try:
        _kit(domain)
    except (UnknownDomain, NoKit) as exc:
        raise click.BadParameter(str(exc), param_hint="--domain") from None
    if activate is not None:
        from app.registry import registry, version_number

        number = version_number(domain, activate)
        if number is None or number not in registry.versions(domain):
            known = ", ".join(d.version for d in registry.versions(domain).values())
            raise click.BadParameter(f"{activate!r} is not a registered version of {domain} ({known})",
                                     param_hint="--activate")
    seed = random.SystemRandom().randrange(1, 2**31) if seed is None else seed
    opts = Options(events=events, seed=seed, rate=rate, kills=kills, recovery_kills=recovery_kills,
                   broker_restarts=broker_restarts, partitions=partitions, ttl_ms=ttl_ms,
                   session_timeout_ms=session_timeout_ms,
                   drain_timeout_s=300 + events / 100 if drain_timeout_s is None else drain_timeout_s,
                   domain=domain, activate=activate)
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="docket-chaos-")) if own_dir else usable_workdir(workdir)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))  # a log: wide enough for the tables
    console.print(f"docket chaos: domain {domain}; scenarios {', '.join(names)}; {events:,} events each at {rate:.0f}/s; "
                  f"seed {seed} (rerun with --seed {seed}); "
                  + (f"activating {activate} at half the events; " if activate else "")
                  + f"work directory {workdir}", highlight=False)

    async def main() -> dict:
        # aiokafka logs every retry of the harness's own clients (a topic just created, the
        # broker restarting) at ERROR; what counts is what the invariants find.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # SIGTERM cleans up like Ctrl-C
        with Display(console, live=console.is_terminal) as display:
            return await run_all(names, opts, workdir, display)

    report = None
    try:
        report = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        # its logs may say why a run was stopped (one that seemed stuck), so they are kept,
        # and named: an interrupted run left its temporary directory unnamed (the
        # fifteenth fresh-user trial)
        console.print("[red]interrupted: every process the run started has been stopped[/red]")
        console.print(f"logs and data kept in {workdir}" + (" (remove it when done)" if own_dir else ""),
                      highlight=False)
        sys.exit(130)
    finally:
        if report is not None and report_path is not None:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        if report is not None and markdown_path is not None:
            markdown_path.parent.mkdir(parents=True, exist_ok=True)
            markdown_path.write_text(markdown(report))
    console.print(summary_table(report))
    if report_path is not None:
        console.print(f"report: {report_path}")
    if report["passed"] and own_dir and not keep:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
    else:
        console.print(f"logs and data kept in {workdir}")
    sys.exit(0 if report["passed"] else 1)
