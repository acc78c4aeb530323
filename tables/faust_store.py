"""The Ledger's table inside a Faust worker, seen through the Store seam.

Why not ``table[key] = value``: Faust picks the RocksDB database and changelog
partition of a table write from the *current event*, and a batch from
``take_events`` spans partitions; and Faust's buffered ``send_soon`` can return
from its flush before the buffer is empty, so an offset commit would not be
guaranteed to cover the batch's changelog records. Here every operation names its
partition, and :meth:`FaustStore.flush` hands the batch's changelog records to the
Kafka producer, in write order, before the batch is acknowledged. Offsets are
committed only after the producer has flushed them (faust Consumer._commit_offsets),
which is the recovery argument's premise (specs/recovery.allium).

Recovery stays Faust's: changelog topic, persisted offsets, restore on assignment.
"""

from __future__ import annotations

import asyncio
from typing import Iterator

from faust.types import TP


class FaustStore:
    def __init__(self, app, table) -> None:
        self.app = app
        self.table = table
        self._pending: list[tuple[int, bytes, bytes | None]] = []

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def _db(self, partition: int):
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._db(partition).get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self._db(partition).put(key, value)
        self._pending.append((partition, key, value))

    def delete(self, partition: int, key: bytes) -> None:
        self._db(partition).delete(key)
        self._pending.append((partition, key, None))

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db(partition).items(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield key, value

    async def flush(self) -> None:
        """Send this batch's changelog records, in write order."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        producer = self.app.producer
        topic = self.changelog_topic
        data = self.table.data
        for partition, key, value in pending:
            fut = await producer.send(topic, key, value, partition, None, None)
            fut.add_done_callback(_persist(data, TP(topic, partition)))


def _persist(data, tp: TP):
    # At-least-once Faust records, per changelog partition, the offset up to which
    # the local RocksDB already holds the changelog, so a restart on the same data
    # directory only re-reads the tail.
    def done(fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            data.set_persisted_offset(tp, fut.result().offset)
    return done
