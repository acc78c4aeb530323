"""The live fault switch (specs/faults.allium, LiveFaultSwitch; agents/faults.py
LiveFaults), which the fault console turns on and off in a running instance: driven
the way agents/instance.py drives it, one poll before each batch of an Usher."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from agents.faults import LiveFaults
from tests.unit.pipeline_kit import run, usher, workload


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # as the console writes it: atomically


def _batches(records, size):
    return [records[i:i + size] for i in range(0, len(records), size)]


def _consistent(live: LiveFaults) -> bool:
    return (live.spec is None) == (live.injector is None)


def test_switch_starts_off_and_turns_on_and_off_between_batches(tmp_path, caplog) -> None:
    """LiveFaultSwitchStarts, LiveFaultSwitchTurnsOn, LiveFaultSwitchTurnsOff,
    LiveFaultSwitchReadBeforeEachBatch, LiveSwitchOnHasInjector: a worker with a switch
    and no file starts off and its outputs are the Arbiter's; bitflip:1 written between
    batches corrupts the next batch's outputs that change entities (FAULT INJECTION ON);
    off restores the Arbiter's outputs from the next batch (FAULT INJECTION OFF); an
    injector exists exactly while the switch is on."""
    path = tmp_path / "a.faults"
    stream = workload(5, 240)
    batches = _batches(stream.records, 40)
    clean = run(usher(instance="a"), stream.records, 40)
    faulty = usher(instance="a")
    with caplog.at_level(logging.WARNING, logger="docket.faults"):
        live = LiveFaults(path, "a")
        assert any(m.startswith("live fault switch: instance a reads") for m in caplog.messages)
        outs = []
        for i, batch in enumerate(batches):
            if i == 2:
                _write(path, "bitflip:1\n")
            if i == 4:
                _write(path, "off\n")
            faulty.faults = live.poll()
            assert _consistent(live)
            assert (faulty.faults is not None) == (i in (2, 3))
            outs.append(run(faulty, batch, 40))
    got = [o.value for b in outs for o in b]
    want = [o.value for o in clean]
    on = slice(80, 160)
    assert got[:80] == want[:80] and got[160:] == want[160:]
    assert got[on] != want[on]
    assert any(m.startswith("FAULT INJECTION ON: instance a will bitflip at rate 1.0") for m in caplog.messages)
    off = [m for m in caplog.messages if m.startswith("FAULT INJECTION OFF: instance a")]
    assert len(off) == 1 and "faults injected while on" in off[0]


def test_an_unchanged_file_is_not_read_again(tmp_path, caplog) -> None:
    """LiveFaultSwitchReadBeforeEachBatch: an unchanged file (same inode, mtime, size)
    is not read again and keeps the same injector; a changed one is read, and turning
    on again makes a fresh injector with its own seed."""
    path = tmp_path / "b.faults"
    _write(path, "state:0.5")
    with caplog.at_level(logging.WARNING, logger="docket.faults"):
        live = LiveFaults(path, "b")
        first = live.poll()
        assert first is not None and first.spec.kind == "state"
        assert live.poll() is first and live.poll() is first
        assert sum(m.startswith("FAULT INJECTION ON") for m in caplog.messages) == 1
        _write(path, "")
        assert live.poll() is None
        _write(path, "state:0.5")
        again = live.poll()
    assert again is not None and again is not first and live.switches == 2
    path.unlink()
    assert live.poll() is None  # no file: off


def test_bad_text_is_ignored_and_the_switch_stays(tmp_path, caplog) -> None:
    """LiveFaultTextIgnored: an unknown kind or a rate out of range is logged once at
    WARNING, naming the file, and the switch stays as it was (on stays on)."""
    path = tmp_path / "c.faults"
    _write(path, "bitflip:0.2")
    live = LiveFaults(path, "c")
    on = live.poll()
    with caplog.at_level(logging.WARNING, logger="docket.faults"):
        for text in ("flood:0.5", "bitflip:7", "bitflip:"):
            _write(path, text)
            assert live.poll() is on
            assert _consistent(live)
    ignored = [m for m in caplog.messages if "ignored (" in m]
    assert len(ignored) == 3 and str(path) in ignored[0] and "faults stay on (bitflip:0.2)" in ignored[0]


def test_faults_file_and_inject_faults_together_are_refused() -> None:
    """LiveFaultSwitchExcludesInjectFaults: `docket instance --inject-faults ...
    --faults-file ...` is a usage error naming both, before Kafka is asked anything."""
    docket = Path(sys.executable).with_name("docket")
    env = {**os.environ, "DOCKET_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    proc = subprocess.run([str(docket), "instance", "--id", "a", "--inject-faults", "bitflip:0.5",
                           "--faults-file", "/tmp/none.faults"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "--faults-file" in proc.stderr and "--inject-faults" in proc.stderr
    assert "cannot reach Kafka" not in proc.stderr
