"""`docket divergences` without a broker: the field-level diff of a divergence record's
copies (app/divergences.py diff_copies, pure), the listing of one record as the Clerk
writes it, durations, and the table. Spec: integration.allium OperatorListsDivergences.
Against a real broker and a real fault: tests/integration/test_api_divergence.py."""

from __future__ import annotations

import copy as copy_mod
import json

import orjson
import pytest
from rich.console import Console

from agents.clerk_core import DIVERGENCE_BODY_LIMIT, ClerkCore, Report
from app.canonical import canonical, digest
from app.divergences import (
    DiffRow,
    copy_labels,
    diff_copies,
    json_text,
    parse_duration_ms,
    since_timestamp_ms,
    duration_text,
    listing_title,
    report_entry,
    reports_table,
)


def out(offset: int = 0, quantity: int = 10, **extra) -> dict:
    body = {"input": {"partition": 0, "offset": offset}, "idempotency_key": "k1", "event_name": "stock.adjust",
            "domain_version": "inventory/1", "duplicate_of": None, "stream_time": 1000,
            "outcome": {"status": "applied", "reason": None, "detail": "",
                        "entities": [{"key": "stock:w1:s1", "state": {"quantity": quantity}, "version": 1}]}}
    body.update(extra)
    return body


def cp(instance: str, body, **kw) -> dict:
    raw = canonical(body)
    return {"instance": instance, "digest": digest(raw), "body": body, "body_bytes": len(raw),
            "body_truncated": False, **kw}


def rows(copies: list[dict]) -> list[tuple[str, dict]]:
    return [(r.path, r.values) for r in diff_copies(copies)]


def test_nested_difference_names_the_json_path_and_each_instances_value() -> None:
    """OperatorListsDivergences: a bit flipped in a quantity is one row, the path of
    the quantity, with the value each instance produced."""
    assert rows([cp("a", out(quantity=10)), cp("b", out(quantity=11))]) == [
        ("outcome.entities[0].state.quantity", {"a": "10", "b": "11"})]
    (row,) = diff_copies([cp("a", out(quantity=10)), cp("b", out(quantity=11))])
    assert row.text() == "outcome.entities[0].state.quantity: a=10 b=11"


def test_every_differing_path_in_order_and_missing_keys_are_absent() -> None:
    """OperatorListsDivergences: objects key by key (sorted), a key one copy lacks is
    <absent>, where the types differ the row holds the whole values."""
    a = out(quantity=1, detail_extra={"x": 1}, tags=["t"])
    b = out(quantity=2, tags={"t": True})
    b["outcome"]["reason"] = "odd"
    b["weird key"] = 5
    assert rows([cp("a", a), cp("b", b)]) == [
        ("detail_extra", {"a": '{"x":1}', "b": "<absent>"}),
        ("outcome.entities[0].state.quantity", {"a": "1", "b": "2"}),
        ("outcome.reason", {"a": "null", "b": '"odd"'}),
        ("tags", {"a": '["t"]', "b": '{"t":true}'}),
        ('["weird key"]', {"a": "<absent>", "b": "5"}),
    ]


def test_lists_of_different_lengths_are_compared_index_by_index() -> None:
    """OperatorListsDivergences: a list shorter than another is <absent> beyond its end."""
    ent = {"key": "stock:w2:s1", "state": {"quantity": 3}, "version": 1}
    a, b = out(), out()
    b["outcome"]["entities"].append(ent)
    b["outcome"]["entities"][0]["version"] = 2
    assert rows([cp("a", a), cp("b", b)]) == [
        ("outcome.entities[0].version", {"a": "1", "b": "2"}),
        ("outcome.entities[1]", {"a": "<absent>", "b": '{"key":"stock:w2:s1","state":{"quantity":3},"version":1}'}),
    ]


def test_values_compare_as_json_not_as_python() -> None:
    """OperatorListsDivergences: 1 and true are different JSON values (Python says equal)."""
    assert rows([cp("a", {"v": 1}), cp("b", {"v": True})]) == [("v", {"a": "1", "b": "true"})]
    assert rows([cp("a", {"v": [1]}), cp("b", {"v": [True]})]) == [("v[0]", {"a": "1", "b": "true"})]
    big = 2**70  # beyond 64 bits: exact, never a float
    assert rows([cp("a", {"v": big}), cp("b", {"v": big + 1})]) == [("v", {"a": str(big), "b": str(big + 1)})]


def test_three_instances_show_every_copys_value_even_where_two_agree() -> None:
    """OperatorListsDivergences: with a, b and c, a row lists all three."""
    c = out(quantity=14)
    c["outcome"]["detail"] = "x"
    copies = [cp("a", out(quantity=10)), cp("b", out(quantity=10)), cp("c", c)]
    assert rows(copies) == [
        ("outcome.detail", {"a": '""', "b": '""', "c": '"x"'}),
        ("outcome.entities[0].state.quantity", {"a": "10", "b": "10", "c": "14"}),
    ]


def test_truncated_body_takes_no_part_and_says_so() -> None:
    """OperatorListsDivergences, CopyBodyWholeOrCut: a cut body's values are unknown:
    a `$` row says why, and it is <truncated> in every row; the complete ones are still
    compared with each other."""
    cut = {"instance": "c", "digest": "f" * 64, "body": None, "body_bytes": 40_000, "body_truncated": True,
           "body_prefix": '{"domain_version"'}
    copies = [cp("a", out(quantity=1)), cp("b", out(quantity=2)), cut]
    size = len(canonical(out(quantity=1)))
    assert rows(copies) == [
        ("$", {"a": f"<complete of {size} bytes>", "b": f"<complete of {size} bytes>",
               "c": "<truncated: only a prefix of 40000 bytes>"}),
        ("outcome.entities[0].state.quantity", {"a": "1", "b": "2", "c": "<truncated>"}),
    ]
    # one complete body and one cut: nothing to compare field by field, the `$` row says why
    assert [r.path for r in diff_copies([cp("a", out()), cut])] == ["$"]


def test_identical_bodies_with_different_digests_is_a_corrupted_digest() -> None:
    """OperatorListsDivergences: complete, equal bodies whose digests differ give the
    one row (digest)."""
    a, b = cp("a", out()), cp("b", out())
    b["digest"] = "0" * 64
    assert rows([a, b]) == [("(digest)", {"a": a["digest"][:16], "b": "0" * 16})]
    assert rows([cp("a", out()), cp("b", out())]) == []  # nothing differs at all: nothing to show


def test_records_written_before_bodies_were_reported_are_listed_without_a_field_diff() -> None:
    """OperatorListsDivergences: an old record (copies of instance and digest only)."""
    old = [{"instance": "a", "digest": "1" * 64}, {"instance": "b", "digest": "2" * 64}]
    assert rows(old) == [("$", {"a": "<no body>", "b": "<no body>"})]


def test_replayed_copy_has_its_own_label() -> None:
    """OperatorListsDivergences: the replayed copy of a replay_mismatch is `a(replay)`."""
    copies = [cp("a", out(quantity=1)), cp("b", out(quantity=1)), cp("a", out(quantity=3), replay=True)]
    assert copy_labels(copies) == ["a", "b", "a(replay)"]
    assert copy_labels([{"instance": "a"}, {"instance": "a"}]) == ["a", "a#2"]
    assert rows(copies) == [("outcome.entities[0].state.quantity", {"a": "1", "b": "1", "a(replay)": "3"})]


def _clerk_report(body_a: bytes, body_b: bytes) -> bytes:
    core = ClerkCore(("a", "b"), 2)
    core.on_copy(0, 5, "a", digest(body_a), body_a, None)
    (report,) = core.on_copy(0, 5, "b", digest(body_b), body_b, None)
    assert isinstance(report, Report)
    return report.value


def test_a_clerk_record_is_listed_with_its_request_and_its_diff() -> None:
    """OperatorListsDivergences, ClerkPublishesDivergence: the record exactly as the
    Clerk writes it, listed: its fields (without the Clerk's state), where it sits on
    the topic, and the diff; the table shows the key, event and the diff line."""
    raw = _clerk_report(canonical(out(5, quantity=10)), canonical(out(5, quantity=11)))
    entry = report_entry(raw, 1_700_000_000_000, 0, 3)
    assert "clerk" not in entry
    assert (entry["timestamp"], entry["partition"], entry["offset"]) == (1_700_000_000_000, 0, 3)
    assert (entry["idempotency_key"], entry["event_name"], entry["cause"]) == ("k1", "stock.adjust", "mismatch")
    assert entry["diff"] == [{"path": "outcome.entities[0].state.quantity", "values": {"a": "10", "b": "11"}}]
    console = Console(width=200, record=True)
    console.print(reports_table([entry], "t"))
    text = console.export_text()
    assert "k1" in text and "stock.adjust" in text and "outcome.entities[0].state.quantity: a=10 b=11" in text
    markup = report_entry(_clerk_report(canonical(out(5, note="[red]x[/red]")), canonical(out(5))), 0, 0, 5)
    console = Console(width=200, record=True)
    console.print(reports_table([markup], "t"))
    assert 'note: a="[red]x[/red]" b=<absent>' in console.export_text()  # shown, never interpreted

    big = canonical(out(5, padding="x" * DIVERGENCE_BODY_LIMIT))
    entry = report_entry(_clerk_report(big, canonical(out(5))), 0, 0, 4)
    assert entry["diff"][0]["path"] == "$" and entry["diff"][0]["values"]["a"].startswith("<truncated")

    assert report_entry(b"not json", 0, 1, 2)["unreadable"].startswith("not JSON")
    assert report_entry(b"[1]", 0, 1, 2)["unreadable"] == "not a JSON object"
    # records no Clerk writes are named unreadable, not listed as reports of None@None
    # (the sixth fresh-user trial), as the REST API names them
    assert report_entry(None, 0, 1, 2)["unreadable"] == "no value (a tombstone)"
    assert report_entry(b"\xff\xfe", 0, 1, 2)["unreadable"] == "not UTF-8 (byte 0xff at offset 0)"
    assert report_entry(b"{}", 0, 1, 2)["unreadable"] == (
        "not a divergence report: cause is not mismatch, version_mismatch, replay_mismatch or original_diverged")
    assert report_entry(b'{"cause":"mismatch"}', 0, 1, 2)["unreadable"] == (
        "not a divergence report: input is not an input position {partition, offset}")
    assert report_entry(b'{"cause":"mismatch","input":{"partition":0,"offset":"x"}}', 0, 1, 2)["unreadable"].startswith(
        "not a divergence report: input is not")
    # nested past what the parser and the diff's walk recurse through (the seventh trial's RecursionError)
    deep = b'{"a":' * 2000 + b"1" + b"}" * 2000
    assert report_entry(deep, 0, 1, 2)["unreadable"] == "nested deeper than 200 levels"
    copies_deep = orjson.loads(raw)
    copies_deep["copies"][0]["body"] = "x"  # placeholder, replaced below by a 3,000-deep value
    text = orjson.dumps(copies_deep).replace(b'"body":"x"', b'"body":' + b"[" * 3000 + b"]" * 3000)
    assert report_entry(text, 0, 1, 2)["unreadable"] == "nested deeper than 200 levels"
    # a cause or copies no Clerk writes: unreadable too, not a report of cause None and no difference
    original = orjson.loads(raw)
    for field, value, why in [("copies", "garbage", "copies is not a list of one or more copies {instance, digest, ...}"),
                              ("copies", [1, 2], "copies is not a list of one or more copies {instance, digest, ...}"),
                              ("cause", None, "cause is not mismatch, version_mismatch, replay_mismatch or "
                                              "original_diverged"),
                              ("cause", "x" * 500, "cause is not mismatch"),
                              ("decided", 5, "decided is neither null nor a digest")]:
        mangled = {**copy_mod.deepcopy(original), field: value}
        assert report_entry(orjson.dumps(mangled), 0, 0, 0)["unreadable"].startswith(
            f"not a divergence report: {why}"), (field, value)
    assert len(report_entry(orjson.dumps({**original, "cause": "x" * 5000}), 0, 0, 0)["unreadable"]) < 200
    for cause in ("mismatch", "version_mismatch", "original_diverged", "replay_mismatch"):
        assert "unreadable" not in report_entry(orjson.dumps({**original, "cause": cause}), 0, 0, 0)


def test_the_table_shows_at_most_twenty_diff_rows_per_report() -> None:
    """OperatorListsDivergences: a body that differs at every path (300 members)
    is 20 rows in the table and a line saying how many more; --json keeps every row."""
    wide = {f"m{i:04d}": i for i in range(300)}
    entry = report_entry(_clerk_report(canonical(out(5, **wide)), canonical(out(5))), 0, 0, 3)
    assert len(entry["diff"]) == 300
    console = Console(width=200, record=True)
    console.print(reports_table([entry], "t"))
    text = console.export_text()
    assert "m0019: a=19 b=<absent>" in text and "m0020:" not in text
    assert "... and 280 more row(s): --json lists every one" in text


@pytest.mark.parametrize(("text", "ms"), [("500ms", 500), ("90s", 90_000), ("15m", 900_000), ("2h", 7_200_000),
                                          ("7d", 604_800_000), ("1.5h", 5_400_000)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "10", "m", "5 weeks", "-3m"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="write a number and a unit"):
        parse_duration_ms(text)


def test_long_values_are_cut_in_the_table_only() -> None:
    row = DiffRow("p", {"a": '"' + "x" * 500 + '"', "b": "1"})
    assert len(row.text()) < 300 and row.text().endswith("b=1")
    assert row.as_dict()["values"]["a"] == '"' + "x" * 500 + '"'


async def _reading_forbidden(*_args, **_kwargs) -> list[dict]:
    raise AssertionError("docket divergences read the topic for a request it should have refused")


@pytest.mark.parametrize("last", ["0", "-1"])
def test_last_below_one_is_refused_as_a_usage_error(monkeypatch: pytest.MonkeyPatch, last: str) -> None:
    """OperatorListsDivergences: `docket divergences --last 0` listed "(the 0 newest)" (a
    user check); --last 0 or below is a usage error, exit 2, "--last must be at least 1",
    before anything is read."""
    from click.testing import CliRunner

    import app.divergences as divergences_mod

    monkeypatch.setattr(divergences_mod, "read_reports", _reading_forbidden)
    out = CliRunner().invoke(divergences_mod.divergences, ["--last", last])
    assert out.exit_code == 2, (out.output, out.exception)
    assert f"Error: --last must be at least 1, not {last}" in out.output, out.output
    assert "newest)" not in out.output


def _long_path_entry() -> tuple[dict, str]:
    """A listed report whose one diff row is longer than any narrow screen, and that row."""
    field = "a_rather_long_field_name_of_the_entity_state"
    b = out(5, quantity=10)
    b["outcome"]["entities"][0]["state"][field] = "value-without-spaces-0123456789-abcdefghij"
    entry = report_entry(_clerk_report(canonical(out(5, quantity=10)), canonical(b)), 1_700_000_000_000, 0, 3)
    return entry, f'outcome.entities[0].state.{field}: a=<absent> b="value-without-spaces-0123456789-abcdefghij"'


def test_piped_table_cuts_no_path_or_value_whatever_the_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """OperatorListsDivergences: `docket divergences | ...` with COLUMNS=50 cut the "what
    differs" column to "outcome.entitie…" (a user check). Not on a terminal, the table is
    as wide as its cells need: the diff row comes out whole, on one line."""
    from click.testing import CliRunner

    import app.divergences as divergences_mod

    entry, row = _long_path_entry()

    async def reports(*_args, **_kwargs) -> list[dict]:
        return [entry]

    monkeypatch.setattr(divergences_mod, "read_reports", reports)
    # FORCE_COLOR / TTY_COMPATIBLE would make rich treat the pipe as a terminal
    env = {"COLUMNS": "50", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
    got = CliRunner().invoke(divergences_mod.divergences, ["--last", "1"], env=env)
    assert got.exit_code == 0, (got.output, got.exception)
    assert row in got.output, got.output
    assert "…" not in got.output, got.output
    # the title's line was padded to the table's width (a user check)
    assert all(line == line.rstrip() for line in got.output.splitlines()), got.output


def test_table_on_a_terminal_still_fits_the_screen() -> None:
    """OperatorListsDivergences: on a terminal the table keeps fitting the screen's
    width (cells wrap; the whole row is in --json)."""
    import io

    from app.divergences import print_table

    entry, row = _long_path_entry()
    screen = io.StringIO()
    print_table(reports_table([entry], "t"), Console(file=screen, width=50, force_terminal=True, color_system=None))
    lines = screen.getvalue().splitlines()
    assert lines and max(len(line) for line in lines) <= 50, screen.getvalue()
    assert row not in screen.getvalue()


def withheld_duplicate_report():
    """The Clerk's original_diverged report (a Record) of input[0]@9, a duplicate whose
    copies agree, of input[0]@5, whose copies (a quantity 10, b 11) diverged."""
    core = ClerkCore(("a", "b"), 2)
    core.on_copy(0, 5, "a", digest(canonical(out(5, quantity=10))), canonical(out(5, quantity=10)), None)
    core.on_copy(0, 5, "b", digest(canonical(out(5, quantity=11))), canonical(out(5, quantity=11)), None)
    dup = canonical(out(9, quantity=10, duplicate_of={"partition": 0, "offset": 5}))
    core.on_copy(0, 9, "a", digest(dup), dup, None)
    (report,) = core.on_copy(0, 9, "b", digest(dup), dup, None)
    return report


def test_a_withheld_duplicate_is_listed_with_the_original_it_names() -> None:
    """OperatorListsDivergences, ClerkWithholdsDuplicateOfDivergedOriginal: an
    original_diverged report (the copies agree) is listed as nothing published, and
    its diff column names the diverged original instead of "no difference found"."""
    report = withheld_duplicate_report()
    entry = report_entry(report.value, 0, 0, 7)
    assert entry["cause"] == "original_diverged" and entry["diff"] == []
    console = Console(width=200, record=True)
    console.print(reports_table([entry], "t"))
    text = console.export_text()
    assert "(nothing published)" in text
    assert "the copies agree: a duplicate of 0@5, which diverged" in text


def test_a_since_longer_than_the_epoch_asks_for_every_report() -> None:
    """OperatorListsDivergences: `docket divergences --since 100000d` lists every
    report, as a duration reaching before 1970 asks for; before, Kafka's refusal of a
    negative target time came out as a traceback (the sixth fresh-user trial)."""
    now = 1_796_000_000_000
    assert since_timestamp_ms(parse_duration_ms("100000d"), now) == 0
    assert since_timestamp_ms(parse_duration_ms("99999999999d"), now) == 0
    assert since_timestamp_ms(parse_duration_ms("2h"), now) == now - 7_200_000
    # and the listing's title says the window in its own unit, not "8.64e+09 s" (the seventh trial)
    assert [duration_text(parse_duration_ms(t)) for t in ("100000d", "2h", "90s", "1.5h", "500ms")] == [
        "100000 d", "2 h", "90 s", "90 m", "500 ms"]
    # ... and a window reaching back past 1970 is "any time", not a 30-digit count of ms
    # (the eighth trial: --since 9999999999999999999999d)
    assert listing_title(3, "docket.divergences", parse_duration_ms("9999999999999999999999d"), None, now) == (
        "3 divergence report(s) on docket.divergences (written at any time)")
    assert listing_title(0, "t", parse_duration_ms("2h"), 5, now) == "0 divergence report(s) on t (written in the last " \
        "2 h, the 5 newest)"
    assert listing_title(1, "t", None, None, now) == "1 divergence report(s) on t"


def test_a_report_with_a_lone_surrogate_is_one_unreadable_row() -> None:
    """OperatorListsDivergences: a record escaping a lone surrogate is an unreadable row
    saying so; the standard library's parser took it, and printing it crashed every
    listing that held it (UnicodeEncodeError: the ninth fresh-user trial)."""
    raw = (b'{"input":{"partition":0,"offset":1},"cause":"mismatch","copies":[{"instance":"a","digest":"x",'
           b'"body":{"a":"\\ud800"}},{"instance":"b","digest":"y","body":{"a":1}}]}')
    entry = report_entry(raw, 0, 0, 13)
    assert entry["unreadable"].startswith("not I-JSON: a string holds the escape \\ud800 at byte offset "), entry
    console = Console(width=200, record=True)
    console.print(reports_table([entry], "t"))
    console.export_text().encode("utf-8")  # printable: nothing left that UTF-8 cannot encode
    json.dumps([entry], ensure_ascii=False).encode("utf-8")  # and --json


def test_control_characters_of_a_report_are_shown_escaped() -> None:
    """OperatorListsDivergences: a key or event name holding ESC or BEL (any string a
    Kafka-native producer sends) is shown as \\u001b, never sent raw to the terminal,
    which would act on it (clear the screen, set its title: the ninth trial)."""
    original = orjson.loads(_clerk_report(canonical(out(5, quantity=10)), canonical(out(5, quantity=11))))
    hostile = "esc-3\u001b[2J\u001b]0;pwned\u0007\u009b"
    entry = report_entry(orjson.dumps({**original, "idempotency_key": hostile, "event_name": "e\u007f"}), 0, 0, 3)
    console = Console(width=300, record=True)
    console.print(reports_table([entry], "t"))
    text = console.export_text()
    assert "esc-3\\u001b[2J\\u001b]0;pwned\\u0007\\u009b" in text and "e\\u007f" in text, text
    assert not any(c in text for c in "\u001b\u0007\u007f\u009b")


def test_every_string_of_a_report_in_the_table_is_escaped() -> None:
    """OperatorListsDivergences: a copy's instance, a diff path and value, and the
    original a duplicate names are a record's strings as much as its key: ESC, U+202E
    (RIGHT-TO-LEFT OVERRIDE) and the other control and format characters are shown as
    \\uXXXX (a copy's instance "b\\x1b[2J" was printed raw: a fresh-user trial)."""
    original = orjson.loads(_clerk_report(canonical(out(5, quantity=10)), canonical(out(5, quantity=11))))
    original["copies"][1]["instance"] = "b\u001b[2J"
    original["copies"][0]["instance"] = "a\u202eevil"
    original["copies"][0]["body"]["outcome"]["detail"] = "d\u2066\u200b\u2028\U000e0001"
    original["copies"][0]["body"]["k\u202e"] = 1
    entry = report_entry(orjson.dumps(original), 0, 0, 3)
    console = Console(width=300, record=True)
    console.print(reports_table([entry], "t"))
    text = console.export_text()
    assert "b\\u001b[2J=11" in text and "a\\u202eevil=10" in text, text
    assert 'a\\u202eevil="d\\u2066\\u200b\\u2028\\udb40\\udc01"' in text, text
    assert '["k\\u202e"]: a\\u202eevil=1 b\\u001b[2J=<absent>' in text, text
    assert not any(c in text for c in "\u001b\u202e\u2066\u200b\u2028\U000e0001"), text
    # --json keeps the record's strings
    assert [r["values"] for r in entry["diff"]][-1] == {"a\u202eevil": "10", "b\u001b[2J": "11"}

    report = withheld_duplicate_report()
    withheld = orjson.loads(report.value)
    for c in withheld["copies"]:  # the original it names, as a corrupted copy could name it
        c["body"]["duplicate_of"] = {"partition": "0\u202e", "offset": "5\u001b[2J"}
    entry = report_entry(orjson.dumps(withheld), 0, 0, 7)
    assert entry["cause"] == "original_diverged" and entry["diff"] == [], entry
    console = Console(width=300, record=True)
    console.print(reports_table([entry], "t"))
    text = console.export_text()
    assert "a duplicate of 0\\u202e@5\\u001b[2J, which diverged" in text, text
    assert not any(c in text for c in "\u001b\u202e"), text


def test_json_listing_escapes_what_the_table_escapes() -> None:
    """OperatorListsDivergences: --json writes DEL, C1 controls, format characters and
    line separators of a record's strings as \\uXXXX escapes (they went out raw: the
    eleventh fresh-user trial), and its text still parses to the record's strings."""
    original = orjson.loads(_clerk_report(canonical(out(5, quantity=10)), canonical(out(5, quantity=11))))
    original["copies"][1]["instance"] = "b\u001b[2J\u007f\u009b"
    original["copies"][0]["instance"] = "a\u202eevil\u2028\U000e0001"
    original["idempotency_key"] = "k\nline\u00e9"
    entry = report_entry(orjson.dumps(original), 0, 0, 3)
    text = json_text([entry])
    assert not any(c in text for c in "\u001b\u007f\u009b\u202e\u2028\U000e0001"), text
    assert "b\\u001b[2J\\u007f\\u009b" in text and "a\\u202eevil\\u2028\\udb40\\udc01" in text, text
    assert "\u00e9" in text  # a printable non-ASCII character stays as it is
    assert json.loads(text) == json.loads(json.dumps([entry])), text


def test_a_report_with_nan_or_infinity_is_unreadable_and_a_non_string_name_shows_as_json() -> None:
    """OperatorListsDivergences: NaN and Infinity are no JSON values; the API and the
    Clerk skip such a record as not JSON, and the listing showed it as a report (the
    twelfth fresh-user trial). An event_name that is not a string shows as JSON, not as
    a Python repr."""
    original = orjson.loads(_clerk_report(canonical(out(5, quantity=10)), canonical(out(5, quantity=11))))
    raw = orjson.dumps(original)
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        entry = report_entry(raw[:-1] + b',"stream_time":' + constant + b"}", 0, 0, 3)
        assert entry["unreadable"] == f"not JSON: {constant.decode()} is not a JSON value", entry
    entry = report_entry(orjson.dumps({**original, "event_name": {"x": 1}}), 0, 0, 3)
    console = Console(width=300, record=True)
    console.print(reports_table([entry], "t"))
    text = console.export_text()
    assert '{"x":1}' in text and "{'x': 1}" not in text, text


def test_a_finishing_report_not_as_the_clerk_writes_it_is_listed_unreadable() -> None:
    """OperatorListsDivergences, ApiIndexesDivergenceByKey: a report that finishes its
    position without a Clerk state counting it finished, or on another divergences
    partition than its input's, is none the Clerk writes: the API and the Clerk skip it,
    and the listing showed it as "nothing published" for a request whose result was
    published (the fourteenth fresh-user trial). It is listed unreadable, saying why."""
    genuine = orjson.loads(_clerk_report(canonical(out(5, quantity=10)), canonical(out(5, quantity=11))))
    assert "unreadable" not in report_entry(orjson.dumps(genuine), 0, 0, 3)
    cases = [({k: v for k, v in genuine.items() if k != "clerk"}, 0, "no clerk state"),
             ({**genuine, "clerk": {"seq": 1, "decided_below": 0, "finished_ranges": [[6, 7]]}}, 0,
              "its clerk state does not count input offset 5 as finished"),
             (genuine, 3, "it reports input partition 0 but lies on divergences partition 3")]
    for rec, partition, says in cases:
        entry = report_entry(orjson.dumps(rec), 0, partition, 3)
        assert entry["unreadable"] == f"not a divergence report: {says}", entry


def test_a_since_of_no_time_is_a_usage_error() -> None:
    """OperatorListsDivergences: --since 0s asks for nothing; it was listed as "the
    last 0 d" (the ninth trial)."""
    from click.testing import CliRunner

    from app.divergences import divergences

    result = CliRunner().invoke(divergences, ["--since", "0s"])
    assert result.exit_code == 2 and "'0s' is no time" in result.output, result.output


def test_divergences_gives_up_within_its_timeout_on_a_listener_that_never_answers(tmp_path) -> None:
    """OperatorListsDivergences: a port that accepts connections and never answers (not
    Kafka, or a Kafka hung) held `docket divergences --timeout 0.001` past 40 s, each
    step waiting its own client timeout (the eleventh fresh-user trial). It exits 1 with
    a line saying it timed out within --timeout. The subprocess's own limit (60 s) only
    stops a hang; the run takes about its --timeout plus start-up."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(50)  # the kernel completes connections; nobody reads them
        port = silent.getsockname()[1]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")},
               "DOCKET_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "DOCKET_DATA_ROOT": str(tmp_path)}
        proc = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "divergences",
                               "--timeout", "0.01"], env=env, capture_output=True, text=True, timeout=60,
                              check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "timed out" in proc.stderr and "within 0.01 s" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
