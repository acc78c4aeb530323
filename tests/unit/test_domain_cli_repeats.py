"""`docket domain activate` of a version that runs already, and `docket domain status`
under a DOCKET_DOMAIN the topics do not serve (specs/versioning.allium:
OperatorActivatesVersion, OperatorActivatesActiveVersion, StatusOfAnotherDomainRefused).
Both were user checks: a repeated activation wrote another record per partition
silently, and the status under DOCKET_DOMAIN=accounts printed inventory's table. No
broker: Kafka's side is replaced where the commands reach it (the status records,
the read of the input stream, the producer); tests/integration/test_domain_activate.py
runs them on one."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
import pytest
from click.testing import CliRunner

import app.domains  # noqa: F401  registers the built-in domains
from app import domain_cli
from app.registry import registry
from app.status import parse_status
from app.versions import ACTIVATION_KEY, DomainVersions, activation_record, status_record

INVENTORY = DomainVersions(registry.versions("inventory"))
PARTITIONS = [0, 1, 2]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """DOCKET_DOMAIN=inventory, three partitions, and a bootstrap no broker answers on
    (whatever these tests do not replace fails fast instead of reaching a broker)."""
    monkeypatch.setenv("DOCKET_DOMAIN", "inventory")
    monkeypatch.setenv("DOCKET_PARTITIONS", str(len(PARTITIONS)))
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setattr(domain_cli, "_statuses", lambda settings, timeout_s: [])
    return monkeypatch


class FakeKafka:
    """The input topic as `docket domain activate` meets it: ``running`` says which
    version number each partition's stream runs (what read_active_versions would read
    back); ``written`` collects the partitions the command writes an activation to."""

    def __init__(self, running: dict[int, int | None]) -> None:
        self.running = running
        self.reads = 0
        self.written: list[int] = []

    async def read_active_versions(self, settings, versions, partitions, timeout_s, window=0):
        self.reads += 1
        return {p: self.running[p] for p in partitions}

    async def produce_activations(self, settings, version, needed=None):
        partitions = list(PARTITIONS)
        if needed is not None:
            partitions = await needed(partitions)
        self.written.extend(partitions)
        return [(p, 100 + p) for p in partitions]


def activate(monkeypatch: pytest.MonkeyPatch, running: dict[int, int | None], *args: str):
    kafka = FakeKafka(running)
    # raising=False: the code before OperatorActivatesActiveVersion had no such read,
    # and these tests must fail there on what it wrote, not on a missing name
    monkeypatch.setattr(domain_cli, "read_active_versions", kafka.read_active_versions, raising=False)
    monkeypatch.setattr(domain_cli, "produce_activations", kafka.produce_activations)
    return kafka, CliRunner().invoke(domain_cli.domain, ["activate", *args])


# --- docket domain activate ----------------------------------------------------------

def test_activating_the_version_every_partition_runs_writes_nothing(cli_env) -> None:
    """OperatorActivatesActiveVersion: inventory/2 activated again, when every
    partition's stream names it already, writes no record and says so, exit 0 (it
    wrote another record per partition, silently). The base on a partition with no
    activation counts as running too."""
    kafka, out = activate(cli_env, {0: 2, 1: 2, 2: 2}, "inventory/2")
    assert out.exit_code == 0, out.output
    assert kafka.written == []
    assert out.stdout == ("version inventory/2 is already active on every partition of docket.input; nothing "
                          "written (--force writes the records anyway)\n")
    kafka, out = activate(cli_env, {0: 1, 1: 1, 2: 1}, "inventory/1")
    assert out.exit_code == 0 and kafka.written == [] and "already active on every partition" in out.stdout


def test_force_writes_every_partition_without_reading_them(cli_env) -> None:
    """OperatorActivatesVersion, OperatorActivatesActiveVersion: --force writes the
    activation to every partition, as before, without reading which version they run."""
    kafka, out = activate(cli_env, {0: 2, 1: 2, 2: 2}, "inventory/2", "--force")
    assert out.exit_code == 0, out.output
    assert kafka.written == PARTITIONS and kafka.reads == 0
    assert out.stdout.splitlines() == [f"docket.input[{p}]@{100 + p}: inventory/2" for p in PARTITIONS]


def test_activation_writes_only_the_partitions_that_do_not_run_the_version(cli_env) -> None:
    """OperatorActivatesVersion: a partition running inventory/2 already is left alone
    and named so; one on inventory/1 is written, and so is one whose stream could not
    be read back (None), with a note saying why: a repeat switches nothing, a missed
    record would leave the partition on another version."""
    kafka, out = activate(cli_env, {0: 2, 1: 1, 2: None}, "inventory/2")
    assert out.exit_code == 0, out.output
    assert kafka.written == [1, 2]
    assert out.stdout.splitlines() == ["docket.input[0]: inventory/2 already active; nothing written",
                                       "docket.input[1]@101: inventory/2", "docket.input[2]@102: inventory/2"]
    assert out.stderr.startswith("note: could not read partition(s) 2 back to their last activation record")


def test_partitions_to_activate_are_those_not_known_to_run_the_version() -> None:
    """OperatorActivatesVersion, OperatorActivatesActiveVersion: the decision alone."""
    assert domain_cli.partitions_to_activate(2, {0: 2, 1: 2}) == []
    assert domain_cli.partitions_to_activate(2, {2: 1, 0: 2, 1: None, 3: 7}) == [1, 2, 3]
    assert domain_cli.partitions_to_activate(1, {0: 1}) == []


def test_activation_number_reads_a_record_as_the_usher_does() -> None:
    """OperatorActivatesVersion (VersionIsAFunctionOfTheInput): only a well-formed
    activation record names the version a partition runs, a version this code does
    not register included (inventory/7, written with --force); an ordinary event,
    another domain's version, another event under the reserved key and an unreadable
    value switch nothing (the instances reject them alike)."""
    def number(key, value):
        return domain_cli.activation_number(INVENTORY, key, value)

    assert number(*activation_record("inventory/2", 0)) == 2
    assert number(*activation_record("inventory/7", 3)) == 7
    assert number(*activation_record("accounts/1", 0)) is None
    assert number(b"s1", activation_record("inventory/2", 0)[1]) is None
    assert number(ACTIVATION_KEY, orjson.dumps({"idempotency_key": "k", "event_name": "stock.adjust",
                                                "payload": {"version": "inventory/2"}})) is None
    assert number(ACTIVATION_KEY, orjson.dumps({"idempotency_key": "k", "event_name": "docket.activate",
                                                "payload": {"version": "inventory/2", "extra": 1}})) is None
    assert number(ACTIVATION_KEY, b"not json") is None
    assert number(ACTIVATION_KEY, None) is None


@dataclass
class Msg:
    offset: int
    key: bytes | None
    value: bytes | None


class FakeConsumer:
    """One partition's records, offset -> (key, value), from ``start`` to ``end``
    (offsets with no record are transaction markers); like Kafka's, a fetch returns
    up to ``fetch`` records from the position on, past the reader's window too."""

    def __init__(self, log: dict[int, tuple[bytes | None, bytes | None]], end: int, fetch: int = 5) -> None:
        self.log, self.end, self.fetch = log, end, fetch
        self.pos = 0
        self.seeks: list[int] = []

    def seek(self, tp, offset: int) -> None:
        self.seeks.append(offset)
        self.pos = offset

    async def position(self, tp) -> int:
        return self.pos

    async def getmany(self, tp, timeout_ms: int, max_records: int) -> dict:
        batch = [Msg(o, *self.log[o]) for o in sorted(self.log) if self.pos <= o < self.end][:self.fetch]
        self.pos = batch[-1].offset + 1 if batch else self.end
        return {tp: batch}


def event(i: int) -> tuple[bytes, bytes]:
    return b"s1", orjson.dumps({"idempotency_key": f"e{i}", "event_name": "stock.adjust",
                                "payload": {"warehouse": "w1", "sku": "s1", "delta": 1}})


def stream(n: int, activations: dict[int, str], gaps: tuple[int, ...] = ()) -> dict:
    return {o: activation_record(activations[o], 0) if o in activations else event(o)
            for o in range(n) if o not in gaps}


def last(log: dict, end: int, start: int = 0, window: int = 4, deadline: float | None = None,
         consumer: FakeConsumer | None = None) -> int | None:
    consumer = consumer or FakeConsumer(log, end)
    return asyncio.run(domain_cli.last_version(consumer, "tp", INVENTORY, start, end,
                                               deadline if deadline is not None else time.monotonic() + 60, window))


def test_the_version_a_partition_runs_is_its_last_activation_read_back_from_the_end() -> None:
    """OperatorActivatesVersion (stream_version_now): the last well-formed activation
    record, read back a window at a time, whatever the window boundaries; the base
    when the partition holds none from offset 0; unknown (None) when its first records
    are gone or the time runs out, so that activate writes it."""
    log = stream(30, {3: "inventory/2", 17: "inventory/1", 18: "accounts/1"}, gaps=(25, 26))
    for window in (1, 2, 3, 4, 5, 13, 100):
        assert last(log, 30, window=window) == 1, window  # 18 names another domain: rejected, switches nothing
    assert last(log, 17) == 2  # read below the later activation: the earlier one
    assert last(log, 3) == INVENTORY.base  # none below 3, from offset 0: the base
    assert last(stream(10, {}), 10, start=4) is None  # none since 4, and 0..3 gone: unknown
    assert last(log, 30, start=10) == 1  # found above the first record left: known
    assert last(log, 30, deadline=time.monotonic() - 1) is None
    reader = FakeConsumer(log, 30)
    last(log, 30, window=4, consumer=reader)
    assert reader.seeks == [26, 22, 18, 14]  # stops at the window holding the last activation
    # no activation within the look-back bound, more records before it: written, unread
    far = FakeConsumer(stream(100, {2: "inventory/2"}), 100)
    assert asyncio.run(domain_cli.last_version(far, "tp", INVENTORY, 0, 100, time.monotonic() + 60, 10,
                                               limit=30)) == domain_cli.BEYOND_LOOK_BACK
    assert far.seeks == [90, 80, 70]
    assert domain_cli.partitions_to_activate(2, {0: domain_cli.BEYOND_LOOK_BACK}) == [0]


# --- docket domain status ------------------------------------------------------------

def inventory_statuses() -> list[dict]:
    return [parse_status(*status_record("a", 0, "judging", 12, "inventory/2", ["inventory/1", "inventory/2"])),
            parse_status(*status_record("b", 0, "blocked", 12, "inventory/2", ["inventory/1"], "upgrade b")),
            parse_status(*status_record("a", 1, "judging", -1, "inventory/1", ["inventory/1", "inventory/2"]))]


def test_status_under_another_domain_prints_one_line_and_no_table(cli_env) -> None:
    """StatusOfAnotherDomainRefused, TopicsServeOneDomain: under DOCKET_DOMAIN=accounts
    on topics whose status records name inventory, `docket domain status` prints none
    of inventory's rows (it printed the table, the refusal after it) but one line:
    what DOCKET_DOMAIN says, the domain and versions the records name, what to do;
    exit 1."""
    cli_env.setattr(domain_cli, "_statuses", lambda settings, timeout_s: inventory_statuses())
    cli_env.setenv("DOCKET_DOMAIN", "accounts")
    out = CliRunner().invoke(domain_cli.domain, ["status"])
    assert out.exit_code == 1
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("Error: DOCKET_DOMAIN=accounts, but the status records on docket.status"), line
    assert "belong to the inventory domain (judging inventory/1, inventory/2; blocked inventory/2)" in line
    assert "run `DOCKET_DOMAIN=inventory docket domain status`" in line
    assert "give accounts its own DOCKET_TOPIC_PREFIX" in line
    cli_env.setenv("DOCKET_DOMAIN", "inventory")
    out = CliRunner().invoke(domain_cli.domain, ["status"])
    assert out.exit_code == 0 and out.stdout.count(" judging ") == 2 and "blocked" in out.stdout, out.output


def test_status_ignores_the_records_of_instances_outside_docket_instances(cli_env) -> None:
    """StatusOfOtherInstancesIgnored: `docket domain status` shows the rows of
    DOCKET_INSTANCES' instances and names the others on stderr; a stray record of
    another domain under another instance's name is no refusal."""
    stray = [parse_status(*status_record("c", 1, "blocked", 3, "inventory/2", ["inventory/1"], "raise it")),
             parse_status(*status_record("junk", 5, "judging", 5, "accounts/1", ["accounts/1"]))]
    cli_env.setattr(domain_cli, "_statuses", lambda settings, timeout_s: inventory_statuses() + stray)
    cli_env.setenv("DOCKET_DOMAIN", "inventory")
    out = CliRunner().invoke(domain_cli.domain, ["status"])
    assert out.exit_code == 0, out.output
    assert " c " not in out.stdout and "junk" not in out.stdout and out.stdout.count(" judging ") == 2, out.stdout
    assert "ignoring the status records of c, junk: not in DOCKET_INSTANCES=a,b" in out.stderr
    cli_env.setattr(domain_cli, "_statuses", lambda settings, timeout_s: stray)
    out = CliRunner().invoke(domain_cli.domain, ["status"])
    assert out.exit_code == 0 and "no instance of a,b has processed an event" in out.stdout, out.output


def test_status_shows_a_records_strings_escaped_and_reads_each_on_its_own_partition(cli_env) -> None:
    """OperatorListsDivergences' rule for a record's strings, in `docket domain status`:
    a forged version or remedy holding U+202E or ESC is shown as \\uXXXX, never sent raw
    to the terminal; and a record naming another input partition than the status
    partition it lies on is not a status record (one naming partition 99 of an
    8-partition topic was listed: the twelfth fresh-user trial)."""
    forged = parse_status(*status_record("a", 2, "blocked", 7, "inventory/\u202e7", ["inventory/1"], "do\u001b[2J"))
    stray = parse_status(*status_record("zz\u202e", 2, "judging", 7, "inventory/1", ["inventory/1"]))
    cli_env.setattr(domain_cli, "_statuses", lambda settings, timeout_s: inventory_statuses() + [forged, stray])
    cli_env.setenv("DOCKET_DOMAIN", "inventory")
    out = CliRunner().invoke(domain_cli.domain, ["status"])
    assert out.exit_code == 0, out.output
    assert "inventory/\\u202e7" in out.stdout and "do\\u001b[2J" in out.stdout, out.stdout
    assert "\u202e" not in out.stdout and "\u001b" not in out.stdout
    # the names of the instances it ignores too (the thirteenth trial: raw on stderr)
    assert "ignoring the status records of zz\\u202e" in out.stderr and "\u202e" not in out.stderr, out.stderr
    key, value = status_record("a", 99, "judging", 5, "inventory/1", ["inventory/1"])
    assert parse_status(key, value, 3) is None and parse_status(key, value, 99) is not None
    assert parse_status(key, value) is not None  # the caller that knows no partition


def test_status_of_a_domain_nobody_registered_is_a_setting_error(cli_env) -> None:
    """StatusOfAnotherDomainRefused (UnknownDomainRefusedAtStart): a DOCKET_DOMAIN that
    names no domain is refused before Kafka is read, exit 2, naming the registered
    domains, by the `docket domain` commands themselves (not only by `docket`)."""
    def unread(settings, timeout_s):
        raise AssertionError("the status topic was read")

    cli_env.setattr(domain_cli, "_statuses", unread)
    cli_env.setenv("DOCKET_DOMAIN", "acounts")
    for args in (["status"], ["versions"], ["activate", "acounts/1"]):
        out = CliRunner().invoke(domain_cli.domain, args)
        assert out.exit_code == 2, (args, out.output)
        assert "DOCKET_DOMAIN=acounts: no domain named 'acounts' (registered: accounts, inventory" in out.stderr


def test_wrong_domain_is_none_for_the_records_of_docket_domain(cli_env) -> None:
    """StatusOfAnotherDomainRefused: records naming only DOCKET_DOMAIN's domain are
    shown, not refused."""
    from app.settings import load

    assert domain_cli.wrong_domain("inventory", load(), inventory_statuses()) is None
    assert "belong to the inventory domain" in domain_cli.wrong_domain("accounts", load(), inventory_statuses())
