"""Faust's own command line runs a docket instance next to one started by ``docket
instance`` (README, "Faust's command line"; specs/integration.allium
FaustCliStartsTheSameWorker, FaustEnvironmentIgnored): instance a is
``DOCKET_INSTANCE_ID=a faust -A docket_apps.instance worker``, b is ``docket instance
--id b``, the Clerk ``faust -A docket_apps.clerk worker``; every event gets exactly one
agreed result, the pure replay's, and nothing diverges."""
# ruff: noqa: F811  (test arguments name the fixtures imported from clerk_kit)

from __future__ import annotations

import time
import urllib.request

import pytest

from chaos import workload
from launcher.broker import free_port
from tests.integration.clerk_kit import (
    FaustCliProc,
    TopicTail,
    clerk_env,  # noqa: F401  fixture
    clerk_settings,  # noqa: F401  fixture
    group_state,
    instances,  # noqa: F401  fixture
    read_all,
    required_copies,  # noqa: F401  fixture
    spawn,  # noqa: F401  fixture
)
from tests.integration.procs import wait_for, worker_env
from tests.integration.test_clerk import (
    READY,
    START_DEADLINE_S,
    assert_one_result_each,
    oracle_for,
    stop_all,
    wait_answered,
    wait_clerk_assigned,
)

pytestmark = pytest.mark.integration

EVENTS = 2_000


async def test_faust_cli_instance_agrees_with_docket_instance(clerk_settings, spawn, tmp_path) -> None:
    """FaustCliStartsTheSameWorker: `faust -A docket_apps.instance worker` with
    DOCKET_INSTANCE_ID=a joins consumer group <prefix>-a, logs the instance's ready line
    and serves docket's /metrics on the port of `faust worker --web-port`; with
    `docket instance --id b` beside it and the Clerk run by `faust -A docket_apps.clerk
    worker` (group <prefix>-clerk, its /metrics on its --web-port), every one of 2,000
    events gets exactly one result, the pure replay's (ClerkPublishesOnce), and no
    divergence is reported. The instance counts every event it processed and the Clerk
    every decision. Both stop on SIGTERM with exit status 0 and no error.
    FaustEnvironmentIgnored: its environment also holds WEB_PORT=tcp://10.0.0.1:80 and
    BROKER_URL=kafka://elsewhere:9092, which it names as ignored and which change
    nothing."""
    s = clerk_settings
    began = time.monotonic()
    web_port = free_port()
    a = FaustCliProc(instance="a", env=worker_env(s, DOCKET_INSTANCE_ID="a", WEB_PORT="tcp://10.0.0.1:80",
                                                   BROKER_URL="kafka://elsewhere:9092"),
                     data_dir=s.data_root / s.app_id("a"), log_dir=tmp_path / "logs",
                     args=("--web-port", str(web_port))).start()
    procs = [a]
    try:
        b = spawn("b").start()
        clerk_port = free_port()
        clerk = FaustCliProc(instance="clerk", env=worker_env(s), data_dir=s.data_root / s.app_id("clerk"),
                             log_dir=tmp_path / "logs", module="docket_apps.clerk",
                             args=("--web-port", str(clerk_port))).start()
        procs += [b, clerk]
        results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
        divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
        try:
            for proc in (a, b):
                await wait_for(lambda proc=proc: proc.assert_alive() or READY in proc.log_text(), START_DEADLINE_S,
                               f"instance {proc.instance} to log {READY!r}", detail=proc.log_tail)
            assert await group_state(s.kafka_bootstrap, s.app_id("a")) == ("Stable", 1)
            await wait_clerk_assigned(s, clerk)
            log = a.log_text()
            assert "BROKER_URL (use DOCKET_KAFKA_BOOTSTRAP)" in log and "WEB_PORT (use --web-port)" in log
            assert "elsewhere" not in log and "10.0.0.1" not in log
            positions = await workload.produce(s.kafka_bootstrap, s.input_topic, workload.inventory(1414, EVENTS))
            expected = set(positions)
            assert len(expected) == EVENTS
            await wait_answered(s, expected, results, divergences, procs, 180)
            for port, counter in ((web_port, "docket_instance_events_total"),
                                  (clerk_port, "docket_clerk_decisions_total")):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
                    metrics = page.read().decode()
                counted = [line for line in metrics.splitlines() if line.startswith(counter + " ")]
                assert counted and float(counted[0].split()[1]) >= EVENTS, counted or metrics[:500]
        finally:
            await results.stop()
            await divergences.stop()
        await stop_all([a, b, clerk])
    finally:
        for proc in procs:
            proc.kill()
    _inputs, oracle = await oracle_for(s, expected)
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    by_pos = assert_one_result_each(final, expected, oracle)
    assert len(by_pos) == EVENTS
    reports = await read_all(s.kafka_bootstrap, s.divergences_topic)
    assert reports == [], f"{len(reports)} divergence reports, e.g. {reports[0].value}"
    print(f"\nfaust CLI instance a + docket instance b + faust CLI Clerk: {len(final)} results for {EVENTS} events, "
          f"no divergence; test {time.monotonic() - began:.1f} s")
