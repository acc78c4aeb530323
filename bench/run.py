"""`make bench`: the seven measurements, one after the other on one broker of their own,
then the report (bench/report.py): JSON, a Markdown table and PNG plots in
bench/results/, and the README's benchmark section.

    python -m bench.run                 # the full run (about 37 minutes on 2 cores)
    python -m bench.run --smoke         # seconds per measurement: does the harness work?

1. kafka_ceiling  Kafka's own ProducerPerformance / ConsumerPerformance
2. aiokafka       the Python client's produce and consume loops
3. faust_floor    a plain one-agent Faust app updating a RocksDB table per event
4. quix           a plain Quix Streams app (librdkafka) doing docket's inventory arithmetic
                  per event on RocksDB state, one output record per event
5. drain          docket working off a backlog (closed model, as the Faust floor and Quix
                  are measured): results/s and each process's CPU per event
6. kafka_native   docket end to end over Kafka, open-model rate sweep (+ py-spy profiles)
7. http           docket over its REST API with vegeta, fixed rates, server-side stages,
                  each process's CPU per request; then the same rates against a plain
                  aiohttp app (the HTTP floor)

Warm-ups, fixed: the Kafka-native sweep 40 s at 200 events/s on each partition count's
stack; each HTTP rate 10 s at up to 200 requests/s; neither is counted.

Every figure is printed as it is measured. A measurement that fails (or one of its
partition counts) is recorded with its error, the others still run, and the exit
status is 1. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.settings import Settings, load
from bench import kafka_native, profile
from bench.common import non_negative_float, positive_float, positive_int, run_stoppable, say, writable_dir
from bench.stack import BenchStack
from launcher.broker import running_pid

ROOT = Path(__file__).resolve().parent.parent

MEASUREMENTS = ["kafka_ceiling", "aiokafka", "faust_floor", "quix", "drain", "kafka_native", "http"]
# Partition counts of the Kafka-native sweeps: the default's first (the headline, the
# profile), then 2, the fewest that still lets a role scale out to two workers. Each
# input partition is an instance batch and a Clerk transaction lane of its own per
# cycle, so on 2 cores the count moves the low-latency rate by an order of magnitude.
NATIVE_PARTITIONS = [8, 2]
FULL = {"native_rates": [50, 100, 150, 200, 300, 400, 600, 800, 1000, 1500, 2000, 3000, 5000, 10000], "native_duration_s": 20.0,
        "native_partitions": NATIVE_PARTITIONS,
        "warmup_s": 40.0, "warmup_rate": 200, "idle_s": 10.0,
        "http_rates": [100, 300, 500, 1000, 2000, 3000, 5000], "http_duration_s": 60.0, "http_partitions": NATIVE_PARTITIONS,
        "http_warmup_s": 10.0, "http_warmup_rate": 200, "http_floor_s": 20.0, "profile_s": 20.0,
        "drain_events": 150_000}
SMOKE = {"native_rates": [50, 100], "native_duration_s": 3.0, "warmup_s": 2.0, "warmup_rate": 50, "idle_s": 1.0,
         "native_partitions": NATIVE_PARTITIONS[:1],
         "http_rates": [50], "http_duration_s": 3.0, "http_partitions": NATIVE_PARTITIONS[:1],
         "http_warmup_s": 1.0, "http_warmup_rate": 50, "http_floor_s": 3.0, "profile_s": 0.0,
         "drain_events": 2_000}


async def baseline(name: str, settings: Settings, work: Path, smoke: bool) -> dict:
    module = __import__(f"bench.{name}", fromlist=["measure"])
    say(f"{name} ...")
    return await module.measure(settings, work / name, smoke=smoke)


async def quix(settings: Settings, work: Path, smoke: bool, events: int | None) -> dict:
    from bench import quix as module

    say("quix ...")
    return await module.measure(settings, work / "quix", smoke=smoke, events=events)


async def drain_backlog(settings: Settings, work: Path, events: int) -> dict:
    """docket's capacity measured as the Faust floor's is: ``events`` inventory events
    produced at once into a fresh stack of ``settings.partitions`` partitions
    (bench/drain.py), results/s from the first result to the last (the broker's
    timestamps) and each process's CPU per event: instances, Clerk and broker (the
    producer, this process, is not counted; it runs while the stack already works).
    Raises BenchError when not every event got its result within bench/drain.py's
    deadline."""
    from bench import drain
    from bench.kafka_ceiling import BenchError

    say(f"drain: {events:,} events at once on {settings.partitions} partitions ...")
    result = await drain.measure(settings, work / "drain", events)
    if result["results"] != events:
        raise BenchError(f"the drain got {result['results']:,} results of {events:,} events within its deadline")
    if result["results_per_s"] is None:
        raise BenchError(f"the results of {events:,} events all carry one broker timestamp, so the drain has no "
                         "rate: give --drain-events a few thousand or more")
    return {"partitions": settings.partitions, **result}


async def per_partition_count(measure, settings: Settings, work: Path, plan: dict, counts: list[int]) -> dict:
    """``measure(settings, work, plan)`` once per partition count of ``counts``: the
    first count's result is returned with the others in its ``by_partitions`` (a count
    whose run raised is recorded there as {partitions, error}; the first count's
    result stands). The first count's failure raises."""
    first, *others = counts
    result = await measure(dataclasses.replace(settings, partitions=first), work, plan)
    result["by_partitions"] = []
    for n in others:
        try:
            result["by_partitions"].append(await measure(dataclasses.replace(settings, partitions=n), work, plan))
        except Exception as exc:  # noqa: BLE001  recorded; the first count's result stands
            traceback.print_exc()
            result["by_partitions"].append({"partitions": n, "error": f"{type(exc).__name__}: {exc}"})
    return result


async def native(settings: Settings, work: Path, plan: dict) -> dict:
    """The open-model sweep once per partition count of ``plan["native_partitions"]``
    (a fresh stack and topics each): the first is the result itself (headline,
    profile), the others go in ``by_partitions``."""
    result = await per_partition_count(native_sweep, settings, work, plan, plan["native_partitions"])
    settings = dataclasses.replace(settings, partitions=plan["native_partitions"][0])
    rate = result["max_sustained_rate"]
    if plan["profile_s"] and rate:
        result["profile"] = await profile_at(settings, work, rate, plan["profile_s"], plan["warmup_s"])
    return result


def with_broker(settings: Settings, pids: dict[str, int]) -> dict[str, int]:
    """``pids`` (role -> pid) and the local broker's, as ``broker``, when it runs here
    (a run against --bootstrap's broker has none to account)."""
    broker = running_pid(settings.broker_dir)
    return pids if broker is None else {**pids, "broker": broker}


async def native_sweep(settings: Settings, work: Path, plan: dict) -> dict:
    say(f"kafka-native: {settings.partitions} partitions")
    async with BenchStack(settings, work, name="native", api=False) as stack:
        pids = with_broker(settings, {**stack.pids, "load generator (this process)": os.getpid()})
        result = await kafka_native.sweep(stack.settings, plan["native_rates"], plan["native_duration_s"],
                                          warmup_s=plan["warmup_s"], warmup_rate=plan["warmup_rate"],
                                          metrics_urls=stack.metrics_urls, pids=pids, idle_s=plan["idle_s"])
    return {"partitions": settings.partitions, **result}


async def profile_at(settings: Settings, work: Path, rate: int, seconds: float, warmup_s: float) -> dict:
    """py-spy on instance a and the Clerk of a fresh stack held at ``rate``, and the
    CPU every process of the run used meanwhile (the kernel's account)."""
    async with BenchStack(settings, work, name="profile", api=False) as stack:
        pids = {"instance": stack.pids["a"], "clerk": stack.pids["clerk"]}
        also = with_broker(settings, {"instance b": stack.pids["b"], "load generator (this process)": os.getpid()})
        load = asyncio.create_task(kafka_native.hold_rate(stack.settings, rate, seconds + 10, warmup_s=warmup_s))
        # sampling starts once the warm-up is over and the rate has settled
        await asyncio.sleep(warmup_s + 5)
        files, cpu = await profile.record(pids, seconds, work / "profile", also=also)
        step = await load
    events = round(rate * seconds)
    out = {"rate": rate, "seconds": seconds, "under_profile": step, "files": {}, "cpu": {}}
    for role, c in cpu.items():
        out["cpu"][role] = {**c, "cores": round((c["user_s"] + c["system_s"]) / seconds, 3),
                            "us_per_event": round((c["user_s"] + c["system_s"]) / events * 1e6, 1)}
    for role, path in files.items():
        out[role] = profile.top(path.read_text(), events)
        out[role]["cpu"] = out["cpu"][role]
        out["files"][role] = path
    return out


async def http(settings: Settings, work: Path, plan: dict) -> dict:
    """The vegeta runs once per partition count of ``plan["http_partitions"]``, like the
    Kafka-native sweep: the first count's runs are ``rates``, the others go in
    ``by_partitions`` ([{partitions, rates}], or {partitions, error}). Then the HTTP
    floor at the same rates (``floor``: bench/http_load.py floor, or {error})."""
    from bench import http_load

    result = await per_partition_count(http_runs, settings, work, plan, plan["http_partitions"])
    try:
        result["floor"] = await http_load.floor(work / "http-floor", rates=plan["http_rates"],
                                                duration_s=plan["http_floor_s"])
    except Exception as exc:  # noqa: BLE001  the docket figures above stand; the report says the floor failed
        traceback.print_exc()
        result["floor"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


async def http_runs(settings: Settings, work: Path, plan: dict) -> dict:
    from bench import http_load

    http_load.ensure_vegeta()
    steps = []
    say(f"http: {settings.partitions} partitions")
    for n, rate in enumerate(plan["http_rates"]):
        # A fresh stack per rate: a rate past saturation leaves a backlog that would
        # otherwise be charged to the next one.
        async with BenchStack(settings, work, name=f"http{rate}p{settings.partitions}") as stack:
            pids = with_broker(settings, stack.pids)
            say(f"http: {rate:,} requests/s for {plan['http_duration_s']:.0f} s ...")
            step = await http_load.measure(stack.api_url, stack.token, stack.metrics_urls, work / f"http{rate}",
                                           rate=rate, duration_s=plan["http_duration_s"], seed=100 + n,
                                           api_timeout_ms=stack.settings.api_timeout_ms,
                                           warmup_s=plan["http_warmup_s"],
                                           warmup_rate=min(rate, plan["http_warmup_rate"]), pids=pids)
        steps.append(step)
    return {"partitions": settings.partitions, "rates": steps}


@contextlib.contextmanager
def existing_broker(bootstrap: str) -> Iterator[Settings]:
    yield dataclasses.replace(load(), kafka_bootstrap=bootstrap)


async def run(args: argparse.Namespace) -> int:
    from bench import report
    from bench.common import own_broker

    plan = plan_of(args)
    only = args.only or MEASUREMENTS
    work = Path(tempfile.mkdtemp(prefix="docket-bench-"))
    began = time.time()
    results: dict = {"smoke": args.smoke, "plan": plan,
                     "began": datetime.datetime.fromtimestamp(began, datetime.UTC).isoformat(timespec="seconds")}
    failed = []
    try:
        with (existing_broker(args.bootstrap) if args.bootstrap else own_broker(work)) as settings:
            steps = {
                "kafka_ceiling": lambda: baseline("kafka_ceiling", settings, work, args.smoke),
                "aiokafka": lambda: baseline("aiokafka_ceiling", settings, work, args.smoke),
                "faust_floor": lambda: baseline("faust_floor", settings, work, args.smoke),
                "quix": lambda: quix(settings, work, args.smoke, plan["quix_events"]),
                "drain": lambda: drain_backlog(settings, work, plan["drain_events"]),
                "kafka_native": lambda: native(settings, work, plan),
                "http": lambda: http(settings, work, plan),
            }
            for name in only:
                try:
                    results[name] = await steps[name]()
                except Exception as exc:  # noqa: BLE001  recorded, reported, and the run fails at the end
                    traceback.print_exc()
                    say(f"{name} FAILED: {exc}")
                    results[name] = {**failed_context(name, settings, plan), "error": f"{type(exc).__name__}: {exc}"}
                    failed.append(name)
                    continue
                failed += partial_failures(name, results[name])
        results["wall_s"] = round(time.time() - began)
        paths = report.write(results, Path(args.out), work, update_readme=updates_readme(args, failed))
        say(f"report: {', '.join(str(p) for p in paths)}")
        print(report.summary(results))
    finally:
        if failed:
            # what the failure's message points at (a worker's log) must still be there
            say(f"the run's logs and data are kept in {work}; remove it when done")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failed:
        say(f"failed: {', '.join(failed)}")
        return 1
    return 0


def updates_readme(args: argparse.Namespace, failed: Sequence[str]) -> bool:
    """The README shows the latest complete run only: every measurement, the full plan,
    none failed (a failed one would replace its figures with the error), and not
    ``--no-readme``."""
    return not (args.smoke or args.no_readme or args.only or failed)


def plan_of(args: argparse.Namespace) -> dict:
    """The run's plan: SMOKE or FULL with the command line's choices over it."""
    plan = dict(SMOKE if args.smoke else FULL)
    for key in ("native_rates", "native_partitions", "http_rates", "http_partitions"):
        if getattr(args, key):
            plan[key] = getattr(args, key)
    for key in ("native_duration_s", "http_duration_s", "http_floor_s", "profile_s"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    plan["quix_events"] = args.quix_events or quix_events(args.smoke)
    if args.drain_events:
        plan["drain_events"] = args.drain_events
    return plan


def too_short(plan: dict, only: Sequence[str] = MEASUREMENTS) -> str | None:
    """Why a duration of ``plan`` would send nothing at its lowest rate (less than one
    event or request: a figure of nothing), or None; only the measurements in
    ``only`` count."""
    for measurement, rates, key, option in (
            ("kafka_native", "native_rates", "native_duration_s", "--native-duration-s"),
            ("http", "http_rates", "http_duration_s", "--http-duration-s"),
            ("http", "http_rates", "http_floor_s", "--http-floor-s")):
        if measurement not in only:
            continue
        rate, seconds = min(plan[rates]), plan[key]
        if rate * seconds < 1:
            least = math.ceil(1e6 / rate) / 1e6  # rounded up: the figure given must pass
            return (f"{option} {seconds:g} s at {rate:,}/s sends nothing (less than one event or request): "
                    f"give at least {least:g} s")
    return None


def failed_context(name: str, settings: Settings, plan: dict) -> dict:
    """What a failed measurement's row still names, beside its error: the drain's
    partition count and events (report.drain_row), which its result would have held."""
    if name == "drain":
        return {"partitions": settings.partitions, "events": plan["drain_events"]}
    return {}


def partial_failures(name: str, result: dict) -> list[str]:
    """What failed inside measurement ``name`` whose ``result`` came back: a partition
    count's run (``by_partitions`` entries with an error) or the HTTP floor; each fails
    the run as a failed measurement does."""
    failed = [f"{name} with {o['partitions']} partitions" for o in result.get("by_partitions") or [] if "error" in o]
    if "error" in (result.get("floor") or {}):
        failed.append(f"{name} floor")
    return failed


def quix_events(smoke: bool) -> int:
    from bench import quix as module

    return module.SMOKE_EVENTS if smoke else module.FULL_EVENTS


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.run``."""
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per measurement")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="report directory [bench/results]")
    ap.add_argument("--only", nargs="+", choices=MEASUREMENTS)
    ap.add_argument("--drain-events", type=positive_int,
                    help=f"events of docket's drain [{FULL['drain_events']:,}; smoke {SMOKE['drain_events']:,}]")
    ap.add_argument("--quix-events", type=positive_int,
                    help=f"events the Quix Streams app processes [{quix_events(False):,}; smoke {quix_events(True):,}]")
    ap.add_argument("--native-rates", type=positive_int, nargs="+", help=f"[{FULL['native_rates']}]")
    ap.add_argument("--native-partitions", type=positive_int, nargs="+",
                    help=f"partition counts, one sweep each; the first is the headline's [{FULL['native_partitions']}]")
    ap.add_argument("--native-duration-s", type=positive_float, help=f"seconds per rate [{FULL['native_duration_s']}]")
    ap.add_argument("--http-rates", type=positive_int, nargs="+", help=f"[{FULL['http_rates']}]")
    ap.add_argument("--http-duration-s", type=positive_float, help=f"seconds per rate [{FULL['http_duration_s']}]")
    ap.add_argument("--http-floor-s", type=positive_float,
                    help=f"seconds per rate of the HTTP floor (a plain aiohttp app) [{FULL['http_floor_s']}]")
    ap.add_argument("--http-partitions", type=positive_int, nargs="+",
                    help=f"partition counts, the HTTP runs once each [{FULL['http_partitions']}]")
    ap.add_argument("--profile-s", type=non_negative_float, help=f"py-spy seconds, 0 for none [{FULL['profile_s']}]")
    ap.add_argument("--bootstrap", help="use this running broker instead of starting one (the test suite's)")
    ap.add_argument("--no-readme", action="store_true", help="do not update the README's benchmark section")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if problem := writable_dir(args.out) or too_short(plan_of(args), args.only or MEASUREMENTS):
        ap.error(problem)
    return run_stoppable(run(args))


if __name__ == "__main__":
    sys.exit(main())
