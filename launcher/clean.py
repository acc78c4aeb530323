"""`docket clean`: what `make clean` runs once .venv holds docket (specs/integration.allium
CleanRefusesWhileWorkersRun, CleanKeepsTrackedFiles, CleanDeletesOnlyDocketsOwn).

In this order: refuse, stopping and deleting nothing, while a `docket stack run` holds
DOCKET_BROKER_DIR (launcher/stacklock.py) or a docket worker holds a data directory under
what it would delete; stop the local brokers (DOCKET_BROKER_DIR's and the test session's,
var/test-broker); delete var/ (of the current directory, a checkout's), and what docket
made in DOCKET_DATA_ROOT and DOCKET_BROKER_DIR when they are set: never a path that
:func:`refusal` refuses, and in a directory a setting names only what docket itself
writes there (:func:`docket_entry`, :func:`broker_made`), so a setting that names, say,
/var/lib or a repository's .git costs nothing but docket's own files. :func:`refusal`
also guards `docket broker start | run` (launcher/broker.py ``_check_broker_dir``).

This module imports nothing of Faust (nor launcher/broker.py at import time, which
imports it back), so `docket clean` starts fast; of the settings it reads only the two paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from app.settings import _raw
from launcher.stacklock import STACK_LOCK, lock_holder

# The checkout this module belongs to (like launcher/broker.py's POM).
CHECKOUT = Path(__file__).resolve().parent.parent
# agents/plumbing.py DATA_DIR_LOCK (tests/unit/test_clean.py checks they agree); not
# imported from there because that module imports Faust.
DATA_DIR_LOCK = ".docket-worker.lock"
TEST_BROKER_DIR = Path("var/test-broker")  # the Makefile's TEST_BROKER_DIR
STOP_FIRST = "stop `make run` (Ctrl-C) first, or the worker, then run `make clean` again"


def home() -> Path:
    """$HOME (without it, the user's home from the password database), resolved; never raises."""
    return Path(os.path.expanduser("~")).resolve()


def is_checkout(directory: Path) -> bool:
    """True if ``directory`` is a docket checkout (it holds this module's file)."""
    return (directory / "launcher" / "clean.py").is_file()


def checkouts() -> list[Path]:
    """The checkouts :func:`refusal` protects: this module's own, and the current
    directory when it is another one (`make clean` runs in the checkout, and deletes its var/)."""
    here = Path.cwd().resolve()
    return list(dict.fromkeys([here, CHECKOUT] if is_checkout(here) else [CHECKOUT]))


def tracked_files(checkout: Path, path: Path) -> list[str] | None:
    """The files under ``path`` (absolute) that git tracks in ``checkout``: ``[]`` when
    none, None when git cannot tell (no git, no ``.git`` in ``checkout``, or git failed,
    e.g. on a repository owned by another user)."""
    if shutil.which("git") is None or not (checkout / ".git").exists():
        return None
    proc = subprocess.run(["git", "ls-files", "-z", "--", str(path)], cwd=checkout,
                          stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        return None
    return [name for name in proc.stdout.decode(errors="replace").split("\0") if name]


def refusal(path: Path, roots: Iterable[Path], keep: Iterable[Path] = ()) -> str | None:
    """Why ``path`` (absolute, resolved) is not docket's to delete, or None when it is.

    Refused: a path that is, or holds, one of ``roots`` (the checkouts) or ``keep`` ($HOME,
    the current directory); one inside a checkout that holds a file git tracks there;
    and, when git cannot tell, one inside a checkout other than its var/ and what var/ holds."""
    roots = list(roots)
    for kept in (*keep, *roots):
        if path == kept or path in kept.parents:
            return f"it holds {kept}"
    for root in roots:
        if root not in path.parents:
            continue
        tracked = tracked_files(root, path)
        if tracked:
            more = f" and {len(tracked) - 1} more" if len(tracked) > 1 else ""
            return f"it holds files git tracks in {root} ({tracked[0]}{more})"
        var = root / "var"
        if tracked is None and path != var and var not in path.parents:
            return f"it lies inside {root}, outside its var/, and git cannot tell which files there are tracked"
    return None


def held_data_dirs(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(data directory, holder's pid as written in its lock file) for each directory under
    ``paths`` whose worker lock (agents/plumbing.py claim_data_dir) a process holds now.

    Each lock file is tried as :func:`launcher.stacklock.lock_holder` does: a lock file
    left by a dead worker is free."""
    held: dict[Path, str] = {}
    for top in paths:
        for parent, _dirs, files in os.walk(top):  # symlinks are not followed
            if DATA_DIR_LOCK in files and (pid := lock_holder(Path(parent) / DATA_DIR_LOCK)) is not None:
                held[Path(parent)] = pid
    return sorted(held.items())


# What docket writes in DOCKET_DATA_ROOT besides the workers' data directories
# (launcher/stack.py TOKEN_FILE and STACK_LOG), and the files that tell its broker
# directory (launcher/broker.py CONFIG_FILE and LOG4J_FILE: it writes both before the
# broker's first start). tests/unit/test_clean.py checks they agree.
DATA_ROOT_FILES = ("api-token", "stack.log")
BROKER_FILES = ("server.properties", "log4j2.properties")
WORKER_MARKS = (DATA_DIR_LOCK, "docket-domain")  # agents/plumbing.py: every worker's data directory


# What a broker directory holds before the launcher writes its configuration: a stack's
# lock (launcher/stacklock.py), and the launcher's log and pid files
# (launcher/broker.py LOG_FILE, PID_FILE, BACKGROUND_FILE).
BROKER_EARLY_FILES = frozenset({STACK_LOCK, "broker.log", "broker.pid", "broker.background"})
# Every entry docket's broker launcher writes in its directory: the configuration, the
# early files, the previous log (launcher/broker.py rotates broker.log) and the data.
BROKER_ENTRIES = frozenset({*BROKER_FILES, *BROKER_EARLY_FILES, "broker.log.1", "data"})


def broker_made(path: Path) -> bool:
    """True if ``path`` is a directory docket's broker launcher made: it holds the
    broker's configuration as the launcher writes it (:data:`BROKER_FILES`), or nothing
    but what comes before it (:data:`BROKER_EARLY_FILES`; empty: about to be used)."""
    if not path.is_dir():
        return False
    return (all((path / name).is_file() for name in BROKER_FILES)
            or all(entry.name in BROKER_EARLY_FILES for entry in path.iterdir()))


def foreign_entries(broker_dir: Path) -> list[Path]:
    """The entries of ``broker_dir`` that docket's broker launcher does not write
    (:data:`BROKER_ENTRIES`), sorted; none for a directory that does not exist."""
    if not broker_dir.is_dir():
        return []
    return sorted(entry for entry in broker_dir.iterdir() if entry.name not in BROKER_ENTRIES)


def docket_entry(path: Path, depth: int = 3) -> bool:
    """True if ``path``, an entry of DOCKET_DATA_ROOT, is docket's: one of the files it
    writes there, a broker directory it made, or a directory holding a worker's data
    directory (:data:`WORKER_MARKS`) within ``depth`` levels (the console keeps its own
    stack one level down)."""
    if path.is_symlink():
        return False
    if path.is_file():
        return path.name in DATA_ROOT_FILES
    if not path.is_dir():
        return False
    if broker_made(path) or any((path / mark).is_file() for mark in WORKER_MARKS):
        return True
    return depth > 0 and any(docket_entry(child, depth - 1) for child in path.iterdir() if child.is_dir())


def _set_path(env: str) -> Path | None:
    value = os.environ.get(env, "").strip()
    return Path(value).expanduser().resolve() if value else None


def run_clean(echo=click.echo) -> int:
    """Do what `docket clean` does; return its exit status: 0, or 1 when a stack or workers
    run (then nothing was stopped or deleted) or some path was refused or could not be
    deleted (the others are deleted). ``echo(text, err=bool)`` prints. Raises BrokerError
    (exit 1, nothing deleted) when a broker survives its stop."""
    from launcher import stacklock
    from launcher.broker import stop_broker  # here: launcher/broker.py imports this module

    here = Path.cwd().resolve()
    # Read alone, not through load(): a fresh start must not wait for, say, Kafka settings to be right.
    broker_dir = Path(_raw("DOCKET_BROKER_DIR")).expanduser().resolve()
    targets = [("var/", (here / "var").resolve())]
    targets += [(env, p) for env in ("DOCKET_DATA_ROOT", "DOCKET_BROKER_DIR") if (p := _set_path(env))]
    roots, keep = checkouts(), (home(), here)
    verdicts = [(name, path, refusal(path, roots, keep)) for name, path in targets]
    if not is_checkout(here):  # `docket clean` run by hand elsewhere: ./var is someone else's
        verdicts[0] = ("var/", targets[0][1], f"{here} is not a docket checkout; run `make clean` in one")
    doomed: list[Path] = []  # what to delete, in order
    # a directory a setting names, its setting, and what it holds that docket did not make
    foreign: list[tuple[Path, str, list[Path]]] = []
    for i, (name, path, why) in enumerate(verdicts):
        if why is not None or not path.exists():
            continue
        if name == "DOCKET_BROKER_DIR" and not broker_made(path):
            verdicts[i] = (name, path, "it does not look like a broker directory docket made (no "
                           f"{' and '.join(BROKER_FILES)} in it)")
        elif name == "DOCKET_BROKER_DIR" and (others := foreign_entries(path)):
            # a directory docket's broker ran in, holding files of someone else's too
            foreign.append((path, name, others))
            doomed += [entry for entry in sorted(path.iterdir()) if entry not in others]
        elif name == "DOCKET_DATA_ROOT" and path.is_dir():
            others = [entry for entry in sorted(path.iterdir()) if not docket_entry(entry)]
            if others:
                foreign.append((path, name, others))
                doomed += [entry for entry in sorted(path.iterdir()) if entry not in others]
            else:
                doomed.append(path)
        else:
            doomed.append(path)

    stack = stacklock.holder(broker_dir)
    if stack is not None:
        echo(f"docket clean: a `docket stack run` (pid {stack}) runs its broker from {broker_dir}", err=True)
    held = held_data_dirs(path for path in doomed if path.is_dir())
    for data_dir, pid in held:
        echo(f"docket clean: a docket worker (pid {pid}) holds {data_dir}", err=True)
    if held or stack is not None:
        echo(f"docket clean: nothing stopped or deleted; {STOP_FIRST}", err=True)
        return 1

    pid = stop_broker(broker_dir)
    echo(f"broker stopped (pid {pid})" if pid else f"no broker running from {broker_dir}", err=True)
    if pid := stop_broker(TEST_BROKER_DIR):
        echo(f"test broker stopped (pid {pid})", err=True)

    status = 0
    for name, path, why in verdicts:
        if why is not None:
            advice = f"; set {name} to a directory of docket's own" if name.startswith("DOCKET_") else ""
            echo(f"docket clean: not deleting {path} ({name}): {why}{advice}", err=True)
            status = 1
    for path in doomed:
        if not path.exists() and not path.is_symlink():  # deleted already: DOCKET_DATA_ROOT may lie inside var/
            continue
        echo(f"rm -rf {path}")
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError as exc:
            echo(f"docket clean: could not delete {path}: {exc}", err=True)
            status = 1
    for root, name, others in foreign:
        shown = ", ".join(entry.name for entry in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        echo(f"docket clean: kept {root} ({name}) and what docket did not make there: {shown}", err=True)
    return status


@click.command()
def clean() -> None:
    """Delete docket's local state for a fresh start (what `make clean` runs).

    Refuses while a stack runs its broker from DOCKET_BROKER_DIR or docket workers hold
    data directories there (stop `make run` first); stops the local brokers; deletes var/,
    and what docket made in DOCKET_DATA_ROOT and DOCKET_BROKER_DIR when set, never a path
    holding $HOME, the checkout, or files git tracks. Exit status 1 when it refused
    anything."""
    sys.exit(run_clean())
