"""Server-side stage histograms of the instance and the Clerk (agents/instance.py,
agents/clerk.py), driven without a broker as in test_spec_workers.py: every event is
observed once per stage, the Clerk's first-read bookkeeping is bounded, and /metrics
is served. Observability only: no timing is asserted."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents import clerk as clerk_mod
from agents import instance as instance_mod
from agents import plumbing
from app.records import partition_for
from tests.unit.test_spec_workers import (  # noqa: F401  settings is a fixture
    PARTITIONS,
    RecordingProducer,
    claimed,
    adjust,
    copy_value,
    putter,
    settings,
    until,
)


def samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if not s.labels or set(s.labels) == {"instance"}}


def test_instance_clerk_and_api_histograms_share_their_bounds() -> None:
    from app.api import LATENCY_BUCKETS

    assert plumbing.STAGE_BUCKETS == LATENCY_BUCKETS


def test_observe_many_equals_repeated_observe() -> None:
    bounds = (.001, .01, .1, 1)
    one, many = (Histogram("h", "h", registry=CollectorRegistry(), buckets=bounds) for _ in range(2))
    for value, n in ((0.0005, 3), (0.05, 7), (0.5, 1), (5.0, 2), (0.2, 0)):
        for _ in range(n):
            one.observe(value)
        plumbing.observe_many(many, value, n)
    assert one.collect()[0].samples[:-1] == many.collect()[0].samples[:-1]  # all but _created


async def test_instance_observes_every_event_once_per_stage(settings, tmp_path) -> None:  # noqa: F811
    app = instance_mod.build(settings, "a", tmp_path / "a", web_port=6999)
    app.producer = producer = RecordingProducer()
    metrics = app.docket["metrics"]
    records = [adjust(f"k{i}", f"s{i % 5}", 1 + i) for i in range(7)]
    async with app.agents["usher"].test_context() as ctx:
        for i, (key, value) in enumerate(records):
            await ctx.put(value, key=key, partition=partition_for(key, PARTITIONS), timestamp=1_000.0 + i,
                          wait=False)
        await until(lambda: len(producer.sent(settings.output_topic("a"))) == len(records), "every output")
        await until(lambda: samples(metrics.registry).get("docket_instance_output_ack_seconds_count") == 7,
                    "the acknowledgements")
    got = samples(metrics.registry)
    assert got["docket_instance_events_total"] == 7
    for stage in ("intake", "evaluation", "produce", "output_ack"):
        assert got[f"docket_instance_{stage}_seconds_count"] == 7, stage
    assert got["docket_instance_batch_events_sum"] == 7
    assert 1 <= got["docket_instance_batch_events_count"] <= 7
    assert "/metrics" in app.web.views


async def test_clerk_times_transit_and_agreement_and_forgets_final_positions(settings, tmp_path) -> None:  # noqa: F811
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core, metrics, first_read = capp.docket["core"], capp.docket["metrics"], capp.docket["first_read"]
    p = 1
    claimed(capp, RecordingProducer(), p)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")
    async with capp.agents["clerk"].test_context() as ctx:
        put = putter(capp, ctx, p)

        await put(out_a, copy_value("a", 0, p))
        assert list(first_read) == [(p, 0)]
        await put(out_b, copy_value("b", 0, p))
        assert first_read == {}
        await put(out_a, copy_value("a", 1, p))
        assert list(first_read) == [(p, 1)]
        from faust.types import TP

        await capp.on_partitions_revoked.send(revoked={TP(out_a, p)})
        assert first_read == {}
    got = samples(metrics.registry)
    assert got["docket_clerk_copy_transit_seconds_count"] == 3
    assert got["docket_clerk_agreement_wait_seconds_count"] == 1
    assert got["docket_clerk_decision_latency_seconds_count"] == 1
