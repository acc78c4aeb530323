"""Kafka's ceiling, measured with Kafka's own perf tools: how many docket-sized records
per second the broker takes from, and gives to, a Java client on this machine.

``ProducerPerformance`` writes N records of the size of a docket event (key + value
bytes, :func:`bench.common.event_size`; the tool sends them as keyless values) with
the producer docket uses (acks=all, linger 5 ms, 256 KiB batches) to a fresh topic of
DOCKET_PARTITIONS partitions, then ``ConsumerPerformance`` reads them back. Both are
the Kafka 4.1 tools from the broker's cached jars, run with ``java -Xmx512m``.

Units are the tools' own: "MB" is 2**20 bytes; the producer's latencies are from
``send()`` to the acknowledgement, so with unthrottled sending they measure the
producer's queue as much as the broker. The consumer's ``records_per_s`` includes
joining its group; ``fetch_records_per_s`` excludes it.

Also the helpers the other baselines share (topics, the stand-alone entry).
Run alone: ``.venv/bin/python -m bench.kafka_ceiling [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from app.settings import Settings
from bench.common import event_size, own_broker, say
from launcher import broker as launcher

FULL_RECORDS = 5_000_000  # ~15-25 s of producing on 2 shared cores
SMOKE_RECORDS = 20_000
PRODUCER_PROPS = {"acks": "all", "linger.ms": "5", "batch.size": "262144"}
JVM_OPTS = ["-Xmx512m", "-Duser.language=en", "-Duser.country=US"]  # '.' decimals in the output


class BenchError(RuntimeError):
    """A baseline could not be measured; the message says why (and shows output)."""


# --------------------------------------------------------------------------- parsing

_PRODUCER_FINAL = re.compile(
    r"(?P<records>\d+) records sent, (?P<rps>[\d.]+) records/sec \((?P<mbps>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+|NaN) ms avg latency, (?P<max>[\d.]+) ms max latency, "
    r"(?P<p50>\d+) ms 50th, (?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th, (?P<p999>\d+) ms 99\.9th"
)


def parse_producer_output(text: str) -> dict:
    """Figures of ProducerPerformance's final summary line (the one with percentiles;
    the periodic progress lines have none). BenchError if there is no such line."""
    matches = list(_PRODUCER_FINAL.finditer(text))
    if not matches:
        raise BenchError(f"no summary line in ProducerPerformance's output:\n{tail(text)}")
    m = matches[-1]
    return {
        "records": int(m["records"]),
        "records_per_s": float(m["rps"]),
        "mb_per_s": float(m["mbps"]),
        "avg_latency_ms": float(m["avg"]),
        "max_latency_ms": float(m["max"]),
        "p50_ms": int(m["p50"]),
        "p95_ms": int(m["p95"]),
        "p99_ms": int(m["p99"]),
        "p999_ms": int(m["p999"]),
    }


_CONSUMER_FIELDS = {
    "data.consumed.in.MB": ("mb", float),
    "MB.sec": ("mb_per_s", float),
    "data.consumed.in.nMsg": ("records", int),
    "nMsg.sec": ("records_per_s", float),
    "rebalance.time.ms": ("rebalance_ms", int),
    "fetch.time.ms": ("fetch_ms", int),
    "fetch.MB.sec": ("fetch_mb_per_s", float),
    "fetch.nMsg.sec": ("fetch_records_per_s", float),
}
_VALUES = re.compile(r"\d{4}-\d\d-\d\d \d")
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S:%f"  # ConsumerPerformance's default yyyy-MM-dd HH:mm:ss:SSS


def parse_consumer_output(text: str) -> dict:
    """Figures of ConsumerPerformance's CSV-like summary (a header line starting with
    ``start.time``, then one line of values, perhaps after a WARNING line when it gave up
    waiting). BenchError if it is missing or malformed. It may hold fewer records than
    asked for: the caller checks ``records``."""
    lines = [line.strip() for line in text.splitlines()]
    try:
        at = max(i for i, line in enumerate(lines) if line.startswith("start.time,"))
        header = [h.strip() for h in lines[at].split(",")]
        # the first line of values after the header (a WARNING line may come between)
        values = [v.strip() for v in next(line for line in lines[at + 1:] if _VALUES.match(line)).split(",")]
    except (ValueError, StopIteration):
        raise BenchError(f"no summary in ConsumerPerformance's output:\n{tail(text)}") from None
    if len(values) != len(header):
        raise BenchError(f"ConsumerPerformance's summary has {len(values)} values for "
                         f"{len(header)} columns:\n{tail(text)}")
    row = dict(zip(header, values, strict=True))
    try:
        figures = {key: cast(row[name]) for name, (key, cast) in _CONSUMER_FIELDS.items()}
        began = datetime.strptime(row["start.time"], _DATE_FORMAT)
        ended = datetime.strptime(row["end.time"], _DATE_FORMAT)
    except (KeyError, ValueError) as exc:
        raise BenchError(f"cannot read ConsumerPerformance's summary ({exc}):\n{tail(text)}") from None
    figures["seconds"] = round((ended - began).total_seconds(), 3)
    return figures


def tail(text: str, lines: int = 20) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:]) or "    (empty)"


# --------------------------------------------------------------------------- shared helpers


def topic_name(kind: str) -> str:
    """A topic name no earlier run used: ``bench-<kind>-<ms since the epoch>``."""
    return f"bench-{kind}-{int(time.time() * 1000)}"


async def create_topic(bootstrap: str, name: str, partitions: int, timeout_s: float = 30.0) -> None:
    """Create ``name`` with ``partitions`` partitions (CreateTime, like docket's input)
    and wait until the broker describes every partition with a leader."""
    from aiokafka.admin import NewTopic

    from app.kafka_admin import connect_admin

    admin = await connect_admin(bootstrap, timeout_s)
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs={"message.timestamp.type": "CreateTime"})],
            timeout_ms=int(timeout_s * 1000))
        for topic, code, *rest in response.topic_errors:
            if code != 0:
                raise BenchError(f"cannot create topic {topic}: Kafka error {code} {rest[0] if rest else ''}")
        await _wait_described(admin, name, partitions, timeout_s)
    finally:
        await admin.close()


async def wait_for_topic(bootstrap: str, name: str, partitions: int, timeout_s: float) -> None:
    """Wait until the broker describes ``name`` (created by someone else) with
    ``partitions`` partitions, each with a leader."""
    from app.kafka_admin import connect_admin

    admin = await connect_admin(bootstrap, timeout_s)
    try:
        await _wait_described(admin, name, partitions, timeout_s)
    finally:
        await admin.close()


async def _wait_described(admin, name: str, partitions: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    found = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # unknown yet: ask again
            for topic in await admin.describe_topics([name]):
                if topic["error_code"] == 0:
                    found = sum(1 for p in topic["partitions"] if p["leader"] >= 0)
        if found >= partitions:
            return
        await asyncio.sleep(0.2)  # poll interval of the metadata
    raise BenchError(f"topic {name} has {found} of {partitions} partitions after {timeout_s:.0f} s")


async def delete_topics(bootstrap: str, names: list[str], timeout_s: float = 30.0) -> None:
    """Delete ``names`` (their disk is the bench's to give back); never raises."""
    if not names:
        return
    from app.kafka_admin import connect_admin

    with contextlib.suppress(Exception):
        admin = await connect_admin(bootstrap, timeout_s)
        try:
            await asyncio.wait_for(admin.delete_topics(names, timeout_ms=int(timeout_s * 1000)), timeout_s)
        finally:
            await admin.close()


async def run_process(cmd: list[str], log: Path, deadline_s: float, what: str,
                      env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` (stdout and stderr into ``log``), wait at most ``deadline_s`` s, and
    return its output. It dies with this process; it is killed if it overruns.
    BenchError with the output's tail if it fails or overruns."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            env=env, preexec_fn=launcher.set_parent_death_signal)
    try:
        try:
            code = await asyncio.wait_for(proc.wait(), deadline_s)
        except TimeoutError:
            raise BenchError(f"{what} did not finish within {deadline_s:.0f} s; its output ends with:\n"
                             f"{tail(log.read_text(errors='replace'))}") from None
        text = log.read_text(errors="replace")
        if code != 0:
            raise BenchError(f"{what} failed (exit code {code}); its output ends with:\n{tail(text)}")
        return text
    finally:
        await stop_process(proc)


async def stop_process(proc: asyncio.subprocess.Process, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` s; returns once it has exited."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace_s)


def standalone(name: str, measure: Callable[..., Awaitable[dict]]) -> None:
    """``python -m bench.<name> [--smoke]``: a broker of its own, one measurement, the
    figures as JSON on stdout."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--smoke", action="store_true", help="a few thousand records: a check, not a figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"docket-bench-{name}-") as tmp:
        work = Path(tmp)
        with own_broker(work) as settings:
            began = time.monotonic()
            result = asyncio.run(measure(settings, work / "scratch", smoke=args.smoke))
            say(f"{name}: measured in {time.monotonic() - began:.1f} s")
    print(json.dumps(result, indent=2))


# --------------------------------------------------------------------------- measure


async def measure(settings: Settings, work: Path, *, smoke: bool = False) -> dict:
    """Run ProducerPerformance then ConsumerPerformance on a fresh topic; their figures."""
    work.mkdir(parents=True, exist_ok=True)
    records = SMOKE_RECORDS if smoke else FULL_RECORDS
    record_bytes = sum(event_size())
    bootstrap = settings.kafka_bootstrap
    jars = launcher.fetch_jars(settings)
    java = launcher.java_executable()
    classpath = ["-cp", f"{jars}/*"]  # expanded by java itself
    topic = topic_name("kc")
    await create_topic(bootstrap, topic, settings.partitions)
    try:
        say(f"kafka_ceiling: ProducerPerformance, {records:,} records of {record_bytes} B to {topic} "
            f"({settings.partitions} partitions) ...")
        producer_out = await run_process(
            [java, *JVM_OPTS, *classpath, "org.apache.kafka.tools.ProducerPerformance",
             "--topic", topic, "--num-records", str(records), "--record-size", str(record_bytes),
             "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}",
             *(f"{k}={v}" for k, v in PRODUCER_PROPS.items())],
            work / "producer-performance.log", 60 + records / 20_000, "ProducerPerformance")
        producer = parse_producer_output(producer_out)
        if producer["records"] != records:
            raise BenchError(f"ProducerPerformance sent {producer['records']} of {records} records; "
                             f"its output ends with:\n{tail(producer_out)}")
        say(f"kafka_ceiling: produced {producer['records_per_s']:,.0f} records/s; ConsumerPerformance ...")
        consumer_out = await run_process(
            [java, *JVM_OPTS, *classpath, "org.apache.kafka.tools.ConsumerPerformance",
             "--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(records),
             "--group", f"{topic}-reader", "--timeout", "30000"],
            work / "consumer-performance.log", 60 + records / 20_000, "ConsumerPerformance")
        consumer = parse_consumer_output(consumer_out)
        if consumer["records"] < records:
            raise BenchError(f"ConsumerPerformance read {consumer['records']} of {records} records:\n"
                             f"{tail(consumer_out)}")
        say(f"kafka_ceiling: consumed {consumer['records_per_s']:,.0f} records/s")
    finally:
        await delete_topics(bootstrap, [topic])
    return {
        "tool": "Apache Kafka " + launcher.kafka_version() + " ProducerPerformance / ConsumerPerformance",
        "records": records,
        "record_bytes": record_bytes,
        "partitions": settings.partitions,
        "producer_config": {k.replace(".", "_"): int(v) if v.isdigit() else v for k, v in PRODUCER_PROPS.items()},
        "producer": {"records": producer["records"], "record_bytes": record_bytes,
                     **{k: v for k, v in producer.items() if k != "records"}},
        "consumer": consumer,
    }


if __name__ == "__main__":
    standalone("kafka_ceiling", measure)
