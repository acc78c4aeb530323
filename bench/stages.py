"""Where a decision's latency goes, from the broker's own timestamps.

Every topic docket creates is LogAppendTime, so each record carries the moment the
broker appended it. For every decided input position this reads:

- the input record's timestamp (``input``),
- the timestamp of each instance's copy-batch record holding its copy (``copy a``,
  ``copy b``, ...),
- the result record's timestamp (``result``),

and reports percentiles (ms) of the stages between them: instance (input -> its
copy), agreement (input -> the copy that completed the match, the later of the first
``required`` copies), Clerk (that copy -> result) and the whole (input -> result).
A copy-batch record covers the positions ``[watermark - len(copies), watermark)`` of
its partition (app/records.py, seal_batch).

    python -m bench.stages --prefix native-123 [--bootstrap 127.0.0.1:9092] [--since-ms T]

Used by the Kafka-native benchmark (bench/kafka_native.py) after each rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs
from app.settings import Settings, load
from bench.common import percentiles


async def read_topic(settings: Settings, topic: str, since_ms: int | None) -> list:
    """Every record of ``topic`` up to its end offsets when called (committed ones),
    from the first appended at or after ``since_ms`` (broker time), else from the
    beginning."""
    consumer = AIOKafkaConsumer(**client_kwargs(
        None, "bench", "consumer", bootstrap_servers=settings.kafka_bootstrap, group_id=None,
        enable_auto_commit=False, max_partition_fetch_bytes=8 * 2**20, isolation_level=ISOLATION_LEVEL))
    await consumer.start()
    try:
        await consumer._client._wait_on_metadata(topic)  # as app/batching.py: the topic's partitions
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            starts = {tp: (o.offset if o is not None else ends[tp]) for tp, o in found.items()}
        else:
            starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        left = {tp for tp in tps if starts[tp] < ends[tp]}
        out = []
        while left:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        out.append(r)
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return out
    finally:
        await consumer.stop()


async def stages(settings: Settings, since_ms: int | None = None,
                 intended: dict[tuple[int, int], float] | None = None) -> dict:
    """{stage name: percentiles (ms)} over every position decided in the results topic
    (appended at or after ``since_ms``), plus ``positions``, the count. With
    ``intended`` (input position -> the generator's intended send time, ms), also the
    ``generator`` stage: intended send -> input appended."""
    results = await read_topic(settings, settings.results_topic, since_ms)
    inputs = await read_topic(settings, settings.input_topic, since_ms)
    copies = {i: await read_topic(settings, settings.output_topic(i), since_ms) for i in settings.instances}
    return spans(results, inputs, copies, settings.required_copies, intended)


def copy_positions(value: bytes) -> list[tuple[int, int]]:
    """The input positions (partition, offset) whose copies a copy-batch record holds:
    ``[watermark - len(copies), watermark)`` of its partition (app/records.py seal_batch)."""
    data = orjson.loads(value)
    n = len(data.get("copies") or ())
    return [(data["partition"], offset) for offset in range(data["watermark"] - n, data["watermark"])]


def spans(results: list, inputs: list, copies: dict[str, list], required: int,
          intended: dict[tuple[int, int], float] | None = None) -> dict:
    """The stages (module doc) of every position decided in ``results`` (records with
    ``value`` and ``timestamp``), from the ``inputs`` records (``partition``,
    ``offset``, ``timestamp``) and each instance's copy-batch records (``copies``:
    instance -> records): {"positions": count, stage: percentiles (ms)}. A position
    without its input record or without ``required`` copies is left out."""
    decided = {}
    for r in results:
        at = orjson.loads(r.value)["input"]
        decided[(at["partition"], at["offset"])] = r.timestamp
    appended = {(r.partition, r.offset): r.timestamp for r in inputs}
    copied: dict[str, dict] = {}
    for instance, records in copies.items():
        seen = copied[instance] = {}
        for r in records:
            for pos in copy_positions(r.value):
                seen.setdefault(pos, r.timestamp)
    found: dict[str, list[float]] = {"generator": []} if intended is not None else {}
    found.update({f"instance {i}": [] for i in copies})
    found.update({"agreement": [], "clerk": [], "whole": []})
    for pos, result_ms in decided.items():
        in_ms = appended.get(pos)
        times = sorted(c[pos] for c in copied.values() if pos in c)
        if in_ms is None or len(times) < required:
            continue
        if intended is not None and pos in intended:
            found["generator"].append(in_ms - intended[pos])
        for i, seen in copied.items():
            if pos in seen:
                found[f"instance {i}"].append(seen[pos] - in_ms)
        matched = times[required - 1]
        found["agreement"].append(matched - in_ms)
        found["clerk"].append(result_ms - matched)
        found["whole"].append(result_ms - in_ms)
    return {"positions": len(found["whole"]), **{k: percentiles(v) for k, v in found.items() if v}}


def summary(found: dict) -> str:
    """One line: each stage's p50/p99 (ms)."""
    return ", ".join(f"{k} {v['p50']:.0f}/{v['p99']:.0f}" for k, v in found.items()
                     if isinstance(v, dict) and v.get("p50") is not None and v.get("p99") is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", required=True, help="DOCKET_TOPIC_PREFIX of the run")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--since-ms", type=int, default=None, help="broker time (ms) from which to read")
    args = parser.parse_args()
    settings = dataclasses.replace(load(), topic_prefix=args.prefix, kafka_bootstrap=args.bootstrap)
    got = asyncio.run(stages(settings, args.since_ms))
    print(f"{got.pop('positions'):,} positions")
    for name, p in got.items():
        print(f"  {name:<12} " + "  ".join(f"{k} {v}" for k, v in p.items()))


if __name__ == "__main__":
    main()
