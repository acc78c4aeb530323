"""The Clerk's decisions, without Kafka. Spec: specs/clerk.allium.

Copies of the output for one input position (partition, offset) arrive from the
instances' output topics. When ``required`` copies from distinct instances carry
the same digest, the position is *decided* and its result is published, once.
Any copy whose digest differs from another copy of the same position is reported
as a divergence, before or after the decision; a position whose copies can no
longer reach ``required`` matching ones is *diverged* and never published.

Per partition, positions are created in input-offset order (each instance emits
its outputs in input order), so the decided watermark and the collection of
finished positions advance by popping from the front of a deque: amortised O(1)
per position, no scans. Finished positions are kept until every instance's
watermark has passed them, so a late or replayed copy is still compared; after
that they are dropped, and memory is bounded by the events in flight.

Restart: every published result and divergence record carries ``clerk``: the
partition's decision sequence number, decided watermark and the finished
positions above it. A restarted Clerk seeds each partition from the newer of the
newest READABLE record of each topic (:class:`TailScan`: a record someone else
wrote there is skipped, never a stopped Clerk), and counts every position a
readable result after it names as published, so a decision made before a crash is
never published twice.

A divergence record says what diverged (:func:`divergence_record`): the request's
idempotency key, event name and stream time, and every copy's body, each cut to
:data:`DIVERGENCE_BODY_LIMIT` bytes.

A duplicate (its agreed body's ``duplicate_of`` names an earlier position of the
partition, the original) is published only if the original was published: while the
original is undecided the agreed duplicate is HELD (not final), and once the original
diverges, or if it had, the duplicate is reported ``original_diverged`` and never
published (specs/clerk.allium, ClerkHoldsDuplicateOfUndecidedOriginal,
ClerkWithholdsDuplicateOfDivergedOriginal). Diverged positions are remembered for this
after they are forgotten, for the idempotency TTL of stream time and at most
:data:`DIVERGED_REMEMBERED` per partition; a restarted Clerk reads those of the
partition's newest divergence reports back (:func:`read_diverged`).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import orjson

from app.records import (
    FINISHING_CAUSES,
    MAX_IDEMPOTENCY_KEY,
    OFFSET_LIMIT,
    UnreadableRecord,
    bounded_int,
    check_result,
    clerk_state,
    finished_in,
    json_object,
)
from app.settings import client_name_problem

# A divergence record carries each copy's canonical body whole up to this many bytes
# (16 KiB). A longer body is cut: ``"body": null, "body_truncated": true`` and
# ``"body_prefix"``, its first DIVERGENCE_PREFIX_BYTES bytes as text (at most twice as
# long once escaped inside a JSON string, so a copy never costs more than about 16 KiB
# either way); ``digest`` and ``body_bytes`` are always there. Why 16 KiB: an inventory
# output is a few hundred bytes, so real bodies are never cut; and a record holds one
# copy per instance (plus a replayed one), so with 5 instances it stays under 100 KiB
# and with 50 under 850 KiB, below Kafka's default 1 MiB limit on a record
# (message.max.bytes, and the producer's max_request_size).
DIVERGENCE_BODY_LIMIT = 16 * 1024
DIVERGENCE_PREFIX_BYTES = DIVERGENCE_BODY_LIMIT // 2
# The event name a divergence record names, at most (characters); a longer one (only a
# corrupted copy or a malformed input has one) is named null, and is still in the body.
DIVERGENCE_NAME_LIMIT = 256


# How far back from the end of a partition of the results or divergences topic the
# Clerk looks for a record it can seed from (TailScan), at most: this many offsets and
# this many bytes of record keys and values, whichever comes first. The Clerk writes
# every record of those topics itself, each with its whole state, so the newest
# readable one is normally the last; only records someone else wrote can come after
# it. 1,000 covers any stray producer short of one that floods the topic, and 64 MiB
# keeps the look-back under a couple of seconds even at Kafka's record limit (the
# Clerk's agent, all partitions, waits while a partition is seeded).
TAIL_LOOKBACK_OFFSETS = 1_000
TAIL_LOOKBACK_BYTES = 64 * 1024 * 1024
# Diverged positions a partition remembers after they are forgotten, at most, so that a
# duplicate of one is withheld (ClerkWithholdsDuplicateOfDivergedOriginal); the oldest
# goes first. Entries older than the idempotency TTL (stream time) go anyway, as no
# duplicate can name them. 100,000 offsets with their stream times are about 10 MB; a
# partition that diverges that often within one TTL is an incident of its own.
DIVERGED_REMEMBERED = 100_000
# The cause of the report that withholds a duplicate of a diverged original
# (app/records.py DIVERGENCE_CAUSES)
ORIGINAL_DIVERGED = "original_diverged"


@dataclass(slots=True)
class Position:
    offset: int
    copies: dict[str, str] = field(default_factory=dict)  # instance -> digest
    bodies: dict[str, bytes] = field(default_factory=dict)  # digest -> body
    decided: str | None = None  # the agreed digest
    diverged: bool = False
    # a duplicate whose copies agree on this digest, held until its original is final
    held: str | None = None
    held_by: list[str] | None = None  # the agreeing instances, sorted
    # digest -> the body as the copy record held it, already decoded (what a result is
    # made of: decoding the bytes again would cost as much as the rest of a decision)
    parsed: dict[str, dict] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.decided is not None or self.diverged


@dataclass(slots=True)
class Publish:
    partition: int
    offset: int  # the input offset decided
    key: bytes | None
    value: bytes
    stream_time: int
    # the agreed new state of every entity the event changed, as (entity key, state,
    # version, input position): what the compacted entities topic gets
    # (entity_records); kept unserialised, as several decisions of one batch may change
    # one entity and only the last is sent
    entities: tuple[tuple[str, dict, int, dict], ...] = ()

    def entity_records(self) -> list[tuple[bytes, bytes]]:
        """(key, value) of each entity record: the value {key, state, version, input}."""
        return [entity_record(*e) for e in self.entities]


def entity_record(key: str, state: dict, version: int, position: dict) -> tuple[bytes, bytes]:
    """The record of the compacted ``<prefix>.entities`` topic for an entity's agreed
    state: key = the entity key, value = {key, state, version, input}."""
    return key.encode("utf-8"), orjson.dumps({"key": key, "state": state, "version": version, "input": position})


@dataclass(frozen=True)
class Report:
    partition: int
    value: bytes
    offset: int | None = None  # the input offset reported


@dataclass
class PartitionState:
    seq: int = 0  # decisions and divergence reports published so far
    decided_below: int = 0  # every position below is final (or was never copied)
    order: collections.deque = field(default_factory=collections.deque)  # offsets, creation order
    positions: dict[int, Position] = field(default_factory=dict)
    # finished positions restored from a record, above decided_below: offset -> None
    # (records carry their offsets only; see _clerk_state)
    restored: dict[int, str | None] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)  # instance -> next offset
    dropped_below: int = 0  # positions below are forgotten: copies for them are late
    # positions of this run that became final at or above decided_below: offset ->
    # digest|None. Kept apart so the state embedded in each record costs the few
    # finished-ahead positions, not a scan of every position held.
    finished: dict[int, str | None] = field(default_factory=dict)
    # the same offsets (finished and restored, above decided_below) as sorted
    # [start, end) ranges, kept up to date so a record's state costs O(ranges)
    ranges: list[list[int]] = field(default_factory=list)
    # positions this run saw diverge, oldest first: offset -> stream time (ms; None when
    # no copy says one), kept after they are forgotten (DIVERGED_REMEMBERED)
    diverged: dict[int, int | None] = field(default_factory=dict)
    # original offset -> the offsets of agreed duplicates held until it is final
    waiting: dict[int, list[int]] = field(default_factory=dict)


class ClerkCore:
    def __init__(self, instances: tuple[str, ...], required: int, max_lag: int = 10_000,
                 ttl_ms: int = 300_000) -> None:
        """``instances``: the configured instance ids; ``required``: matching copies a
        decision needs (1 to len(instances), else ValueError); ``max_lag``: offsets
        (DOCKET_MAX_LAG); ``ttl_ms``: the idempotency TTL in stream time
        (DOCKET_IDEMPOTENCY_TTL_MS), how long a diverged position is remembered."""
        if not 1 <= required <= len(instances):
            raise ValueError(f"required copies {required} must be between 1 and {len(instances)}")
        self.instances = tuple(sorted(instances))
        self.required = required
        self.max_lag = max_lag
        self.ttl_ms = ttl_ms
        self.partitions: dict[int, PartitionState] = {}
        self.counts = collections.Counter()  # metric name -> count
        self.copies_by_instance = collections.Counter()
        self.lagging: set[tuple[int, str]] = set()

    # ---- restart -----------------------------------------------------------------

    def seed(self, partition: int, records: list[bytes], input_end: int | None = None) -> None:
        """Initialise a partition from records of the results and divergences topics
        (the newest readable one of each, as :class:`TailScan` finds them): the state
        of the one with the highest seq. A record :func:`tail_state` cannot read is
        ignored; with none left the partition starts from nothing."""
        states = []
        for raw in records:
            try:
                states.append(tail_state(raw, partition, input_end))
            except UnreadableRecord:
                continue
        self.restore(partition, max(states, key=lambda s: s["seq"], default=None))

    def restore(self, partition: int, state: dict | None, published: Iterable[int] = (),
                diverged: Iterable[tuple[int, int | None]] = ()) -> None:
        """Initialise a partition from a checked Clerk state (:func:`tail_state`; None:
        from nothing), and count the input offsets in ``published`` as finished too:
        positions that readable results newer than the state name (TailScan).
        ``diverged``: (input offset, stream time) of the positions the partition's
        newest divergence reports say diverged, oldest first (:func:`read_diverged`),
        remembered as this run's own (ClerkSeedsDivergedPositions)."""
        st = PartitionState()
        for offset, stream_time in diverged:
            st.diverged[offset] = stream_time
        _forget_oldest(st.diverged)
        if state is not None:
            st.seq = state["seq"]
            st.decided_below = state["decided_below"]
            st.dropped_below = state["decided_below"]
            st.ranges = [[a, b] for a, b in state["finished_ranges"] if b > st.decided_below]
        for offset in published:
            if offset >= st.decided_below:
                _add_to_ranges(st.ranges, offset)
        st.restored = {o: None for start, end in st.ranges for o in range(start, end)}
        self.partitions[partition] = st

    def known(self, partition: int) -> bool:
        return partition in self.partitions

    # ---- copies ------------------------------------------------------------------

    def on_watermark(self, partition: int, instance: str, next_offset: int) -> list[Report]:
        """An instance has emitted every copy below ``next_offset`` in its current run.
        A restarted instance advertises again from where it resumed: watermarks may
        go down, and positions already dropped stay dropped. Returns the divergences
        it gave up (:meth:`_give_up`), to publish in order."""
        if instance not in self.instances:
            return []  # not one of ours: it must not hold back collection
        st = self._state(partition)
        st.watermarks[instance] = next_offset
        actions: list[Report] = []
        self._give_up(st, partition, self._advance(st), actions)
        top = max(st.watermarks.values())
        for inst in self.instances:
            behind = top - st.watermarks.get(inst, 0)
            if behind > self.max_lag:
                self.lagging.add((partition, inst))
            else:
                self.lagging.discard((partition, inst))
        return actions

    def on_copy(self, partition: int, offset: int, instance: str, digest: str, body: bytes,
                key: bytes | None = None, parsed: dict | None = None) -> list[Publish | Report]:
        """One copy of the output for (partition, offset) from ``instance``: its digest
        (recomputed from ``body``, the canonical body bytes; ``parsed`` is the same body
        decoded, when at hand). Returns what to publish, in order."""
        return self.on_copies(partition, instance, [(offset, digest, body, parsed)])

    def on_copies(self, partition: int, instance: str,
                  copies: list[tuple[int, str, bytes, dict | None]]) -> list[Publish | Report]:
        """:meth:`on_copy` for consecutive copies of one partition from one instance
        (a copy-batch record): (offset, digest, body, parsed) each. The decided
        watermark advances once, after the last."""
        if instance not in self.instances:
            raise ValueError(f"copy from unconfigured instance {instance!r}")
        st = self._state(partition)
        self.copies_by_instance[instance] += len(copies)
        actions: list[Publish | Report] = []
        for offset, digest, body, parsed in copies:
            self._copy(st, partition, offset, instance, digest, body, parsed, actions)
        self._give_up(st, partition, self._advance(st), actions)
        return actions

    def _copy(self, st: PartitionState, partition: int, offset: int, instance: str, digest: str, body: bytes,
              parsed: dict | None, actions: list) -> None:
        pos = st.positions.get(offset)
        if pos is None and (offset < st.decided_below or offset in st.restored):
            # Finished before (and forgotten, or restored as finished at a restart):
            # never open it again, or it could be published a second time.
            actions.extend(self._late(st, partition, offset, instance, digest, body))
            return
        if pos is None:
            # the first copy of a position: nothing to compare with yet
            pos = st.positions[offset] = Position(offset, {instance: digest}, {digest: body})
            if parsed is not None:
                pos.parsed[digest] = parsed
            st.order.append(offset)
            if self.required > 1:
                return  # it can still be decided (required <= the instances, checked at start)
            self._decide(st, partition, pos, digest, [instance], actions)
            return
        previous = pos.copies.get(instance)
        if previous is not None:
            if previous == digest:
                self.counts["replayed_copies"] += 1
                return  # a replay re-emitted the same copy
            self.counts["replay_mismatches"] += 1
            actions.append(self._report(st, partition, pos, "replay_mismatch", extra=(instance, digest, body)))
            return
        pos.copies[instance] = digest
        if digest not in pos.bodies:
            pos.bodies[digest] = body
            if parsed is not None:
                pos.parsed[digest] = parsed
        if pos.decided is not None or pos.diverged:
            if pos.decided is not None and digest == pos.decided:
                return
            # a late copy that disagrees with the decision, or one more copy of a
            # position that has already diverged
            actions.append(self._report(st, partition, pos, "mismatch"))
            return
        if pos.held is not None:
            return  # decided with its original: a disagreeing copy is reported then
        agreeing = [i for i, d in pos.copies.items() if d == digest]
        if len(agreeing) > 1:
            agreeing.sort()
        if len(agreeing) >= self.required:
            self._decide(st, partition, pos, digest, agreeing, actions)
        elif not self._can_still_decide(pos):
            self._diverge(st, partition, pos, "mismatch", actions)

    def _decide(self, st: PartitionState, partition: int, pos: Position, digest: str, agreeing: list[str],
                actions: list) -> None:
        """``agreeing`` (sorted) carry ``digest``, enough for a decision: publish it,
        unless it is a duplicate whose original is not published. Held while the
        original is undecided (ClerkHoldsDuplicateOfUndecidedOriginal); withheld once
        it diverged (ClerkWithholdsDuplicateOfDivergedOriginal)."""
        original = self._original(partition, pos, digest)
        if original is not None:
            fate = self._fate(st, original)
            if fate is None:
                pos.held, pos.held_by = digest, agreeing
                st.waiting.setdefault(original, []).append(pos.offset)
                self.counts["held_duplicates"] += 1
                return
            if not fate:
                self.counts["withheld_duplicates"] += 1
                self._diverge(st, partition, pos, ORIGINAL_DIVERGED, actions)
                return
        pos.decided = digest
        st.finished[pos.offset] = digest
        _add_to_ranges(st.ranges, pos.offset)
        actions.append(self._publish(st, partition, pos, agreeing))
        if len(agreeing) < len(pos.copies):
            actions.append(self._report(st, partition, pos, "mismatch"))
        self._release(st, partition, pos, actions)

    def _diverge(self, st: PartitionState, partition: int, pos: Position, cause: str, actions: list) -> None:
        """``pos`` can never be published: report it (``cause``), remember it for the
        duplicates that may name it, and settle the duplicates held for it."""
        pos.diverged = True
        st.finished[pos.offset] = None
        _add_to_ranges(st.ranges, pos.offset)
        self._remember_diverged(st, pos)
        actions.append(self._report(st, partition, pos, cause))
        self._release(st, partition, pos, actions)

    def _original(self, partition: int, pos: Position, digest: str) -> int | None:
        """The input offset of the original a duplicate's agreed body names
        (``duplicate_of``, an earlier position of the same partition), else None."""
        body = pos.parsed.get(digest)
        if body is None:
            try:
                body = orjson.loads(pos.bodies[digest])
            except orjson.JSONDecodeError:
                return None
            pos.parsed[digest] = body  # what _publish reads: decoded once per decision
        dup = body.get("duplicate_of") if isinstance(body, dict) else None
        if not isinstance(dup, dict) or dup.get("partition") != partition:
            return None
        offset = dup.get("offset")
        return offset if type(offset) is int and 0 <= offset < pos.offset else None

    def _fate(self, st: PartitionState, offset: int) -> bool | None:
        """Whether the position at ``offset`` was published: True (or not known to have
        diverged: forgotten before this run, or past DIVERGED_REMEMBERED), False if it
        diverged, None while it is undecided."""
        pos = st.positions.get(offset)
        if pos is not None:
            if pos.decided is not None:
                return True
            return False if pos.diverged else None
        return offset not in st.diverged

    def _remember_diverged(self, st: PartitionState, pos: Position) -> None:
        stream_time = _request_fields(pos.bodies.get(pos.copies[naming_copy(pos)])).get("stream_time")
        known = st.diverged
        known[pos.offset] = stream_time
        if isinstance(stream_time, int):
            # no duplicate can name a position older than the TTL (stream time is
            # monotone in offset, and entries arrive roughly in offset order)
            while known:
                oldest = next(iter(known))
                then = known[oldest]
                if not (isinstance(then, int) and stream_time - then >= self.ttl_ms):
                    break
                del known[oldest]
        _forget_oldest(known)

    def _release(self, st: PartitionState, partition: int, pos: Position, actions: list) -> None:
        """``pos`` is final: settle the duplicates held for it, in offset order."""
        waiting = st.waiting.pop(pos.offset, None)
        if not waiting:
            return
        for offset in sorted(waiting):
            dup = st.positions.get(offset)
            if dup is None or dup.held is None or dup.final:
                continue
            digest, agreeing = dup.held, dup.held_by
            dup.held = dup.held_by = None
            self._decide(st, partition, dup, digest, agreeing, actions)

    def pending(self, partition: int) -> int:
        st = self.partitions.get(partition)
        return 0 if st is None else len(st.positions)

    def decided_below(self, partition: int) -> int:
        return self._state(partition).decided_below

    def is_final(self, partition: int, offset: int) -> bool:
        st = self._state(partition)
        pos = st.positions.get(offset)
        if pos is not None:
            return pos.final
        # every position below the decided watermark is final, held or forgotten
        return offset < st.decided_below or offset in st.restored

    # ---- internals ----------------------------------------------------------------

    def _state(self, partition: int) -> PartitionState:
        st = self.partitions.get(partition)
        if st is None:
            st = self.partitions[partition] = PartitionState()
        return st

    def _can_still_decide(self, pos: Position) -> bool:
        missing = len(self.instances) - len(pos.copies)
        if missing + 1 >= self.required:
            return True  # any one copy and the missing ones could still agree
        digests = list(pos.copies.values())
        best = max(digests.count(d) for d in set(digests))
        return best + missing >= self.required

    def _late(self, st, partition, offset, instance, digest, body) -> list:
        # A copy for a position this Clerk has finished and forgotten (or restored
        # as finished): compare with the agreed digest while it is still known.
        self.counts["late_copies"] += 1
        agreed = st.restored.get(offset)
        if agreed is not None and agreed != digest:
            pos = Position(offset, copies={instance: digest}, bodies={digest: body}, decided=agreed)
            return [self._report(st, partition, pos, "mismatch")]
        return []

    def _lowest(self, st: PartitionState) -> int | None:
        if len(st.watermarks) < len(self.instances):
            return None  # an instance that never advertised holds everything back
        return min(st.watermarks[i] for i in self.instances)

    def _settled(self, st: PartitionState) -> int | None:
        """The ``required``-th highest watermark: ``required`` instances have emitted
        every copy below it, so an offset below it that holds no copy of theirs can
        never be decided (None while fewer than ``required`` have advertised). With
        every instance required (two of two) it is the lowest watermark."""
        if len(st.watermarks) < self.required:
            return None
        return sorted(st.watermarks.values(), reverse=True)[self.required - 1]

    def _advance(self, st: PartitionState) -> int | None:
        """Advance the decided watermark and collect; returns the settled watermark."""
        settled = self._settled(st)
        while True:
            x = st.decided_below
            pos = st.positions.get(x)
            if pos is not None:
                if not pos.final:
                    break
            elif x not in st.restored and (settled is None or x >= settled):
                # No copy yet. Below the watermarks of as many instances as a decision
                # needs, none that could decide it will come: that offset holds no
                # event (e.g. a transaction marker). Waiting for every instance would
                # stop the watermark at the first marker while one of three is down.
                break
            st.restored.pop(x, None)
            st.finished.pop(x, None)
            st.decided_below = x + 1
            if st.ranges and st.ranges[0][0] <= x:
                if st.ranges[0][1] <= x + 1:
                    st.ranges.pop(0)
                else:
                    st.ranges[0][0] = x + 1
        self._collect(st, settled)
        return settled

    def _give_up(self, st: PartitionState, partition: int, settled: int | None, actions: list) -> None:
        """Diverge the open position at the decided watermark while it is more than
        max_lag below the settled watermark (ClerkGivesUpUndecidedPosition). Its copies
        disagree: as many instances as a decision needs have emitted theirs and moved
        max_lag offsets on, and each instance without a copy is more than max_lag behind
        (lagging, or down for good). Waiting for one of those held the decided watermark
        there for good: every later decided position stayed in memory with its bodies,
        each result carried every finished range above it, and the copies' items were
        never acknowledged. ``settled``: :meth:`_settled`, as :meth:`_advance` returned
        it (reports advance the decided watermark, never a watermark)."""
        if settled is None:
            return
        while st.decided_below < settled - self.max_lag:
            pos = st.positions.get(st.decided_below)
            if pos is None or pos.final:
                return
            if pos.held is not None:
                return  # its original is final below it: it is settled with it
            self.counts["given_up"] += 1
            self._diverge(st, partition, pos, "mismatch", actions)  # advances past it

    def _collect(self, st: PartitionState, settled: int | None) -> None:
        # Forget finished positions every instance has passed: memory is bounded by
        # the positions still in flight, not by history. An instance more than max_lag
        # behind (down, or catching up) holds back no more than max_lag of them: its
        # copies of older ones are then late, counted and not compared.
        if settled is None:
            return
        lowest = self._lowest(st)
        bound = settled - self.max_lag
        limit = min(lowest if lowest is not None and lowest > bound else bound, st.decided_below)
        order, positions = st.order, st.positions
        while order and order[0] < limit:
            positions.pop(order.popleft(), None)
        if limit > st.dropped_below:
            st.dropped_below = limit

    def _clerk_state(self, st: PartitionState, partition: int) -> dict:
        # Finished positions above the decided watermark, as [start, end) ranges and
        # without their digests: while one position stays undecided (three instances,
        # two disagreeing, the third down) every later decision lands here, and a
        # list of digests would outgrow Kafka's record size within ~14,000 decisions.
        # The price: after a restart, a late copy of such a position is counted, not
        # compared.
        return {"seq": st.seq, "decided_below": st.decided_below,
                "finished_ranges": [list(r) for r in st.ranges]}

    def _publish(self, st, partition, pos: Position, agreeing) -> Publish:
        raw = pos.bodies[pos.decided]
        body = pos.parsed.get(pos.decided)
        if body is None:
            body = orjson.loads(raw)
        st.seq += 1
        self.counts["decisions"] += 1
        # The result is the agreed body (its fields: idempotency_key, client, input,
        # event_name, outcome, duplicate_of, domain_version, stream_time) with digest,
        # instances and the Clerk's state added: spliced onto the canonical bytes, not
        # built and serialised again.
        extra = orjson.dumps({"digest": pos.decided, "instances": agreeing, "clerk": self._clerk_state(st, partition)})
        value = raw[:-1] + b"," + extra[1:]
        ikey = body["idempotency_key"]
        position = body["input"]
        # a duplicate's outcome is the original's: its entity states may be stale by
        # now, and on the compacted entities topic they would outlive the newer ones
        # (specs/clerk.allium ClerkPublishesAgreedEntityStates)
        entities = () if body["duplicate_of"] is not None else tuple(
            (ent["key"], ent["state"], ent["version"], position) for ent in body["outcome"]["entities"])
        if entities and st.ranges and st.ranges[-1][1] > pos.offset + 1:
            # decided after a later position of the partition (more instances than
            # required): a state that position superseded would outlive it on the
            # compacted topic
            entities = self._not_superseded(st, pos.offset, entities)
        return Publish(partition, pos.offset, None if ikey is None else ikey.encode("utf-8"), value,
                       body["stream_time"], entities)

    def _not_superseded(self, st: PartitionState, offset: int, entities: tuple) -> tuple:
        """``entities`` (key, state, version, input) of the decision at ``offset`` less
        any a decided position above it changed to a higher version
        (specs/clerk.allium ClerkPublishesAgreedEntityStates). Runs only for a
        decision made out of offset order; scans the positions held above it. A
        position restored as finished at a restart has no body to look at: its
        entities are not known, and nothing is dropped for it."""
        newer: dict[str, int] = {}
        for q, later in st.positions.items():
            if q <= offset or later.decided is None:
                continue
            decided = later.parsed.get(later.decided)
            if decided is None:
                decided = orjson.loads(later.bodies[later.decided])
            if decided["duplicate_of"] is not None:
                continue
            for ent in decided["outcome"]["entities"]:
                if ent["version"] > newer.get(ent["key"], -1):
                    newer[ent["key"]] = ent["version"]
        return tuple(e for e in entities if newer.get(e[0], -1) < e[2])

    def _report(self, st, partition, pos: Position, cause: str, extra=None) -> Report:
        if cause == "mismatch" and len(copy_versions(pos)) > 1:
            cause = "version_mismatch"
        st.seq += 1
        self._advance(st)
        self.counts["divergences"] += 1
        return Report(partition, divergence_record(partition, pos, cause, self._clerk_state(st, partition), extra),
                      pos.offset)


# ---- restart: reading back the results and divergences topics ----------------------


def tail_state(raw: bytes | None, partition: int, input_end: int | None = None) -> dict:
    """The ``clerk`` state (ClerkState: seq, decided_below, finished_ranges) of a
    record of the results or divergences topic, checked: ``seq`` a non-negative
    integer, ``decided_below`` and every range bound integers from 0 to
    ``input_end`` (the input partition's end offset: no position at or beyond it can
    be final; 2^63 when not given), ranges [start, end) with decided_below <= start <
    end, sorted and disjoint. Raises UnreadableRecord (saying what is wrong) for
    anything else: a tombstone, not JSON, not an object, no or an ill-typed
    ``clerk``, a number out of range. ``partition`` is only named in messages."""
    return clerk_state(json_object(raw), input_end)


def published_position(raw: bytes | None, partition: int, input_end: int | None = None) -> int:
    """The input offset a record of partition ``partition`` of the results topic is the
    result of: a record every reader of the topic takes for a result (records.py
    check_result, as DocketClient reads it) whose input is a position of this
    partition below ``input_end``. Raises UnreadableRecord otherwise."""
    rec = json_object(raw)
    check_result(rec)
    where = rec["input"]
    if where["partition"] != partition:
        raise UnreadableRecord(f"input.partition is {where['partition']}, not {partition}")
    offset = bounded_int(where["offset"], "input.offset", 0, input_end)
    if offset == input_end:
        raise UnreadableRecord(f"input.offset is {offset}, the input partition's end offset: no record is there yet")
    return offset


@dataclass(slots=True)
class TailRecord:
    """What one record at the end of a results or divergences partition says, read once
    (:func:`examine`): its checked Clerk state, or why it has none; for a results
    record, the input offset it is the result of (when it is a readable result)."""

    offset: int
    state: dict | None
    problem: str | None
    published: int | None = None


def examine(offset: int, raw: bytes | None, partition: int, results: bool, input_end: int | None) -> TailRecord:
    try:
        return TailRecord(offset, tail_state(raw, partition, input_end), None)
    except UnreadableRecord as exc:
        problem = str(exc)
    published = None
    if results:
        try:
            published = published_position(raw, partition, input_end)
        except UnreadableRecord:
            pass
    return TailRecord(offset, None, problem, published)


@dataclass
class TailScan:
    """Reading back one partition of the results (``results``) or divergences topic
    for the restart seed, newest record first (ClerkSeedsFromNewestReadableRecords).

    :meth:`offer` each examined record, newest first, until it returns True: the record
    carries a readable Clerk state (``state``, at ``state_offset``), and nothing older
    is needed. Every record offered before it is ``skipped`` (offset, why), and the
    positions that those of them which are readable results name are ``published``:
    whatever wrote them, every reader takes them for results, so the Clerk must not
    publish those positions again. Reading stops earlier at the look-back bound
    (TAIL_LOOKBACK_OFFSETS, TAIL_LOOKBACK_BYTES): ``exhausted`` when older records
    were left unread."""

    topic: str
    partition: int
    results: bool
    state: dict | None = None
    state_offset: int | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)
    published: list[int] = field(default_factory=list)
    exhausted: bool = False

    def offer(self, rec: TailRecord) -> bool:
        if rec.state is not None:
            self.state, self.state_offset = rec.state, rec.offset
            return True
        self.skipped.append((rec.offset, rec.problem or "unreadable"))
        if rec.published is not None:
            self.published.append(rec.published)
        return False


async def scan_tail(scan: TailScan, begin: int, end: int, read: Callable[[int, int], AsyncIterator],
                    input_end: int | None, *,
                    max_offsets: int = TAIL_LOOKBACK_OFFSETS, max_bytes: int = TAIL_LOOKBACK_BYTES) -> TailScan:
    """Offer ``scan`` the records of its partition from ``end`` back (``begin`` is the
    partition's first offset), newest first, until one carries a readable Clerk state
    or ``max_offsets`` offsets or ``max_bytes`` bytes of keys and values were read.
    ``read(lo, hi)`` yields the records of offsets lo <= offset < hi in offset order
    (transaction markers and aborted records hold offsets but yield nothing). Ranges
    grow from the end: 1 offset (the Clerk's own last record, normally), then 8, 64,
    512, ... (fewer when the records are large). Each record is examined as it is
    read, so a range costs its records' examinations, never their bytes held at once.
    Should the byte bound be reached inside a range, the newest readable state among
    the records read is still taken (an older state is never worse than none).
    ``scan.exhausted`` is set when the bound left records between the end and the
    state found (or the partition's start) unread."""
    floor = max(begin, end - max_offsets)
    hi, size, spent = end, 1, 0
    while hi > floor:
        lo = max(floor, hi - size)
        examined: list[TailRecord] = []
        over = False
        taken = 0  # bytes of this range
        async with contextlib.aclosing(read(lo, hi)) as records:
            async for rec in records:
                examined.append(examine(rec.offset, rec.value, scan.partition, scan.results, input_end))
                taken += len(rec.value or b"") + len(rec.key or b"")
                if spent + taken >= max_bytes:
                    over = True
                    break
        spent += taken
        unread_above = over and (examined[-1].offset + 1 < hi)
        for rec in reversed(examined):
            if scan.offer(rec):
                scan.exhausted = unread_above
                return scan
        if over:
            scan.exhausted = True
            return scan
        # The next range is 8 times longer, but no longer than the bytes left allow at
        # this range's average record size: the bound is then met between ranges, not
        # in the middle of one (whose newest records would be left unread).
        average = max(1, taken // max(1, len(examined)))
        hi, size = lo, max(1, min(size * 8, (max_bytes - spent) // average))
    scan.exhausted = hi > begin
    return scan


def _forget_oldest(known: dict[int, int | None]) -> None:
    """Drop the oldest entries of ``known`` (diverged offset -> stream time, in the order
    remembered) beyond DIVERGED_REMEMBERED (ClerkRemembersDivergedPositions)."""
    while len(known) > DIVERGED_REMEMBERED:
        del known[next(iter(known))]


def diverged_position(raw: bytes | None, partition: int,
                      input_end: int | None = None) -> tuple[int, int | None] | None:
    """(input offset, stream time) of the position a divergence record says diverged
    for good (a cause of FINISHING_CAUSES, no decision), on ``partition``, as the Clerk
    writes it: with its Clerk state (:func:`tail_state`, checked against ``input_end``)
    in which that position is finished, since the Clerk finishes a position before it
    reports it (ClerkCore._report). None for any other record: a late copy's report, a
    replay mismatch, a record someone else wrote. A report without that state was taken
    for a divergence, and a duplicate of the position it named, published long before,
    was then withheld as "original_diverged" (the twelfth fresh-user trial: a retry
    of a request answered 200 got 502 after a restart)."""
    try:
        rec = json_object(raw)
    except UnreadableRecord:
        return None
    position = rec.get("input")
    if rec.get("cause") not in FINISHING_CAUSES or rec.get("decided") is not None or not isinstance(position, dict):
        return None
    offset, stream_time = position.get("offset"), rec.get("stream_time")
    if position.get("partition") != partition or type(offset) is not int or not 0 <= offset < OFFSET_LIMIT:
        return None
    try:
        if not finished_in(clerk_state(rec, input_end), offset):
            return None
    except UnreadableRecord:
        return None
    return offset, stream_time if type(stream_time) is int else None


async def read_diverged(begin: int, end: int, read: Callable[[int, int], AsyncIterator], partition: int,
                        ttl_ms: int, input_end: int | None = None, *, max_offsets: int = TAIL_LOOKBACK_OFFSETS,
                        max_bytes: int = TAIL_LOOKBACK_BYTES) -> list[tuple[int, int | None]]:
    """The positions the newest divergence reports of ``partition`` say diverged
    (:func:`diverged_position`), as (input offset, stream time), oldest report first,
    for a restarted Clerk to remember (ClerkSeedsDivergedPositions). Reads back from
    ``end`` (``begin``: the partition's first offset) in ranges growing 8 times, as
    :func:`scan_tail` does, and stops at the first range that reaches a report more than
    ``ttl_ms`` of stream time older than the newest (no duplicate can name it), or at
    the look-back bound (``max_offsets`` offsets, ``max_bytes`` bytes of keys and
    values). ``read(lo, hi)``: as for scan_tail; ``input_end``: the input partition's
    end offset, as for scan_tail."""
    floor = max(begin, end - max_offsets)
    hi, size, spent = end, 8, 0
    found: list[tuple[int, int | None]] = []  # newest range first, each range in offset order
    newest: int | None = None
    while hi > floor:
        lo = max(floor, hi - size)
        taken: list[tuple[int, int | None]] = []
        done = False
        async with contextlib.aclosing(read(lo, hi)) as records:
            async for rec in records:
                spent += len(rec.value or b"") + len(rec.key or b"")
                seen = diverged_position(rec.value, partition, input_end)
                if seen is not None:
                    taken.append(seen)
                if spent >= max_bytes:
                    done = True
                    break
        times = [t for _, t in taken if t is not None]
        if newest is None and times:
            newest = max(times)
        if newest is not None and times and min(times) <= newest - ttl_ms:
            taken = [(o, t) for o, t in taken if t is None or t > newest - ttl_ms]
            done = True
        found[:0] = taken
        if done:
            break
        hi, size = lo, size * 8
    return found


def newest_state(scans: Iterable[TailScan]) -> dict | None:
    """The Clerk state to seed from: of the scans' states, the one with the highest seq
    (the newer of the results and divergences topics' newest readable records)."""
    return max((s.state for s in scans if s.state is not None), key=lambda st: st["seq"], default=None)


def divergence_record(partition: int, pos: Position, cause: str, clerk: dict,
                      extra: tuple[str, str, bytes] | None = None) -> bytes:
    """The JSON of a divergence record (specs/clerk.allium, DivergenceRecord).

    ``input``, ``cause``, ``decided``, ``clerk`` and ``copies`` (each copy's ``instance``
    and ``digest``, ``replay: true`` on ``extra``, the replayed copy of a replay
    mismatch) as before; each copy also carries its body (:func:`body_report`). The
    request is named by ``idempotency_key``, ``event_name`` and ``stream_time``, taken
    from ONE copy, ``named_by`` (its instance), chosen so that a corrupted copy cannot
    make the record ambiguous (:func:`naming_copy`)."""
    named_by = naming_copy(pos)
    fields = _request_fields(pos.bodies.get(pos.copies[named_by]))
    copies = [{"instance": i, "digest": d, **body_report(pos.bodies[d])} for i, d in sorted(pos.copies.items())]
    if extra is not None:
        instance, digest, body = extra
        copies.append({"instance": instance, "digest": digest, "replay": True, **body_report(body)})
    return orjson.dumps({
        "input": {"partition": partition, "offset": pos.offset},
        "cause": cause,
        **fields,
        "named_by": named_by,
        "copies": copies,
        "decided": pos.decided,
        "clerk": clerk,
    })


def copy_versions(pos: Position) -> set[str]:
    """The ``domain_version`` values the held copies of ``pos`` name (a copy that is
    not a JSON object naming one counts as none): more than one means the instances
    judged the input with different domain logic (specs/versioning.allium,
    ClerkNamesVersionMismatch)."""
    found = set()
    for digest in set(pos.copies.values()):
        try:
            body = orjson.loads(pos.bodies[digest])
        except (orjson.JSONDecodeError, KeyError):
            continue
        version = body.get("domain_version") if isinstance(body, dict) else None
        if isinstance(version, str):
            found.add(version)
    return found


def naming_copy(pos: Position) -> str:
    """The instance whose copy names the request in a divergence record: the lowest
    instance id among the copies with the decided digest when the position is decided
    (and such a copy is held); otherwise the lowest instance id among the copies whose
    digest most copies share (with all copies different: the lowest instance id).
    Copies only, never a replayed copy: that instance's first copy stands."""
    if pos.decided is not None:
        agreeing = [i for i, d in pos.copies.items() if d == pos.decided]
        if agreeing:
            return min(agreeing)
    counts = collections.Counter(pos.copies.values())
    best = max(counts.values())
    return min(i for i, d in pos.copies.items() if counts[d] == best)


def _request_fields(body: bytes | None) -> dict:
    """idempotency_key, client, event_name, stream_time of a copy's body; each null when the
    body lacks it or it has the wrong type, or (a corrupted copy) is too long: a key
    over MAX_IDEMPOTENCY_KEY characters (the envelope allows no longer one), an event
    name over DIVERGENCE_NAME_LIMIT."""
    try:
        data = orjson.loads(body) if body is not None else {}
    except orjson.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    key, name, time = data.get("idempotency_key"), data.get("event_name"), data.get("stream_time")
    client = data.get("client")
    return {
        "idempotency_key": key if isinstance(key, str) and len(key) <= MAX_IDEMPOTENCY_KEY else None,
        "client": client if client_name_problem(client) is None else None,
        "event_name": name if isinstance(name, str) and len(name) <= DIVERGENCE_NAME_LIMIT else None,
        "stream_time": time if isinstance(time, int) and not isinstance(time, bool) else None,
    }


def body_report(body: bytes) -> dict:
    """A copy's body as a divergence record carries it: ``body`` (the canonical JSON
    the Clerk digested, embedded as JSON, byte for byte), ``body_bytes`` (its length)
    and ``body_truncated: false`` when it is at most DIVERGENCE_BODY_LIMIT bytes;
    otherwise ``body: null``, ``body_truncated: true`` and ``body_prefix``: its first
    DIVERGENCE_PREFIX_BYTES bytes as text (a UTF-8 character cut in two is dropped)."""
    if len(body) <= DIVERGENCE_BODY_LIMIT:
        return {"body": orjson.Fragment(body), "body_bytes": len(body), "body_truncated": False}
    prefix = body[:DIVERGENCE_PREFIX_BYTES].decode("utf-8", errors="ignore")
    return {"body": None, "body_bytes": len(body), "body_truncated": True, "body_prefix": prefix}


def _add_to_ranges(ranges: list[list[int]], offset: int) -> None:
    """Insert ``offset`` into sorted, disjoint [start, end) ranges, merging neighbours.
    Decisions come in offset order, so this is almost always the O(1) append."""
    if not ranges or offset > ranges[-1][1]:
        ranges.append([offset, offset + 1])
        return
    if offset == ranges[-1][1]:
        ranges[-1][1] += 1
        return
    i = bisect.bisect_right(ranges, [offset, float("inf")]) - 1
    if i >= 0 and ranges[i][0] <= offset < ranges[i][1]:
        return  # already there
    if i >= 0 and ranges[i][1] == offset:
        ranges[i][1] += 1
    else:
        i += 1
        ranges.insert(i, [offset, offset + 1])
    if i + 1 < len(ranges) and ranges[i][1] == ranges[i + 1][0]:
        ranges[i][1] = ranges.pop(i + 1)[1]
    if i > 0 and ranges[i - 1][1] == ranges[i][0]:
        ranges[i - 1][1] = ranges.pop(i)[1]
