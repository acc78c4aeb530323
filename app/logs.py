"""How every docket process logs: one function, :func:`configure`, and the dictConfig
it applies, :func:`logging_config`.

Every process docket runs logs through this: the instances' and the Clerk's Faust
workers (``docket instance``, ``docket clerk`` and ``faust -A docket_apps.<role>
worker`` alike: :class:`agents.worker.DocketWorker` hands :func:`logging_config` to
Faust, whose own lines then go through the same handler), the REST API, and the
``docket`` commands that log (``stack``, ``chaos``, ...).

Two formats, chosen by ``DOCKET_LOG_FORMAT``:

- ``text`` (the default): one line per record,
  ``[2026-01-02 03:04:05,678] [4242] [WARNING] docket.instance: message``
  (the host's local time; the level in brackets, as Faust's own format has it:
  DEBUG, INFO, NOTICE (:data:`NOTICE`), WARNING, ERROR, CRITICAL);
- ``json``: one JSON object per line (python-json-logger's formatter), with
  ``time`` (ISO-8601, UTC, milliseconds, e.g. ``2026-01-02T03:04:05.678Z``),
  ``level`` (``WARNING``), ``logger`` (``docket.instance``), ``message`` (the
  formatted message), ``pid``, then every structured extra the record carries
  (``log.info("...", extra={"partition": 3})``; aiohttp's access log gives the
  request's fields this way), and ``exc_info`` (the traceback, as text) when there is
  one. A value JSON cannot hold is written as its ``str``.

Both write to standard error; the level is ``DOCKET_LOG_LEVEL`` unless a command line
names another.

A worker (agents/worker.py) also makes an exception a thread does not catch one record,
:func:`log_thread_exceptions`, where Python would print its traceback to stderr: Faust
(mode) hands a worker's stderr to the logger ``mode.redirect``, one WARNING record per
write, and a traceback printed there came as hundreds of one-fragment records.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")

# A level between INFO (20) and WARNING (30), as syslog's (RFC 5424: 5, "normal but
# significant condition"), for the few lines a person starting docket wants at the
# default level although nothing is wrong: an instance is ready. Before it they were
# WARNINGs, the readiness signal the chaos runner and the tests wait for.
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
# DOCKET_LOG_LEVEL's default (app/settings.py), and a worker's when it is given none
DEFAULT_LEVEL = "NOTICE"
# How long a start beside the broker waits for Kafka quietly (INFO) before it says so
# as a WARNING: `make run` starts the broker, the topics, the workers and the API at
# once, and the broker takes a few seconds to answer and the topics to be created. A
# worker's --wait (launcher/stack.py wait_for_topics) and the REST API's connection
# (app/api.py) both use it (WorkerRefusesToStartWithoutTopics, ApiServesWithoutKafka).
QUIET_START_S = 15.0

TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"

# the record attributes a JSON line names, and what it calls them
_JSON_FIELDS = ("levelname", "name", "message", "process")
_JSON_NAMES = {"levelname": "level", "name": "logger", "process": "pid"}


class DocketJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with docket's fields: ``time`` first (ISO-8601
    UTC, milliseconds, ``Z``), then ``level``, ``logger``, ``message``, ``pid`` and
    the record's extras (module doc)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(list(_JSON_FIELDS), rename_fields=dict(_JSON_NAMES), **kwargs)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = utc_time(record.created)
        super().add_fields(log_data, record, message_dict)


class RepeatFilter(logging.Filter):
    """Thins out a Kafka client's repeated complaints: of the records of one logger
    under ``prefixes`` with one message template and level, the first in each
    ``window_s`` (seconds, by the records' own times) passes and the rest are counted;
    the first after the window says how many were left out and over how long, from the
    first left out to the last (not "in the window before": they may be minutes old by
    the time the next one passes, as after an outage that ended). With its broker gone,
    aiokafka retries in a tight loop and logged "Unable connect to node with id 1"
    3,000-8,000 times a second per worker (9-31 MB of log in half a minute, found
    with the fault console's broker stop)."""

    # keys kept before the quiet ones are forgotten: the REST API's keys name a peer,
    # and a client may come from many addresses
    MAX_KEYS = 4096

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka", "kafka"), window_s: float = 10.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.window_s = window_s
        # key -> (window start, left out, first and last left out: LogRecord.created s)
        self._seen: dict[tuple[str, int, str], tuple[float, int, float, float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg))
        began, left_out, first, last = self._seen.get(key, (None, 0, 0.0, 0.0))
        if began is not None and record.created - began < self.window_s:
            self._seen[key] = (began, left_out + 1, first if left_out else record.created, record.created)
            return False
        if left_out:
            record.msg = (f"{record.msg} [{left_out} more like this left out, over {last - first:.1f} s ending "
                          f"{record.created - last:.1f} s before this one]")
        if len(self._seen) >= self.MAX_KEYS:
            self._forget_quiet(record.created)
        self._seen[key] = (record.created, 0, 0.0, 0.0)
        return True

    def _forget_quiet(self, now: float) -> None:
        """Forget the keys whose window is over with nothing left out: the next record of
        one passes as the first would. Bounds the memory to the keys active in a window."""
        for key, (began, left_out, _first, _last) in list(self._seen.items()):
            if not left_out and now - began >= self.window_s:
                del self._seen[key]


class CoordinatorLookupFilter(logging.Filter):
    """aiokafka logs every failed lookup of a consumer group's coordinator at ERROR
    ("Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError")
    and retries it. A broker answers so for its first seconds, and while it creates
    and loads ``__consumer_offsets`` for the first group it serves: every worker that
    starts with a fresh broker (``make run``, the console, the benchmark) logged one
    ERROR that asked nothing of anyone. A lookup refused for one of these retriable
    reasons is INFO during the first ``grace_s`` seconds (30, by the records' own
    times) of a run of them (records less than ``grace_s`` apart), and dropped unless
    the root logger takes INFO: the level checks are behind a handler's filter. Past
    that it keeps its level and says how long the lookups have failed. Other records
    pass unchanged."""

    LOGGER = "aiokafka.consumer.group_coordinator"
    TEMPLATE = "Group Coordinator Request failed: %s"
    # aiokafka.errors' names of Kafka's COORDINATOR_NOT_AVAILABLE (15),
    # COORDINATOR_LOAD_IN_PROGRESS (14) and NOT_COORDINATOR (16)
    TRANSIENT = ("GroupCoordinatorNotAvailableError", "GroupLoadInProgressError", "NotCoordinatorForGroupError")

    def __init__(self, grace_s: float = 30.0) -> None:
        super().__init__()
        self.grace_s = grace_s
        self._run: tuple[float, float] | None = None  # (first, latest) record time of the run, s

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != self.LOGGER or record.msg != self.TEMPLATE or not record.args:
            return True
        if type(record.args[0]).__name__ not in self.TRANSIENT:
            return True
        first, latest = self._run or (record.created, record.created)
        if record.created - latest >= self.grace_s:
            first = record.created
        self._run = (first, record.created)
        if record.created - first < self.grace_s:
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)
        record.msg = f"{record.msg} (lookups of the group's coordinator have failed for {record.created - first:.0f} s)"
        return True


class GroupNoiseFilter(logging.Filter):
    """Records of aiokafka's group coordinator that ask nothing of anyone, made INFO
    (and dropped unless the root logger takes INFO):

    - "Heartbeat failed for group ... because it is rebalancing", a WARNING at every
      rebalance (three in a running worker while a second worker of its instance
      joined: the README's scale-out, a fresh-user check); Kafka's own Java consumer
      logs it at INFO.
    - Once :func:`mark_stopping` has been called, what fails because the stop closed
      the connections the group coordination still used (agents/consumer_close.py): a
      worker stopped during its group join or first offset fetch logged "Error sending
      OffsetFetchRequest ... Connection ... closed -- marking coordinator dead",
      "Marking the coordinator dead", "LeaveGroup request failed: ...
      GroupCoordinatorNotAvailable" at ERROR and WARNING (1 of 16 Clerks stopped right
      after subscribing). The member they concern is left to the broker, which drops
      it when its session expires; a stop that cannot reach Kafka at all is reported by
      its deadline (agents/stopping.py).

    Other records pass unchanged."""

    LOGGER = "aiokafka.consumer.group_coordinator"
    ROUTINE = ("Heartbeat failed for group %s because it is rebalancing",)
    WHILE_STOPPING = ("Error sending %s to node %s [%s] -- marking coordinator dead",
                      "Marking the coordinator dead (node %s)for group %s.",
                      "LeaveGroup request failed: %s")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != self.LOGGER or record.levelno <= logging.INFO:
            return True
        if record.msg not in self.ROUTINE and not (_STOPPING.is_set() and record.msg in self.WHILE_STOPPING):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger().isEnabledFor(logging.INFO)


_STOPPING = threading.Event()


def mark_stopping() -> None:
    """Say that this process's graceful stop has begun (:class:`GroupNoiseFilter`)."""
    _STOPPING.set()


# The Kafka client libraries whose loggers thin_kafka_client_logs filters
KAFKA_CLIENT_LOGGERS = ("aiokafka", "kafka")
_LIBRARY_REPEATS = RepeatFilter(KAFKA_CLIENT_LOGGERS)


def thin_kafka_client_logs() -> int:
    """Put one shared :class:`RepeatFilter` on every logger of the Kafka client
    libraries (``aiokafka`` and its modules' loggers) that exists and has none, and
    return how many got it. For a process that uses :class:`app.client.DocketClient`
    as a library, under its own logging: docket's handler (logging_config) thins
    these repeats only in docket's processes, and a script's client with its broker
    gone printed aiokafka's connection errors unthrottled (871 lines in 25 s, a user
    check). A logger's filter sees only the records logged on that logger, not its
    children's, so each module's logger gets it: aiokafka's modules are imported
    first, so that every one of its loggers exists. In a docket process the records
    meet two filters with the same rule: the second lets through what the first let
    through, counts aside. Idempotent."""
    import aiokafka.admin  # noqa: F401  with aiokafka's consumer and producer: every logger it has
    import aiokafka.consumer.group_coordinator  # noqa: F401

    added = 0
    for name in list(logging.root.manager.loggerDict):
        if not name.split(".", 1)[0] in KAFKA_CLIENT_LOGGERS:
            continue
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(_LIBRARY_REPEATS)
            added += 1
    return added


def utc_time(created: float) -> str:
    """``created`` (seconds since the epoch, as LogRecord.created) as ISO-8601 UTC with
    milliseconds: ``2026-01-02T03:04:05.678Z``."""
    return datetime.fromtimestamp(created, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def level_name(level: str | int) -> str:
    """``level`` (``warning``, ``WARN``, ``30``, 30, ``notice``) as the logging module's
    name for it (``WARNING``, ``NOTICE``); ValueError for a level logging does not know."""
    if isinstance(level, int) or (isinstance(level, str) and level.isdigit()):
        return logging.getLevelName(int(level))
    name = level.upper()
    name = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(name, name)
    if not isinstance(logging.getLevelName(name), int):
        raise ValueError(f"unknown log level {level!r}")
    return name


def logging_config(level: str | int, fmt: str, filename: str | None = None) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` dict of a docket process: the root logger at
    ``level`` with one handler writing ``fmt`` (``text`` or ``json``, :data:`FORMATS`)
    records to standard error, or appending them to ``filename`` when given (``faust
    worker --logfile``); loggers that exist already keep working
    (``disable_existing_loggers`` is off). ValueError for another format or an unknown
    level. Faust's worker applies it as given (``Worker(logging_config=...)``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; one of {', '.join(FORMATS)}")
    formatter = ({"()": "app.logs.DocketJsonFormatter"} if fmt == "json"
                 else {"format": TEXT_FORMAT})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"docket": formatter},
        "filters": {"coordinator": {"()": "app.logs.CoordinatorLookupFilter"},
                    "group": {"()": "app.logs.GroupNoiseFilter"},
                    "repeats": {"()": "app.logs.RepeatFilter"}},
        "handlers": {"docket": ({"class": "logging.StreamHandler", "stream": "ext://sys.stderr"} if filename is None
                                else {"class": "logging.FileHandler", "filename": filename})
                     | {"formatter": "docket", "filters": ["coordinator", "group", "repeats"]}},
        "root": {"level": level_name(level), "handlers": ["docket"]},
    }


def configure(level: str | int, fmt: str) -> None:
    """Make this process log as :func:`logging_config` says, replacing any handler the
    root logger had (a second call replaces the first's)."""
    logging.config.dictConfig(logging_config(level, fmt))


def configure_from_settings() -> None:
    """:func:`configure` with ``DOCKET_LOG_LEVEL`` and ``DOCKET_LOG_FORMAT``
    (app.settings.ConfigError for a value that is neither)."""
    from app.settings import log_settings

    level, fmt = log_settings()
    configure(level, fmt)


def log_thread_exceptions(stopping: Callable[[threading.Thread | None], bool] = lambda _thread: False,
                          logger: str = "docket.worker") -> None:
    """Install a :data:`threading.excepthook` that makes an exception a thread does not
    catch ONE record of ``logger``: ERROR, ``thread <name> died: <type>: <message>``,
    with the traceback as the record's exc_info (the ``exc_info`` field of a json line,
    the lines after the message in text). A CancelledError while ``stopping(thread)``
    (the process is stopping) is one INFO line without a traceback: a thread's event
    loop cancelled by the stop. SystemExit ends a thread silently, as Python's own hook
    has it.

    Python's own hook prints the traceback to ``sys.stderr``, one write per line and
    frame; in a Faust worker that is mode's redirect (``mode.redirect``, one WARNING
    record per write), so a worker whose broker went away logged each thread's
    traceback as hundreds of one-fragment records."""
    log = logging.getLogger(logger)

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        thread = args.thread
        name = thread.name if thread is not None else f"<{threading.get_ident()}>"
        message = "" if args.exc_value is None else str(args.exc_value)
        what = f"{args.exc_type.__name__}: {message}" if message else args.exc_type.__name__
        if issubclass(args.exc_type, asyncio.CancelledError) and stopping(thread):
            log.info("thread %s ended while stopping: %s", name, what)
            return
        log.error("thread %s died: %s", name, what, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    threading.excepthook = hook
