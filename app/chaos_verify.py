"""The invariants `docket chaos` checks after a scenario has drained (app/chaos.py).

Each check is a pure function of what the topics and the stopped workers hold:

- ``one_result_per_event``: exactly one result per input position on
  ``<prefix>.results`` (read_committed): none lost, none duplicated, none for a
  position that is not an input;
- ``no_divergence``: ``<prefix>.divergences`` is empty (no fault was injected);
- ``results_match_oracle``: each result's outcome, digest, duplicate_of and
  idempotency key are the pure replay's (app/replay.py), event by event;
- ``no_negative_stock``: no entity state in any published result is negative;
- ``stock_conserved``: per sku, the total of the latest published states equals the
  sum of the deltas of the applied (non-duplicate) adjustments that were published;
- ``tables_equal``: the final Ledger of instance a (RocksDB dump) equals b's and the
  replay's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from app.records import InputRecord

Position = tuple[int, int]
INVARIANTS = ("one_result_per_event", "no_divergence", "results_match_oracle", "no_negative_stock",
              "stock_conserved", "tables_equal")


@dataclass(frozen=True)
class Check:
    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return {"passed": self.passed, "detail": self.detail}


def _first(items: Iterable, n: int = 3) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def one_result_per_event(inputs: list[InputRecord], results: list[dict]) -> Check:
    expected = {(r.partition, r.offset) for r in inputs}
    counts = Counter((r["input"]["partition"], r["input"]["offset"]) for r in results)
    lost = sorted(expected - set(counts))
    twice = sorted(pos for pos, n in counts.items() if n > 1)
    unknown = sorted(set(counts) - expected)
    if not (lost or twice or unknown):
        return Check(True, f"{len(results)} results for {len(expected)} input events")
    parts = []
    if lost:
        parts.append(f"{len(lost)} lost: {_first(lost)}")
    if twice:
        parts.append(f"{len(twice)} duplicated: {_first((p, counts[p]) for p in twice)}")
    if unknown:
        parts.append(f"{len(unknown)} for positions that are not inputs: {_first(unknown)}")
    return Check(False, "; ".join(parts))


def no_divergence(divergences: list[dict]) -> Check:
    if not divergences:
        return Check(True, "0 divergence records")
    return Check(False, f"{len(divergences)} divergence records, first at "
                        f"{_first((d['input']['partition'], d['input']['offset']) for d in divergences)}: "
                        f"{orjson.dumps(divergences[0])[:300].decode()}")


def results_match_oracle(results: list[dict], oracle) -> Check:
    wrong = []
    for r in results:
        pos = (r["input"]["partition"], r["input"]["offset"])
        want = oracle.bodies.get(pos)
        if want is None:
            continue  # not an input: one_result_per_event reports it
        body = orjson.loads(want)
        for field in ("outcome", "duplicate_of", "idempotency_key", "event_name", "stream_time"):
            if r[field] != body[field]:
                wrong.append((pos, field, r[field], body[field]))
                break
        else:
            if r["digest"] != oracle.digests[pos]:
                wrong.append((pos, "digest", r["digest"], oracle.digests[pos]))
    if not wrong:
        return Check(True, f"{len(results)} results equal the replay (outcome + digest)")
    pos, field, got, exp = wrong[0]
    return Check(False, f"{len(wrong)} results differ from the replay; first {pos} {field}: "
                        f"{str(got)[:200]} != {str(exp)[:200]}")


def _entities(result: dict) -> list[dict]:
    return result["outcome"]["entities"] or []


def no_negative_stock(results: list[dict]) -> Check:
    bad = [((r["input"]["partition"], r["input"]["offset"]), e["key"], e["state"]["quantity"])
           for r in results for e in _entities(r) if e["state"]["quantity"] < 0]
    states = sum(len(_entities(r)) for r in results)
    if not bad:
        return Check(True, f"{states} published entity states, none negative")
    return Check(False, f"{len(bad)} negative stock levels published: {_first(bad)}")


def stock_conserved(inputs: list[InputRecord], results: list[dict]) -> Check:
    """Per sku: the latest published state of each of its stock entities (an entity
    lives on one partition, so the latest is the highest input offset) summed across
    warehouses equals the sum of the published applied adjustments' deltas."""
    by_pos = {(r.partition, r.offset): r for r in inputs}
    latest: dict[str, tuple[int, int]] = {}  # entity key -> (offset, quantity)
    applied: Counter = Counter()
    transfers_drained = 0
    for r in sorted(results, key=lambda r: (r["input"]["partition"], r["input"]["offset"])):
        pos = (r["input"]["partition"], r["input"]["offset"])
        out = r["outcome"]
        if out["status"] != "applied" or r["duplicate_of"] is not None or pos not in by_pos:
            continue  # a duplicate repeats the original's outcome: states as they were then
        for e in _entities(r):
            latest[e["key"]] = (pos[1], e["state"]["quantity"])
        payload = orjson.loads(by_pos[pos].value)["payload"]
        if r["event_name"] == "stock.adjust":
            applied[payload["sku"]] += payload["delta"]
        elif any(e["key"] == f"stock:{payload['from_warehouse']}:{payload['sku']}" and e["state"]["quantity"] == 0
                 for e in _entities(r)):
            transfers_drained += 1
    totals: Counter = Counter()
    for key, (_, quantity) in latest.items():
        _, _warehouse, sku = key.split(":")
        totals[sku] += quantity
    wrong = {s: (totals[s], applied[s]) for s in sorted(set(totals) | set(applied)) if totals[s] != applied[s]}
    if not applied:
        return Check(False, "no adjustment was applied: conservation proves nothing")
    if wrong:
        return Check(False, f"{len(wrong)} skus not conserved (total, sum of applied deltas): {_first(wrong.items())}")
    return Check(True, f"{len(applied)} skus conserved; {transfers_drained} transfers drained a stock to 0")


def tables_equal(dumps: dict[str, dict | str], oracle) -> Check:
    """``dumps``: instance -> dump_entities() of its stopped worker (or an error text)."""
    want = {key: {"state": state, "version": version} for key, (state, version) in oracle.states.items()}
    problems = []
    for inst, got in sorted(dumps.items()):
        if isinstance(got, str):
            problems.append(f"{inst}: {got}")
            continue
        if got != want:
            keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            k = keys[0]
            problems.append(f"{inst}: {len(keys)} entities differ from the replay, first {k}: "
                            f"{got.get(k)} != {want.get(k)}")
    if problems:
        return Check(False, "; ".join(problems))
    return Check(True, f"{' = '.join(sorted(dumps))} = replay ({len(want)} entities)")


def verify(inputs: list[InputRecord], results: list[dict], divergences: list[dict], oracle,
           dumps: dict[str, dict | str]) -> dict[str, Check]:
    return {
        "one_result_per_event": one_result_per_event(inputs, results),
        "no_divergence": no_divergence(divergences),
        "results_match_oracle": results_match_oracle(results, oracle),
        "no_negative_stock": no_negative_stock(results),
        "stock_conserved": stock_conserved(inputs, results),
        "tables_equal": tables_equal(dumps, oracle),
    }
