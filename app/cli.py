"""The `docket` command. Each subcommand lives beside the code it drives and is
imported lazily, so `docket broker status` does not pay for importing Faust."""

from __future__ import annotations

import importlib
import os
import sys

import click

from app.entry import resume_interrupts
from app.settings import SETTINGS, ConfigError

# name -> "module:attribute" of a click command or group
_COMMANDS = {
    "broker": "launcher.broker:broker",
    "clean": "launcher.clean:clean",
    "topics": "app.topics:topics",
    "instance": "agents.instance:instance",
    "clerk": "agents.clerk:clerk",
    "api": "app.api:api",
    "demo": "app.demo:demo",
    "stack": "launcher.stack:stack",
    "chaos": "chaos.cli:chaos",
    "console": "console.cli:console",
    "divergences": "app.divergences:divergences",
    "domain": "app.domain_cli:domain",
}


class _LazyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        # Ctrl-C (SIGINT) that no command handles itself, e.g. a worker's while Python
        # still imports Faust before its --wait begins: status 130 (128+2), as a
        # shell reports an interrupted program, and nothing printed; click's own
        # handling printed "Aborted!" and exited 1, which reads as a failure under
        # `make run` stopped during its start (a fresh-user trial)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMMANDS:
            module, attr = _COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


# subcommands that log nothing and must work whatever the settings hold
_UNLOGGED = {"config"}


@click.group(cls=_LazyGroup)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """docket: redundant event processing on Kafka and Faust."""
    if ctx.invoked_subcommand not in _UNLOGGED:
        # every command logs alike (DOCKET_LOG_LEVEL, DOCKET_LOG_FORMAT); the workers
        # and the API apply the same configuration again once they have loaded theirs
        from app import logs

        logs.configure_from_settings()
        check_domain_setting()
    # the command's module is imported (resolve_command runs before this): a Ctrl-C
    # that came while it was is status 130 now, later ones are KeyboardInterrupt
    # (app/entry.py)
    resume_interrupts()


def check_domain_setting() -> None:
    """:func:`app.registry.check_domain` of DOCKET_DOMAIN as the settings read it."""
    from app.registry import check_domain
    from app.settings import domain_setting

    check_domain(domain_setting())


@cli.command("config")
def config_cmd() -> None:
    """Print every DOCKET_* setting with its default and meaning (Markdown table; an
    empty default is shown as *(empty)*: a pair of backticks around nothing renders as
    two backticks)."""
    click.echo("| variable | default | meaning |\n|---|---|---|")
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "*(empty)*"
        click.echo(f"| `{s.env}` | {default} | {s.doc} |")


def main() -> None:
    try:
        cli.main(prog_name="docket", standalone_mode=True)
    except ConfigError as exc:
        click.echo(f"docket: configuration error: {exc}", err=True)
        sys.exit(2)
