"""`docket divergences --last N` on a real broker (app/divergences.py read_reports)."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.divergences import read_reports
from app.kafka_config import client_kwargs

pytestmark = pytest.mark.integration


async def test_last_n_lists_the_n_newest_reports_of_transactional_records(docket_settings) -> None:
    """OperatorListsDivergences: the Clerk writes each report in a transaction, and each
    commit marker takes an offset after it. --last N lists the N newest reports, not
    the reports among the N newest offsets (before: N=1 listed none, 2 one, 4 two, 8
    four, a fresh-clone user check)."""
    s = docket_settings
    producer = AIOKafkaProducer(**client_kwargs(s, "test", "producer", bootstrap_servers=s.kafka_bootstrap,
                                                transactional_id=f"{s.topic_prefix}-divergences-test"))
    await producer.start()
    try:
        for n in range(6):
            async with producer.transaction():
                # as the Clerk writes it: its state counts the position finished
                await producer.send_and_wait(s.divergences_topic, orjson.dumps(
                    {"input": {"partition": 0, "offset": n}, "cause": "mismatch",
                     "copies": [{"instance": "a", "digest": "d1"}, {"instance": "b", "digest": "d2"}], "decided": None,
                     "clerk": {"seq": n + 1, "decided_below": n + 1, "finished_ranges": []}}),
                    partition=0)
    finally:
        await producer.stop()
    for last in (1, 2, 4, 6, 10):
        listed = await read_reports(s, last=last, timeout_s=30)
        assert [r["input"]["offset"] for r in listed] == list(range(6))[-last:], (last, listed)
    assert await read_reports(s, last=0, timeout_s=30) == []
