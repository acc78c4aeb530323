"""bench/judging_cost.py: docket's own CPU per event, without Kafka (what it measures
is not asserted, only that it measures: every event judged by both instances and
decided once, and the figures printed)."""

from __future__ import annotations

import re

import pytest

from bench import judging_cost


def test_judging_cost_decides_every_event_and_prints_its_figures(capsys) -> None:
    judging_cost.main(["--events", "600", "--partitions", "4", "--batch", "7", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "600 inventory events, 4 partitions, batches of 7" in out
    assert re.search(r"instance \d+\.\d µs \(Usher.*Clerk \d+\.\d µs", out), out


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        judging_cost.main(["--events", "0"])
