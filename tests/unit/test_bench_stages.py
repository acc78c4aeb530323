"""bench/stages.py: where a decision's latency goes, joined from the broker timestamps
of the input, copy-batch and result records (pure part, no broker)."""

from __future__ import annotations

from typing import NamedTuple

import orjson

from bench.stages import copy_positions, spans, summary


class Rec(NamedTuple):
    partition: int
    offset: int
    timestamp: int
    value: bytes = b""


def copy_record(partition: int, watermark: int, n: int, at: int) -> Rec:
    value = orjson.dumps({"instance": "x", "partition": partition, "watermark": watermark,
                          "copies": [{"digest": "d", "body": "{}"}] * n})
    return Rec(partition, 0, at, value)


def result(partition: int, offset: int, at: int) -> Rec:
    return Rec(partition, 0, at, orjson.dumps({"input": {"partition": partition, "offset": offset}}))


def test_a_copy_batch_record_covers_the_offsets_below_its_watermark() -> None:
    assert copy_positions(copy_record(3, 12, 4, 0).value) == [(3, 8), (3, 9), (3, 10), (3, 11)]
    # a watermark-only record holds no copies
    assert copy_positions(orjson.dumps({"partition": 1, "watermark": 5, "copies": []})) == []


def test_each_stage_runs_between_the_broker_timestamps_of_one_position() -> None:
    inputs = [Rec(0, 0, 1000), Rec(0, 1, 1001)]
    copies = {"a": [copy_record(0, 2, 2, 1010)], "b": [copy_record(0, 2, 2, 1030)]}
    results = [result(0, 0, 1050), result(0, 1, 1060)]
    found = spans(results, inputs, copies, 2, intended={(0, 0): 995.0, (0, 1): 1000.0})
    assert found["positions"] == 2
    assert found["generator"]["max"] == 5.0  # 1000 - 995
    assert found["instance a"]["p50"] == 9  # 1010 - 1001 (nearest rank of 9, 10)
    assert found["instance b"]["max"] == 30
    # the match needs 2 copies: the later one (b's) completes it
    assert found["agreement"]["max"] == 30
    assert found["clerk"]["p50"] == 20 and found["clerk"]["max"] == 30  # 1050 - 1030, 1060 - 1030
    assert found["whole"]["max"] == 59


def test_a_position_short_of_its_required_copies_or_its_input_is_left_out() -> None:
    inputs = [Rec(0, 0, 1000)]
    copies = {"a": [copy_record(0, 2, 2, 1010)], "b": []}
    assert spans([result(0, 0, 1020)], inputs, copies, 2)["positions"] == 0
    # with one required copy it counts, and without intended times there is no generator stage
    found = spans([result(0, 0, 1020), result(0, 1, 1020)], inputs, copies, 1)
    assert found["positions"] == 1 and "generator" not in found
    assert summary(found).startswith("instance a 10/10")
