"""bench/rdkafka.py: the load generator's librdkafka configuration, from docket's
Kafka connection (no broker)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from app.kafka_config import KafkaConnection
from bench.rdkafka import rdkafka_config


def settings(conn: KafkaConnection) -> SimpleNamespace:
    return SimpleNamespace(kafka=conn, kafka_bootstrap="127.0.0.1:9092")


def test_plaintext_gives_the_bootstrap_client_id_and_own_settings_with_dots() -> None:
    config = rdkafka_config(settings(KafkaConnection(client_id_prefix="shop")), fetch_wait_max_ms=100,
                            enable_auto_commit=False)
    assert config == {"bootstrap.servers": "127.0.0.1:9092", "client.id": "shop-bench",
                      "security.protocol": "PLAINTEXT", "fetch.wait.max.ms": 100, "enable.auto.commit": False}


def test_sasl_over_tls_maps_the_credentials_and_the_certificate_files() -> None:
    conn = KafkaConnection(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="u",
                           password="p", ssl_ca_file=Path("/ca.pem"), ssl_cert_file=Path("/c.pem"),
                           ssl_key_file=Path("/k.pem"), ssl_key_password="kp")
    config = rdkafka_config(settings(conn), "gen")
    assert config["client.id"] == "docket-gen"
    assert {k: config[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u",
        "sasl.password": "p"}
    assert (config["ssl.ca.location"], config["ssl.certificate.location"], config["ssl.key.location"],
            config["ssl.key.password"]) == ("/ca.pem", "/c.pem", "/k.pem", "kp")


def test_plaintext_sets_no_tls_or_sasl_keys() -> None:
    config = rdkafka_config(settings(KafkaConnection()))
    assert not [k for k in config if k.startswith(("ssl.", "sasl."))]


def test_the_result_readers_config_is_accepted_by_librdkafka() -> None:
    """librdkafka rejects a name or value it does not know when the client is built:
    every one the result reader sets must be accepted (nothing connects: the bootstrap
    server is contacted only later)."""
    from confluent_kafka import Consumer

    from bench.kafka_native import result_reader_config

    Consumer(result_reader_config(settings(KafkaConnection()), "t.bench-watch")).close()
