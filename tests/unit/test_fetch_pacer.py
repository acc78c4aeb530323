"""app/faust_tuning.py FetchPacer and pace: when a worker consumer's fetch is a round
and when it waits for the first record (specs/integration.allium,
FetchWaitsForTheFirstRecordWhenIdle, FetchWaitsForARound). Pure logic: the fetcher
below is a stand-in with the two methods aiokafka's fetch routine calls; the
requests are aiokafka's own FetchRequest objects."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from aiokafka.protocol.fetch import FetchRequest

from app.faust_tuning import FetchPacer, pace

ROUND_WAIT_MS, ROUND_MIN_BYTES, IDLE_WAIT_MS = 20, 1 << 20, 500


def test_idle_fetch_follows_only_an_empty_answer_from_every_broker() -> None:
    """FetchWaitsForTheFirstRecordWhenIdle: idle once every broker's last fetch found no
    records; a round before any answer and after any answer with records."""
    pacer = FetchPacer(IDLE_WAIT_MS)
    assert not pacer.idle(buffered=False, every_position_known=True)  # nothing answered yet
    pacer.answered(1, had_records=False)
    assert pacer.idle(buffered=False, every_position_known=True)
    pacer.answered(2, had_records=True)
    assert not pacer.idle(buffered=False, every_position_known=True)  # broker 2 had records
    pacer.answered(2, had_records=False)
    assert pacer.idle(buffered=False, every_position_known=True)
    pacer.answered(1, had_records=True)
    assert not pacer.idle(buffered=False, every_position_known=True)


def test_idle_fetch_never_leaves_out_a_partition_being_read() -> None:
    """FetchWaitsForTheFirstRecordWhenIdle: unread fresh records (their partition is
    left out of the fetch) or a partition awaiting its offset keep fetches rounds."""
    pacer = FetchPacer(IDLE_WAIT_MS)
    pacer.answered(1, had_records=False)
    assert not pacer.idle(buffered=True, every_position_known=True)
    assert not pacer.idle(buffered=False, every_position_known=False)
    assert pacer.idle(buffered=False, every_position_known=True)


def test_idle_wait_zero_means_rounds_only_and_a_new_assignment_starts_over() -> None:
    """FetchWaitsForARound: DOCKET_FETCH_IDLE_WAIT_MS=0 keeps every fetch a round; after
    forget() (a new assignment) the consumer fetches rounds until answered again."""
    off = FetchPacer(0)
    off.answered(1, had_records=False)
    assert not off.idle(buffered=False, every_position_known=True)
    pacer = FetchPacer(IDLE_WAIT_MS)
    pacer.answered(1, had_records=False)
    pacer.forget()
    assert not pacer.idle(buffered=False, every_position_known=True)
    with pytest.raises(ValueError, match="0 or more"):
        FetchPacer(-1)


class StandInFetcher:
    """The parts of aiokafka's Fetcher that pace() touches: _records (tp -> a result
    stamped _created, time.monotonic()), _get_actions_per_node (builds one round
    request per broker) and _proc_fetch_request (answers as ``answers`` says)."""

    def __init__(self, nodes: list[int], answers: dict[int, bool]) -> None:
        self._records: dict = {}
        self.nodes = nodes
        self.answers = answers

    def _get_actions_per_node(self, assignment):
        requests = [(node, FetchRequest(ROUND_WAIT_MS, ROUND_MIN_BYTES, 50 << 20, 1, [("t", [(node, 0, 1 << 20)])]))
                    for node in self.nodes]
        return requests, {}, 0.2, False, []

    async def _proc_fetch_request(self, assignment, node_id, request):
        return self.answers[node_id]


def assignment(positions_known: bool = True):
    state = SimpleNamespace(has_valid_position=positions_known)
    return SimpleNamespace(tps=["t-0", "t-1"], state_value=lambda tp: state)


def waits(requests) -> list[tuple[int, int]]:
    return [(r._max_wait_ms, r._min_bytes) for _, r in requests]


async def send_all(fetcher: StandInFetcher, on) -> list[tuple[int, int]]:
    """One turn of aiokafka's fetch routine: build the requests, send each, let each
    answer; (max wait ms, min bytes) of what was sent."""
    requests = fetcher._get_actions_per_node(on)[0]
    for node, request in requests:
        await fetcher._proc_fetch_request(on, node, request)
    return waits(requests)


def test_pace_sends_an_idle_fetch_after_an_empty_answer_and_a_round_after_records() -> None:
    """FetchWaitsForTheFirstRecordWhenIdle, FetchWaitsForARound: through pace(), the
    requests the fetch routine sends are rounds until a fetch comes back empty, then
    wait DOCKET_FETCH_IDLE_WAIT_MS for 1 byte, then rounds again once one had records."""
    fetcher = StandInFetcher([1], {1: False})
    pace(fetcher, FetchPacer(IDLE_WAIT_MS))
    a = assignment()

    async def scenario():
        first = await send_all(fetcher, a)  # answered empty
        second = await send_all(fetcher, a)  # answered empty
        fetcher.answers[1] = True
        third = await send_all(fetcher, a)  # answered with records
        fourth = await send_all(fetcher, a)
        return first, second, third, fourth

    first, second, third, fourth = asyncio.run(scenario())
    assert first == [(ROUND_WAIT_MS, ROUND_MIN_BYTES)]
    assert second == [(IDLE_WAIT_MS, 1)]
    assert third == [(IDLE_WAIT_MS, 1)]  # built before the answer with records
    assert fourth == [(ROUND_WAIT_MS, ROUND_MIN_BYTES)]


def test_pace_keeps_rounds_while_fresh_records_are_buffered_but_not_for_stale_ones() -> None:
    """FetchWaitsForTheFirstRecordWhenIdle: records fetched less than the idle wait ago
    and still unread keep fetches rounds; records buffered longer (an instance's table
    changelog partitions, read only in a recovery) do not; neither does a new
    assignment's first fetch, nor a partition awaiting its offset."""
    fetcher = StandInFetcher([1], {1: False})
    pace(fetcher, FetchPacer(IDLE_WAIT_MS))
    a = assignment()

    asyncio.run(send_all(fetcher, a))  # answered empty
    fetcher._records["t-0"] = SimpleNamespace(_created=time.monotonic())
    assert waits(fetcher._get_actions_per_node(a)[0]) == [(ROUND_WAIT_MS, ROUND_MIN_BYTES)]
    fetcher._records["t-0"] = SimpleNamespace(_created=time.monotonic() - 2 * IDLE_WAIT_MS / 1000)
    assert waits(fetcher._get_actions_per_node(a)[0]) == [(IDLE_WAIT_MS, 1)]
    assert waits(fetcher._get_actions_per_node(assignment(positions_known=False))[0]) == [
        (ROUND_WAIT_MS, ROUND_MIN_BYTES)]  # a new assignment, and a position unknown


def test_pace_waits_for_every_broker_to_come_back_empty() -> None:
    """FetchWaitsForTheFirstRecordWhenIdle: with two brokers, one that answered with
    records keeps both brokers' next fetches rounds."""
    fetcher = StandInFetcher([1, 2], {1: False, 2: True})
    pace(fetcher, FetchPacer(IDLE_WAIT_MS))
    a = assignment()

    assert asyncio.run(send_all(fetcher, a)) == [(ROUND_WAIT_MS, ROUND_MIN_BYTES)] * 2
    assert asyncio.run(send_all(fetcher, a)) == [(ROUND_WAIT_MS, ROUND_MIN_BYTES)] * 2
    fetcher.answers[2] = False
    asyncio.run(send_all(fetcher, a))
    assert asyncio.run(send_all(fetcher, a)) == [(IDLE_WAIT_MS, 1)] * 2
