"""Wire formats: the input record docket consumes and the output record each
instance emits. Spec: specs/usher.allium (intake), specs/arbiter.allium (output).

Input:  key = affinity key (UTF-8); value = JSON
        {"idempotency_key": str, "event_name": str, "payload": {...}, "client"?: str};
        ``client`` scopes the idempotency key (the API sets its client's name;
        Kafka-native producers leave it out, or name themselves);
        record timestamp = the broker's (LogAppendTime); the event's stream time is
        the greatest such timestamp at or below its offset (tables/warden.py).
Output: JSON {instance, digest, input: {partition, offset}, idempotency_key, client,
        event_name, domain_version, outcome, duplicate_of, stream_time}; ``digest``
        is SHA-256 of the canonical serialisation of every field but ``instance``
        and ``digest`` (the *body*).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from app.canonical import NotIJson, canonical_trusted, digest, loads_strict, utf8_problem
from app.registry import Rejection
from app.settings import client_name_problem

MAX_IDEMPOTENCY_KEY = 128
ENVELOPE_FIELDS = frozenset({"idempotency_key", "event_name", "payload", "client"})
MAX_VALUE_BYTES = 64 * 1024
# Bounds on what an output carries, so no output record can outgrow what Kafka takes
# (message.max.bytes, 1 MiB by default) whatever a producer sends: a longer record key
# or event name makes the record malformed, a longer detail text is cut.
MAX_KEY_BYTES = 1024
MAX_EVENT_NAME = 256
MAX_DETAIL = 1024
# Kafka's timestamp types: the producer's clock (CreateTime) or the broker's
CREATE_TIME, LOG_APPEND_TIME = 0, 1


@dataclass(slots=True)  # not frozen: a frozen init costs 3x (object.__setattr__ per field), per event
class InputRecord:
    partition: int
    offset: int
    timestamp: int  # ms; the broker's LogAppendTime (stream time: Warden.stream_time)
    key: bytes | None
    value: bytes | None
    # LOG_APPEND_TIME, or CREATE_TIME for a record appended while the input topic had
    # the producer's clock (it then moves no stream time: Warden.stream_time)
    timestamp_type: int = LOG_APPEND_TIME


@dataclass(slots=True)  # not frozen: a frozen init costs 3x (object.__setattr__ per field), per event
class Event:
    """An input record that decoded to the input envelope."""

    record: InputRecord
    stream_time: int  # ms, Warden.stream_time of the record
    key: str
    idempotency_key: str
    event_name: str
    payload: Any  # not yet validated against the domain
    client: str | None = None  # the scope of idempotency_key (an API client's name)
    entity_keys: tuple[str, ...] | None = None  # the domain's, once the Usher has asked it
    warden_prefix: bytes | None = None  # the Warden's table key prefix of (client, idempotency_key)


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (Java client and aiokafka): murmur2, positive, modulo."""
    return (_murmur2(key) & 0x7FFFFFFF) % partitions


def misrouted_detail(home: int, partition: int, partitions: int) -> str:
    """The detail of a ``misrouted`` rejection: where the record is, where its key
    belongs (``home``, :func:`partition_for`) and how a producer gets it there. A
    function of the three numbers alone (every instance writes the same bytes; no key
    is echoed), at most 400 characters (Kafka partition numbers are int32)."""
    return (f"the record is on partition {partition}, its key belongs on partition {home} of {partitions}: "
            f"docket routes by Kafka's default partitioner, murmur2(key) mod {partitions}, as the Java client "
            "and aiokafka do. Produce with it (librdkafka clients such as confluent-kafka and kcat: "
            "partitioner=murmur2_random; their default, consistent_random, puts keys elsewhere) and leave "
            "the partition to the partitioner")


@functools.lru_cache(maxsize=1 << 16)
def _murmur2(key: bytes) -> int:
    # aiokafka's murmur2 is pure Python (about 4 us for a short key); affinity keys
    # repeat (every event of a sku), so their hashes are remembered
    return murmur2(key)


def _not_json(value: bytes) -> str:
    # JSON exchanged between systems is UTF-8 without a byte order mark (RFC 8259,
    # section 8.1): say so when that is what is wrong, as the record key's check does
    if not value:
        return "record value is empty (an empty value is no JSON)"
    problem = utf8_problem(value)
    if problem is not None:
        return f"record value is not UTF-8 ({problem})"
    if value.startswith(b"\xef\xbb\xbf"):
        return "record value starts with a byte order mark (EF BB BF), which JSON sent between systems must not"
    return "record value is not JSON"


def decode(record: InputRecord, stream_time: int) -> Event | Rejection:
    """The envelope check. Anything a producer could get wrong becomes a named
    rejection; nothing raises."""
    if record.key is None:
        return Rejection("malformed_record", "record has no key (the key must be the affinity key)")
    if len(record.key) > MAX_KEY_BYTES:
        return Rejection("malformed_record", f"record key exceeds {MAX_KEY_BYTES} bytes")
    try:
        key = record.key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("malformed_record", f"record key is not UTF-8 ({utf8_problem(record.key)})")
    if record.value is None:
        return Rejection("malformed_record", "record has no value")
    if len(record.value) > MAX_VALUE_BYTES:
        return Rejection("malformed_record", f"record value exceeds {MAX_VALUE_BYTES} bytes")
    try:
        value = loads_strict(record.value)
    except orjson.JSONDecodeError:
        return Rejection("malformed_record", _not_json(record.value))
    except NotIJson as exc:
        return Rejection("malformed_record", f"record value is not I-JSON: {exc}")
    if not isinstance(value, dict):
        return Rejection("malformed_record", "record value must be a JSON object")
    extra = sorted(set(value) - ENVELOPE_FIELDS)
    if extra:
        return Rejection("malformed_record", f"unknown envelope field(s): {', '.join(extra)}")
    ikey = value.get("idempotency_key")
    if not isinstance(ikey, str) or not ikey:
        return Rejection("malformed_record", "idempotency_key must be a non-empty string")
    if len(ikey) > MAX_IDEMPOTENCY_KEY:
        return Rejection("malformed_record", f"idempotency_key exceeds {MAX_IDEMPOTENCY_KEY} characters")
    name = value.get("event_name")
    if not isinstance(name, str) or not name:
        return Rejection("malformed_record", "event_name must be a non-empty string")
    if len(name) > MAX_EVENT_NAME:
        return Rejection("malformed_record", f"event_name exceeds {MAX_EVENT_NAME} characters")
    if "payload" not in value:
        return Rejection("malformed_record", "payload is missing")
    client = value.get("client")
    if client is not None:
        problem = client_name_problem(client)
        if problem:
            return Rejection("malformed_record", f"client {problem}")
    return Event(record, stream_time, key, ikey, name, value["payload"], client)


def position(partition: int, offset: int) -> dict:
    return {"partition": partition, "offset": offset}


def body(
    record: InputRecord,
    *,
    stream_time: int,
    idempotency_key: str | None,
    client: str | None,
    event_name: str | None,
    domain_version: str,
    outcome: dict,
    duplicate_of: dict | None,
) -> bytes:
    """The canonical bytes every instance must produce identically for this record."""
    return canonical_trusted({
        "input": position(record.partition, record.offset),
        "idempotency_key": idempotency_key,
        "client": client,
        "event_name": event_name,
        "domain_version": domain_version,
        "outcome": outcome,
        "duplicate_of": duplicate_of,
        "stream_time": stream_time,
    })


def seal(body_bytes: bytes, instance: str) -> bytes:
    """The single-record form of an output: the body with ``instance`` and ``digest``
    added. Spliced rather than re-serialised: the body is already canonical, and the
    digest must be over exactly those bytes."""
    return seal_digested(body_bytes, digest(body_bytes), instance)


def seal_digested(body_bytes: bytes, body_digest: str, instance: str) -> bytes:
    """:func:`seal` with the digest already taken."""
    head = orjson.dumps({"instance": instance, "digest": body_digest})
    return head[:-1] + b"," + body_bytes[1:]


# Largest copy-batch record the instance writes (bytes of its copies' bodies): well
# under what Kafka takes in one record (message.max.bytes, 1 MiB by default) and the
# producer's batch (512 KiB, agents/plumbing.py). A batch with more is cut in several.
MAX_COPY_RECORD_BYTES = 256 * 1024


def seal_batch(instance: str, partition: int, watermark: int, outputs) -> list[bytes]:
    """The copy-batch records an instance writes for one batch of one input partition,
    usually one:

        {"instance": "a", "partition": 3, "watermark": 1236,
         "copies": [{"digest": "<hex sha-256 of body>", "body": "{\\"client\\":null,...}"}, ...]}

    ``copies`` in input offset order, one per input record of the batch, each ``body``
    the canonical output body as a JSON string: its exact bytes once UTF-8 encoded, so
    the Clerk digests them as they are, without decoding and encoding them again
    (a body decoded is needed only once per decided position); ``watermark`` is the next input
    offset of the partition covered: every record below it has its copy in this record
    or an earlier one of this run. Copies whose bodies add up to more than
    MAX_COPY_RECORD_BYTES go to further records; a record followed by another of the
    batch has the offset of that record's first copy as its watermark. ``outputs`` are
    agents.usher.Output. Spec: specs/arbiter.allium, CopyBatchRecord."""
    chunks: list[list] = [[]]
    size = 0
    for o in outputs:
        if chunks[-1] and size + len(o.body) > MAX_COPY_RECORD_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(o)
        size += len(o.body)
    records = []
    for n, chunk in enumerate(chunks):
        mark = watermark if n == len(chunks) - 1 else chunks[n + 1][0].offset
        records.append(orjson.dumps({
            "instance": instance, "partition": partition, "watermark": mark,
            "copies": [{"digest": o.digest, "body": o.body.decode("utf-8")} for o in chunk]}))
    return records


def unseal_batch(value: bytes) -> tuple[str | None, int | None, list[tuple[str, bytes]]]:
    """(instance, watermark, [(digest, body bytes), ...]) of a copy-batch record
    (:func:`seal_batch`); a record holding only a watermark has no copies. Raises
    orjson.JSONDecodeError, KeyError, TypeError or AttributeError for anything else."""
    data = orjson.loads(value)
    copies = []
    for copy in data.get("copies") or ():
        body = copy["body"]
        copies.append((copy["digest"], body.encode("utf-8") if isinstance(body, str) else canonical_trusted(body)))
    if not copies and "watermark" not in data:
        raise KeyError("copies")
    return data.get("instance"), data.get("watermark"), copies


def unseal(value: bytes) -> tuple[str, str, dict]:
    """(instance, digest, body) of an output record value."""
    out = orjson.loads(value)
    return out.pop("instance"), out.pop("digest"), out


def cut_detail(text: str) -> str:
    """``text`` whole up to MAX_DETAIL characters, else its first MAX_DETAIL and its
    length: "...x... (5000 characters)". Deterministic: the same text is cut the same
    way on every instance."""
    return text if len(text) <= MAX_DETAIL else f"{text[:MAX_DETAIL]}... ({len(text)} characters)"


def outcome(status: str, reason: str | None = None, detail: str = "", entities: list | None = None) -> dict:
    """One shape for every outcome, so consumers never guess which keys exist. A detail
    over MAX_DETAIL characters is cut there and marked (:func:`cut_detail`)."""
    return {"status": status, "reason": reason, "detail": cut_detail(detail), "entities": entities or []}


# --- reading what the Clerk writes (the results and divergences topics) -------------


class UnreadableRecord(ValueError):
    """A record of the results or divergences topic is not what the Clerk writes there
    (DocketClient skips it; the Clerk does not seed from it)."""


REASON_CHARS = 200  # of why a record was skipped, in its warning


def unreadable_reason(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, UnreadableRecord) else f"{type(exc).__name__}: {exc}"
    text = text if len(text) <= REASON_CHARS else text[:REASON_CHARS] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def json_object(raw: Any) -> dict:
    if raw is None:
        raise UnreadableRecord("no value (a tombstone)")
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        problem = utf8_problem(bytes(raw)) if isinstance(raw, (bytes, bytearray, memoryview)) else None
        raise UnreadableRecord(f"not JSON ({exc})" if problem is None else f"not UTF-8 ({problem})") from None
    if not isinstance(rec, dict):
        raise UnreadableRecord(f"not a JSON object but {type(rec).__name__}")
    return rec


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Kafka's partition numbers are signed 32-bit, its offsets signed 64-bit; neither is negative
PARTITION_LIMIT = 2**31
OFFSET_LIMIT = 2**63


def _check_position(value: Any, name: str) -> None:
    """UnreadableRecord unless ``value`` is an input position {partition, offset} Kafka
    can have: integers, the partition from 0 to 2^31 - 1, the offset from 0 to 2^63 - 2
    (the partition's end offset, one past its last record, is a signed 64-bit integer
    too). A report of offset -1 was indexed by the REST API (the fifteenth fresh-user
    trial); one of 2^63 - 1 could name no finished range and was refused as "not an
    integer from 2^63 to 2^63 - 1" (the sixteenth)."""
    if not (isinstance(value, dict) and _is_int(value.get("partition")) and _is_int(value.get("offset"))):
        raise UnreadableRecord(f"{name} is not an input position {{partition, offset}}")
    if not (0 <= value["partition"] < PARTITION_LIMIT and 0 <= value["offset"] < OFFSET_LIMIT - 1):
        raise UnreadableRecord(f"{name} is partition {_show(value['partition'])} offset {_show(value['offset'])}, "
                               "not a position Kafka can have (a partition from 0 to 2^31 - 1, an offset from "
                               "0 to 2^63 - 2)")


def _check_scope(rec: dict) -> None:
    for name in ("idempotency_key", "client"):
        if rec.get(name) is not None and not isinstance(rec[name], str):
            raise UnreadableRecord(f"{name} is not a string")


def check_result(rec: dict) -> None:
    """UnreadableRecord unless ``rec`` has every field of a result that
    DocketClient.on_result reads, of the type it needs."""
    _check_position(rec.get("input"), "input")
    _check_scope(rec)
    if not _is_int(rec.get("stream_time")):
        raise UnreadableRecord("stream_time is not an integer")
    if rec.get("duplicate_of") is not None:
        _check_position(rec["duplicate_of"], "duplicate_of")
    outcome = rec.get("outcome")
    if not isinstance(outcome, dict) or outcome.get("status") not in ("applied", "rejected"):
        raise UnreadableRecord("outcome is not {status: applied or rejected, ...}")
    if outcome["status"] == "rejected" and not isinstance(outcome.get("reason"), str):
        raise UnreadableRecord("a rejected outcome has no reason")
    entities = outcome.get("entities")
    if not isinstance(entities, list) or not all(
            isinstance(e, dict) and isinstance(e.get("key"), str) and _is_int(e.get("version")) and "state" in e
            for e in entities):
        raise UnreadableRecord("outcome.entities is not a list of {key, state, version}")


# The causes a divergence report names (specs/clerk.allium, DivergenceCause): a
# position whose copies disagree (mismatch; version_mismatch when they name different
# domain versions), an instance's replayed copy that differs from its first
# (replay_mismatch), and a duplicate withheld because its original diverged
# (original_diverged, ClerkWithholdsDuplicateOfDivergedOriginal).
DIVERGENCE_CAUSES = ("mismatch", "version_mismatch", "replay_mismatch", "original_diverged")
# Those that, with no decision, finish a position: it is never published.
FINISHING_CAUSES = ("mismatch", "version_mismatch", "original_diverged")


def check_report(rec: dict) -> None:
    """UnreadableRecord unless ``rec`` is a divergence report at all: its cause one of
    DIVERGENCE_CAUSES, its decision null or a digest (what every reader of the
    divergences topic asks first)."""
    if rec.get("cause") not in DIVERGENCE_CAUSES:
        raise UnreadableRecord("cause is not " + ", ".join(DIVERGENCE_CAUSES[:-1]) + " or " + DIVERGENCE_CAUSES[-1])
    if rec.get("decided") is not None and not isinstance(rec["decided"], str):
        raise UnreadableRecord("decided is neither null nor a digest")


def check_divergence(rec: dict) -> None:
    """UnreadableRecord unless a divergence report has the fields its readers use, of
    the type they need: the input position (:func:`_check_position`), the request's
    scope, its stream time, and ``copies`` a list of one or more objects, each naming
    its ``instance`` and ``digest`` as strings, as the Clerk always writes it
    (agents/clerk_core.py divergence_record). DocketClient.on_divergence
    asks it of a finishing report, whose copies a GET answers with, and `docket
    divergences` of every report it lists: one check, so the two do not disagree (a
    report with ``"copies": "x"`` was a diverged request to the API and unreadable to
    the listing: the fifteenth fresh-user trial)."""
    _check_position(rec.get("input"), "input")
    _check_scope(rec)
    if rec.get("stream_time") is not None and not _is_int(rec["stream_time"]):
        raise UnreadableRecord("stream_time is not an integer")
    copies = rec.get("copies")
    if not (isinstance(copies, list) and copies and all(
            isinstance(c, dict) and isinstance(c.get("instance"), str) and isinstance(c.get("digest"), str)
            for c in copies)):
        # every report the Clerk writes holds the copy or copies it is about (an empty
        # list, or an instance 7, was listed as a report: the sixteenth trial)
        raise UnreadableRecord("copies is not a list of one or more copies {instance, digest, ...}")


def entity_record(key: bytes | None, raw: bytes | None) -> tuple[str, dict | None]:
    """(entity key, value) of a record of the compacted entities topic: the value is the
    agreed state {key, state, version, input} as the Clerk writes it (agents/clerk_core.py
    entity_record), or None for a tombstone (the entity leaves the view). Raises
    UnreadableRecord for a record that is neither."""
    if key is None:
        raise UnreadableRecord("no record key" + (" (a tombstone without a key)" if raw is None else ""))
    try:
        name = bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableRecord("the record key is not UTF-8") from None
    if raw is None:
        return name, None
    rec = json_object(raw)
    if not isinstance(rec.get("key"), str):
        raise UnreadableRecord("key is not a string")
    if rec["key"] != name:
        raise UnreadableRecord("key is not the record's key (the Clerk writes the entity key as both)")
    if not _is_int(rec.get("version")):
        raise UnreadableRecord("version is not an integer")
    if "state" not in rec:
        raise UnreadableRecord("it has no state")
    if rec.get("input") is not None:
        _check_position(rec["input"], "input")
    return name, rec


def bounded_int(value, name: str, low: int, high: int | None) -> int:
    """``value`` if it is an integer from ``low`` to ``high`` (the input partition's end
    offset; None: any offset), else UnreadableRecord."""
    top = OFFSET_LIMIT - 1 if high is None else high
    if type(value) is not int or not low <= value <= top:
        bound = "2^63 - 1" if high is None else f"{high} (the input partition's end offset)"
        raise UnreadableRecord(f"{name} is {_show(value)}, not an integer from {low} to {bound}")
    return value


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def clerk_state(rec: dict, input_end: int | None = None) -> dict:
    """The ``clerk`` state (ClerkState: seq, decided_below, finished_ranges) a record of
    the results or divergences topic carries, checked: ``seq`` a non-negative integer,
    ``decided_below`` and every range bound integers from 0 to ``input_end`` (the input
    partition's end offset: no position at or beyond it can be final; 2^63 when not
    given), ranges [start, end) with decided_below <= start < end, sorted and disjoint.
    Raises UnreadableRecord saying what is wrong. The Clerk's restart seed reads it
    (agents/clerk_core.py tail_state), and every reader of a finishing divergence
    report asks it (:func:`finished_in`)."""
    state = rec.get("clerk")
    if not isinstance(state, dict):
        raise UnreadableRecord("no clerk state" if state is None else f"clerk is {type(state).__name__}, not an object")
    seq = bounded_int(state.get("seq"), "clerk.seq", 0, None)
    below = bounded_int(state.get("decided_below"), "clerk.decided_below", 0, input_end)
    ranges = state.get("finished_ranges")
    if not isinstance(ranges, list):
        raise UnreadableRecord("clerk.finished_ranges is not a list")
    checked = []
    floor = below
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2):
            raise UnreadableRecord(f"clerk.finished_ranges holds {_show(r)}, not a [start, end] pair")
        start = bounded_int(r[0], "a clerk.finished_ranges start", floor, input_end)
        end = bounded_int(r[1], "a clerk.finished_ranges end", start + 1, input_end)
        checked.append([start, end])
        floor = end
    return {"seq": seq, "decided_below": below, "finished_ranges": checked}


def finished_in(state: dict, offset: int) -> bool:
    """Whether the checked Clerk ``state`` (:func:`clerk_state`) counts input ``offset``
    as finished: below its decided watermark or in a finished range. Every report the
    Clerk writes finishes its position first (agents/clerk_core.py ClerkCore._report),
    so a finishing report whose own state does not is none the Clerk wrote."""
    return offset < state["decided_below"] or any(a <= offset < b for a, b in state["finished_ranges"])


def check_finishing_report(rec: dict, partition: int | None = None) -> None:
    """UnreadableRecord unless a report that finishes its position (checked by
    :func:`check_report` and :func:`check_divergence`) is one as the Clerk writes it: on
    the divergences partition of its input partition (``partition``, when the reader
    knows it) and with a Clerk state that counts its position finished (:func:`finished_in`).
    The API's client and `docket divergences` ask it (ApiIndexesDivergenceByKey); a
    report-shaped record without it turned a published request into "diverged" (the
    thirteenth and fourteenth fresh-user trials)."""
    where = rec["input"]
    if partition is not None and where["partition"] != partition:
        raise UnreadableRecord(f"it reports input partition {where['partition']} but lies on divergences "
                               f"partition {partition}")
    if not finished_in(clerk_state(rec), where["offset"]):
        raise UnreadableRecord(f"its clerk state does not count input offset {where['offset']} as finished")
