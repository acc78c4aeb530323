"""Poison input: a stream mixing every kind of bad record with good events. Each bad
record gets a deterministic ``rejected`` output with the reason its kind calls for,
every good event is evaluated exactly as the oracle evaluates it, and the worker
keeps running and processing what comes after."""

from __future__ import annotations

import dataclasses
from collections import Counter

import orjson
import pytest

import app.domains  # noqa: F401  registers the built-in domains
from app.records import partition_for
from app.registry import registry
from chaos import workload
from chaos.replay import read_topic, replay
from chaos.verify import domain_checks
from tables.dump import dump_entities
from tests.integration.procs import (
    OutputCollector,
    assert_copies_match_oracle,
    assert_inventory_invariants,
    oracle_entities,
)

pytestmark = pytest.mark.integration

SEED = 31337
EVENTS = 1_000
POISON_SHARE = 0.12
AFTERWARDS = 300  # good events produced once every bad one has been answered


@pytest.mark.parametrize("domain", ["inventory", "accounts"])
async def test_bad_records_are_rejected_with_their_reason_and_good_ones_applied(pipeline_settings, workers,
                                                                              domain) -> None:
    """Spec rules checked (specs/*.allium), for both domains (each through its kit's
    workload and poison kinds; accounts: AccountsRejectsNonObjectPayload,
    AccountsRejectsBadField, AccountsRejectsUnknownField, CurrencyShape,
    AccountsRejectsAmountOutOfRange, AccountTransferRejectsSameAccount, and its
    invariants over the oracle's outputs):

    - UsherRejectsMalformedRecord / MalformedRecordRejected (no key, non-UTF-8 key, no
      value, oversize value, not JSON, a JSON array or scalar, an extra envelope field,
      a missing, numeric or over-long idempotency key, an empty event name, no payload).
    - UsherRejectsUnknownEvent; UsherRejectsInvalidPayload with InventoryRejectsNonObjectPayload,
      InventoryRejectsBadField (missing field; string, float, bool and beyond-64-bit
      delta), InventoryRejectsUnknownField, IdentifierShape (invalid_identifier),
      AdjustRejectsZeroDelta, AdjustRejectsDeltaOutOfRange,
      TransferRejectsQuantityOutOfRange, TransferRejectsSameWarehouse.
    - UsherRejectsAffinityKeyMismatch; UsherRejectsMisroutedRecord / MisroutedRecordRejected
      (a correct key produced explicitly to another partition).
    - RejectedRecordsCreateNoEvent, RejectionNamesReasonAndChangesNothing,
      ArbiterEmitsPreEvaluationRejection: each bad record gets a rejected output with
      its reason and no entity, exactly the oracle's output, and changes no state (final
      Ledger == the oracle's); ArbiterEmitsOneOutputPerRecord for every record.
    - AdjustApplied / TransferApplied: the good events around the poison are applied as
      the oracle applies them; the worker is alive at the end and processes events
      produced after the last bad one.
    """
    s = dataclasses.replace(pipeline_settings, domain=domain)
    kit = registry.kit(domain)
    records = list(workload.records(kit, SEED, EVENTS, poison_share=POISON_SHARE, partitions=s.partitions,
                                    ttl_ms=s.idempotency_ttl_ms))
    kinds = Counter(r.expect for r in records if r.expect)
    bad = [r for r in records if r.expect]
    every_kind = workload.poison_kinds(kit)
    assert len(bad) >= 2 * len(every_kind), f"each poison kind should occur at least twice: {kinds}"

    worker = workers("a", DOCKET_DOMAIN=domain).start()
    out = await OutputCollector(s.kafka_bootstrap, s.output_topic("a")).start()
    try:
        positions = await workload.produce(s.kafka_bootstrap, s.input_topic, records)
        await out.wait_complete(set(positions), 120, detail=worker.log_tail)
        worker.assert_alive()

        # Every bad record has its reason; a misrouted one really sits on a foreign partition.
        for rec, pos in zip(records, positions):
            if rec.expect is None:
                continue
            body = out.copies[pos][0].body
            assert body["outcome"]["status"] == "rejected", (pos, rec, body)
            assert body["outcome"]["reason"] == rec.expect, (
                f"{pos}: expected {rec.expect}, got {body['outcome']['reason']} ({body['outcome']['detail']}) "
                f"for key {rec.key!r} value {rec.value[:120] if rec.value else rec.value!r}")
            assert body["outcome"]["entities"] == [] and body["duplicate_of"] is None
            if rec.expect == "misrouted":
                assert pos[0] != partition_for(rec.key, s.partitions)

        # The worker goes on: events produced after all the poison are processed too.
        later = list(workload.records(kit, SEED + 1, AFTERWARDS, base_ms=records[-1].timestamp + 1))
        later_positions = await workload.produce(s.kafka_bootstrap, s.input_topic, later)
        await out.wait_complete(set(positions) | set(later_positions), 120, detail=worker.log_tail)
        worker.assert_alive()
    finally:
        await out.stop()
    assert await worker.stop() == 0, worker.log_tail()

    inputs = await read_topic(s.kafka_bootstrap, s.input_topic)
    expected = set(positions) | set(later_positions)
    assert {(r.partition, r.offset) for r in inputs} == expected
    oracle = replay(inputs, registry.versions(s.domain), s.partitions, s.idempotency_ttl_ms)
    assert_copies_match_oracle(out, "a", oracle, expected)
    want = oracle_entities(oracle)
    assert dump_entities(worker.data_dir) == want
    if domain == "inventory":
        assert_inventory_invariants(inputs, oracle, want)
    results = [orjson.loads(oracle.bodies[(r.partition, r.offset)]) for r in inputs]
    checks = domain_checks(kit, inputs, results)
    assert all(c.passed for c in checks.values()), checks

    bad_positions = {pos for rec, pos in zip(records, positions) if rec.expect}
    good = [pos for pos in expected if pos not in bad_positions]
    applied = sum(1 for pos in good if orjson.loads(oracle.bodies[pos])["outcome"]["status"] == "applied")
    # accounts rejects more by design (currency mismatches, closings of funded accounts, and
    # the second workload re-opening the first one's accounts: account_exists)
    share = {"inventory": 0.7, "accounts": 0.6}[domain]
    assert applied >= share * len(good), f"only {applied} of {len(good)} good events applied"
    print(f"\npoison: {len(bad)} bad records of {len(kinds)} reasons {dict(kinds)}; "
          f"{applied} of {len(good)} good events applied")
