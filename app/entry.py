"""The `docket` console script's entry point (pyproject.toml, [project.scripts]).

Ctrl-C (SIGINT) while Python imports docket's modules, the first 0.1 to 1 s of every
command (Faust's and aiokafka's import most of it), is noted instead of raised. A
KeyboardInterrupt raised inside an extension module's initialisation crashed the
interpreter (orjson 3.13's: SIGSEGV in 6 of 130 `docket clerk` runs interrupted about
0.1 s in, a fresh-user trial) or printed a traceback of the import. Once the command's
module is imported and the logs configured (app/cli.py calls
:func:`resume_interrupts`), a Ctrl-C noted meanwhile ends the process with status 130
and nothing printed, as a shell reports an interrupted program; later ones raise
KeyboardInterrupt again, which the commands handle themselves (or app/cli.py turns
into 130).

A process that starts with SIGINT ignored (a background job of a non-interactive shell)
or handled by someone else keeps it so: only Python's default handler is deferred.
This module imports nothing but the standard library's signal handling, so the window
in which a Ctrl-C still finds Python's default is the interpreter's own start-up.
"""

from __future__ import annotations

import signal

# the SIGINTs noted while deferred, and the handler to put back (empty: not deferred)
_noted: list[int] = []
_previous: list = []


def _note(signum: int, _frame: object) -> None:
    _noted.append(signum)


def defer_interrupts() -> None:
    """Note SIGINT instead of raising KeyboardInterrupt, if Python's default handler
    has it (main thread only, as the signal module requires)."""
    if not _previous and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _previous.append(signal.signal(signal.SIGINT, _note))


def resume_interrupts() -> None:
    """Give SIGINT back to the handler it had before :func:`defer_interrupts`; if one was
    noted meanwhile, raise SystemExit(130). Does nothing when nothing was deferred."""
    if not _previous:
        return
    signal.signal(signal.SIGINT, _previous.pop())
    if _noted:
        raise SystemExit(130)


def main() -> None:
    """Run the `docket` command (app/cli.py main) with SIGINT deferred while it imports."""
    defer_interrupts()
    from app.cli import main as cli_main

    cli_main()
