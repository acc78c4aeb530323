"""How docket's processes log and what their /metrics shows (app/logs.py,
agents/worker.py; specs/integration.allium ProcessLogsInOneFormat,
MetricsListenOnConfiguredAddress, FaustSensorsOnMetricsPage). No broker: the worker
and the API run against a port nobody listens on, where a worker stops by itself
after its first attempt to reach Kafka and the API keeps retrying."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import os
import re
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from agents import clerk as clerk_mod
from agents import instance as instance_mod
from app import logs
from app.settings import ConfigError, load
from launcher.broker import free_ports

ROOT = Path(__file__).resolve().parents[2]
JSON_KEYS = ("time", "level", "logger", "message", "pid")
TEXT_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[(\d+)\] \[([A-Z]+)\] ([\w.]+): ")

# A worker of instance a against a port nobody listens on: Faust starts its services,
# fails to bootstrap, logs the error and stops (exit status 1), all within a second.
WORKER = """
import asyncio, sys
from pathlib import Path
from app.settings import load
from agents import instance
from agents.plumbing import run_worker
settings = load()
asyncio.set_event_loop(asyncio.new_event_loop())
app = instance.build(settings, "a", Path(sys.argv[1]), web_port=int(sys.argv[2]))
run_worker(app, settings)
"""


def clean_env(**docket: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    return env | {"DOCKET_KAFKA_BOOTSTRAP": "127.0.0.1:1", "PYTHONUNBUFFERED": "1"} | docket


@pytest.fixture
def settings(offline_settings):
    return offline_settings


def formatted(fmt: str, record: logging.LogRecord) -> str:
    """``record`` as the handler of :func:`app.logs.logging_config` writes it."""
    stream = io.StringIO()
    config = logs.logging_config("info", fmt)
    configurator = logging.config.DictConfigurator(config)
    formatter = configurator.configure_formatter(config["formatters"]["docket"])
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.handle(record)
    return stream.getvalue()


def test_process_logs_in_one_format_json_fields_extras_and_traceback() -> None:
    """ProcessLogsInOneFormat: a json line is one object: time (ISO-8601 UTC with
    milliseconds and Z), level, logger, message (formatted), pid, the record's extras,
    and exc_info holding the traceback."""
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("docket.instance", logging.ERROR, __file__, 1, "batch of %d failed", (12,), exc_info)
    record.partition = 3  # as extra={"partition": 3} sets it
    record.created = 1767323045.678  # 2026-01-02T03:04:05.678Z
    line = formatted("json", record)
    assert line.endswith("\n") and line.count("\n") == 1, line
    data = json.loads(line)
    assert list(data)[:5] == list(JSON_KEYS), data
    assert data["time"] == "2026-01-02T03:04:05.678Z"
    assert data["level"] == "ERROR" and data["logger"] == "docket.instance"
    assert data["message"] == "batch of 12 failed" and data["pid"] == os.getpid()
    assert data["partition"] == 3
    assert "ZeroDivisionError: division by zero" in data["exc_info"] and data["exc_info"].startswith("Traceback")


def test_process_logs_in_one_format_text_line() -> None:
    """ProcessLogsInOneFormat: a text line is `[time] [pid] [LEVEL] logger: message`
    (the level in brackets, as Faust's own format has it)."""
    record = logging.LogRecord("aiohttp.server", logging.WARNING, __file__, 1, "refused %s", ("x",), None)
    line = formatted("text", record)
    match = TEXT_LINE.match(line)
    assert match and match.groups() == (str(os.getpid()), "WARNING", "aiohttp.server"), line
    assert line.rstrip("\n").endswith("aiohttp.server: refused x")


def test_process_logs_in_one_format_default_level_is_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    """ProcessLogsInOneFormat, InstanceBecomesReady: DOCKET_LOG_LEVEL is notice by
    default, a level between INFO and WARNING: a process configured from the default
    settings writes a NOTICE record (an instance's ready line) as `[NOTICE]`, and
    `"level": "NOTICE"` in json, and drops an INFO one; `warning` drops the NOTICE too."""
    monkeypatch.delenv("DOCKET_LOG_LEVEL", raising=False)
    assert load().log_level == "notice" and logging.INFO < logs.NOTICE < logging.WARNING
    script = ("import logging; from app import logs; logs.configure_from_settings(); "
              "log = logging.getLogger('docket.instance'); log.info('an info line'); "
              "log.log(logs.NOTICE, 'instance a ready: recovery complete, advertising watermarks')")

    def stderr(**docket: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", script], env=clean_env(**docket), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stderr.splitlines()

    (line,) = stderr()
    assert TEXT_LINE.match(line).groups()[1:] == ("NOTICE", "docket.instance") and line.endswith("watermarks"), line
    (line,) = stderr(DOCKET_LOG_FORMAT="json")
    assert json.loads(line)["level"] == "NOTICE", line
    assert stderr(DOCKET_LOG_LEVEL="warning") == []
    assert len(stderr(DOCKET_LOG_LEVEL="info")) == 2
    monkeypatch.setenv("DOCKET_LOG_LEVEL", "NOTICE")
    assert load().log_level == "notice"


def test_process_logs_in_one_format_refuses_another_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """ProcessLogsInOneFormat: DOCKET_LOG_FORMAT is text or json, else a configuration
    error naming the variable; `docket` exits 2 before doing anything (`docket config`
    still prints the table)."""
    monkeypatch.setenv("DOCKET_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="DOCKET_LOG_FORMAT='xml' must be text or json"):
        load()
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logs.logging_config("info", "xml")
    docket = Path(sys.executable).with_name("docket")
    env = clean_env(DOCKET_LOG_FORMAT="xml")
    refused = subprocess.run([str(docket), "topics", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "DOCKET_LOG_FORMAT='xml' must be text or json" in refused.stderr
    table = subprocess.run([str(docket), "config"], env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "`DOCKET_LOG_FORMAT`" in table.stdout


@pytest.mark.parametrize("command", [("clerk",), ("instance", "--id", "a"), ("api",)])
def test_unknown_domain_refused_at_start(command) -> None:
    """UnknownDomainRefusedAtStart: DOCKET_DOMAIN naming no domain is a configuration
    error (exit 2, naming the variable and the registered domains) for the Clerk, an
    instance and the API; before, the API and the instances ended in a traceback and
    the Clerk started on another domain's topics. `docket config` still prints."""
    docket = Path(sys.executable).with_name("docket")
    env = clean_env(DOCKET_DOMAIN="nope", DOCKET_API_TOKENS="t:abc", DOCKET_KAFKA_BOOTSTRAP="127.0.0.1:9")
    refused = subprocess.run([str(docket), *command], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "configuration error: DOCKET_DOMAIN='nope': no domain named 'nope'" in refused.stderr
    assert "inventory" in refused.stderr and "Traceback" not in refused.stderr
    table = subprocess.run([str(docket), "config"], env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "`DOCKET_DOMAIN`" in table.stdout
    # a module:attribute that is no domain (it ended in a TypeError's traceback)
    env["DOCKET_DOMAIN"] = "os:path"
    refused = subprocess.run([str(docket), *command], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "configuration error: DOCKET_DOMAIN='os:path'" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("module", ["docket_apps.instance", "docket_apps.clerk"])
def test_unknown_domain_refused_by_the_faust_command_line_apps(module) -> None:
    """UnknownDomainRefusedAtStart, through Faust's own command line (`faust -A
    docket_apps.instance worker`): exit 2 with docket's one line, where it ended in a
    traceback from inside Faust's app lookup (a fresh-clone user check)."""
    faust_cli = Path(sys.executable).with_name("faust")
    env = clean_env(DOCKET_DOMAIN="nope", DOCKET_INSTANCE_ID="a", DOCKET_KAFKA_BOOTSTRAP="127.0.0.1:9")
    refused = subprocess.run([str(faust_cli), "-A", module, "worker"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "docket: configuration error: DOCKET_DOMAIN='nope': no domain named 'nope'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_process_logs_in_one_format_worker_json_has_faust_lines_and_nothing_else(tmp_path: Path) -> None:
    """ProcessLogsInOneFormat: a worker under DOCKET_LOG_FORMAT=json writes nothing but
    JSON objects to stderr, one a line, Faust's and aiokafka's records among them (the
    failed bootstrap, with its traceback), and no banner to stdout."""
    env = clean_env(DOCKET_LOG_FORMAT="json", DOCKET_LOG_LEVEL="info", DOCKET_DATA_ROOT=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "a"), str(free_ports(1)[0])], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stdout == "", done.stdout[-2000:]
    lines = done.stderr.splitlines()
    records = []
    for line in lines:
        record = json.loads(line)  # every line is one object
        assert all(k in record for k in JSON_KEYS), record
        assert datetime.fromisoformat(record["time"].replace("Z", "+00:00")).tzinfo == timezone.utc
        records.append(record)
    loggers = {r["logger"] for r in records}
    assert {"faust.worker", "faust.app.base", "aiokafka"} <= loggers, loggers
    failed = [r for r in records if r["logger"] == "faust.worker" and r["level"] == "ERROR"]
    assert failed and "KafkaConnectionError" in failed[0]["exc_info"], failed
    assert {r["pid"] for r in records} == {records[0]["pid"]}


def test_process_logs_in_one_format_worker_text(tmp_path: Path) -> None:
    """ProcessLogsInOneFormat: the same worker under the default text format: every
    line of its log record is `[time] [pid] [LEVEL] logger: message`, Faust's too."""
    env = clean_env(DOCKET_LOG_LEVEL="info", DOCKET_DATA_ROOT=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "a"), str(free_ports(1)[0])], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    heads = [TEXT_LINE.match(line) for line in done.stderr.splitlines()]
    loggers = {m.group(3) for m in heads if m}
    assert {"faust.worker", "aiokafka"} <= loggers, done.stderr[-3000:]
    # a line that is not a record's first is a traceback's
    assert all(m or line.startswith((" ", "Traceback", "aiokafka.errors.", "kafka"))
               for m, line in zip(heads, done.stderr.splitlines(), strict=True)), done.stderr[-3000:]


def test_process_logs_in_one_format_api_json(tmp_path: Path) -> None:
    """ProcessLogsInOneFormat: the REST API under DOCKET_LOG_FORMAT=json logs its
    'not connected to Kafka' line (INFO in its first 15 s: ApiServesWithoutKafka) as
    one JSON object on stderr."""
    docket = Path(sys.executable).with_name("docket")
    env = clean_env(DOCKET_LOG_FORMAT="json", DOCKET_API_TOKENS="obs:secret-token", DOCKET_API_PORT="0",
                    DOCKET_DATA_ROOT=str(tmp_path / "data"), DOCKET_LOG_LEVEL="info",
                    DOCKET_KAFKA_BOOTSTRAP="127.0.0.1:1")  # a closed port: never connected
    proc = subprocess.Popen([str(docket), "api"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(50):  # INFO lines of the libraries may come first; each is JSON too
            record = json.loads(proc.stderr.readline())  # blocks until the API's next log line
            assert all(k in record for k in JSON_KEYS), record
            if record["logger"] == "docket.api":
                break
        assert record["logger"] == "docket.api" and record["level"] == "INFO", record
        assert "not connected to Kafka" in record["message"], record
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def test_metrics_listen_on_configured_address(settings, tmp_path, monkeypatch) -> None:
    """MetricsListenOnConfiguredAddress: the instances' and the Clerk's Faust web server
    binds DOCKET_METRICS_HOST (127.0.0.1 by default); a wildcard address makes Faust's
    URL name the host."""
    assert settings.metrics_host == "127.0.0.1"
    for app in (instance_mod.build(settings, "a", tmp_path / "a", web_port=6070),
                clerk_mod.build(settings, tmp_path / "c", 6071)):
        assert app.conf.web_bind == "127.0.0.1" and app.conf.web_host == "127.0.0.1"
    monkeypatch.setenv("DOCKET_METRICS_HOST", "0.0.0.0")
    settings = load()
    for app in (instance_mod.build(settings, "a", tmp_path / "a2", web_port=6070),
                clerk_mod.build(settings, tmp_path / "c2", 6071)):
        assert app.conf.web_bind == "0.0.0.0" and app.conf.web_host == socket.gethostname()


def metrics_text(app) -> str:
    return generate_latest(app.docket["metrics"].registry).decode()


def test_faust_sensors_on_metrics_page(settings, tmp_path, monkeypatch) -> None:
    """FaustSensorsOnMetricsPage: with DOCKET_FAUST_METRICS on (the default), the
    registry docket's /metrics page serves holds Faust's sensors (faust_*: end and
    committed offsets per partition, rebalances, commit latency) beside docket's, and
    Faust's monitor feeds them; off, docket's metrics only."""
    from faust.sensors.prometheus import PrometheusMonitor
    from faust.types import TP

    assert settings.faust_metrics is True
    for app in (instance_mod.build(settings, "a", tmp_path / "a"), clerk_mod.build(settings, tmp_path / "c", None)):
        assert isinstance(app.monitor, PrometheusMonitor)
        app.monitor.track_tp_end_offset(TP("docket.input", 3), 120)
        app.monitor.on_tp_commit({TP("docket.input", 3): 100})
        text = metrics_text(app)
        assert 'faust_topic_partition_end_offset{partition="3",topic="docket.input"} 120.0' in text, text
        assert 'faust_topic_partition_offset_commited{partition="3",topic="docket.input"} 100.0' in text
        for name in ("faust_total_rebalances", "faust_consumer_commit_latency_bucket", "faust_messages_received_total"):
            assert name in text, name
        assert "docket_" in text
    monkeypatch.setenv("DOCKET_FAUST_METRICS", "off")
    settings = load()
    for app in (instance_mod.build(settings, "a", tmp_path / "a2"), clerk_mod.build(settings, tmp_path / "c2", None)):
        assert not isinstance(app.monitor, PrometheusMonitor)
        assert "faust_" not in metrics_text(app)
    monkeypatch.setenv("DOCKET_FAUST_METRICS", "maybe")
    with pytest.raises(ConfigError, match="DOCKET_FAUST_METRICS='maybe' must be on or off"):
        load()


def test_faust_sensors_on_metrics_page_served(settings, tmp_path) -> None:
    """FaustSensorsOnMetricsPage: the app's one /metrics view (Faust's sensors add no
    page of their own) answers with docket's and Faust's metrics together, in
    Prometheus' text format."""
    for app in (instance_mod.build(settings, "a", tmp_path / "a"), clerk_mod.build(settings, tmp_path / "c", None)):
        assert [path for path in app.web.views if "metrics" in path] == ["/metrics"]
        response = asyncio.run(app.web.views["/metrics"].get(None))
        assert response.status == 200 and response.content_type == "text/plain"
        body = response.body.decode()
        assert "faust_total_rebalances" in body and "docket_" in body, body[:2000]


def test_a_kafka_clients_repeated_complaint_is_thinned_out() -> None:
    """ProcessLogsInOneFormat: the handler of every docket process lets through, per
    Kafka-client logger, message template and level, the first record of each 10 s and
    counts the rest, which the next one that passes names with the span they covered and
    how long ago it ended (not "in the 10 s before": a fresh-clone user check saw a count
    from an outage that had ended a minute earlier); docket's own records all pass
    (aiokafka logged thousands of lines a second per worker with its broker gone)."""
    config = logs.logging_config("info", "text")
    configurator = logging.config.DictConfigurator(config)
    repeats = configurator.configure_filter(config["filters"]["repeats"])
    assert config["handlers"]["docket"]["filters"] == ["coordinator", "group", "repeats"]

    def record(name: str, at: float, node: int = 1) -> logging.LogRecord:
        rec = logging.LogRecord(name, logging.ERROR, __file__, 1, "Unable connect to node with id %s: %s",
                                (node, "refused"), None)
        rec.created = at
        return rec

    passed = [rec for rec in (record("aiokafka", 100.0 + i / 1000) for i in range(5000)) if repeats.filter(rec)]
    assert len(passed) == 1
    later = record("aiokafka", 170.0, node=2)  # the outage ended at 105 s
    assert repeats.filter(later)
    assert later.getMessage() == ("Unable connect to node with id 2: refused "
                                  "[4999 more like this left out, over 5.0 s ending 65.0 s before this one]")
    assert all(repeats.filter(record("docket.instance", 110.6)) for _ in range(3))


def test_the_thinning_forgets_quiet_keys_past_its_bound() -> None:
    """ProcessLogsInOneFormat: the thinning keeps at most MAX_KEYS templates before it
    forgets those whose window is over with nothing left out (the REST API's lines name
    their peer: a client from many addresses must not grow it without bound); a key
    with records left out is kept, so its count still comes."""
    repeats = logs.RepeatFilter(("aiohttp.server",), window_s=10.0)

    def record(text: str, at: float) -> logging.LogRecord:
        rec = logging.LogRecord("aiohttp.server", logging.WARNING, __file__, 1, text, (), None)
        rec.created = at
        return rec

    assert repeats.filter(record("busy peer", 100.0)) and not repeats.filter(record("busy peer", 101.0))
    for i in range(3 * repeats.MAX_KEYS):
        assert repeats.filter(record(f"peer {i}", 100.0 + i * 0.01))
    assert len(repeats._seen) <= repeats.MAX_KEYS + 1
    late = record("busy peer", 200.0)
    assert repeats.filter(late) and "[1 more like this left out" in late.getMessage()


def test_a_coordinator_lookup_refused_while_the_broker_loads_is_info_for_30_s() -> None:
    """ProcessLogsInOneFormat: aiokafka's ERROR "Group Coordinator Request failed" for
    a retriable refusal (COORDINATOR_NOT_AVAILABLE while a fresh broker loads
    __consumer_offsets) is INFO for the first 30 s of a run of them, dropped when the
    root logger is at WARNING (docket's default); past 30 s it is an ERROR again that
    says for how long. Another error of the same lookup, and other records, pass as
    they are (a fresh-user trial saw the ERROR in the console's Clerk log)."""
    from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError

    config = logs.logging_config("info", "text")
    coordinator = logging.config.DictConfigurator(config).configure_filter(config["filters"]["coordinator"])

    def lookup(at: float, err: Exception) -> logging.LogRecord:
        rec = logging.LogRecord(logs.CoordinatorLookupFilter.LOGGER, logging.ERROR, __file__, 1,
                                "Group Coordinator Request failed: %s", (err,), None)
        rec.created = at
        return rec

    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.WARNING)
        early = lookup(100.0, GroupCoordinatorNotAvailableError())
        assert not coordinator.filter(early) and early.levelname == "INFO"
        root.setLevel(logging.INFO)
        assert coordinator.filter(lookup(120.0, GroupCoordinatorNotAvailableError()))
        late = lookup(131.0, GroupCoordinatorNotAvailableError())
        assert coordinator.filter(late) and late.levelno == logging.ERROR
        assert "have failed for 31 s" in late.getMessage()
        root.setLevel(logging.WARNING)
        fresh = lookup(200.0, GroupCoordinatorNotAvailableError())  # a new run: 69 s after the last one
        assert not coordinator.filter(fresh) and fresh.levelno == logging.INFO
    finally:
        root.setLevel(before)
    other = lookup(201.0, GroupAuthorizationFailedError())
    assert coordinator.filter(other) and other.levelno == logging.ERROR
    unrelated = logging.LogRecord("docket.clerk", logging.ERROR, __file__, 1, "Group Coordinator Request failed: %s",
                                  (GroupCoordinatorNotAvailableError(),), None)
    assert coordinator.filter(unrelated) and unrelated.levelno == logging.ERROR


async def test_a_docket_client_in_a_users_script_thins_aiokafkas_repeats(offline_settings) -> None:
    """ClientThinsKafkaClientLogs: a DocketClient started under a script's own logging
    (no docket handler: logging.basicConfig's) puts the repeat filter on every aiokafka
    module's logger, before it connects, so an outage no longer floods the script's log
    (871 lines in 25 s in a user check). Kafka is unreachable here: start raises, and the
    filters are in place all the same; 2,000 records of one complaint then reach the
    script's handler once."""
    from app.client import DocketClient, KafkaUnavailable

    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Collect()
    logging.getLogger().addHandler(handler)
    conn = logging.getLogger("aiokafka.conn")
    before = list(conn.filters)
    try:
        client = DocketClient(offline_settings, start_timeout_s=0.5)
        with pytest.raises(KafkaUnavailable):
            await client.start()
        assert any(isinstance(f, logs.RepeatFilter) for f in conn.filters)
        assert logs.thin_kafka_client_logs() == 0  # idempotent: every logger has it already
        seen.clear()
        for _ in range(2000):
            conn.error("Unable connect to node with id %s: %s", 1, "refused")
        assert [r.name for r in seen] == ["aiokafka.conn"]
        logging.getLogger("docket.mine").error("a script's own record")
        assert [r.name for r in seen] == ["aiokafka.conn", "docket.mine"]
    finally:
        logging.getLogger().removeHandler(handler)
        for f in list(conn.filters):
            if f not in before:
                conn.removeFilter(f)
