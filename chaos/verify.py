"""The invariants `docket chaos` checks after a scenario has drained (chaos/cli.py).

Each check is a pure function of what the topics and the stopped workers hold:

- ``one_result_per_event``: exactly one result per input position on
  ``<prefix>.results`` (read_committed): none lost, none duplicated, none for a
  position that is not an input;
- ``no_divergence``: ``<prefix>.divergences`` is empty (no fault was injected);
- ``results_match_oracle``: each result's outcome, digest, duplicate_of and
  idempotency key are the pure replay's (chaos/replay.py), event by event;
- the domain's own (its kit's ``check``, app/domains/kit.py), over the events applied
  once, each entity's latest published state and every published state (inventory:
  ``no_negative_stock``, ``stock_conserved`` per sku; accounts: ``no_negative_balance``,
  ``money_conserved`` per book and currency, ``closed_accounts_empty``);
- ``tables_equal``: the final Ledger of instance a (RocksDB dump) equals b's and the
  replay's.
"""

from __future__ import annotations

from collections import Counter

import orjson

from app.versions import ACTIVATE_EVENT
from app.domains.kit import Check, DomainKit, first
from app.records import InputRecord

Position = tuple[int, int]
# The invariants of every domain, with short labels (the chaos summary's columns); the
# domain's own come between results_match_oracle and tables_equal (:func:`invariants`).
GENERIC = {"one_result_per_event": "1 result/event", "no_divergence": "no divergence",
           "results_match_oracle": "= replay", "tables_equal": "a = b = replay"}
_first = first


def invariants(kit: DomainKit) -> dict[str, str]:
    """Name -> short label of every invariant checked for ``kit``'s domain, in report order."""
    g = list(GENERIC.items())
    return dict([*g[:3], *kit.invariants.items(), *g[3:]])


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


def domain_checks(kit: DomainKit, inputs: list[InputRecord], results: list[dict]) -> dict[str, Check]:
    """The domain's own invariants (its kit's ``check``) over the published results:
    the events applied once (applied, not a duplicate, at an input position), each
    entity's latest published state (an entity lives on one partition, so the latest
    is the highest input offset), and every published state. Activation records are
    docket's, not the domain's: left out."""
    by_pos = {(r.partition, r.offset): r for r in inputs}
    latest: dict[str, dict] = {}
    applied: list[tuple[str, dict]] = []
    seen: list[tuple[str, dict]] = []
    for r in sorted(results, key=lambda r: (r["input"]["partition"], r["input"]["offset"])):
        pos = (r["input"]["partition"], r["input"]["offset"])
        entities = _entities(r)
        seen += [(e["key"], e["state"]) for e in entities]
        if r["outcome"]["status"] != "applied" or r["duplicate_of"] is not None or pos not in by_pos:
            continue  # a duplicate repeats the original's outcome: states as they were then
        if r["event_name"] == ACTIVATE_EVENT:
            continue  # docket's own record (app/versions.py): no domain event, no entity
        for e in entities:
            latest[e["key"]] = e["state"]
        applied.append((r["event_name"], orjson.loads(by_pos[pos].value)["payload"]))
    return kit.check(applied, latest, seen)


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


def verify(kit: DomainKit, inputs: list[InputRecord], results: list[dict], divergences: list[dict], oracle,
           dumps: dict[str, dict | str]) -> dict[str, Check]:
    """Every invariant of :func:`invariants` (``kit``), in that order."""
    return {
        "one_result_per_event": one_result_per_event(inputs, results),
        "no_divergence": no_divergence(divergences),
        "results_match_oracle": results_match_oracle(results, oracle),
        **domain_checks(kit, inputs, results),
        "tables_equal": tables_equal(dumps, oracle),
    }
