"""A worker's consumer closed during its group join (specs/integration.allium
WorkerStopsDuringGroupJoin): agents/consumer_close.py and app/logs.py GroupNoiseFilter.

The stand-in consumer below follows aiokafka 0.14's AIOKafkaConsumer.stop and
GroupCoordinator.close, whose sources are pinned here: the close awaits the group
coordination routine, then closes the fetcher and the connections. The same stop on a
real broker is tests/integration/test_worker_stop.py's."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import threading

import pytest

from agents.consumer_close import DocketConsumerThread, close_consumer
from app import logs

# sha256 of the sources the stand-in follows and DocketConsumerThread.on_thread_stop
# repeats (faust-streaming 0.15, aiokafka 0.14)
PINNED_SHA256 = {
    "AIOKafkaConsumerThread.on_thread_stop": "8dfc004e258b6c25edd2b0986531aea0fc75dd5cef0d0718c87848af33c6f757",
    "AIOKafkaConsumer.stop": "bc5da9c98595299a3d968526cd9f4a344e672520892a917547d15151cd588d35",
    "GroupCoordinator.close": "f30d831089456312e58c9790ef349046c99bbe73a7358a466eea2a5b1c3b1b58",
}


class _Closable:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class _Coordinator:
    """GroupCoordinator's close: end the coordination routine, await it."""

    def __init__(self, join_held: bool, slow_to_cancel: bool = False) -> None:
        self._closing = asyncio.Event()
        self.cancel_seen = asyncio.Event()
        self._coordination_task = asyncio.ensure_future(self._routine(join_held, slow_to_cancel))

    async def _routine(self, join_held: bool, slow_to_cancel: bool) -> None:
        try:
            if join_held:  # a JoinGroup the broker holds: no check of the close until it answers
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancel_seen.set()
            if slow_to_cancel:  # a clean-up that takes its time
                await asyncio.Event().wait()
            raise
        await self._closing.wait()

    async def close(self) -> None:
        self._closing.set()
        await self._coordination_task


class _Consumer:
    """AIOKafkaConsumer's stop: the coordinator, then the fetcher and the client."""

    def __init__(self, join_held: bool, slow_to_cancel: bool = False) -> None:
        self._coordinator = _Coordinator(join_held, slow_to_cancel)
        self._fetcher = _Closable()
        self._client = _Closable()

    async def stop(self) -> None:
        await self._coordinator.close()
        await self._fetcher.close()
        await self._client.close()


def test_a_close_held_by_a_group_join_is_finished_after_the_grace() -> None:
    """WorkerStopsDuringGroupJoin: a coordination routine still waiting on the broker
    after the grace is cancelled, and the fetcher and the connections are closed."""

    async def run() -> tuple[bool, _Consumer]:
        consumer = _Consumer(join_held=True)
        abandoned = await asyncio.wait_for(close_consumer(consumer, grace_s=0.05), 5)
        return abandoned, consumer

    abandoned, consumer = asyncio.run(run())
    assert abandoned
    assert consumer._coordinator._coordination_task.cancelled()
    assert consumer._fetcher.closed and consumer._client.closed


def test_a_close_with_nothing_held_is_aiokafkas_own() -> None:
    """WorkerStopsDuringGroupJoin: a coordination routine that ends when asked is
    awaited, not cancelled."""

    async def run() -> tuple[bool, _Consumer]:
        consumer = _Consumer(join_held=False)
        return await close_consumer(consumer, grace_s=5), consumer

    abandoned, consumer = asyncio.run(run())
    assert not abandoned
    assert consumer._coordinator._coordination_task.done()
    assert not consumer._coordinator._coordination_task.cancelled()
    assert consumer._fetcher.closed and consumer._client.closed


def test_the_callers_cancellation_is_not_taken_for_the_routines() -> None:
    """Cancelling close_consumer while it awaits the stop whose routine it cancelled
    cancels it: it does not go on to close the fetcher as if the stop had ended."""

    async def run() -> tuple[asyncio.Future, _Consumer]:
        consumer = _Consumer(join_held=True, slow_to_cancel=True)
        closing = asyncio.ensure_future(close_consumer(consumer, grace_s=0.05))
        await asyncio.wait_for(consumer._coordinator.cancel_seen.wait(), 5)
        closing.cancel()
        await asyncio.wait({closing}, timeout=5)
        return closing, consumer

    closing, consumer = asyncio.run(run())
    assert closing.cancelled()
    assert not consumer._fetcher.closed


def test_the_internals_the_close_relies_on_keep_their_shape() -> None:
    """The sources the stand-in follows and the consumer thread's stop repeats are the
    pinned ones (the attributes close_consumer reads are app/private_api.py's)."""
    from aiokafka.consumer.consumer import AIOKafkaConsumer
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    for function in (AIOKafkaConsumerThread.on_thread_stop, AIOKafkaConsumer.stop, GroupCoordinator.close):
        digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()
        assert digest == PINNED_SHA256[function.__qualname__], (
            f"{function.__qualname__} changed: check agents/consumer_close.py against it")
    assert issubclass(DocketConsumerThread, AIOKafkaConsumerThread)


def _record(msg: str, *args: object, level: int = logging.ERROR,
            name: str = "aiokafka.consumer.group_coordinator") -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "levelno": level, "levelname": logging.getLevelName(level),
                                  "msg": msg, "args": args})


def test_aiokafkas_complaints_about_a_stop_are_info_once_it_began(monkeypatch: pytest.MonkeyPatch) -> None:
    """WorkerStopsDuringGroupJoin: before the stop, aiokafka's "marking coordinator
    dead" ERROR passes as it is; after mark_stopping, it and the LeaveGroup failure are
    INFO (dropped at the default level); other records keep their level. ProcessLogsInOneFormat:
    a heartbeat refused because the group rebalances is INFO at any time."""
    monkeypatch.setattr(logs, "_STOPPING", threading.Event())
    f = logs.GroupNoiseFilter()
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.INFO)
    try:
        # a rebalance's heartbeat refusal is INFO whether or not the worker stops
        beat = _record("Heartbeat failed for group %s because it is rebalancing", "g", level=logging.WARNING)
        assert f.filter(beat) and beat.levelno == logging.INFO
    finally:
        root.setLevel(saved)
    dead = _record("Error sending %s to node %s [%s] -- marking coordinator dead", "OffsetFetchRequest", 1,
                   "KafkaConnectionError: Connection at 127.0.0.1:9092 closed")
    assert f.filter(dead) and dead.levelno == logging.ERROR

    logs.mark_stopping()
    root = logging.getLogger()
    saved = root.level
    try:
        root.setLevel(logging.INFO)
        leave = _record("LeaveGroup request failed: %s", "[Error 15] GroupCoordinatorNotAvailableError")
        assert f.filter(leave) and (leave.levelno, leave.levelname) == (logging.INFO, "INFO")
        marked = _record("Marking the coordinator dead (node %s)for group %s.", 1, "g", level=logging.WARNING)
        assert f.filter(marked) and marked.levelno == logging.INFO
        other = _record("Heartbeat session expired - marking coordinator dead")
        assert f.filter(other) and other.levelno == logging.ERROR
        elsewhere = _record("LeaveGroup request failed: %s", "x", name="docket.worker")
        assert f.filter(elsewhere) and elsewhere.levelno == logging.ERROR

        root.setLevel(logs.NOTICE)  # the default: the demoted record is dropped
        assert not f.filter(_record("LeaveGroup request failed: %s", "x"))
    finally:
        root.setLevel(saved)
