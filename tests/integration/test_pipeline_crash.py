"""Crash recovery: one instance's worker is SIGKILLed at seeded random points while it
works through a 10,000-event backlog, and restarted each time. Every output it ever
emitted, re-emissions included, and its final Ledger must equal the oracle's (the
pure replay of the recorded input; test_pipeline_two_instances shows uninterrupted
instances equal it too)."""

from __future__ import annotations

import asyncio
import random
import shutil
import time

import pytest

import app.domains  # noqa: F401  registers the built-in domains
from app.registry import registry
from chaos import workload
from chaos.replay import read_topic, replay
from tables.dump import dump_entities, dump_raw
from tests.integration.procs import (
    OutputCollector,
    assert_changelog_holds_ledger,
    assert_copies_match_oracle,
    assert_inventory_invariants,
    assert_watermarks_follow_outputs,
    changelog_fold,
    oracle_entities,
    wait_committed_to_end,
    wait_for,
)

pytestmark = pytest.mark.integration

EVENTS = 10_000
WORKLOAD_SEED = 77
KILL_SEED = 4242
PROGRESS_KILLS = 5
EARLY_KILLS = 2
PRODUCE_RATE = 125  # events/s: 80 s of input
RESTART_DEADLINE_S = 90  # a restart: Faust start-up, the dead member's session timeout, recovery


@pytest.fixture
def pipeline_ttl_ms() -> int:
    """Longer than the stream (80 s of stream time at PRODUCE_RATE): no Warden version is collected, so
    a version a crash kept only in the local RocksDB stays visible to the changelog
    check at the end, and a duplicate late in the stream still depends on versions
    recorded before the data dir was lost. (TTL expiry is covered by
    test_pipeline_two_instances.)"""
    return 120_000


@pytest.mark.parametrize("lose_data_dir", [False, True], ids=["same-data-dir", "data-dir-lost-once"])
async def test_sigkilled_instance_reemits_identical_outputs_and_recovers_state(
    pipeline_settings, workers, lose_data_dir: bool
) -> None:
    """Spec rules checked (specs/*.allium):

    - WardenRecognisesReplay, ReplayReemitsOriginalOutput, ReemittedOutputsAreIdentical:
      events the killed worker had processed but not committed are replayed after the
      restart and re-emitted byte for byte (every copy of every position equals the
      oracle's); ResumeAtCommittedOffset, ArbiterEmitsOneOutputPerRecord: every input
      position has an output in the end.
    - NoEventAppliedTwice, StampIsNewestAppliedOffset, VersionCountsAppliedChanges: no
      event is applied twice or lost across kills: the final Ledger (RocksDB dump)
      equals the oracle's; StockConservedPerSku and NonNegativeStock hold.
    - ReplayRewritesEventWrites, WardenRestatesVersion, ReplayRewritesEntities,
      LedgerRewritesEntityRecord, CommittedWritesAreInTheChangelog: after the run,
      everything the worker's RocksDB holds is in the changelog, so a restore elsewhere
      loses nothing (a kill can keep a batch's local writes and cut their changelog
      records; the replay must send them again).
    - RecoveryStartsOnAssignment, PartitionStartsRestoring, LedgerPartitionRestored:
      every restart is a new assignment whose partitions are restored before they are
      processed; with ``lose_data_dir`` the RocksDB directory is deleted before one
      restart, so the state comes back from the changelog topic alone.
    - ProducerFlushAcknowledgesWrites, CommitOnlyAcknowledgedOffsets,
      CommitTrailsAcknowledgement, AcknowledgementTrailsProcessing: an input offset is
      committed only past events whose changelog records and outputs the broker has
      acknowledged. Were one committed past an unacknowledged write, a kill would lose
      that write, the restore from the changelog alone would lack it, no replay would
      redo it, and the final Ledger would differ from the oracle's.
    - CrashBeforeWardenWrite, CrashBetweenWardenAndEntityWrites,
      CrashAfterEntityWritesBeforeOutput, CrashAfterOutputBeforeCommit,
      RecordDeliveredAgain: SIGKILLs at seeded random moments of a 10,000-event stream
      cut the events in flight at whatever step they have reached, and the restarted
      worker reads them again; whatever was cut, the outcome is the oracle's.
    - WatermarksCoverOnlyEmittedOutputs, NoWatermarkBeforeRestore: every watermark on
      the output topic follows the outputs of all offsets below it, across restarts.
    """
    s = pipeline_settings
    rng = random.Random(KILL_SEED)
    records = list(workload.inventory(WORKLOAD_SEED, EVENTS, ttl_ms=s.idempotency_ttl_ms))
    # Paced: a backlog produced up front is worked off in about two seconds in batches
    # of hundreds, so kills meant for its middle found it done. At PRODUCE_RATE the
    # input outlasts the seven restarts (each waits out the dead member's session).
    producing = asyncio.create_task(workload.produce(s.kafka_bootstrap, s.input_topic, records, rate=PRODUCE_RATE))

    worker = workers("a")
    out = await OutputCollector(s.kafka_bootstrap, s.output_topic("a")).start()
    began = time.monotonic()
    # Seeded kill plan: PROGRESS_KILLS kills once the instance has answered a given
    # number of positions (spread over the run), and EARLY_KILLS kills right after a
    # restarted worker's first few outputs, which are usually re-emissions of the
    # uncommitted window (a kill in the middle of a replay).
    plan: list[tuple[str, int]] = [("progress", t) for t in sorted(rng.sample(range(300, 9000), PROGRESS_KILLS))]
    for _ in range(EARLY_KILLS):
        plan.insert(rng.randint(1, len(plan)), ("early", rng.randint(1, 30)))
    kills: list[tuple[str, int, int]] = []  # (kind, outputs of that run, positions answered)
    wiped_before_start = 4 if lose_data_dir else None
    try:
        worker.start()
        for kind, target in plan:
            run_start = out.records
            if kind == "progress":
                what = f"{target} positions answered (run {worker.starts})"

                def reached(target=target, run_start=run_start) -> bool:
                    return out.positions >= target and out.records > run_start
            else:
                what = f"run {worker.starts} to emit {target} outputs"

                def reached(target=target, run_start=run_start) -> bool:
                    return out.records - run_start >= target

            def progress(run_start=run_start) -> str:
                return f"{out.records - run_start} outputs this run, {out.positions} positions\n" + worker.log_tail()

            await wait_for(lambda: out.check() or reached(), RESTART_DEADLINE_S, what, detail=progress)
            worker.assert_alive()
            worker.kill()
            await out.wait_caught_up()  # so the next run's count starts with its own outputs
            kills.append((kind, out.records - run_start, out.positions))
            assert out.positions < EVENTS, f"the input was done before the kill: kills {kills}"
            if worker.starts + 1 == wiped_before_start:
                shutil.rmtree(worker.data_dir)
                assert not worker.data_dir.exists()
            worker.start()
        positions = await producing
        expected = set(positions)
        assert len(expected) == EVENTS
        await out.wait_complete(expected, 180, detail=worker.log_tail)
        # Every position has a copy, but the last run may still be replaying what the
        # runs before it did not commit (a run is over in about a second, Faust commits
        # every 2.8 s): its Ledger is final only once it has committed everything.
        await wait_committed_to_end(s.kafka_bootstrap, s.app_id("a"), s.input_topic, 120, detail=worker.log_tail)
        worker.assert_alive()
    finally:
        if not producing.done():
            producing.cancel()
        await out.stop()
    assert await worker.stop() == 0, worker.log_tail()
    elapsed = time.monotonic() - began

    inputs = await read_topic(s.kafka_bootstrap, s.input_topic)
    assert [(r.partition, r.offset) for r in inputs] == sorted(expected)
    oracle = replay(inputs, registry.versions(s.domain), s.partitions, s.idempotency_ttl_ms)

    reemitted = assert_copies_match_oracle(out, "a", oracle, expected)
    # Kills land inside the window of processed-but-uncommitted events, so restarts
    # must have replayed something; otherwise this test did not test replay.
    assert reemitted > 0, f"no output was re-emitted across {len(kills)} kills {kills}"
    assert len(kills) == PROGRESS_KILLS + EARLY_KILLS

    watermarks = assert_watermarks_follow_outputs(out, "a")

    want = oracle_entities(oracle)
    assert dump_entities(worker.data_dir) == want, "the restarted instance's final Ledger differs from the oracle's"
    assert_inventory_invariants(inputs, oracle, want)
    # What the worker holds locally must be restorable from the changelog alone: writes
    # a crash kept in RocksDB but cut from the changelog must have been sent again.
    assert_changelog_holds_ledger(dump_raw(worker.data_dir),
                                  await changelog_fold(s.kafka_bootstrap, f"{s.app_id('a')}-ledger-changelog"))
    print(f"\ncrash ({'data dir lost once' if lose_data_dir else 'same data dir'}): {len(kills)} kills "
          f"(kind, outputs of the run, positions answered) {kills}, {reemitted} outputs re-emitted, "
          f"{worker.starts} starts, {watermarks} watermarks, {out.reread} records read twice, {elapsed:.1f} s")
