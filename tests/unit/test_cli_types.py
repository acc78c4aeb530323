"""Options of the `docket` commands that take seconds, a port or an instance id are
checked as they are parsed (app/cli_types.py; specs/integration.allium
CommandOptionsCheckedAtParse): a usage error naming the option, exit 2, before anything
connects or starts. No broker: each refusal happens before one would be needed."""

from __future__ import annotations

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
    (["instance", "--id", "a b"], "--id", "an instance id may only use letters, digits, '-' and '_'"),
    (["instance", "--id", ""], "--id", "an instance id must not be empty"),
    (["instance", "--id", "a/../x"], "--id", "may only use letters"),
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
