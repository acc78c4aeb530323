"""The Faust app and the Faust worker of every docket process (instances and the Clerk),
however it is started: ``docket instance`` / ``docket clerk``, or Faust's own command
line, ``faust -A docket_apps.instance worker`` (docket_apps/).

- :func:`new_app`: a ``faust.App`` configured by docket's settings alone. Faust reads
  environment variables for most of its settings (``BROKER_URL``, ``WEB_PORT``,
  ``TOPIC_REPLICATION_FACTOR``, ``APP_DATADIR``, ... and, with ``APP_ENV_PREFIX``, the
  same names behind a prefix) and lets them override the arguments the app is built
  with. docket builds its apps with an empty environment instead, so a variable meant
  for something else (a Kubernetes service named ``web`` injects
  ``WEB_PORT=tcp://10.0.0.1:80``) changes nothing; each such variable found is named
  once in a warning (:func:`faust_env_ignored`), its value never shown.
- :class:`DocketWorker`: the app's ``Worker`` class, which Faust's ``worker`` command
  uses too (it starts ``app.conf.Worker``). Whatever docket does to a worker process
  happens in it, so both ways of starting one behave the same: no progress spinner,
  the garbage collector and the interpreter's switch interval tuned, and the start-up
  checks (``app.docket_preflight``: Kafka answers, the topics exist, the input topic
  has broker timestamps) before the worker starts.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Mapping

import click
import faust
from faust.types.settings.settings import Settings as FaustSettings

from agents.stopping import StopDeadline
from app import logs
from app.ports import bindable, host_problem, port_in_use, url_host

log = logging.getLogger("docket.worker")

# Allocations between two generation-0 passes of the garbage collector (Python's
# default: 700); see DocketWorker.tune_process.
GC_THRESHOLD = 50_000
# Faust runs its Kafka consumer in a thread of its own (with its own event loop); while
# the agent's thread holds the GIL evaluating a batch, that thread waits up to the
# interpreter's switch interval (5 ms by default) at each of its many hand-offs, and a
# fetch is delayed by tens of milliseconds. A shorter interval lets it in sooner.
SWITCH_INTERVAL_S = 0.0005

# Faust's log level when its command line was given none (``faust worker`` passes its
# default, WARN): then DOCKET_LOG_LEVEL decides.
_FAUST_DEFAULT_LOGLEVELS = {None, "WARN", "warn"}

# Variables Faust reads at import (faust/types/_env.py, prefixed FAUST_ or F_) for the
# defaults of settings docket always passes itself: they change nothing either.
_FAUST_PREFIXED = ("WEB_PORT", "WEB_BIND", "WEB_TRANSPORT", "DATADIR")

# The docket setting to use instead, for the Faust variables someone is likely to try.
_INSTEAD = {
    "BROKER_URL": "DOCKET_KAFKA_BOOTSTRAP",
    "BROKER_CONSUMER_URL": "DOCKET_KAFKA_BOOTSTRAP",
    "BROKER_PRODUCER_URL": "DOCKET_KAFKA_BOOTSTRAP",
    "BROKER_SESSION_TIMEOUT": "DOCKET_SESSION_TIMEOUT_MS",
    "TOPIC_PARTITIONS": "DOCKET_PARTITIONS",
    "APP_DATADIR": "DOCKET_DATA_ROOT",
    "DATADIR": "DOCKET_DATA_ROOT",
    "WEB_PORT": "--web-port",
}


def faust_env_names(environ: Mapping[str, str]) -> dict[str, str]:
    """Every variable of ``environ`` that Faust would read for one of its settings:
    name -> the Faust setting (or, for the FAUST_/F_ ones, the default) it is for.

    Faust's setting variables are the ``env_name``s of its settings
    (faust/types/settings/settings.py), prefixed with ``APP_ENV_PREFIX`` + ``_`` when
    that is set; the import-time ones are ``FAUST_``/``F_`` + WEB_PORT, WEB_BIND,
    WEB_TRANSPORT, DATADIR (faust/types/_env.py)."""
    prefix = environ.get("APP_ENV_PREFIX")
    found: dict[str, str] = {}
    if prefix is not None:
        found["APP_ENV_PREFIX"] = "env_prefix"
    for name, param in FaustSettings.SETTINGS.items():
        env_name = param.env_name
        if env_name is None:
            continue
        full = f"{prefix.rstrip('_')}_{env_name}" if prefix else env_name
        if full in environ:
            found[full] = name
    for base in _FAUST_PREFIXED:
        for p in ("FAUST_", "F_"):
            if p + base in environ:
                found[p + base] = base.lower()
    return found


def faust_env_ignored(environ: Mapping[str, str]) -> str | None:
    """The warning for the Faust variables in ``environ`` (names only, sorted, never a
    value: BROKER_CREDENTIALS may hold a password), or None when there is none."""
    found = faust_env_names(environ)
    if not found:
        return None
    parts = []
    for name in sorted(found):
        base = name
        for p in ("FAUST_", "F_"):
            if name.startswith(p) and name[len(p):] in _FAUST_PREFIXED:
                base = name[len(p):]
        hint = _INSTEAD.get(base)
        parts.append(f"{name} (use {hint})" if hint else name)
    return ("Faust's environment variable(s) " + ", ".join(parts) + " are ignored: docket configures "
            "its Faust apps from its own DOCKET_* settings only (README, Configuration)")


_warned: set[str] = set()


def new_app(app_id: str, **conf) -> faust.App:
    """``faust.App(app_id, **conf)``, deaf to Faust's environment variables, with
    :class:`DocketWorker` as its worker class; warns once per process about the
    Faust variables it ignores."""
    warning = faust_env_ignored(os.environ)
    if warning and warning not in _warned:
        _warned.add(warning)
        log.warning("%s", warning)
    return faust.App(app_id, env={}, Worker=DocketWorker, **conf)


def adopt_settings(app: faust.App, settings) -> None:
    """Hand ``app`` the DOCKET_* settings its :class:`DocketWorker` reads from it: the log
    level and format, and the graceful stop's deadline (``settings``: app.settings.Settings)."""
    app.docket_log_level = settings.log_level.upper()
    app.docket_log_format = settings.log_format
    app.docket_stop_timeout_ms = settings.stop_timeout_ms


def tune_process() -> None:
    """Make the garbage collector and thread switches fit a worker; call once the app
    is built, before the worker runs.

    The cyclic garbage collector runs a generation-0 pass every 700 allocations, and a
    batch allocates hundreds of objects per event (parsed JSON, records), nearly all
    freed by reference counting; its passes, and the full ones they cascade into over
    everything a worker keeps (Faust, aiokafka, the caches), cost a good share of a
    worker's time. Objects that live from start-up on are moved out of its sight
    (freeze), and passes are made rarer; cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


class DocketWorker(faust.Worker):
    """The Faust worker of a docket app (``app.conf.Worker``), for ``docket instance``,
    ``docket clerk`` and ``faust -A docket_apps.<role> worker`` alike.

    - ``loglevel``: what Faust's command line gives (``-l``); its default (WARN, or
      none) leaves it to DOCKET_LOG_LEVEL (``app.docket_log_level``).
    - Logging: docket's, :func:`app.logs.logging_config` in the format
      ``app.docket_log_format`` (DOCKET_LOG_FORMAT), handed to Faust as its
      ``logging_config``, so Faust's, aiokafka's and docket's lines all go through one
      handler and formatter (to ``logfile`` when Faust's command line names one, else
      stderr). With the ``json`` format the worker is quiet too: Faust's start-up
      banner, which is no log record, would break the one-object-per-line output.
      mode then hands stdout and stderr to its logger ``mode.redirect`` (Faust's
      ``redirect_stdouts``, kept: a stray print or warning still becomes a record,
      in the handler's format), and an exception a thread does not catch becomes
      one record of ``docket.worker`` (:func:`app.logs.log_thread_exceptions`)
      instead of a traceback printed there one fragment per record.
    - No progress spinner: it sets the ROOT logger to DEBUG to catch every line, so
      every logger.debug() in Faust and aiokafka builds a LogRecord: about 8% of a
      worker's time, for a spinner nobody sees in a service.
    - :meth:`execute_from_commandline` first runs ``app.docket_preflight`` (if the app
      has one: a callable raising click.ClickException to refuse the start, whose
      message is printed as ``Error: ...`` and the process exits 1), then
      :func:`tune_process`.
    - A deadline on the graceful stop (agents/stopping.py StopDeadline), when the app
      has ``docket_stop_timeout_ms`` (DOCKET_STOP_TIMEOUT_MS): the worker exits 75
      that long after the first SIGTERM or SIGINT, or at once on a second one, if the
      stop has not finished (Kafka unreachable)."""

    def __init__(self, app, *services, loglevel=None, logfile=None, logging_config=None, quiet=False,
                 **kwargs) -> None:
        if loglevel in _FAUST_DEFAULT_LOGLEVELS:
            loglevel = getattr(app, "docket_log_level", None) or loglevel
        fmt = getattr(app, "docket_log_format", "text")
        if logging_config is None:
            logging_config = logs.logging_config(loglevel or logs.DEFAULT_LEVEL, fmt,
                                                 logfile if isinstance(logfile, str) else None)
        super().__init__(app, *services, loglevel=loglevel, logfile=logfile, logging_config=logging_config,
                         quiet=quiet or fmt == "json", **kwargs)
        self.spinner = None
        timeout_ms = getattr(app, "docket_stop_timeout_ms", None)
        self.stop_deadline = StopDeadline(timeout_ms) if timeout_ms else None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # mode calls it once it has applied the logging_config, before it hands stdout
        # and stderr to the logger mode.redirect (one WARNING record per write)
        super().on_setup_root_logger(logger, level)
        logs.log_thread_exceptions(self._stopping)

    def _stopping(self, thread) -> bool:
        """True while this worker stops (or crashed), or ``thread``'s mode service (a
        ServiceThread's WorkerThread: Faust's consumer thread) does."""
        service = getattr(thread, "service", None)
        return self.should_stop or bool(getattr(service, "should_stop", False))

    def _schedule_shutdown(self, signal) -> None:
        # mode's handler of SIGTERM and SIGINT (and Faust's, which calls it); it ignores
        # every signal after the first, which the deadline does not
        logs.mark_stopping()
        if self.stop_deadline is not None:
            self.stop_deadline.requested(signal)
        super()._schedule_shutdown(signal)

    def execute_from_commandline(self):
        preflight: Callable[[], None] | None = getattr(self.app, "docket_preflight", None)
        if preflight is not None:
            try:
                preflight()
            except click.ClickException as exc:
                exc.show()
                raise SystemExit(exc.exit_code) from None
            finally:
                # a check may have run its own event loop (asyncio.run), which leaves
                # none set: the worker's is the one Faust works in
                asyncio.set_event_loop(self.loop)
        conf = self.app.conf
        problem = conf.web_enabled and host_problem(conf.web_bind, "this worker's web server, /metrics",
                                                    web_bind_source(conf.web_bind))
        if problem:
            click.ClickException(problem).show()  # Faust would log a traceback and crash
            raise SystemExit(1)
        if conf.web_enabled and not bindable(conf.web_bind, conf.web_port):
            # Faust would log the bind's OSError with a traceback and crash
            click.ClickException(port_in_use(
                conf.web_bind, conf.web_port, "this worker's web server, /metrics",
                "--web-port (under `make run`: DOCKET_INSTANCE_A_WEB_PORT, DOCKET_INSTANCE_B_WEB_PORT or "
                "DOCKET_CLERK_WEB_PORT)")).show()
            raise SystemExit(1)
        tune_process()
        return super().execute_from_commandline()


def web_bind_source(web_bind: str) -> str:
    """The setting or option a worker's web host ``web_bind`` came from, to name in a
    message about it: DOCKET_METRICS_HOST when that variable holds it, else Faust's
    --web-bind, which overrides the app's web_bind (the variable's value, or its
    default). Naming the variable for --web-bind 192.0.2.1 sent the user to a setting
    they never set (a fresh-user trial)."""
    return "DOCKET_METRICS_HOST" if os.environ.get("DOCKET_METRICS_HOST", "").strip() == web_bind else "--web-bind"


# Faust's Prometheus sensor names its metrics <prefix>_<name> (faust_consumer_commit_latency,
# faust_topic_partition_end_offset, ...); the same prefix for every app, so one dashboard
# serves every instance and the Clerk (the scrape target tells them apart).
FAUST_METRICS_PREFIX = "faust"


def add_faust_sensors(app: faust.App, registry) -> None:
    """Make ``app``'s monitor Faust's Prometheus sensor
    (faust.sensors.prometheus.PrometheusMonitor), with its metrics in ``registry``
    (a prometheus_client CollectorRegistry): what Faust's ``setup_prometheus_sensors``
    does, without the second ``/metrics`` page it would add, so docket's page shows
    both. Call before the worker starts. The metrics (names ``faust_*``, latencies in
    milliseconds): messages received and events per topic and partition, the last read
    offset (``faust_messages_received_per_topics_partition``), the end offset
    (``faust_topic_partition_end_offset``) and committed offset
    (``faust_topic_partition_offset_commited``) per partition, whose difference is
    the consumer lag, rebalances in progress and their latency, commit latency
    (``faust_consumer_commit_latency``), messages sent and send latency. With batch
    intake (agents/intake.py) a "message" of an input or copies topic is one batch."""
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, FAUST_METRICS_PREFIX))


def serve_metrics(app: faust.App, registry, faust_metrics: bool) -> None:
    """Serve ``registry`` (docket's CollectorRegistry) at ``/metrics`` on ``app``'s web
    server, in Prometheus' text format 0.0.4; with ``faust_metrics`` (DOCKET_FAUST_METRICS)
    Faust's sensors are added to it first (:func:`add_faust_sensors`)."""
    from prometheus_client import generate_latest

    if faust_metrics:
        add_faust_sensors(app, registry)

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")


def web_host(bind: str) -> str:
    """The host name Faust puts in its web server's URL for bind address ``bind``
    (DOCKET_METRICS_HOST): ``bind`` itself, in brackets when it is an IPv6 address (a
    URL's host, RFC 3986 section 3.2.2: Faust read "::1" as a port and each worker
    crashed, the ninth fresh-user trial), or this host's name for a wildcard
    (``0.0.0.0``, ``::``, empty), which no client can connect to."""
    import socket

    return socket.gethostname() if bind in ("", "0.0.0.0", "::") else url_host(bind)
