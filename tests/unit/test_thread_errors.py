"""An exception a worker's thread does not catch is one log record (app/logs.py
log_thread_exceptions, installed by agents/worker.py DocketWorker; specs/integration.allium
ProcessLogsInOneFormat). No broker: the worker's logging is set up the way the worker sets
it up (mode's Worker._setup_logging: docket's logging_config, then DocketWorker's
on_setup_root_logger, then Faust's redirect of stdout and stderr to the logger
mode.redirect), and a thread raises.

A user found a worker whose broker went away logging Faust's consumer thread's traceback
(a CancelledError as it stopped) as 276 to 465 WARNING records of mode.redirect, one
per fragment Python's threading.excepthook wrote to the redirected stderr."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import threading
import types
from collections.abc import Callable, Iterator

import pytest

from agents import worker as worker_mod


class Records(logging.Handler):
    """Every record the root logger handles, besides the worker's own handler."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def settings(offline_settings):
    return offline_settings


@pytest.fixture
def worker_logging(settings, capsys) -> Iterator[Callable[[str], tuple[worker_mod.DocketWorker, Records]]]:
    """``setup(fmt)``: a DocketWorker whose logging is set up as when it starts, in
    DOCKET_LOG_FORMAT ``fmt``, its handler writing to the captured stderr; and a handler
    on the root logger that keeps every record. Restores the process afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, threading.excepthook, sys.stdout, sys.stderr)
    loop = asyncio.new_event_loop()
    workers: list[worker_mod.DocketWorker] = []

    def setup(fmt: str) -> tuple[worker_mod.DocketWorker, Records]:
        app = worker_mod.new_app(f"thread-errors-{fmt}")
        worker_mod.adopt_settings(app, dataclasses.replace(settings, log_format=fmt))
        worker = worker_mod.DocketWorker(app, loglevel="INFO", quiet=True, loop=loop)
        workers.append(worker)
        worker._setup_logging()  # noqa: SLF001  what the worker runs first when it starts
        assert type(sys.stderr).__name__ == "FileLogProxy"  # mode's redirect, as in a running worker
        records = Records()
        root.addHandler(records)
        return worker, records

    try:
        yield setup
    finally:
        for worker in workers:
            worker.exit_stack.close()  # ends mode's redirect of stdout and stderr
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        threading.excepthook, sys.stdout, sys.stderr = saved[2:]
        loop.close()


def run_thread(target: Callable[[], None], name: str, cls: type[threading.Thread] = threading.Thread) -> None:
    thread = cls(target=target, name=name)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()


def fail() -> None:
    def deeper() -> None:
        raise ValueError("the broker went away")

    try:
        deeper()
    except ValueError as exc:
        raise RuntimeError("fetch failed") from exc


def test_a_threads_uncaught_exception_is_one_json_record(worker_logging, capsys) -> None:
    """ProcessLogsInOneFormat: a thread of a worker (DOCKET_LOG_FORMAT=json) that dies of
    an exception is ONE record: docket.worker, ERROR, naming the thread and the
    exception, the whole traceback (chained causes too) in its exc_info: one JSON line
    on stderr, nothing of mode.redirect."""
    _worker, records = worker_logging("json")
    capsys.readouterr()
    run_thread(fail, "fetcher-thread")

    assert len(records.records) == 1, [r.getMessage() for r in records.records]
    record = records.records[0]
    assert (record.name, record.levelno) == ("docket.worker", logging.ERROR)
    assert record.getMessage() == "thread fetcher-thread died: RuntimeError: fetch failed"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert (line["logger"], line["level"]) == ("docket.worker", "ERROR")
    assert line["message"] == "thread fetcher-thread died: RuntimeError: fetch failed"
    trace = line["exc_info"]
    assert trace.startswith("Traceback (most recent call last):"), trace
    assert "ValueError: the broker went away" in trace and "in deeper" in trace
    assert "The above exception was the direct cause of the following exception" in trace
    assert trace.rstrip().endswith("RuntimeError: fetch failed"), trace


def test_python_s_own_hook_under_the_redirect_is_what_broke_the_traceback_up(worker_logging, capsys) -> None:
    """The cause: with Python's own threading.excepthook, the same thread's traceback
    reaches the logger mode.redirect one write at a time, a WARNING record each."""
    _worker, records = worker_logging("text")
    threading.excepthook = threading.__excepthook__
    run_thread(fail, "fetcher-thread")
    fragments = [r for r in records.records if r.name == "mode.redirect"]
    assert len(fragments) > 10 and {r.levelno for r in fragments} == {logging.WARNING}
    assert any(r.getMessage().startswith("Exception in thread") for r in fragments)


class ServiceThread(threading.Thread):
    """As mode's WorkerThread: the thread of a ServiceThread (Faust's consumer thread),
    whose service says whether it stops."""

    service = types.SimpleNamespace(should_stop=True)


def cancelled() -> None:
    raise asyncio.CancelledError


def test_a_cancelled_thread_while_stopping_is_one_info_line(worker_logging, capsys) -> None:
    """ProcessLogsInOneFormat: a CancelledError ending a thread while it or the worker
    stops (Faust's consumer thread, its broker gone, as the worker stopped) is one INFO
    line without a traceback; the same while nothing stops is an ERROR with it."""
    worker, records = worker_logging("text")
    capsys.readouterr()
    run_thread(cancelled, "Thread-1", ServiceThread)  # its service stops
    [record] = records.records
    assert (record.name, record.levelno, record.exc_info) == ("docket.worker", logging.INFO, None)
    assert record.getMessage() == "thread Thread-1 ended while stopping: CancelledError"
    assert capsys.readouterr().err.count("\n") == 1

    records.records.clear()
    run_thread(cancelled, "Thread-2")  # nothing stops: a thread died
    [record] = records.records
    assert (record.levelno, record.getMessage()) == (logging.ERROR, "thread Thread-2 died: CancelledError")
    assert record.exc_info is not None

    records.records.clear()
    worker._stopped.set()  # noqa: SLF001  the worker stops
    run_thread(cancelled, "Thread-3")
    [record] = records.records
    assert (record.levelno, record.getMessage()) == (logging.INFO,
                                                     "thread Thread-3 ended while stopping: CancelledError")

    records.records.clear()
    run_thread(lambda: sys.exit(3), "Thread-4")  # a thread that exits is no error (as Python's own hook)
    assert records.records == []
