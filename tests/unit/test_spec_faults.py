"""Fault injection (specs/faults.allium) and what the Clerk makes of it
(specs/failure-modes.allium), without a broker: the Usher with and without a
FaultInjector on the same input, and the Clerk's decisions on the two copies."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from agents.clerk_core import ClerkCore, Publish, Report
from agents.faults import FaultInjector, FaultSpec
from app.canonical import canonical, digest
from app.records import unseal
from tables.store import MemoryStore
from tests.unit.pipeline_kit import entity_state, run, usher, workload


@pytest.mark.parametrize("text", ["bitflip:0", "bitflip:1.5", "state:-0.1", "bitflip:x", "bitflip", "flood:0.1",
                                  ":0.5", "state:nan"])
def test_bad_fault_specs_are_refused(text) -> None:
    """FaultSpecRefused, FaultRateInRange: an unknown kind, or a rate that is not a
    number in (0, 1], is refused with a message that says what a valid value looks
    like or what is wrong."""
    with pytest.raises(ValueError) as excinfo:
        FaultSpec.parse(text)
    assert "KIND:RATE" in str(excinfo.value) or "rate" in str(excinfo.value)


@pytest.mark.parametrize(("text", "kind", "rate"), [("bitflip:1", "bitflip", 1.0), ("state:0.01", "state", 0.01)])
def test_good_fault_specs_parse(text, kind, rate) -> None:
    """FaultRateInRange: 0 < rate <= 1."""
    assert FaultSpec.parse(text) == FaultSpec(kind, rate)


def test_instance_refuses_a_bad_fault_spec_before_starting() -> None:
    """FaultSpecRefused: `docket instance --inject-faults` with a bad value is a usage
    error naming the option, before anything else happens (no Kafka here)."""
    docket = Path(sys.executable).with_name("docket")
    env = {**os.environ, "DOCKET_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    proc = subprocess.run([str(docket), "instance", "--id", "a", "--inject-faults", "flood:0.5"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--inject-faults" in proc.stderr and "bitflip:0.01" in proc.stderr
    assert "cannot reach Kafka" not in proc.stderr


def test_fault_injection_is_off_by_default_and_announced_when_on(caplog) -> None:
    """FaultInjectionOffByDefault, FaultInjectionAnnounced: an Usher has no injector
    unless given one, and its outputs are exactly the Arbiter's; an injector says so
    loudly when it is created."""
    stream = workload(3, 120)
    plain, other = usher(), usher()
    assert plain.faults is None
    assert [o.value for o in run(plain, stream.records, 16)] == [o.value for o in run(other, stream.records, 7)]
    with caplog.at_level(logging.WARNING, logger="docket.faults"):
        FaultInjector(FaultSpec("bitflip", 0.5), "b")
    assert ("FAULT INJECTION ON: instance b will bitflip at rate 0.5. Never use this in production."
            in caplog.messages)


def _pair(kind: str, rate: float, events: int = 300, seed: int = 21):
    """(clean outputs, faulty outputs, clean store, faulty store, injector) for one workload."""
    stream = workload(seed, events)
    clean_store, faulty_store = MemoryStore(), MemoryStore()
    clean = run(usher(clean_store, instance="a"), stream.records, 16)
    faulty_usher = usher(faulty_store, instance="b")
    faulty_usher.faults = injector = FaultInjector(FaultSpec(kind, rate), "b", seed=7)
    faulty = run(faulty_usher, stream.records, 16)
    return clean, faulty, clean_store, faulty_store, injector


def test_bitflip_corrupts_the_output_only(caplog) -> None:
    """BitflipCorruptsOutputOnly, EveryInjectedFaultLogged: with bitflip, some outputs of
    b differ from a's in exactly one bit of one entity's quantity (bits 0..15), only
    outputs that change entities, each sealed with the digest of its corrupted body;
    b's Ledger equals a's; one log line per fault, and as many lines as faults."""
    with caplog.at_level(logging.WARNING, logger="docket.faults"):
        clean, faulty, clean_store, faulty_store, injector = _pair("bitflip", 0.3)
    lines = [m for m in caplog.messages if m.startswith("FAULT INJECTED kind=bitflip instance=b ")]
    assert injector.injected == len(lines) > 0
    differing = 0
    for a, b in zip(clean, faulty):
        _, da, ba = unseal(a.value)
        _, db, bb = unseal(b.value)
        assert db == digest(canonical(bb))  # self-consistent: only disagreement can find it
        if da == db:
            continue
        differing += 1
        ea, eb = ba["outcome"]["entities"], bb["outcome"]["entities"]
        assert ea and len(ea) == len(eb)
        flipped = [(x, y) for x, y in zip(ea, eb) if x != y]
        assert len(flipped) == 1
        x, y = flipped[0]
        assert x["key"] == y["key"] and x["version"] == y["version"]
        diff = x["state"]["quantity"] ^ y["state"]["quantity"]
        assert diff and diff & (diff - 1) == 0 and diff < 1 << 16
        assert {**ba, "outcome": None} == {**bb, "outcome": None}
        assert f"offset={ba['input']['offset']} entity={x['key']}" in " ".join(lines)
    assert differing == injector.injected
    assert entity_state(faulty_store) == entity_state(clean_store)


def test_state_fault_persists_and_the_clerk_detects_it(caplog) -> None:
    """StateFaultCorruptsStoredEntity, CorruptedStateDetected, EveryInjectedFaultLogged:
    a state fault adds one to a stored entity (same version, same stamp) and leaves that
    event's own output alone; a later event that reads the entity evaluates against
    the wrong state, so b's copy disagrees with a's, and the Clerk (two instances, two
    required) reports the position and never publishes it. docket detects it; b's
    Ledger stays wrong."""
    with caplog.at_level(logging.WARNING, logger="docket.faults"):
        clean, faulty, clean_store, faulty_store, injector = _pair("state", 0.05)
    lines = [m for m in caplog.messages if m.startswith("FAULT INJECTED kind=state instance=b ")]
    assert injector.injected == len(lines) > 0
    first_fault = int(lines[0].split(" offset=")[1].split()[0]), int(lines[0].split(" partition=")[1].split()[0])
    clerk = ClerkCore(("a", "b"), 2)
    published, diverged = set(), set()
    for a, b in zip(clean, faulty):
        for out in (a, b):
            inst, dig, body = unseal(out.value)
            pos = (body["input"]["partition"], body["input"]["offset"])
            for action in clerk.on_copy(pos[0], pos[1], inst, dig, canonical(body), None):
                if isinstance(action, Publish):
                    published.add(pos)
                elif isinstance(action, Report):
                    rep = orjson.loads(action.value)
                    assert rep["decided"] is None and rep["cause"] == "mismatch"
                    diverged.add(pos)
    offset, partition = first_fault
    faulted_output = next(i for i, o in enumerate(clean)
                          if unseal(o.value)[2]["input"] == {"partition": partition, "offset": offset})
    assert unseal(clean[faulted_output].value)[1] == unseal(faulty[faulted_output].value)[1]  # its own output: unchanged
    assert diverged, "no later event read a corrupted entity: the test proves nothing"
    assert not (published & diverged)
    assert len(published) + len(diverged) == len(clean)
    assert entity_state(faulty_store) != entity_state(clean_store)
