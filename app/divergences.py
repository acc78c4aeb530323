"""`docket divergences`: the recent reports of ``<prefix>.divergences``, each with a
field-level diff of its copies. Spec: specs/clerk.allium (DivergenceRecord,
OperatorListsDivergences).

    docket divergences                 # the 20 newest reports, as a table
    docket divergences --since 2h      # every report of the last two hours
    docket divergences --last 5 --json

The topic is read with ``isolation_level="read_committed"``, from the offsets the
options select up to the end offsets taken at the start (no consumer group, nothing
committed). Records are parsed with the standard library's ``json``, which keeps
integers of any size exact (orjson turns those beyond 64 bits into floats, and two
different big quantities could then look equal).

The diff (:func:`diff_copies`) is pure: for every JSON path where the copies' bodies
differ, the value each copy holds there, e.g. ``outcome.entities[0].state.quantity:
a=10 b=11``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import click

from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs
from app.canonical import lone_surrogate, nests_deeper, utf8_problem
from app.cli_types import Seconds
from app.printable import printable as _printable
from app.records import (
    FINISHING_CAUSES,
    UnreadableRecord,
    check_divergence,
    check_finishing_report,
    check_report,
)
from app.settings import Settings, load

DEFAULT_LAST = 20  # reports listed when neither --since nor --last is given
TEXT_CELL_CHARS = 120  # a value longer than this is cut (with "…") in the table, never in --json

ABSENT = "<absent>"  # the path does not exist in that copy's body
_MISSING = object()


@dataclass(frozen=True)
class DiffRow:
    """One path where the copies differ. ``values``: copy label -> the value there, as
    compact JSON text (keys sorted), or a marker in angle brackets (JSON text never
    starts with ``<``): ``<absent>``, ``<truncated>`` (that copy's body was cut, its
    value is unknown), ``<no body>`` (a record written before bodies were reported).

    Special paths: ``$`` is the whole body (the bodies differ at the top, or some copy's
    body is missing: then each copy's row value says why); ``(digest)`` when every body
    is complete and equal but the digests differ (a corrupted digest), the values are
    the digests' first 16 hex digits."""

    path: str
    values: dict[str, str]

    def as_dict(self) -> dict:
        return {"path": self.path, "values": dict(self.values)}

    def text(self) -> str:
        """The row as the table shows it, ``path: a=10 b=11``: the path, copy labels
        (instance ids) and values are a record's text, so they pass :func:`_printable`."""
        return _printable(f"{self.path}: " + " ".join(f"{label}={_cut(v)}" for label, v in self.values.items()))


def copy_labels(copies: list[dict]) -> list[str]:
    """One label per copy, in the record's order: the instance id, ``<id>(replay)`` for
    the replayed copy of a replay mismatch, ``#2``... appended if a label repeats."""
    labels: list[str] = []
    for c in copies:
        label = str(c.get("instance")) + ("(replay)" if c.get("replay") else "")
        base, n = label, 1
        while label in labels:
            n += 1
            label = f"{base}#{n}"
        labels.append(label)
    return labels


def diff_copies(copies: list[dict]) -> list[DiffRow]:
    """The field-level diff of a divergence record's ``copies`` (pure).

    Rows come in path order: objects are compared key by key (keys sorted), lists index
    by index (a list shorter than another is ``<absent>`` beyond its end); where the
    values differ in type, or one is absent, the row holds the whole values. Values are
    compared as JSON (1, 1.0 and true differ). A copy whose body is cut or missing takes
    no part in the comparison: it gets a ``$`` row saying so (first) and ``<truncated>``
    or ``<no body>`` in every other row. Identical complete bodies with different
    digests give the one row ``(digest)``."""
    labels = copy_labels(copies)
    bodies: dict[str, Any] = {}
    unknown: dict[str, str] = {}
    for label, c in zip(labels, copies, strict=True):
        if c.get("body_truncated"):
            unknown[label] = "<truncated>"
        elif c.get("body") is None:
            unknown[label] = "<no body>"
        else:
            bodies[label] = c["body"]
    rows: list[DiffRow] = []
    if unknown:
        rows.append(DiffRow("$", {label: _whole(label, c, unknown) for label, c in zip(labels, copies, strict=True)}))
    found: list[tuple[str, dict[str, Any]]] = []
    if len(bodies) >= 2:
        _walk(bodies, "", found)
    for path, values in found:
        rows.append(DiffRow(path or "$", {label: unknown[label] if label in unknown else _render(values[label])
                                          for label in labels}))
    if not rows and len({c.get("digest") for c in copies}) > 1:
        rows.append(DiffRow("(digest)", {label: str(c.get("digest"))[:16] for label, c in zip(labels, copies,
                                                                                               strict=True)}))
    return rows


def _whole(label: str, c: dict, unknown: dict[str, str]) -> str:
    size = c.get("body_bytes")
    of = "" if size is None else f" of {size} bytes"
    if label not in unknown:
        return f"<complete{of}>"
    if unknown[label] == "<truncated>":
        return f"<truncated: only a prefix{of}>"
    return "<no body>"


def _walk(values: dict[str, Any], path: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    if _all_same(list(values.values())):
        return
    present = list(values.values())
    if all(isinstance(v, dict) for v in present):
        for key in sorted(set().union(*present)):
            _walk({label: v.get(key, _MISSING) for label, v in values.items()}, _child(path, key), out)
    elif all(isinstance(v, list) for v in present):
        for i in range(max(len(v) for v in present)):
            _walk({label: v[i] if i < len(v) else _MISSING for label, v in values.items()}, f"{path}[{i}]", out)
    else:
        out.append((path, values))


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _child(path: str, key: str) -> str:
    if _IDENT.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _all_same(values: list[Any]) -> bool:
    first = values[0]
    if any((v is _MISSING) != (first is _MISSING) for v in values):
        return False
    if first is _MISSING:
        return True
    text = _json(first)
    return all(_json(v) == text for v in values[1:])


def _render(value: Any) -> str:
    return ABSENT if value is _MISSING else _json(value)


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CELL_CHARS else text[: TEXT_CELL_CHARS - 1] + "…"


# --------------------------------------------------------------------------- reading


async def read_reports(settings: Settings, *, since_ms: int | None = None, last: int | None = None,
                       timeout_s: float = 60.0) -> list[dict]:
    """:func:`_read_reports` within ``timeout_s`` seconds in all, connecting included: a
    listener that accepts and never answers (not Kafka, or a Kafka hung) held
    `docket divergences --timeout 0.001` past 40 s, each step waiting its own client
    timeout (the eleventh fresh-user trial). Raises what it raises, and TimeoutError
    past ``timeout_s``."""
    try:
        return await asyncio.wait_for(_read_reports(settings, since_ms=since_ms, last=last, timeout_s=timeout_s),
                                      timeout_s)
    except TimeoutError as exc:
        if str(exc):  # the reading loop's own, naming the partitions left
            raise
        raise TimeoutError(f"could not read {settings.divergences_topic} to its end offsets within {timeout_s:g} s "
                           "(no answer from Kafka)") from None


async def _read_reports(settings: Settings, *, since_ms: int | None = None, last: int | None = None,
                        timeout_s: float = 60.0) -> list[dict]:
    """The divergence reports of ``settings.divergences_topic`` written in the last
    ``since_ms`` milliseconds (by record timestamp; None: all the topic retains), of
    those the ``last`` newest (None: all), oldest first. Each is the record's JSON
    without ``clerk`` plus ``timestamp`` (ms), ``partition``, ``offset`` (of the report
    itself) and ``diff`` (:func:`diff_copies`, as dicts). A record that is not a JSON
    object is listed as ``{"unreadable": why}`` with its position. Raises TimeoutError
    when the topic cannot be read to its end offsets within ``timeout_s`` seconds,
    LookupError when the topic does not exist, KafkaAuthError (naming the setting) when
    Kafka refuses the login or the TLS handshake."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from app.kafka_admin import quiet
    from app.kafka_config import check_connection
    from chaos.replay import _partitions

    topic = settings.divergences_topic
    with quiet():  # a refused login is KafkaAuthError; unreachable is the consumer's to report
        await check_connection(settings, timeout_s=min(timeout_s, 10.0), component="divergences")
    consumer = AIOKafkaConsumer(**client_kwargs(settings, "divergences", "consumer", bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                isolation_level=ISOLATION_LEVEL, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024))
    try:
        with quiet():
            await consumer.start()
        tps = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        found = {}
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_timestamp_ms(since_ms, int(time.time() * 1000))
                                                      for tp in tps})
        starts = {}
        for tp in tps:
            start = begins[tp]
            if since_ms is not None:
                at = found.get(tp)
                start = max(start, at.offset if at is not None else ends[tp])
            starts[tp] = start
        deadline = time.monotonic() + timeout_s

        async def read(froms: dict) -> dict:
            """Every record of each partition from its offset in ``froms`` to its end."""
            out = {tp: [] for tp in froms}
            todo = set()
            for tp, start in froms.items():
                if start < ends[tp]:
                    consumer.seek(tp, start)
                    todo.add(tp)
            while todo:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} to its end offsets within {timeout_s:g} s "
                                       f"(partitions {sorted(tp.partition for tp in todo)} unfinished)")
                for tp, msgs in (await consumer.getmany(*todo, timeout_ms=500)).items():
                    out[tp].extend(m for m in msgs if m.offset < ends[tp])
                for tp in list(todo):
                    if await consumer.position(tp) >= ends[tp]:
                        todo.discard(tp)
            return out

        if last is None:
            got = await read(starts)
        else:
            # The `last` newest reports overall are among the `last` newest of each
            # partition. The Clerk writes them in transactions, and each commit marker
            # takes an offset too: the last `last` offsets held about half as many
            # reports (a fresh-clone user check). Look further back until a partition
            # yields `last` of them or its start is reached.
            got, window = {}, {tp: max(last, 1) for tp in tps}
            todo = [tp for tp in tps if starts[tp] < ends[tp]] if last > 0 else []
            while todo:
                froms = {tp: max(starts[tp], ends[tp] - window[tp]) for tp in todo}
                batch = await read(froms)
                got.update(batch)
                todo = [tp for tp in todo if len(batch[tp]) < last and froms[tp] > starts[tp]]
                for tp in todo:
                    window[tp] *= 2
        raw = [m for msgs in got.values() for m in msgs]
    finally:
        await consumer.stop()
    if since_ms is not None:
        # offsets_for_times finds the first record at or after the time; a partition
        # whose timestamps are not monotonic may hold older ones after it
        cutoff = int(time.time() * 1000) - since_ms
        raw = [m for m in raw if m.timestamp >= cutoff]
    raw.sort(key=lambda m: (m.timestamp, m.partition, m.offset))
    if last is not None:
        raw = raw[-last:] if last > 0 else []
    return [report_entry(m.value, m.timestamp, m.partition, m.offset) for m in raw]


# The deepest report the listing reads: the parser and the diff's walk recurse once per
# level, and Python's recursion limit (1,000) must never be what refuses one (a record
# nested 2,000 deep on the topic stopped the command with a RecursionError: the seventh
# fresh-user trial). A report of the Clerk's nests a few levels over its copies' bodies,
# whose payloads nest at most MAX_JSON_DEPTH (64).
REPORT_DEPTH = 200


def _not_json(constant: str):
    # NaN, Infinity and -Infinity: Python's parser takes them, JSON (RFC 8259) has no
    # such value, and the API and the Clerk skip such a record as not JSON: listed as a
    # report here, it was one no other reader saw (the twelfth fresh-user trial)
    raise ValueError(f"{constant} is not a JSON value")


def report_entry(value: bytes | None, timestamp: int, partition: int, offset: int) -> dict:
    """One listed report (see :func:`read_reports`)."""
    meta = {"timestamp": timestamp, "partition": partition, "offset": offset}
    if value is None:
        return {**meta, "unreadable": "no value (a tombstone)"}
    if nests_deeper(value, REPORT_DEPTH):
        return {**meta, "unreadable": f"nested deeper than {REPORT_DEPTH} levels"}
    # the standard library's parser takes an escaped lone surrogate, which no terminal
    # or JSON output can then encode (the ninth trial: every listing holding it crashed)
    lone = lone_surrogate(value) if b"\\u" in value else None
    if lone is not None:
        return {**meta, "unreadable": f"not I-JSON: {lone}"}
    try:
        rec = json.loads(value, parse_constant=_not_json)
    except ValueError as exc:
        problem = utf8_problem(value)
        return {**meta, "unreadable": f"not JSON: {exc}" if problem is None else f"not UTF-8 ({problem})"}
    if not isinstance(rec, dict):
        return {**meta, "unreadable": "not a JSON object"}
    try:
        check_report(rec)  # what the REST API also refuses to take for a report
        check_divergence(rec)
        if rec["cause"] in FINISHING_CAUSES and rec.get("decided") is None:
            # listed as a divergence, one the API and the Clerk skip was a request
            # published, shown as "nothing published" (the fourteenth trial)
            check_finishing_report(rec, partition)
    except UnreadableRecord as exc:
        return {**meta, "unreadable": f"not a divergence report: {exc}"}
    rec.pop("clerk", None)
    return {**meta, **rec, "diff": [row.as_dict() for row in diff_copies(rec["copies"])]}


# --------------------------------------------------------------------------- the command


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"500ms"`` -> milliseconds. Raises
    ValueError for anything else."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration: write a number and a unit (ms, s, m, h, d), e.g. 30m")
    return round(float(m[1]) * _UNIT_MS[m[2]])


def since_timestamp_ms(since_ms: int, now_ms: int) -> int:
    """The broker time (ms since the epoch) ``--since``'s duration reaches back to from
    ``now_ms``: at least 0, the first time Kafka can search for, since a duration longer
    than the time since 1970 asks for every report (Kafka refuses a negative target time:
    aiokafka raised ValueError, shown as a traceback)."""
    return max(0, now_ms - since_ms)


def listing_title(count: int, topic: str, since_ms: int | None, last: int | None, now_ms: int) -> str:
    """The title of the listing: how many reports, from which topic, within which
    window ("the last 2 h"; "any time" for a --since that reaches back past 1970, not
    "the last 864000000000000055460912693248 ms": the eighth fresh-user trial) and how
    many newest."""
    scope = []
    if since_ms is not None:
        scope.append("written at any time" if since_timestamp_ms(since_ms, now_ms) == 0
                     else f"written in the last {duration_text(since_ms)}")
    if last is not None:
        scope.append(f"the {last} newest")
    return f"{count} divergence report(s) on {topic}" + (f" ({', '.join(scope)})" if scope else "")


def duration_text(ms: int) -> str:
    """``ms`` in the largest unit of parse_duration_ms's that keeps it whole: "2 h",
    "90 s", "100000 d", "1500 ms" (the title of the listing)."""
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]} {unit}"
    return f"{ms} ms"


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            ms = parse_duration_ms(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if ms == 0:  # no report is written within no time ("the last 0 d": the ninth trial)
            self.fail(f"{value!r} is no time: give a DURATION above 0, e.g. 30m", param, ctx)
        return ms


class _ReportCount(click.ParamType):
    """--last: a whole number of reports, at least 1. Zero or a negative count would
    list nothing while its title claimed "the 0 newest" (a user check), so click
    refuses it as a usage error (exit 2)."""

    name = "N"

    def convert(self, value, param, ctx):
        count = click.INT.convert(value, param, ctx)  # "'x' is not a valid integer." for text
        if count < 1:
            # a UsageError, not self.fail: "Invalid value for '--last': --last must..." says it twice
            raise click.UsageError(f"--last must be at least 1, not {count} (it is how many of the newest "
                                   "reports to list)", ctx)
        return count


def _original_of(report: dict) -> str:
    """'partition@offset' of the original an original_diverged report's copies name
    (their ``duplicate_of``), or 'its original' when no copy says one readably."""
    for c in report.get("copies") or ():
        dup = c.get("body", {}).get("duplicate_of") if isinstance(c, dict) and isinstance(c.get("body"), dict) else None
        if isinstance(dup, dict) and "partition" in dup and "offset" in dup:
            return f"{dup['partition']}@{dup['offset']}"
    return "its original"


# The diff rows the table shows per report: a body corrupted throughout differs at
# every path, up to about a thousand within the 16 KiB of body a report carries
# (agents/clerk_core.py DIVERGENCE_BODY_LIMIT); --json lists them all.
TABLE_DIFF_ROWS = 20




def json_text(reports: list[dict]) -> str:
    """``reports`` as JSON (indent 2, UTF-8 characters as they are) whose text holds
    none of the characters :func:`_printable` escapes: each is written as a \\uXXXX
    escape, so the text is safe on a terminal and decodes to the very strings the
    records hold (``json.dumps`` escapes C0 controls only: DEL, C1, U+202E and U+2028
    went out raw; the eleventh fresh-user trial)."""
    text = json.dumps(reports, indent=2, ensure_ascii=False)
    # json.dumps writes a newline inside a string as \n: every raw one is indentation
    return "\n".join(_printable(line) for line in text.split("\n"))


def reports_table(reports: list[dict], title: str):
    """The rich table of :func:`read_reports`' entries. Every value from a report is
    plain text (never rich markup: a corrupted body may hold "[red]")."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", show_lines=True)
    for column in ("time", "input", "cause", "key / event", "what differs (value per copy)"):
        t.add_column(column)
    for r in reports:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["timestamp"] / 1000))
        if "unreadable" in r:
            t.add_row(when, Text(f"(report {r['partition']}@{r['offset']})"), Text("unreadable", style="red"), "",
                      Text(_printable(r["unreadable"])))
            continue
        inp = r.get("input") if isinstance(r.get("input"), dict) else {}
        cause = _printable(str(r.get("cause")))
        if r.get("decided") is not None:
            cause += f"\n(decided {_printable(str(r['decided'])[:12])}; the result stands)"
        elif cause in FINISHING_CAUSES:
            cause += "\n(nothing published)"
        # a string as it is, anything else as JSON (a Python repr showed {'x': 1})
        named = "\n".join("(none)" if v is None else _printable(v if isinstance(v, str) else _json(v))
                          for v in (r.get("idempotency_key"), r.get("event_name")))
        shown = r["diff"][:TABLE_DIFF_ROWS]
        more = len(r["diff"]) - len(shown)
        diff = "\n".join([*(DiffRow(d["path"], d["values"]).text() for d in shown),
                          *([f"... and {more} more row(s): --json lists every one"] if more else [])]) or (
            f"(the copies agree: a duplicate of {_printable(_original_of(r))}, which diverged)"
            if r.get("cause") == "original_diverged"
            else "(no difference found)")
        t.add_row(when, Text(_printable(f"{inp.get('partition')}@{inp.get('offset')}")), Text(cause), Text(named),
                  Text(diff))
    return t


@click.command("divergences")
@click.option("--since", "since_ms", type=_Duration(), default=None,
              help="only reports written within this DURATION (e.g. 30m, 2h, 7d)")
@click.option("--last", type=_ReportCount(), default=None,
              help=f"only the N newest reports, N >= 1 [default: {DEFAULT_LAST} unless --since is given]")
@click.option("--json", "as_json", is_flag=True, help="print the reports as JSON (one array) instead of a table")
@click.option("--timeout", "timeout_s", type=Seconds(), default=60.0, show_default=True,
              help="seconds to read the topic to its end before giving up")
def divergences(since_ms: int | None, last: int | None, as_json: bool, timeout_s: float) -> None:
    """List recent divergence reports, with what the copies disagree about."""
    from aiokafka.errors import KafkaError

    settings = load()
    if since_ms is None and last is None:
        last = DEFAULT_LAST
    try:
        reports = asyncio.run(read_reports(settings, since_ms=since_ms, last=last, timeout_s=timeout_s))
    except LookupError:
        click.echo(f"docket divergences: topic {settings.divergences_topic} does not exist on "
                   f"{settings.kafka_bootstrap}: check DOCKET_TOPIC_PREFIX, or run `docket topics create`", err=True)
        sys.exit(1)
    except TimeoutError as exc:  # before OSError, which it is: Kafka answered, but not within --timeout
        click.echo(f"docket divergences: timed out at {settings.kafka_bootstrap}: {exc}; a longer --timeout "
                   "may be all it needs", err=True)
        sys.exit(1)
    except (OSError, KafkaError) as exc:
        click.echo(f"docket divergences: cannot read {settings.divergences_topic} on "
                   f"{settings.kafka_bootstrap}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json_text(reports))
        return
    from rich.console import Console

    title = listing_title(len(reports), settings.divergences_topic, since_ms, last, int(time.time() * 1000))
    if not reports:
        click.echo(title)
        return
    print_table(reports_table(reports, title), Console())


def print_table(table, console) -> None:
    """Print rich ``table`` on ``console``. On a terminal the table fits the screen:
    cells wrap, and a word wider than its column is cut with "…". Piped or redirected
    there is no screen to fit (rich would take $COLUMNS, or 80), and a cut diff path
    could not be read back anywhere (a user check: "what differs" ended in "…" under a
    narrow $COLUMNS): the table is printed as wide as its cells need, every cell whole,
    and no line ends in spaces (rich pads the title to the table's width)."""
    if not console.is_terminal:
        from rich.measure import Measurement

        unbounded = console.options.update_width(1 << 20)  # any width wider than a table of cut values
        console.width = max(1, Measurement.get(console, unbounded, table).maximum)
        with console.capture() as captured:
            console.print(table)
        console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        return
    console.print(table)
