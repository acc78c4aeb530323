"""Options of the `docket` commands that take seconds, a port or an instance id are
checked as they are parsed (app/cli_types.py; specs/integration.allium
CommandOptionsCheckedAtParse): a usage error naming the option, exit 2, before anything
connects or starts. No broker: each refusal happens before one would be needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from app.cli_types import Seconds
from app.settings import ConfigError, load


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "x", ""])
def test_a_timeout_is_finite_seconds_above_zero(text: str) -> None:
    """CommandOptionsCheckedAtParse: 0, negatives, nan and inf are refused."""
    import click

    with pytest.raises(click.BadParameter, match="is not a number of seconds"):
        Seconds().convert(text, None, None)


def test_a_wait_may_be_zero_and_values_pass_through() -> None:
    """CommandOptionsCheckedAtParse: a wait of 0 is none; what passes is the float given."""
    assert Seconds(zero_ok=True).convert("0", None, None) == 0.0
    assert Seconds().convert("2.5", None, None) == 2.5 and Seconds().convert(15.0, None, None) == 15.0


@pytest.mark.parametrize(("args", "option", "says"), [
    (["instance", "--id", "a b"], "--id", "an instance id may only use ASCII letters, digits, '-' and '_'"),
    (["instance", "--id", ""], "--id", "an instance id must not be empty"),
    (["instance", "--id", "a/../x"], "--id", "may only use ASCII letters"),
    (["instance", "--id", "é"], "--id", "may only use ASCII letters"),
    (["instance", "--id", "clerk"], "--id", "may not be 'clerk' in any case: the Clerk's consumer group"),
    (["instance", "--id", "a", "--web-port", "99999"], "--web-port", "is not in the range 1<=x<=65535"),
    (["instance", "--id", "a", "--wait", "-5"], "--wait", "is not a number of seconds 0 or more"),
    (["clerk", "--web-port", "-1"], "--web-port", "is not in the range 1<=x<=65535"),
    (["domain", "activate", "inventory/1", "--timeout", "0"], "--timeout", "more than 0"),
    (["domain", "status", "--timeout", "nan"], "--timeout", "more than 0"),
    (["divergences", "--timeout", "-1"], "--timeout", "more than 0"),
    (["broker", "start", "--timeout", "0"], "--timeout", "more than 0"),
])
def test_bad_options_are_usage_errors_naming_the_option(args: list[str], option: str, says: str) -> None:
    """CommandOptionsCheckedAtParse: before, --id 'a b' warned and then failed for its
    missing topics, --web-port 99999 was a 70-line traceback from Faust and --timeout 0
    sent the user to check the broker (the eighth fresh-user trial)."""
    result = CliRunner().invoke(cli, args, prog_name="docket", catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and says in result.output, result.output
    assert "Traceback" not in result.output


def test_the_broker_port_is_a_tcp_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: DOCKET_BROKER_PORT above 65535 is a configuration
    error, as every other port setting is (it was "cannot reach Kafka at
    127.0.0.1:70000")."""
    monkeypatch.setenv("DOCKET_BROKER_PORT", "70000")
    monkeypatch.delenv("DOCKET_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(ConfigError, match="DOCKET_BROKER_PORT=70000 must be at most 65535"):
        load()
    monkeypatch.setenv("DOCKET_BROKER_PORT", "65535")
    assert load().kafka_bootstrap == "127.0.0.1:65535"


# Each bad value comes before an option the command refuses too (`chaos`: an unknown
# --domain, in its body; `console`: --port 0, which click checks after --fault-rate, as it
# checks options in command-line order): were the bad value let through, the test fails
# naming that other option at once instead of starting a broker and workers.
_NO_DOMAIN = ["--domain", "no-such-domain"]


@pytest.mark.parametrize(("args", "option", "says"), [
    (["chaos", "--drain-timeout", "-1", *_NO_DOMAIN], "--drain-timeout", "is not a number of seconds more than 0"),
    (["chaos", "--drain-timeout", "nan", *_NO_DOMAIN], "--drain-timeout", "is not a number of seconds more than 0"),
    (["chaos", "--drain-timeout", "0", *_NO_DOMAIN], "--drain-timeout", "is not a number of seconds more than 0"),
    (["chaos", "--rate", "nan", *_NO_DOMAIN], "--rate", "nan is not a finite number in the range x>=1"),
    (["chaos", "--seed", str(2**63), *_NO_DOMAIN], "--seed", f"{2**63} is not in the range"),
    (["chaos", "--seed", "9" * 120, *_NO_DOMAIN], "--seed", "is not in the range"),
    (["chaos", "--partitions", "65", *_NO_DOMAIN], "--partitions", "65 is not in the range 1<=x<=64"),
    # the settings' own bounds: past them every worker refused them and was restarted in
    # a loop (the fifteenth fresh-user trial)
    (["chaos", "--ttl-ms", "31536000001", *_NO_DOMAIN], "--ttl-ms", "not in the range 1<=x<=31536000000"),
    (["chaos", "--session-timeout-ms", "90001", *_NO_DOMAIN], "--session-timeout-ms",
     "90001 is not in the range 6000<=x<=90000"),
    (["console", "--seed", str(-2**63 - 1), "--port", "0"], "--seed", "is not in the range"),
    (["demo", "--seed", str(2**63), "--domain", "no-such-domain"], "--seed", "is not in the range"),
    (["chaos", "--rate", "inf", *_NO_DOMAIN], "--rate", "inf is not a finite number in the range x>=1"),
    (["console", "--fault-rate", "nan", "--port", "0"], "--fault-rate",
     "nan is not a finite number in the range 0<x<=1"),
    (["api", "--port", "-1"], "--port", "-1 is not in the range 0<=x<=65535"),
    (["api", "--port", "70000"], "--port", "70000 is not in the range 0<=x<=65535"),
])
def test_chaos_console_and_api_options_are_checked_at_parse(args: list[str], option: str, says: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: before, `chaos --drain-timeout -1` (or nan, or 0,
    which silently became the default) started a run that reported events lost,
    `chaos --rate nan` a ValueError once the stack was up, `console --fault-rate nan`
    was accepted and `api --port 70000` an OverflowError traceback (a fresh-user trial)."""
    # without a token `api` stops on its settings: an unchecked --port still fails fast
    monkeypatch.delenv("DOCKET_API_TOKENS", raising=False)
    result = CliRunner().invoke(cli, args, prog_name="docket", catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and says in result.output, result.output
    assert "Traceback" not in result.output


def test_the_api_port_may_be_zero_as_its_setting_may(monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: `api --port 0` picks a free port as DOCKET_API_PORT=0
    does, so the option takes 0-65535; the run goes on past parsing, here to stop on the
    missing DOCKET_API_TOKENS before anything binds."""
    monkeypatch.delenv("DOCKET_API_TOKENS", raising=False)
    with pytest.raises(ConfigError, match="DOCKET_API_TOKENS"):
        CliRunner().invoke(cli, ["api", "--port", "0"], prog_name="docket", catch_exceptions=False)
    monkeypatch.setenv("DOCKET_API_PORT", "0")
    assert load().api_port == 0


@pytest.mark.parametrize("text", ["nan", "inf"])
def test_a_finite_range_refuses_nan_and_inf(text: str) -> None:
    """CommandOptionsCheckedAtParse: nan passes every FloatRange bound and inf any range
    without a maximum; FiniteRange refuses both and passes what its range takes."""
    import click

    from app.cli_types import FiniteRange

    with pytest.raises(click.BadParameter, match="is not a finite number"):
        FiniteRange(min=1).convert(text, None, None)
    assert FiniteRange(min=1).convert("2.5", None, None) == 2.5
    assert FiniteRange(0, 1, min_open=True).convert("1", None, None) == 1.0


@pytest.mark.parametrize(("args", "says"), [
    (["instance", "a b"], "Invalid value for 'IDENT': 'a b': an instance id may only use ASCII letters, digits"),
    (["instance", ""], "Invalid value for 'IDENT': '': an instance id must not be empty"),
    (["instance"], "instance needs its id"),
    (["api", "x"], "Got unexpected extra argument (x): only `instance` takes an id"),
    (["clerk", "a"], "Got unexpected extra argument (a): only `instance` takes an id"),
])
def test_stack_health_refuses_a_bad_id_or_an_argument_it_does_not_take(args: list[str], says: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: `docket stack health instance 'a b'` exited 1
    silently (no consumer group of that name) and `docket stack health api x` ignored
    the x (a fresh-user trial); both are usage errors (exit 2) before anything connects."""
    import launcher.stack

    monkeypatch.setattr(launcher.stack, "api_ready", lambda _base: pytest.fail("connected"))
    monkeypatch.setattr(launcher.stack, "_healthy", lambda *_a: pytest.fail("connected"))
    result = CliRunner().invoke(cli, ["stack", "health", *args], prog_name="docket", catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert says in result.output, result.output


def test_stack_health_still_answers_for_a_valid_component(monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: `api` alone and `instance a` pass the checks and
    exit 0 or 1 as the component is healthy or not."""
    import launcher.stack

    async def healthy(_settings, component: str, ident: str | None) -> bool:
        return (component, ident) == ("instance", "a")

    monkeypatch.setattr(launcher.stack, "api_ready", lambda _base: False)
    monkeypatch.setattr(launcher.stack, "_healthy", healthy)
    run = CliRunner().invoke
    assert run(cli, ["stack", "health", "api"], prog_name="docket").exit_code == 1
    assert run(cli, ["stack", "health", "instance", "a"], prog_name="docket").exit_code == 0
    assert run(cli, ["stack", "health", "instance", "b-2"], prog_name="docket").exit_code == 1


def test_domain_status_says_a_too_short_timeout_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: `docket domain status --timeout 0.001` printed
    "cannot reach Kafka ... is the broker up?" while the broker was up (a fresh-user
    trial): the connection attempt, cut short by the timeout, reports the broker
    unreachable. Raised once the timeout has passed, it is a timeout of 0.001 s."""
    import asyncio

    from app import domain_cli
    from app.kafka_admin import KafkaUnreachable

    async def cut_short(settings, timeout_s: float) -> list[dict]:
        await asyncio.sleep(timeout_s)
        raise KafkaUnreachable(f"cannot reach Kafka at {settings.kafka_bootstrap}")

    monkeypatch.setenv("DOCKET_DOMAIN", "inventory")
    monkeypatch.setattr(domain_cli, "_checked_statuses", cut_short)
    result = CliRunner().invoke(cli, ["domain", "status", "--timeout", "0.001"], prog_name="docket")
    assert result.exit_code == 1, result.output
    assert "timed out: could not read" in result.output and "within 0.001 s (--timeout)" in result.output, \
        result.output
    assert "is the broker up?" not in result.output, result.output


def test_domain_status_still_blames_a_broker_that_refuses_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: a broker that is down refuses well within the
    timeout, and the message still says so."""
    from app import domain_cli
    from app.kafka_admin import KafkaUnreachable

    async def refused(settings, timeout_s: float) -> list[dict]:
        raise KafkaUnreachable(f"cannot reach Kafka at {settings.kafka_bootstrap}")

    monkeypatch.setenv("DOCKET_DOMAIN", "inventory")
    monkeypatch.setattr(domain_cli, "_checked_statuses", refused)
    result = CliRunner().invoke(cli, ["domain", "status", "--timeout", "15"], prog_name="docket")
    assert result.exit_code == 1, result.output
    assert "cannot reach Kafka at" in result.output and "is the broker up?" in result.output, result.output
    assert "timed out" not in result.output, result.output


def test_divergences_says_the_timeout_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: `docket divergences --timeout 0.001` said "within
    0 s" (a fresh-user trial); it names 0.001 s, says it timed out, and that a longer
    --timeout may be all it needs. Kafka is a stand-in consumer that never gets to the
    end offsets."""
    import asyncio

    import aiokafka

    import app.kafka_config
    import chaos.replay

    class Stalled:
        def __init__(self, **_kwargs) -> None:
            pass

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

        def assign(self, _tps) -> None:
            pass

        def seek(self, _tp, _offset) -> None:
            pass

        async def beginning_offsets(self, tps):
            return {tp: 0 for tp in tps}

        async def end_offsets(self, tps):
            return {tp: 5 for tp in tps}

        async def getmany(self, *_tps, timeout_ms: int):
            await asyncio.sleep(0.01)
            return {}

        async def position(self, _tp) -> int:
            return 0

    async def reached(*_a, **_kw) -> bool:
        return True

    async def partitions(_consumer, _topic) -> list[int]:
        return [0]

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", Stalled)
    monkeypatch.setattr(app.kafka_config, "check_connection", reached)
    monkeypatch.setattr(chaos.replay, "_partitions", partitions)
    result = CliRunner().invoke(cli, ["divergences", "--timeout", "0.001"], prog_name="docket")
    assert result.exit_code == 1, result.output
    assert "docket divergences: timed out at" in result.output, result.output
    # the reading loop's message, or read_reports' own bound on the whole read, whichever fires first
    assert "within 0.001 s (" in result.output and "a longer --timeout may be all it needs" in result.output, \
        result.output


@pytest.mark.parametrize("value", [",", " ", " , ,"])
def test_a_scenario_list_naming_none_is_a_usage_error(value: str) -> None:
    """CommandOptionsCheckedAtParse: `chaos --scenario ,` started a broker, ran nothing
    and reported FAILED (the twelfth fresh-user trial); it is a usage error, as an
    unknown scenario is, before anything starts."""
    result = CliRunner().invoke(cli, ["chaos", "--scenario", value], prog_name="docket", catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "Invalid value for --scenario: names no scenario; one of kill-a" in result.output, result.output


def test_an_option_from_its_environment_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """CommandOptionsCheckedAtParse: a bad value from DOCKET_CONSOLE_RATE is a usage
    error naming the variable and its value (click named only --rate, which the user
    never typed: the twelfth fresh-user trial); typed as --rate it reads as before."""
    monkeypatch.setenv("DOCKET_CONSOLE_RATE", "abc")
    result = CliRunner().invoke(cli, ["console"], prog_name="docket", catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--rate': DOCKET_CONSOLE_RATE='abc': 'abc' is not a valid integer" in result.output
    monkeypatch.delenv("DOCKET_CONSOLE_RATE")
    result = CliRunner().invoke(cli, ["console", "--rate", "abc"], prog_name="docket", catch_exceptions=False)
    assert result.exit_code == 2 and "Invalid value for '--rate': 'abc' is not" in result.output, result.output


def test_a_chaos_workdir_that_cannot_hold_the_run_is_a_usage_error(tmp_path) -> None:
    """CommandOptionsCheckedAtParse: `chaos --workdir` below a regular file, or in
    /proc, started the run and ended in a traceback from the broker's start (the
    sixteenth fresh-user trial); it is a usage error naming the option and why, and
    nothing starts."""
    afile = tmp_path / "f"
    afile.write_text("")
    for workdir, why in ((afile / "sub", "Not a directory"), (Path("/proc"), "No such file or directory")):
        result = CliRunner().invoke(cli, ["chaos", "--workdir", str(workdir)], prog_name="docket",
                                    catch_exceptions=False)
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '--workdir': {workdir} cannot hold the run's directories: {why}" \
            in result.output, result.output
        assert "starting a broker" not in result.output


def test_a_clerk_whose_topic_names_kafka_cannot_hold_is_refused_before_waiting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TopicsCreatedExplicitly: a Clerk whose DOCKET_INSTANCES make an output topic name
    longer than Kafka's 249 characters said the topics did not exist and to run `docket
    topics create`, which refuses the name (the sixteenth fresh-user trial); it says the
    name is too long, before any connection (nothing listens at the bootstrap here)."""
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("DOCKET_TOPIC_PREFIX", "zz")
    monkeypatch.setenv("DOCKET_INSTANCES", "a," + "y" * 240)
    result = CliRunner().invoke(cli, ["clerk", "--wait", "60"], prog_name="docket", catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert ("would be 250 characters, more than Kafka's 249: shorten DOCKET_TOPIC_PREFIX or the instance ids in "
            "DOCKET_INSTANCES") in result.output, result.output


def test_an_instance_whose_topic_names_kafka_cannot_hold_is_refused_before_waiting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TopicsCreatedExplicitly: `docket instance --id <226 characters>` said its output
    topic did not exist and to run `docket topics create`, which refuses the name (the
    fourteenth fresh-user trial); it says the name is too long, before any connection
    (nothing listens at the bootstrap here)."""
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    long_id = "i" * 226
    monkeypatch.setenv("DOCKET_INSTANCES", f"a,b,{long_id}")
    result = CliRunner().invoke(cli, ["instance", "--id", long_id, "--wait", "60"], prog_name="docket",
                                catch_exceptions=False)
    assert result.exit_code == 1, result.output
    # the id came from --id, whatever DOCKET_INSTANCES holds (it named DOCKET_INSTANCES:
    # the fifteenth trial)
    assert "would be 250 characters, more than Kafka's 249: shorten DOCKET_TOPIC_PREFIX or the instance's --id" \
        in result.output, result.output
