"""The load generator's result reader: librdkafka (confluent-kafka), not aiokafka.

The generator shares the 2 cores with what it measures, so every microsecond it spends
is taken from docket. Its result reader decoded every fetch response in Python with
aiokafka; librdkafka does the protocol work in C threads, and Python pays one
``consume`` call per batch of results (bench/kafka_native.py ResultWatch).

The generator's producer stays aiokafka's (bench/kafka_native.py send_at_rate):
librdkafka puts one partition in each produce request, and at 5,000 events/s on 8
partitions that cost the broker 47-60 µs per event against 13-33 with aiokafka's
requests, which carry every partition (five alternating pairs of `python -m bench.run
--only kafka_native --native-partitions 8`, 2026-12-02).

:func:`rdkafka_config` maps docket's Kafka connection (DOCKET_KAFKA_*: security
protocol, SASL, TLS files, client id) to librdkafka's configuration names, so the bench
reaches a broker the way every docket process does.
"""

from __future__ import annotations

import asyncio
import time

from app.kafka_config import _connection


def rdkafka_config(settings, component: str = "bench", **own) -> dict:
    """librdkafka configuration (``{"bootstrap.servers": ..., ...}``) for a client of
    ``component``: ``settings``' bootstrap servers and connection (Settings, or anything
    with ``kafka_bootstrap`` and ``kafka``), then ``own`` (librdkafka names with ``_``
    for ``.``, e.g. ``fetch_wait_max_ms=100``)."""
    conn = _connection(settings)
    config: dict = {"bootstrap.servers": settings.kafka_bootstrap, "client.id": conn.client_id(component),
                    "security.protocol": conn.security_protocol}
    if conn.uses_sasl:
        config.update({"sasl.mechanism": conn.sasl_mechanism, "sasl.username": conn.username,
                       "sasl.password": conn.password})
    if conn.uses_tls:
        for key, path in (("ssl.ca.location", conn.ssl_ca_file), ("ssl.certificate.location", conn.ssl_cert_file),
                          ("ssl.key.location", conn.ssl_key_file)):
            if path is not None:
                config[key] = str(path)
        if conn.ssl_key_password is not None:
            config["ssl.key.password"] = conn.ssl_key_password
    config.update({key.replace("_", "."): value for key, value in own.items()})
    return config


async def partition_count(client, topic: str, timeout_s: float = 10.0) -> int:
    """Partitions of ``topic`` as ``client`` (a confluent_kafka Consumer or Producer)
    sees them. Raises RuntimeError if the topic is unknown after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = await asyncio.to_thread(client.list_topics, topic, timeout_s)
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return len(found.partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} not found on {metadata.orig_broker_name} within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)  # poll interval of the metadata condition
