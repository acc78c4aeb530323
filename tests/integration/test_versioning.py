"""Live versioning on a real broker (specs/versioning.allium): instances a and b and the
Clerk as processes; ``docket domain activate inventory/2`` run as a user runs it.
An instance "of older code" is one started with DOCKET_DOMAIN_VERSION_LIMIT=1; an
upgrade is a restart without it. The results are compared with the pure replay of
the recorded input, activation records included (chaos/replay.py)."""
# ruff: noqa: F811  (test arguments name the fixtures imported from clerk_kit)

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import app.domains  # noqa: F401  registers the built-in domains
from app.settings import Settings
from chaos import workload
from chaos.replay import end_offsets
from launcher.broker import free_port
from tests.integration.clerk_kit import (
    DocketProc,
    Position,
    Rec,
    TopicTail,
    by_position,
    clerk_env,  # noqa: F401  fixture
    clerk_metrics,
    clerk_settings,  # noqa: F401  fixture
    instances,  # noqa: F401  fixture
    read_all,
    required_copies,  # noqa: F401  fixture
    spawn,  # noqa: F401  fixture
)
from tests.integration.procs import OutputCollector, wait_for, worker_env
from tests.integration.test_clerk import (
    READY,
    START_DEADLINE_S,
    assert_one_result_each,
    oracle_for,
    start_clerk,
    stop_all,
    wait_answered,
    wait_ready,
)

pytestmark = pytest.mark.integration

LIMIT = "DOCKET_DOMAIN_VERSION_LIMIT"
_PLACED = re.compile(r"\[(\d+)\]@(\d+): inventory/2$")


def activate(s: Settings, version: str = "inventory/2") -> dict[int, int]:
    """Run ``docket domain activate`` as a user would; partition -> the offset of its
    activation record, as the command prints them."""
    done = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "domain", "activate", version],
                          env=worker_env(s), cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    placed = {int(m[1]): int(m[2]) for m in map(_PLACED.search, done.stdout.splitlines()) if m}
    assert sorted(placed) == list(range(s.partitions)), done.stdout
    return placed


async def restart(proc: DocketProc, *, limit: str | None, kill: bool = False) -> None:
    """Stop ``proc`` (SIGTERM, or SIGKILL with ``kill``) and start it again, held to
    version ``limit`` (None: every version its code registers); returns once its new
    run has logged the ready line."""
    if kill:
        proc.kill()
    else:
        assert await proc.stop() == 0, proc.log_tail()
    if limit is None:
        proc.env.pop(LIMIT, None)
    else:
        proc.env[LIMIT] = limit
    proc.start()
    await wait_for(lambda: proc.assert_alive() or READY in proc.log_text(), START_DEADLINE_S,
                   f"{proc.instance}'s new run to log {READY!r}", detail=proc.log_tail)


def readyz(port: int) -> dict | None:
    """The API's /readyz body (200 or 503), or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return None


def versions_by_position(final: list[Rec]) -> dict[Position, str]:
    return {pos: rs[0].value["domain_version"] for pos, rs in by_position(final).items()}


def assert_switched_at(final: list[Rec], placed: dict[int, int]) -> int:
    """OutputNamesVersion, ActivationSwitchesPartition, ArbiterAnswersDuplicate: every
    result before its partition's activation names inventory/1; the activation's and
    every later one inventory/2, except a duplicate's answer, which names the version
    that judged its original. Returns how many results after the activations were
    rejected over_capacity (inventory/2's rule)."""
    versions = versions_by_position(final)
    originals = {pos: rs[0].value["duplicate_of"] for pos, rs in by_position(final).items()}

    def judged_at(pos: Position) -> Position:
        original = originals[pos]
        return pos if original is None else (original["partition"], original["offset"])

    wrong = [(pos, v) for pos, v in versions.items()
             if v != ("inventory/2" if judged_at(pos)[1] >= placed[pos[0]] else "inventory/1")]
    assert not wrong, f"{len(wrong)} results judged by the wrong version, e.g. {sorted(wrong)[:5]} (activations {placed})"
    assert any(pos[1] > placed[pos[0]] for pos in versions), "no result after the activations: the switch was not seen"
    return sum(1 for rs in by_position(final).values() for r in rs
               if r.value["outcome"].get("reason") == "over_capacity")


async def test_rolling_upgrade_under_load_switches_every_partition_with_no_divergence(clerk_settings, spawn) -> None:
    """RegisterDomainVersion, VersionLimit, OperatorActivatesVersion, ActivationSwitchesPartition,
    OutputNamesVersion, ReplayAcrossActivation: a and b start as older code (inventory/1
    only); under a steady 200 events/s, b and then a are upgraded (SIGTERM, restart
    knowing inventory/2) while still judging with inventory/1; then `docket domain
    activate inventory/2`; then a is SIGKILLed and restarted, replaying across the
    activation offsets. Zero divergences, exactly one result per input (the oracle's,
    activation records included), each judged by the version of its offset, and
    inventory/2's capacity rule visibly in force after the switch."""
    s = clerk_settings
    insts = {name: spawn(name) for name in ("a", "b")}
    for proc in insts.values():
        proc.env[LIMIT] = "1"
        proc.start()
    clerk, _port = start_clerk(spawn)
    procs = [*insts.values(), clerk]
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    try:
        await wait_ready(s, insts, clerk)
        records = list(workload.inventory(2026, 12_000))
        producing = asyncio.create_task(workload.produce(s.kafka_bootstrap, s.input_topic, records, rate=200))
        for name in ("b", "a"):
            await restart(insts[name], limit=None)
        placed = activate(s)
        await wait_for(lambda: any(r.value["domain_version"] == "inventory/2" for r in results.records), 60,
                       "a result judged by inventory/2", detail=lambda: "\n".join(p.log_tail(10) for p in procs))
        await restart(insts["a"], limit=None, kill=True)
        positions = await producing
        assert not producing.cancelled()
        expected = set(positions) | set(placed.items())
        await wait_answered(s, expected, results, divergences, procs, 180)
    finally:
        if "producing" in locals() and not producing.done():
            producing.cancel()
        await results.stop()
        await divergences.stop()
    await stop_all(procs)

    _inputs, oracle = await oracle_for(s, expected)
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    assert_one_result_each(final, expected, oracle)
    assert await read_all(s.kafka_bootstrap, s.divergences_topic) == []
    over = assert_switched_at(final, placed)
    assert over > 0, "no receipt was rejected over_capacity after the switch: inventory/2 never judged one"
    after = sum(1 for pos in expected if pos[1] > placed[pos[0]])
    print(f"\nrolling upgrade: {len(final)} results for {len(expected)} inputs, activations at {placed}, "
          f"{after} positions judged by inventory/2 ({over} over_capacity), 0 divergences")


async def test_an_instance_without_the_version_blocks_until_upgraded_and_nothing_wrong_is_published(
        clerk_settings, spawn) -> None:
    """InstanceBlocksOnUnknownVersion, BlockedInstanceClaimsNothingPastActivation,
    BlockedInstanceResumesAfterUpgrade, ApiShowsBlockedPartitions,
    InstanceAnnouncesAppliedActivation, DowngradedInstanceBlocks, InstanceAnnouncesJudging:
    a is older code
    (inventory/1 only), b is upgraded; the activation arrives. a blocks every partition
    at its activation offset (a WARNING naming it, no copy and no watermark of a at or
    past it on a's output topic, docket_instance_partition_blocked 1, and the REST
    API's /readyz lists a's blocked
    partitions while staying ready); with both copies required the Clerk publishes
    every position before the activations and none after (it holds b's copies of them);
    once a is restarted knowing inventory/2 it resumes from the activation, /readyz
    lists nothing blocked, and every position gets exactly the oracle's result, with no
    divergence. Then a is downgraded (held to inventory/1 again): it blocks at the first
    later record, its WARNING naming the limit, and /readyz lists it; upgraded once more,
    it resumes at that ordinary record and /readyz lists nothing blocked again."""
    s = clerk_settings
    web, api_port = free_port(), free_port()
    a = spawn("a", "--web-port", str(web))
    a.env[LIMIT] = "1"
    insts = {"a": a.start(), "b": spawn("b").start()}
    clerk, clerk_port = start_clerk(spawn)
    api = spawn("api", "--port", str(api_port), command="api")
    api.env["DOCKET_API_TOKENS"] = "tester:versioning-token"
    api.start()
    procs = [*insts.values(), clerk, api]
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    out_a = await OutputCollector(s.kafka_bootstrap, s.output_topic("a")).start()
    try:
        await wait_ready(s, insts, clerk)
        records = list(workload.inventory(77, 3_600))
        first = await workload.produce(s.kafka_bootstrap, s.input_topic, records[:1_500], rate=500)
        placed = activate(s)
        second = await workload.produce(s.kafka_bootstrap, s.input_topic, records[1_500:3_000], rate=500)
        expected = set(first) | set(second) | set(placed.items())
        before = {pos for pos in expected if pos[1] < placed[pos[0]]}
        held = expected - before

        blocked_lines = lambda: re.findall(r"partition (\d+) blocked at offset (\d+): it activates inventory/2",  # noqa: E731
                                           a.log_text())
        await wait_for(lambda: a.assert_alive() or len(blocked_lines()) == s.partitions, 60,
                       "a to log a blocked partition per partition", detail=a.log_tail)
        assert {int(p): int(o) for p, o in blocked_lines()} == placed
        gauges = clerk_metrics(web)
        assert all(gauges.get(f"docket_instance_partition_blocked{{partition={p}}}") == 1.0
                   for p in range(s.partitions)), {k: v for k, v in gauges.items() if "blocked" in k}
        await wait_for(lambda: before <= results.positions(), 90, "a result for every position before the activations",
                       detail=lambda: f"{len(before - results.positions())} missing")
        # the Clerk has read b's copy of every later position and holds it, waiting for a's
        await wait_for(lambda: clerk_metrics(clerk_port).get("docket_clerk_pending_positions") == len(held), 60,
                       f"the Clerk to hold {len(held)} positions pending",
                       detail=lambda: str(clerk_metrics(clerk_port).get("docket_clerk_pending_positions")))
        assert not (results.positions() & held), "a result was published for a position only b judged"
        assert divergences.positions() == set()
        await out_a.wait_caught_up()
        past = [(p, off, m["watermark"]) for p, off, m in out_a.watermarks if m["watermark"] > placed[p]]
        assert not past, f"blocked a advertised watermarks past the activations {placed}: {past[:5]}"
        copies = {pos for pos in out_a.copies if pos[1] >= placed[pos[0]]}
        assert not copies, f"blocked a emitted copies at or past the activations: {sorted(copies)[:5]}"
        assert max(m["watermark"] for p, _o, m in out_a.watermarks if p == 0) == placed[0]
        shown = await wait_for(lambda: (api.assert_alive() or (readyz(api_port) or {})).get("blocked_partitions"),
                               60, "/readyz to list a's blocked partitions", detail=api.log_tail)
        assert [(b["instance"], b["partition"], b["offset"], b["version"]) for b in shown] == [
            ("a", p, placed[p], "inventory/2") for p in range(s.partitions)]
        assert readyz(api_port)["ready"] is True

        await restart(a, limit=None)
        await wait_answered(s, expected, results, divergences, procs, 120)
        await wait_for(lambda: "blocked_partitions" not in (readyz(api_port) or {"blocked_partitions": 1}), 60,
                       "/readyz to list no blocked partition after a's upgrade", detail=lambda: str(readyz(api_port)))

        await restart(a, limit="1")  # a downgrade: a's Ledger says inventory/2 judges what comes next
        third = await workload.produce(s.kafka_bootstrap, s.input_topic, records[3_000:], rate=500)
        expected |= set(third)
        downgraded = lambda: re.findall(r"partition (\d+) blocked at offset (\d+): this instance's Ledger says "  # noqa: E731
                                        r".*inventory/2.*DOCKET_DOMAIN_VERSION_LIMIT=1", a.log_text())
        await wait_for(lambda: a.assert_alive() or downgraded(), 60, "the downgraded a to log a blocked partition",
                       detail=a.log_tail)
        await wait_for(lambda: any(b["instance"] == "a" for b in
                                   (api.assert_alive() or readyz(api_port) or {}).get("blocked_partitions", [])),
                       60, "/readyz to list the downgraded a's blocked partitions", detail=api.log_tail)
        await restart(a, limit=None)
        await wait_answered(s, expected, results, divergences, procs, 120)
        await wait_for(lambda: "blocked_partitions" not in (readyz(api_port) or {"blocked_partitions": 1}), 60,
                       "/readyz to list no blocked partition once a resumes at an ordinary record",
                       detail=lambda: str(readyz(api_port)))
    finally:
        await results.stop()
        await divergences.stop()
        await out_a.stop()
    await stop_all(procs)
    assert "blocked" not in a.log_text(2) and "blocked" not in a.log_text(4)

    _inputs, oracle = await oracle_for(s, expected)
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    assert_one_result_each(final, expected, oracle)
    assert await read_all(s.kafka_bootstrap, s.divergences_topic) == []
    assert_switched_at(final, placed)
    print(f"\nblocked then upgraded: activations at {placed}; {len(held)} positions held until a's upgrade; "
          f"{len(final)} results, 0 divergences")


def docket_cli(s: Settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``docket <args>`` as a user runs it, with the test's settings (and ``env`` over them)."""
    return subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args],
                          env=worker_env(s, **env), cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


async def test_the_topics_of_one_domain_refuse_another_and_domain_status_shows_each_partition(
        clerk_settings, spawn) -> None:
    """TopicsServeOneDomain, InstanceAnnouncesJudging, InstanceStartedOnAnotherDomainsData:
    an inventory instance judging events writes a "judging" status per partition, which
    `docket domain status` prints (base inventory/1, activation offset -1); then, with
    DOCKET_DOMAIN=accounts on the same topics, a worker with a FRESH data directory
    refuses to start naming inventory, `docket domain activate accounts/1` writes
    nothing, and `docket domain status` exits 1 saying so (a user's accounts worker on
    inventory's topics once diverged on every event)."""
    s = clerk_settings
    a = spawn("a").start()
    try:
        await wait_for(lambda: a.assert_alive() or READY in a.log_text(), START_DEADLINE_S, "a to be ready",
                       detail=a.log_tail)
        await workload.produce(s.kafka_bootstrap, s.input_topic, list(workload.inventory(5, 200)), rate=400)

        def shown() -> str:
            done = docket_cli(s, "domain", "status")
            assert done.returncode == 0, done.stderr
            return done.stdout

        table = await wait_for(lambda: (lambda out: out if out.count(" judging ") == s.partitions else None)(shown()),
                               60, "a 'judging' status of a for every partition", detail=shown)
        assert all(re.search(rf"^\s+{p}\s+a\s+judging\s+inventory/1\s+-1$", table, re.M) for p in range(s.partitions)), table
    finally:
        assert await a.stop() == 0, a.log_tail()

    ends = await end_offsets(s.kafka_bootstrap, s.input_topic)
    other = spawn("b")
    other.env["DOCKET_DOMAIN"] = "accounts"
    other.start()
    await wait_for(lambda: not other.alive, 60, "an accounts worker on inventory's topics to refuse", detail=other.log_tail)
    assert other.proc.returncode == 1 and "belong to the inventory domain" in other.log_text(), other.log_tail()
    assert "DOCKET_DOMAIN=inventory" in other.log_text()
    # refused for the topics before it marks its (fresh) data directory: following the
    # advice, DOCKET_DOMAIN=inventory on that directory must work (a user's did not)
    from agents.plumbing import DOMAIN_MARK

    assert not (other.data_dir / DOMAIN_MARK).exists()

    refused = docket_cli(s, "domain", "activate", "accounts/1", DOCKET_DOMAIN="accounts")
    assert refused.returncode == 1 and "Nothing was activated" in refused.stderr, refused.stderr
    status = docket_cli(s, "domain", "status", DOCKET_DOMAIN="accounts")
    assert status.returncode == 1 and "belong to the inventory domain" in status.stderr, status.stderr
    assert await end_offsets(s.kafka_bootstrap, s.input_topic) == ends  # no activation record was written
    # the API's client refuses them too, for good (a ConfigError: `docket api` exits 2
    # rather than answering 503 "unreachable" while retrying), and so does a partition
    # count other than the topics' (it retried for ever; a fresh-clone user check)
    import dataclasses

    from app.client import DocketClient, TopicsDisagree
    from app.settings import ConfigError

    with pytest.raises(TopicsDisagree, match="belong to the inventory domain") as refused_domain:
        await DocketClient(dataclasses.replace(s, domain="accounts")).start()
    assert isinstance(refused_domain.value, ConfigError)
    with pytest.raises(TopicsDisagree, match=f"has {s.partitions} partitions but DOCKET_PARTITIONS="):
        await DocketClient(dataclasses.replace(s, partitions=s.partitions + 1)).start()
    # `docket domain status` with a DOCKET_PARTITIONS below the topic's refuses too, not
    # a table of the first partitions alone (the eighth fresh-user trial: a stale
    # setting hid partitions, blocked ones among them)
    fewer = docket_cli(s, "domain", "status", DOCKET_PARTITIONS=str(s.partitions - 1))
    assert fewer.returncode == 1 and (f"has {s.partitions} partitions but DOCKET_PARTITIONS={s.partitions - 1}"
                                      in fewer.stderr) and "judging" not in fewer.stdout, (fewer.stdout, fewer.stderr)
    # a prefix naming no topics: said at once, not after --timeout as a timeout (the
    # twelfth fresh-user trial: DOCKET_TOPIC_PREFIX=nope waited 15 s and suggested a
    # longer --timeout)
    for command in (["status"], ["activate", "inventory/2"]):
        nowhere = docket_cli(s, "domain", *command, "--timeout", "120", DOCKET_TOPIC_PREFIX=f"{s.topic_prefix}-none")
        assert nowhere.returncode == 1 and (f"topic {s.topic_prefix}-none.status does not exist on "
                                            f"{s.kafka_bootstrap}: check DOCKET_TOPIC_PREFIX") in nowhere.stderr, \
            nowhere.stderr
    client = DocketClient(s)  # the right domain and count: it starts
    await client.start()
    await client.stop()
