"""`docket domain activate` on a real broker, with no instance running: which version a
partition runs is read back from its input stream, and only the partitions that do not
run the version get a record (specs/versioning.allium: OperatorActivatesVersion,
OperatorActivatesActiveVersion). The decisions alone are unit tests
(tests/unit/test_domain_cli_repeats.py); this is the aiokafka read against Kafka."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import app.domains  # noqa: F401  registers the built-in domains
from app.domain_cli import produce_activations, read_active_versions
from app.kafka_config import client_kwargs
from app.registry import registry
from app.settings import Settings
from app.versions import DomainVersions
from chaos.replay import end_offsets
from tests.integration.procs import worker_env

pytestmark = pytest.mark.integration


def activate(s: Settings, *args: str) -> subprocess.CompletedProcess:
    """``docket domain activate <args>`` as a user runs it."""
    done = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "domain", "activate", *args],
                          env=worker_env(s), cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done


async def produce_events(s: Settings, per_partition: int) -> None:
    """``per_partition`` ordinary input records on every partition (none is judged: no
    instance runs), so that an activation lies several read-back windows below the end."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_kwargs(s, "test", "producer", bootstrap_servers=s.kafka_bootstrap))
    await producer.start()
    try:
        for p in range(s.partitions):
            for i in range(per_partition):
                value = orjson.dumps({"idempotency_key": f"e{p}-{i}", "event_name": "stock.adjust",
                                      "payload": {"warehouse": "w1", "sku": f"s{p}", "delta": 1}})
                await producer.send(s.input_topic, value, key=f"s{p}".encode(), partition=p)
        await producer.flush()
    finally:
        await producer.stop()


async def test_activate_writes_only_where_the_stream_does_not_run_the_version(docket_settings) -> None:
    """OperatorActivatesVersion, OperatorActivatesActiveVersion: on fresh topics the
    base runs everywhere, so activating inventory/1 writes nothing; inventory/2 is
    written to every partition, and activating it again writes nothing (it wrote a
    record per partition again); the read finds the activation below many records,
    window by window; after one partition went back to inventory/1, activating
    inventory/2 writes that partition alone; --force writes every partition."""
    s = docket_settings
    every = list(range(s.partitions))
    nothing = f"version inventory/2 is already active on every partition of {s.input_topic}; nothing written"

    done = activate(s, "inventory/1")
    assert "version inventory/1 is already active on every partition" in done.stdout, done.stdout
    assert set((await end_offsets(s.kafka_bootstrap, s.input_topic)).values()) == {0}

    done = activate(s, "inventory/2")
    assert [f"{s.input_topic}[{p}]@0: inventory/2" for p in every] == done.stdout.splitlines()
    await produce_events(s, 10)
    ends = await end_offsets(s.kafka_bootstrap, s.input_topic)
    assert ends == dict.fromkeys(every, 11)

    assert nothing in activate(s, "inventory/2").stdout
    assert await end_offsets(s.kafka_bootstrap, s.input_topic) == ends
    versions = DomainVersions(registry.versions("inventory"))
    assert await read_active_versions(s, versions, every, 30, window=3) == dict.fromkeys(every, 2)

    async def partition_0(partitions: list[int]) -> list[int]:
        return [0]

    assert await produce_activations(s, "inventory/1", partition_0) == [(0, 11)]
    assert await read_active_versions(s, versions, every, 30, window=3) == {**dict.fromkeys(every, 2), 0: 1}
    done = activate(s, "inventory/2")
    assert done.stdout.splitlines() == [f"{s.input_topic}[0]@12: inventory/2"] + [
        f"{s.input_topic}[{p}]: inventory/2 already active; nothing written" for p in every[1:]]
    assert nothing in activate(s, "inventory/2").stdout

    done = activate(s, "inventory/2", "--force")
    assert done.stdout.splitlines() == [f"{s.input_topic}[0]@13: inventory/2"] + [
        f"{s.input_topic}[{p}]@11: inventory/2" for p in every[1:]]
