"""agents/plumbing.py ConfirmedOffsets: the instance's read-back of its committed input
offsets, the bound of the Warden's collection (specs/failure-modes.allium
CommittedOffsetsUnreadable, CommitFailedDuringRebalance). No broker: Kafka out of reach
is a port nothing listens on, which real aiokafka fails to bootstrap from."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import types

from agents.plumbing import ConfirmedOffsets, SideConsumer

TOPIC = "docket.input"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _app_stub():
    # SideConsumer only connects its shutdown to the app's on_before_shutdown signal
    return types.SimpleNamespace(on_before_shutdown=types.SimpleNamespace(connect=lambda _f: None))


class _CountingSide:
    """A SideConsumer (real aiokafka underneath) that counts its uses."""

    def __init__(self, side: SideConsumer) -> None:
        self.side, self.uses, self.closed = side, 0, False

    @contextlib.asynccontextmanager
    async def use(self):
        self.uses += 1
        async with self.side.use() as consumer:
            yield consumer


class _Reader:
    """Stands in for an AIOKafkaConsumer once Kafka answers: committed() per partition."""

    def __init__(self, committed: dict[int, int | None]) -> None:
        self.committed_offsets = committed

    async def committed(self, tp) -> int | None:
        return self.committed_offsets[tp.partition]


class _ReachableAgain:
    def __init__(self, reader: _Reader) -> None:
        self.reader, self.closed = reader, False

    @contextlib.asynccontextmanager
    async def use(self):
        yield self.reader


def test_kafka_out_of_reach_keeps_the_bound_and_never_raises(caplog) -> None:
    """CommittedOffsetsUnreadable: with nothing listening on the bootstrap port, refresh
    returns False instead of raising (Faust would crash the worker on a timer's error), the
    offsets Kafka last confirmed stay as they were, and one WARNING says what happened and
    what to check."""
    side = _CountingSide(SideConsumer(_app_stub(), bootstrap_servers=f"127.0.0.1:{_closed_port()}",
                                      group_id="g", enable_auto_commit=False, request_timeout_ms=2000))
    confirmed = ConfirmedOffsets(side, TOPIC, retry_ms=0)
    confirmed.offsets = {0: 40, 1: 7}
    with caplog.at_level(logging.WARNING, logger="docket.plumbing"):
        assert asyncio.run(confirmed.refresh({0: 50, 1: 9, 2: 3})) is False
        assert asyncio.run(confirmed.refresh({0: 50})) is False
    assert confirmed.offsets == {0: 40, 1: 7}
    assert confirmed.get(0) == 40 and confirmed.get(2) == 0
    assert side.uses == 2  # retry_ms 0: the second refresh tried again
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one per outage, not one per try
    assert TOPIC in warnings[0] and "check that Kafka is reachable" in warnings[0]
    assert "KafkaConnectionError" in warnings[0]


def test_a_failed_read_is_not_tried_again_before_retry_ms() -> None:
    """CommittedOffsetsUnreadable: after a failure the read waits retry_ms before it tries
    Kafka again, however often the timer runs (DOCKET_COMMIT_CHECK_INTERVAL_MS)."""
    side = _CountingSide(SideConsumer(_app_stub(), bootstrap_servers=f"127.0.0.1:{_closed_port()}",
                                      group_id="g", enable_auto_commit=False))
    confirmed = ConfirmedOffsets(side, TOPIC, retry_ms=600_000)

    async def three_refreshes() -> list[bool]:
        return [await confirmed.refresh([0]) for _ in range(3)]

    assert asyncio.run(three_refreshes()) == [False, False, False]
    assert side.uses == 1


def test_reading_again_after_an_outage_updates_every_partition_and_says_so(caplog) -> None:
    """CommittedOffsetsUnreadable and CommitFailedDuringRebalance: once Kafka answers, each
    partition's figure is what Kafka confirms (none committed yet reads as 0), and a
    WARNING says the outage is over."""
    confirmed = ConfirmedOffsets(_ReachableAgain(_Reader({0: 51, 1: None})), TOPIC, retry_ms=0)
    confirmed.offsets = {0: 40}
    confirmed.unreachable = ConnectionError("earlier")
    with caplog.at_level(logging.WARNING, logger="docket.plumbing"):
        assert asyncio.run(confirmed.refresh({1: 1, 0: 52})) is True
    assert confirmed.offsets == {0: 51, 1: 0}
    assert confirmed.unreachable is None
    assert [r.getMessage() for r in caplog.records] == [f"the committed offsets of {TOPIC} are read from Kafka again"]


class _CoordinatorAway:
    """A consumer whose group coordinator is gone: aiokafka's committed() waits for it for
    as long as it is away (seen with the broker stopped under `make run`: 41 s)."""

    def __init__(self) -> None:
        self.closed = False
        self.answered = asyncio.Event()

    @contextlib.asynccontextmanager
    async def use(self):
        yield self

    async def committed(self, tp) -> int:
        await self.answered.wait()
        return 99


def test_a_read_that_does_not_answer_within_timeout_ms_counts_as_kafka_out_of_reach(caplog) -> None:
    """CommittedOffsetsUnreadable: a read-back that blocks (the coordinator lost) ends after
    timeout_ms with the offsets as they were and the outage's one WARNING, so the timer
    does not hang for the whole outage and the log says why the Warden holds more."""
    confirmed = ConfirmedOffsets(_CoordinatorAway(), TOPIC, retry_ms=0, timeout_ms=50)
    confirmed.offsets = {3: 12}
    with caplog.at_level(logging.WARNING, logger="docket.plumbing"):
        assert asyncio.run(confirmed.refresh([3])) is False
    assert confirmed.offsets == {3: 12}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no answer within 50 ms" in warnings[0], warnings
