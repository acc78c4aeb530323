"""bench/wakeup.py: the wake-up probe measures what it says, in every placement."""

from __future__ import annotations

import os

import pytest

from bench.wakeup import main, round_trip_us


@pytest.mark.parametrize("cpus", [None, (0, 0)])
def test_round_trips_cost_wall_and_cpu_time(cpus) -> None:
    before = os.sched_getaffinity(0)
    wall, cpu = round_trip_us(300, cpus)
    assert wall > 0 and cpu > 0
    assert os.sched_getaffinity(0) == before  # this process's affinity as it was


def test_report_names_every_placement(capsys) -> None:
    assert main(["--round-trips", "200"]) == 0
    out = capsys.readouterr().out
    assert "unpinned" in out and "both on CPU 0" in out
    assert ("one on CPU 0, one on CPU 1" in out) == ((os.cpu_count() or 1) >= 2)
