"""`docket api` while Kafka is away: a broker of this test's own (the launcher, launcher/broker.py),
so stopping it disturbs no other test.

The API process starts before the broker: it serves, /readyz says what it waits for, and
a submission is refused with 503 "not accepted". Once the broker is up (topics created),
the API connects by itself and accepts events. When the broker stops, /readyz turns 503
again and submissions are refused, not left hanging.
"""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from app.settings import load
from app.topics import create_topics
from launcher import broker as launcher

from tests.integration.procs import wait_for, worker_env
from tests.integration.stack_kit import ApiProc, get_json, post_json

pytestmark = pytest.mark.integration


def test_api_reports_kafka_unreachable_and_recovers(tmp_path) -> None:
    """ApiServesWithoutKafka (started before the broker, it serves and connects by
    itself once the broker is up), ApiReportsKafkaUnavailable (503, not accepted),
    ApiReadiness (503 until connected and caught up, 503 again when the broker goes
    away); then SIGTERM stops it cleanly (exit 0, no traceback) with the broker still
    gone."""
    import asyncio

    token = "down-" + secrets.token_urlsafe(12)
    port, api_port = launcher.free_port(), launcher.free_port()
    settings = dataclasses.replace(load(), broker_dir=tmp_path / "broker", broker_port=port,
                                   kafka_bootstrap=f"127.0.0.1:{port}", topic_prefix=f"down{secrets.token_hex(3)}",
                                   partitions=2, data_root=tmp_path / "data")
    env = worker_env(settings, DOCKET_API_TOKENS=token, DOCKET_API_PORT=str(api_port), DOCKET_LOG_LEVEL="info")
    api = ApiProc(env, tmp_path / "logs")
    url = f"http://127.0.0.1:{api_port}"
    auth = {"Authorization": f"Bearer {token}"}
    event = {"event_name": "stock.adjust", "payload": {"warehouse": "w1", "sku": "s1", "delta": 1}}
    api.start()
    try:
        asyncio.run(wait_for(lambda: get_json(url + "/healthz")[0] == 200, 60, "the API to serve",
                             detail=api.log_tail))
        status, body = get_json(url + "/readyz")
        assert status == 503 and body["ready"] is False, body
        assert f"connecting to Kafka at 127.0.0.1:{port}" in body["message"]
        status, body = post_json(url + "/v1/events", event, "down-1", {**auth, "Prefer": "respond-async"})
        assert status == 503, body
        assert body["error"] == "kafka_unavailable"
        assert body["message"].startswith("the request was not accepted"), body

        launcher.start_broker(settings, 90, die_with_parent=True)
        asyncio.run(create_topics(settings))
        asyncio.run(wait_for(lambda: get_json(url + "/readyz")[0] == 200, 60,
                             "the API to connect once the broker is up", detail=api.log_tail))
        status, body = post_json(url + "/v1/events", event, "down-2", {**auth, "Prefer": "respond-async"})
        assert status == 202, body  # accepted; no instances run here to decide it
        assert body["position"]["partition"] in (0, 1)

        launcher.stop_broker(settings.broker_dir, timeout=30)
        status, body = asyncio.run(wait_for(
            lambda: (r := get_json(url + "/readyz"))[0] == 503 and r, 60, "/readyz to notice the broker is gone",
            detail=api.log_tail))
        assert body["checks"]["kafka_connected"] is False
        assert "lost the connection to Kafka" in body["message"]
        status, body = post_json(url + "/v1/events", event, "down-3", auth)
        assert status == 503, body
        assert body["message"].startswith("the request was not accepted"), body
        api.assert_alive()
        # stopped while Kafka is gone: a clean exit, not aiokafka's leaked CancelledError
        # (app/client.py stop_consumer; it made the API exit 1 with a traceback)
        assert asyncio.run(api.stop()) == 0, api.log_tail()
        assert "Traceback" not in api.log_text(), api.log_tail()
    finally:
        api.kill()
        launcher.stop_broker(settings.broker_dir, timeout=15)
