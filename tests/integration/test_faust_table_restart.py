"""A Faust worker with a RocksDB-backed table, run as a real subprocess, survives restarts:
with its data dir (RocksDB + changelog tail) and without it (changelog only), the table
comes back intact and counting continues with no event counted twice or lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from app.kafka_admin import connect_admin
from app.kafka_config import client_kwargs
from launcher.broker import set_parent_death_signal

pytestmark = pytest.mark.integration

PARTITIONS = 4
KEYS = [f"sku-{i}" for i in range(6)]
PER_KEY = 25  # records per key in each round

# The worker under test. Besides the table it counts into, it records per partition the
# next offset it will process, in a second table written by the same agent step, so the
# test knows when every produced record has been processed. A timer publishes a snapshot
# of both tables to a JSON file (atomically) for the test to poll.
COUNTER_APP = textwrap.dedent(
    """
    import json, os
    import faust

    app = faust.App(
        os.environ["COUNTER_APP_ID"],
        broker="kafka://" + os.environ["COUNTER_BOOTSTRAP"],
        store="rocksdb://",
        datadir=os.environ["COUNTER_DATA_DIR"],
        web_enabled=False,
        topic_partitions=int(os.environ["COUNTER_PARTITIONS"]),
    )
    source = app.topic(os.environ["COUNTER_TOPIC"], key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int)
    progress = app.Table("progress", default=int)
    STATUS = os.environ["COUNTER_STATUS"]

    @app.agent(source)
    async def count(stream):
        async for event in stream.events():
            counts[event.key.decode()] += 1
            progress[str(event.message.partition)] = event.message.offset + 1

    last = None

    @app.timer(interval=0.05)
    async def publish_status():
        global last
        snapshot = {"counts": dict(counts.items()), "progress": dict(progress.items())}
        if snapshot != last:
            with open(STATUS + ".tmp", "w") as f:
                json.dump(snapshot, f)
            os.replace(STATUS + ".tmp", STATUS)
            last = snapshot

    if __name__ == "__main__":
        app.main()
    """
)


class Worker:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.status_path = Path(env["COUNTER_STATUS"])
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.status_path.unlink(missing_ok=True)  # only a status from this run counts
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "counter_app.py", "worker", "-l", "warn", "--without-web"],
                cwd=self.workdir,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=set_parent_death_signal if sys.platform == "linux" else None,  # noqa: PLW1509
            )

    def status(self) -> dict | None:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None

    def wait_for(self, condition, what: str, deadline_s: float = 90.0) -> dict:
        deadline = time.monotonic() + deadline_s
        while True:
            status = self.status()
            if status is not None and condition(status):
                return status
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode} before {what}; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {deadline_s} s; last status {status}; log:\n{self.log_tail()}")
            time.sleep(0.05)  # poll interval of the condition above

    def stop(self, deadline_s: float = 60.0) -> int:
        """SIGTERM: Faust's graceful shutdown (commits offsets, flushes changelogs)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"worker ignored SIGTERM for {deadline_s} s; log:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def produce_round(bootstrap: str, topic: str, end_offsets: dict[str, int]) -> None:
    """PER_KEY records for every key, interleaved; updates the expected end offsets."""
    producer = AIOKafkaProducer(**client_kwargs(None, "test", "producer", bootstrap_servers=bootstrap, acks="all"))
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key.encode(), value=b"1") for _ in range(PER_KEY) for key in KEYS]
        for future in futures:
            meta = await future
            end_offsets[str(meta.partition)] = max(end_offsets.get(str(meta.partition), 0), meta.offset + 1)
    finally:
        await producer.stop()


def processed_up_to(end_offsets: dict[str, int]):
    return lambda status: all(status["progress"].get(p, 0) >= end for p, end in end_offsets.items())


async def test_table_survives_restart_with_and_without_local_state(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """PartitionStartsRestoring, LedgerPartitionRestored (Faust's share): on each
    assignment a changelog-backed RocksDB table is restored before the agent processes
    anything, from local RocksDB plus the changelog's tail, or from the changelog alone
    when the data dir is gone."""
    from aiokafka.admin import NewTopic

    topic = f"{unique_prefix}.counted"
    admin = await connect_admin(kafka_bootstrap)
    try:  # source topics must exist before the worker starts (auto-creation is off)
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()

    (tmp_path / "counter_app.py").write_text(COUNTER_APP)
    data_dir = tmp_path / "faust-data"
    worker = Worker(
        tmp_path,
        {
            "COUNTER_APP_ID": f"{unique_prefix}-counter",
            "COUNTER_BOOTSTRAP": kafka_bootstrap,
            "COUNTER_DATA_DIR": str(data_dir),
            "COUNTER_PARTITIONS": str(PARTITIONS),
            "COUNTER_TOPIC": topic,
            "COUNTER_STATUS": str(tmp_path / "status.json"),
        },
    )
    end_offsets: dict[str, int] = {}

    def expect(rounds: int):
        return {key: rounds * PER_KEY for key in KEYS}

    try:
        # Round 1: count N per key from scratch.
        worker.start()
        await produce_round(kafka_bootstrap, topic, end_offsets)
        assert len(end_offsets) > 1, "keys should spread over several partitions"
        status = worker.wait_for(processed_up_to(end_offsets), "round 1 processed")
        assert status["counts"] == expect(1)
        worker.stop()
        assert any(data_dir.rglob("*")), "RocksDB state should be on disk"

        # Restart on the same data dir: the table is intact before any new record arrives,
        # then counts on from there; replaying nothing twice.
        worker.start()
        worker.wait_for(lambda s: s["counts"] == expect(1), "table recovered with local state")
        await produce_round(kafka_bootstrap, topic, end_offsets)
        status = worker.wait_for(processed_up_to(end_offsets), "round 2 processed")
        assert status["counts"] == expect(2)
        worker.stop()

        # Restart without local state: everything comes back from the changelog.
        shutil.rmtree(data_dir)
        worker.start()
        worker.wait_for(lambda s: s["counts"] == expect(2), "table recovered from the changelog only")
        await produce_round(kafka_bootstrap, topic, end_offsets)
        status = worker.wait_for(processed_up_to(end_offsets), "round 3 processed")
        assert status["counts"] == expect(3)
        assert sum(status["progress"].values()) == len(KEYS) * PER_KEY * 3
        worker.stop()
    finally:
        worker.kill()
