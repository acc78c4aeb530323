"""The private attributes of other distributions that docket reads, calls or overrides.

Each is pinned to its tested minor version in pyproject.toml (``>=X.Y.Z,<X.Y+1``), and
tests/unit/test_dependencies.py checks, on the installed versions, that every attribute
below exists in the shape docket needs, naming the attribute when one does not; and
that no other ``._name`` access on a third-party object crept into app/, agents/ or
tables/ without being listed here (or in agents/intake.py FAUST_INTERNALS and
app/batching.py AIOKAFKA_INTERNALS, checked by tests/unit/test_intake.py).

An entry is ``(distribution, owner, attribute, where docket uses it)``: ``owner`` is
``module:Class`` (or ``module:Class.attr`` for an attribute of an attribute);
``attribute`` is looked up on the class, or, for one only an instance has, on an
instance :data:`PROBES` builds (no network, no broker).
"""

from __future__ import annotations

PRIVATE_API: tuple[tuple[str, str, str, str], ...] = (
    # prometheus-client: observing one value n times in O(1), per batch
    ("prometheus-client", "prometheus_client.metrics:Histogram", "_upper_bounds",
     "agents/plumbing.py observe_many, HistogramBatch"),
    ("prometheus-client", "prometheus_client.metrics:Histogram", "_buckets",
     "agents/plumbing.py observe_many, HistogramBatch (each bucket's .inc(n))"),
    ("prometheus-client", "prometheus_client.metrics:Histogram", "_sum",
     "agents/plumbing.py observe_many, HistogramBatch (.inc(total))"),
    # honcho: the ordered stop of `docket stack run` (launcher/stack.py OrderedManager)
    ("honcho", "honcho.manager:Manager", "_processes", "launcher/stack.py OrderedManager, run_procfile"),
    ("honcho", "honcho.manager:Manager", "_procmgr", "launcher/stack.py OrderedManager._signal (.kill/.terminate(pid))"),
    ("honcho", "honcho.manager:Manager", "_system_print", "launcher/stack.py OrderedManager"),
    ("honcho", "honcho.manager:Manager", "_terminating", "launcher/stack.py OrderedManager.terminate"),
    ("honcho", "honcho.manager:Manager", "_clock", "launcher/stack.py OrderedManager (._clock.now())"),
    ("honcho", "honcho.manager:Manager", "_printer", "launcher/stack.py OrderedManager.loop (.write(message))"),
    ("honcho", "honcho.manager:Manager", "_start", "launcher/stack.py OrderedManager._start (overridden)"),
    ("honcho", "honcho.manager:Manager", "_all_started", "launcher/stack.py OrderedManager.loop"),
    ("honcho", "honcho.manager:Manager", "_all_stopped", "launcher/stack.py OrderedManager.loop"),
    ("honcho", "honcho.manager:Manager", "_any_stopped", "launcher/stack.py OrderedManager.loop"),
    # aiohttp: the API's own request handler and the port it was given
    ("aiohttp", "aiohttp.web_runner:AppRunner", "_make_server", "app/api.py AppRunner (overridden)"),
    ("aiohttp", "aiohttp.web_protocol:RequestHandler", "_lingering_time", "app/api.py RequestHandler.answer_then_close"),
    ("aiohttp", "aiohttp.web_server:Server", "_loop", "app/api.py _Server.__call__"),
    ("aiohttp", "aiohttp.web_server:Server", "_kwargs", "app/api.py _Server.__call__"),
    ("aiohttp", "aiohttp.web_runner:TCPSite", "_server", "app/api.py serve (the bound port)"),
    # aiokafka, beyond app/batching.py AIOKAFKA_INTERNALS
    ("aiokafka", "aiokafka.consumer.consumer:AIOKafkaConsumer", "_client",
     "chaos/replay.py _partitions (._client.fetch_all_metadata()); agents/consumer_close.py close_consumer (.close())"),
    ("aiokafka", "aiokafka.consumer.consumer:AIOKafkaConsumer", "_coordinator",
     "agents/consumer_close.py close_consumer"),
    ("aiokafka", "aiokafka.consumer.group_coordinator:GroupCoordinator", "_coordination_task",
     "agents/consumer_close.py close_consumer (cancelled when a stop finds the join held)"),
    ("aiokafka", "aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetch_max_wait_ms",
     "app/faust_tuning.py (set before the consumer starts)"),
    ("aiokafka", "aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetch_min_bytes",
     "app/faust_tuning.py (set before the consumer starts)"),
    ("aiokafka", "aiokafka.consumer.consumer:AIOKafkaConsumer", "_isolation_level",
     "app/faust_tuning.py (set before the consumer starts)"),
    ("aiokafka", "aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetcher",
     "app/faust_tuning.py (paced once the consumer has started); agents/consumer_close.py close_consumer (.close())"),
    ("aiokafka", "aiokafka.consumer.fetcher:Fetcher", "_get_actions_per_node",
     "app/faust_tuning.py pace (wrapped on the instance: returns (fetch requests, ...))"),
    ("aiokafka", "aiokafka.consumer.fetcher:Fetcher", "_proc_fetch_request",
     "app/faust_tuning.py pace (wrapped on the instance: true when it buffered records)"),
    ("aiokafka", "aiokafka.consumer.fetcher:Fetcher", "_records", "app/faust_tuning.py pace (records still buffered)"),
    ("aiokafka", "aiokafka.consumer.fetcher:FetchResult", "_created",
     "app/faust_tuning.py pace (when buffered records were fetched: time.monotonic())"),
    ("aiokafka", "aiokafka.consumer.fetcher:FetchError", "_created",
     "app/faust_tuning.py pace (when buffered records were fetched: time.monotonic())"),
    ("aiokafka", "aiokafka.protocol.fetch:FetchRequest", "_max_wait_ms", "app/faust_tuning.py pace (an idle fetch's wait)"),
    ("aiokafka", "aiokafka.protocol.fetch:FetchRequest", "_min_bytes", "app/faust_tuning.py pace (an idle fetch's 1 byte)"),
    ("aiokafka", "aiokafka.admin.client:AIOKafkaAdminClient", "_client", "launcher/stack.py group_states (._client.send)"),
    ("aiokafka", "aiokafka.client:AIOKafkaClient", "fetch_all_metadata", "chaos/replay.py _partitions"),
    ("aiokafka", "aiokafka.client:AIOKafkaClient", "_conns", "app/client.py _kafka_connected"),
    ("aiokafka", "aiokafka.client:AIOKafkaClient", "_metadata_update", "app/metadata_backoff.py (wrapped)"),
    ("aiokafka", "aiokafka.client:AIOKafkaClient", "_retry_backoff", "app/metadata_backoff.py"),
    ("aiokafka", "aiokafka.producer.producer:AIOKafkaProducer", "_message_accumulator", "app/batching.py send_batched"),
    ("aiokafka", "aiokafka.producer.producer:AIOKafkaProducer", "_request_timeout_ms", "app/batching.py send_batched"),
    ("aiokafka", "aiokafka.producer.producer:AIOKafkaProducer", "_sender",
     "app/client.py stop_producer (._sender.sender_task.cancel(): a stop without the flush)"),
    ("aiokafka", "aiokafka.producer.message_accumulator:MessageAccumulator", "_batches",
     "app/batching.py send_batched"),
    ("aiokafka", "aiokafka.producer.message_accumulator:MessageAccumulator", "_closed",
     "app/batching.py send_batched"),
    ("aiokafka", "aiokafka.protocol.admin:DescribeGroupsRequest", "_groups", "launcher/stack.py group_states"),
    # mode-streaming (Faust's service framework)
    ("mode-streaming", "mode.services:Service", "_stopped",
     "agents/intake.py BatchConsumer._drain_messages (the consumer's and the fetcher's)"),
    # faust-streaming, beyond agents/intake.py FAUST_INTERNALS
    ("faust-streaming", "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_create_worker_consumer",
     "app/faust_tuning.py (wrapped)"),
    ("faust-streaming", "faust.transport.drivers.aiokafka:Consumer", "_committed_offset",
     "agents/instance.py committed()"),
    ("faust-streaming", "faust.transport.drivers.aiokafka:Producer", "_producer",
     "agents/clerk.py Publisher, tables/faust_store.py (the aiokafka producer under Faust's)"),
    ("faust-streaming", "faust.stores.rocksdb:Store", "_db_for_partition", "tables/faust_store.py"),
    ("faust-streaming", "faust.stores.rocksdb:Store", "_dbs", "tables/faust_store.py open_databases"),
    ("faust-streaming", "faust.sensors.prometheus:FaustMetrics", "create",
     "agents/worker.py add_faust_sensors (not in the module's __all__)"),
    ("faust-streaming", "faust.sensors.prometheus:PrometheusMonitor", "track_tp_end_offset",
     "agents/worker.py add_faust_sensors (not in the module's __all__)"),
)


def _histogram():
    from prometheus_client import CollectorRegistry, Histogram

    return Histogram("probe_seconds", "a probe", registry=CollectorRegistry(), buckets=(0.1, 1.0))


def _manager():
    from honcho.manager import Manager

    return Manager()


def _server():
    import asyncio

    from aiohttp import web

    async def handler(request):  # pragma: no cover  never called
        return web.Response()

    loop = asyncio.new_event_loop()
    try:
        return web.Server(handler, loop=loop)
    finally:
        loop.close()


def _site():
    from aiohttp import web

    return web.TCPSite(web.AppRunner(web.Application()), "127.0.0.1", 0)


def _in_a_loop(build, close: str):
    """``build()`` inside a running event loop (aiokafka's clients want one), closed
    again (its ``close`` method) before it is returned: never started, nothing
    connects, and no ``Unclosed`` warning follows."""
    import asyncio

    async def make():
        client = build()
        await getattr(client, close)()
        return client

    return asyncio.run(make())


def _consumer():
    from aiokafka import AIOKafkaConsumer

    return _in_a_loop(lambda: AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1"), "stop")


def _admin():
    from aiokafka.admin import AIOKafkaAdminClient

    return _in_a_loop(lambda: AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1"), "close")


def _producer():
    from aiokafka import AIOKafkaProducer

    return _in_a_loop(lambda: AIOKafkaProducer(bootstrap_servers="127.0.0.1:1"), "stop")


def _describe_groups():
    from aiokafka.protocol.admin import DescribeGroupsRequest

    return DescribeGroupsRequest(["probe"])


# owner -> a function building an instance of it (for attributes only instances have)
PROBES = {
    "prometheus_client.metrics:Histogram": _histogram,
    "honcho.manager:Manager": _manager,
    "aiohttp.web_server:Server": _server,
    "aiohttp.web_runner:TCPSite": _site,
    "aiokafka.consumer.consumer:AIOKafkaConsumer": _consumer,
    "aiokafka.admin.client:AIOKafkaAdminClient": _admin,
    "aiokafka.producer.producer:AIOKafkaProducer": _producer,
    "aiokafka.protocol.admin:DescribeGroupsRequest": _describe_groups,
}


def owner_class(owner: str):
    """The class ``module:Class`` names (ImportError, AttributeError when it is gone)."""
    import importlib

    module, _, path = owner.partition(":")
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def missing(owner: str, attribute: str) -> str | None:
    """What is wrong with ``owner``'s ``attribute`` on the installed version, or None
    when the class has it, or an instance :data:`PROBES` builds, or an ``__init__`` of
    the class or a base class sets it (Faust's services set theirs there)."""
    import inspect

    try:
        cls = owner_class(owner)
    except (ImportError, AttributeError) as exc:
        return f"{owner} is gone: {exc}"
    if hasattr(cls, attribute):
        return None
    probe = PROBES.get(owner)
    if probe is not None:
        try:
            instance = probe()
        except Exception as exc:  # noqa: BLE001  a changed constructor is a changed shape
            return f"cannot build a {owner} to look for {attribute}: {exc!r}"
        if hasattr(instance, attribute):
            return None
    for klass in getattr(cls, "__mro__", ()):  # set by an __init__ (Faust's services)
        init = klass.__dict__.get("__init__")
        try:
            source = inspect.getsource(init) if init is not None else ""
        except (OSError, TypeError):
            continue
        if f"self.{attribute} =" in source or f"self.{attribute}:" in source:
            return None
    return f"{owner} has no attribute {attribute}"
