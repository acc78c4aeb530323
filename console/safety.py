"""The safety panel: every published result checked live against a pure replay of the
input (specs/console.allium, ConsoleChecksEveryResult), and the per-sku balance.

The replay is chaos/replay.py's :func:`~chaos.replay.replay` done incrementally: ONE
Usher (agents/usher.py: admission, Warden, Arbiter, the domain) over an in-memory store,
fed each input partition's records in offset order as the console reads them, with
nothing ever committed (so its Warden never collects, as in the batch replay). Its
output for input position (p, o) is what every correct instance outputs there, byte for
byte, so a published result is right when its digest is the replay's digest and its
body hashes to that digest. A result read before the replay reached its position waits
for it.

The balance (the inventory kit's ``check``, as chaos/verify.py runs it after a chaos
scenario) is taken over a consistent cut: per partition, the longest prefix of input
positions that are final (published, or diverged: copies disagreed and nothing was
published). Per sku, the latest published quantities summed over warehouses must equal
the deltas of the applied adjustments in the cut, and no published quantity may be
negative. A diverged event the instances applied moved stock that no published result
shows; its delta is counted from the replay's outcome and the detail says how many.

    safety = SafetyCheck(registry.versions("inventory"), partitions=4, ttl_ms=60_000)
    safety.add_inputs(records_of_one_partition)   # InputRecord, offset order
    safety.add_result(orjson.loads(result_value))  # a record of <prefix>.results
    safety.add_divergence(orjson.loads(report))    # a record of <prefix>.divergences
    safety.state()["text"]   # "SAFETY HOLDS: 0 wrong results of 612"
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from agents.usher import Usher
from app.canonical import canonical, digest
from app.domains.inventory import ADJUST
from app.records import FINISHING_CAUSES, InputRecord
from app.registry import Domain
from chaos.replay import IndexedMemoryStore
from tables.ledger import Ledger
from tables.registrar import Registrar
from tables.warden import Warden

Position = tuple[int, int]
# Fields the Clerk adds to an agreed body to make a result (agents/clerk_core.py _publish).
RESULT_EXTRAS = ("digest", "instances", "clerk")
# Divergence causes after which the position is final with nothing published, when
# ``decided`` is null (a replay_mismatch report can come while a position is pending):
# app/records.py FINISHING_CAUSES, a withheld duplicate's original_diverged included.
DIVERGED_CAUSES = FINISHING_CAUSES


@dataclass(slots=True)
class Replayed:
    """What the replay says about one position, kept until the position leaves the
    balance's cut: its digest, its outcome status and entities (a diverged position's
    effect), whether it is a first request (not a duplicate of an earlier one) and the
    adjustment it asks for ((sku, delta), or None)."""

    digest: str
    status: str | None
    entities: list
    fresh: bool
    adjust: tuple[str, int] | None


def result_position(result: Mapping) -> Position:
    return result["input"]["partition"], result["input"]["offset"]


def body_digest(result: Mapping) -> str:
    """The digest of the body a result publishes: the result without the fields the
    Clerk added, in canonical form."""
    return digest(canonical({k: v for k, v in result.items() if k not in RESULT_EXTRAS}))


def judge(result: Mapping, replay_digest: str) -> str | None:
    """Why ``result`` is wrong for its position, whose replay digest is
    ``replay_digest``; None when it is right."""
    claimed = result.get("digest")
    if claimed != replay_digest:
        return f"digest {str(claimed)[:12]}.. != replay's {replay_digest[:12]}.."
    own = body_digest(result)
    if own != claimed:
        return f"its body hashes to {own[:12]}.., not to its digest {str(claimed)[:12]}.."
    return None


def _adjustment(rec: InputRecord) -> tuple[str, int] | None:
    try:
        envelope = orjson.loads(rec.value)
        if envelope.get("event_name") != ADJUST:
            return None
        payload = envelope["payload"]
        return str(payload["sku"]), int(payload["delta"])
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError):
        return None  # not an adjustment the domain could apply: it is rejected


class SafetyCheck:
    """The live safety check of one console run. ``domain``: the domain's versions
    (``registry.versions(name)``); ``partitions``: the input's; ``ttl_ms``: the Warden's
    TTL (DOCKET_IDEMPOTENCY_TTL_MS) as the instances run it; ``kit``: the domain kit whose
    ``check`` is the balance (inventory's by default)."""

    def __init__(self, domain: Domain | Mapping[int, Domain], partitions: int, ttl_ms: int, kit=None) -> None:
        if kit is None:
            from app.domains.inventory_kit import kit
        self.kit = kit
        store = IndexedMemoryStore()
        self.usher = Usher("replay", domain, Registrar(Ledger(store), capacity=1 << 30), Warden(store, ttl_ms),
                           partitions)
        self.partitions = partitions
        self.next_input: dict[int, int] = {}  # partition -> next offset the replay takes
        self.replayed: dict[Position, Replayed] = {}  # positions not yet out of the cut
        self.waiting: dict[Position, list[dict]] = {}  # results ahead of the replay
        self.checked = 0
        self.wrong = 0
        self.first_wrong: dict | None = None
        # published positions, per partition: every offset below low[p], and those in above[p]
        self._low: dict[int, int] = {}
        self._above: dict[int, set[int]] = {}
        # the balance's cut
        self._final: dict[Position, tuple[str, dict | None]] = {}  # ("published", result) | ("diverged", None)
        self.cut: dict[int, int] = {}  # partition -> every position below is in the balance
        self._latest: dict[str, dict] = {}
        self._expected: Counter = Counter()
        self._new_seen: list[tuple[str, dict]] = []
        self._negative: str | None = None  # the first negative published stock level found
        self.diverged_in_cut = 0
        self._balance: tuple[bool, str] = (True, "nothing applied yet")

    # ------------------------------------------------------------------ input

    def add_inputs(self, records: Iterable[InputRecord]) -> None:
        """Replay input records of ONE partition, in offset order (records the replay
        has already taken, e.g. delivered again after a reconnect, are skipped)."""
        recs = [r for r in records if r.offset >= self.next_input.get(r.partition, 0)]
        if not recs:
            return
        partition = recs[0].partition
        for rec, out in zip(recs, self.usher.process(recs, committed=lambda p: 0), strict=True):
            pos = (rec.partition, rec.offset)
            body = orjson.loads(out.body)
            outcome = body.get("outcome") or {}
            fresh = body.get("duplicate_of") is None
            self.replayed[pos] = Replayed(out.digest, outcome.get("status"), outcome.get("entities") or [], fresh,
                                          _adjustment(rec) if fresh else None)
        self.next_input[partition] = recs[-1].offset + 1
        for rec in recs:
            pos = (rec.partition, rec.offset)
            for result in self.waiting.pop(pos, ()):
                self._check(pos, result)
        self._advance(partition)

    def replay_digest(self, pos: Position) -> str | None:
        """The replay's digest for ``pos`` while the check still keeps it."""
        r = self.replayed.get(pos)
        return None if r is None else r.digest

    # ------------------------------------------------------------------ results

    def add_result(self, result: dict) -> None:
        """Check one record of the results topic (decoded), now or once the replay
        reaches its position."""
        pos = result_position(result)
        if pos[1] >= self.next_input.get(pos[0], 0):
            self.waiting.setdefault(pos, []).append(result)
            return
        self._check(pos, result)
        self._advance(pos[0])

    def add_divergence(self, report: Mapping) -> None:
        """One divergence report: a position that diverged (``decided`` null) is final
        with nothing published, for the balance's cut."""
        if report.get("decided") is not None or report.get("cause") not in DIVERGED_CAUSES:
            return
        pos = (report["input"]["partition"], report["input"]["offset"])
        self._final.setdefault(pos, ("diverged", None))
        self._advance(pos[0])

    def _check(self, pos: Position, result: dict) -> None:
        self.checked += 1
        p, o = pos
        if self._published(p, o):
            why = "published a second time"
        else:
            self._mark_published(p, o)
            replayed = self.replayed.get(pos)
            why = ("no input record at this position" if replayed is None and o >= self.cut.get(p, 0)
                   else "published after its position was final" if replayed is None
                   else judge(result, replayed.digest))
            if replayed is not None:
                # right or wrong, clients saw it: the balance takes what was published
                self._final[pos] = ("published", result)
        if why is not None:
            self.wrong += 1
            if self.first_wrong is None:
                self.first_wrong = {"p": p, "o": o, "why": why}

    def _published(self, p: int, o: int) -> bool:
        return o < self._low.get(p, 0) or o in self._above.get(p, ())

    def _mark_published(self, p: int, o: int) -> None:
        above = self._above.setdefault(p, set())
        above.add(o)
        low = self._low.get(p, 0)
        while low in above:
            above.discard(low)
            low += 1
        self._low[p] = low

    # ------------------------------------------------------------------ the balance

    def _advance(self, partition: int) -> None:
        """Move the partition's cut over every final position after it."""
        o = self.cut.get(partition, 0)
        end = self.next_input.get(partition, 0)
        while o < end and (partition, o) in self._final:
            pos = (partition, o)
            how, result = self._final.pop(pos)
            replayed = self.replayed.pop(pos)
            if how == "published":
                entities = (result.get("outcome") or {}).get("entities") or []
                applied = (result.get("outcome") or {}).get("status") == "applied" and result.get("duplicate_of") is None
            else:
                self.diverged_in_cut += 1
                entities, applied = replayed.entities, replayed.status == "applied" and replayed.fresh
            for ent in entities:
                self._new_seen.append((ent["key"], ent["state"]))
                if applied:
                    self._latest[ent["key"]] = ent["state"]
            if applied and replayed.adjust is not None:
                sku, delta = replayed.adjust
                self._expected[sku] += delta
            o += 1
        self.cut[partition] = o

    def balance(self) -> tuple[bool, str]:
        """(holds, detail) of the kit's checks over the cut as it stands."""
        if not self._expected and not self._new_seen:
            return self._balance
        applied = [(ADJUST, {"sku": sku, "delta": delta}) for sku, delta in sorted(self._expected.items())]
        checks = self.kit.check(applied, self._latest, self._new_seen)
        self._new_seen = []
        negative = checks["no_negative_stock"]
        if not negative.passed and self._negative is None:
            self._negative = negative.detail
        conserved = checks["stock_conserved"]
        in_cut = sum(self.cut.values())
        extra = f"; {self.diverged_in_cut} diverged events counted from the replay" if self.diverged_in_cut else ""
        if self._negative is not None:
            self._balance = (False, self._negative)
        elif not self._expected:
            self._balance = (True, "nothing applied yet")
        elif not conserved.passed:
            self._balance = (False, conserved.detail + f" (over the first {in_cut} input events){extra}")
        else:
            skus = len({key.split(":")[2] for key in self._latest} | set(self._expected))
            self._balance = (True, f"{skus} skus conserved, no negative stock (over the first {in_cut} "
                                   f"input events){extra}")
        return self._balance

    # ------------------------------------------------------------------ the panel

    def state(self) -> dict:
        """The State JSON's ``safety`` (CONTRACT.md)."""
        ok, detail = self.balance()
        n = self.checked
        if self.wrong:
            fw = self.first_wrong
            text = (f"SAFETY BROKEN: {self.wrong} wrong result{'s' if self.wrong != 1 else ''} of {n} "
                    f"(first: {fw['p']}@{fw['o']})")
        else:
            text = f"SAFETY HOLDS: 0 wrong results of {n}"
        return {"checked": n, "wrong": self.wrong, "first_wrong": self.first_wrong, "balance_ok": ok,
                "balance_detail": detail, "text": text}
