"""The plain Quix Streams app of :mod:`bench.quix`: one StreamingDataFrame reading a
topic of docket's inventory events and doing, per event, the work of docket's
evaluation with Quix's own state: read the stock of each warehouse:sku the event
touches from the RocksDB state store, decide with the inventory domain
(:meth:`app.domains.inventory.Inventory.validate` and ``evaluate``), write the
changed stock back, and produce one result record to an output topic.

Nothing of docket runs in it but the domain's arithmetic: no envelope checks, no
Warden (a repeated event is evaluated afresh), no second instance, no Clerk. Quix's
defaults stand (at-least-once, a checkpoint every 5 s that writes the state to RocksDB
and its changelog topic, librdkafka's producer with acks=all and idempotence), except
the offset reset (earliest: the input is pre-loaded) and the output topic, which the
app creates with LogAppendTime so that its records carry the time the broker appended
them (Quix would otherwise copy each input record's timestamp, the workload's plan).

Quix keys its state by the message key, the sku: both sides of a transfer are in the
one key's state, as they are on one partition in docket.

Run by the benchmark as ``python -m bench.quix_app`` with the environment: DOCKET_*
(read by :func:`app.settings.load`), BENCH_QUIX_GROUP, BENCH_QUIX_INPUT,
BENCH_QUIX_OUTPUT and BENCH_QUIX_STATE_DIR.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from app.domains.inventory import inventory
from app.settings import load

STORE = "default"  # Quix's default state store, the one apply(stateful=True) uses
OUTPUT_TIMESTAMP_TYPE = "LogAppendTime"


class StateLike(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


def changelog_topic(group: str, source: str, store: str = STORE) -> str:
    """Quix's name for the changelog of ``store`` of an app (consumer group ``group``)
    reading ``source``: ``changelog__<group>--<source>--<store>``."""
    return f"changelog__{group}--{source}--{store}"


def decide(value: Any, state: StateLike) -> dict:
    """One event's work: its result record, the state changed in ``state``."""
    if not isinstance(value, Mapping):
        return {"status": "rejected", "reason": "malformed_record"}
    ikey, name, payload = value.get("idempotency_key"), value.get("event_name"), value.get("payload")
    if name not in inventory.event_names:
        return {"idempotency_key": ikey, "status": "rejected", "reason": "unknown_event"}
    rejection = inventory.validate(name, payload)
    if rejection is not None:
        return {"idempotency_key": ikey, "status": "rejected", "reason": rejection.reason}
    states = {}
    for key in inventory.entity_keys(name, payload):
        states[key] = state.get(key) or inventory.initial_state(key)
    outcome = inventory.evaluate(name, payload, states)
    for key, new in outcome.changes.items():
        state.set(key, new)
    return {"idempotency_key": ikey, "event_name": name, "status": outcome.status, "reason": outcome.reason,
            "changes": dict(outcome.changes)}


def build(group: str, source: str, output: str, state_dir: Path):
    """The Quix Application (imported here: the benchmark imports this module for its names)."""
    from quixstreams import Application
    from quixstreams.models import TopicConfig

    from app import logs  # registers docket's NOTICE level, DOCKET_LOG_LEVEL's default, with logging

    settings = load()
    app = Application(broker_address=settings.kafka_bootstrap, consumer_group=group,
                      auto_offset_reset="earliest", state_dir=str(state_dir),
                      loglevel=logs.level_name(settings.log_level))
    source_topic = app.topic(source, value_deserializer="json", key_deserializer="bytes")
    output_topic = app.topic(output, value_serializer="json", key_serializer="bytes",
                             config=TopicConfig(num_partitions=settings.partitions, replication_factor=1,
                                                extra_config={"message.timestamp.type": OUTPUT_TIMESTAMP_TYPE}))
    sdf = app.dataframe(source_topic)
    sdf = sdf.apply(decide, stateful=True)
    sdf.to_topic(output_topic)
    return app


def main() -> None:
    state_dir = Path(os.environ["BENCH_QUIX_STATE_DIR"])
    state_dir.mkdir(parents=True, exist_ok=True)
    app = build(os.environ["BENCH_QUIX_GROUP"], os.environ["BENCH_QUIX_INPUT"], os.environ["BENCH_QUIX_OUTPUT"],
                state_dir)
    app.run()  # until SIGTERM: Quix then commits and closes its state


if __name__ == "__main__":
    main()
