"""`docket clean`: what `make clean` runs once .venv holds docket (specs/integration.allium
CleanRefusesWhileWorkersRun, CleanKeepsTrackedFiles).

In this order: refuse, stopping and deleting nothing, while a docket worker holds a data
directory under what it would delete; stop the local brokers (DOCKET_BROKER_DIR's and the
test session's, var/test-broker); delete var/ (of the current directory), and
DOCKET_DATA_ROOT and DOCKET_BROKER_DIR when they are set, but never a path that
:func:`refusal` refuses. :func:`refusal` also guards `docket broker start | run`
(launcher/broker.py ``_check_broker_dir``).

This module imports nothing of Faust (nor launcher/broker.py at import time, which
imports it back), so `docket clean` starts fast; of the settings it reads only the two paths.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from app.settings import _raw

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

    Each lock file is tried with a non-blocking exclusive flock and released at once: a
    worker's flock goes with its process however it exits, so a lock file left by a dead
    worker is free, and its pid file would be stale."""
    held: dict[Path, str] = {}
    for top in paths:
        for parent, _dirs, files in os.walk(top):  # symlinks are not followed
            if DATA_DIR_LOCK not in files:
                continue
            lock = Path(parent) / DATA_DIR_LOCK
            try:
                fd = os.open(lock, os.O_RDONLY)
            except OSError:
                continue  # gone meanwhile (a worker does not remove it, but `rm` may)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held[Path(parent)] = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
    return sorted(held.items())


def _set_path(env: str) -> Path | None:
    value = os.environ.get(env, "").strip()
    return Path(value).expanduser().resolve() if value else None


def run_clean(echo=click.echo) -> int:
    """Do what `docket clean` does; return its exit status: 0, or 1 when workers run (then
    nothing was stopped or deleted) or some path was refused or could not be deleted (the
    others are deleted). ``echo(text, err=bool)`` prints. Raises BrokerError (exit 1,
    nothing deleted) when a broker survives its stop."""
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

    held = held_data_dirs(path for _, path, why in verdicts if why is None and path.is_dir())
    for data_dir, pid in held:
        echo(f"docket clean: a docket worker (pid {pid}) holds {data_dir}", err=True)
    if held:
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
        elif path.exists():  # not when deleted already: DOCKET_DATA_ROOT may lie inside var/
            echo(f"rm -rf {path}")
            try:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            except OSError as exc:
                echo(f"docket clean: could not delete {path}: {exc}", err=True)
                status = 1
    return status


@click.command()
def clean() -> None:
    """Delete docket's local state for a fresh start (what `make clean` runs).

    Refuses while docket workers hold data directories there (stop `make run` first);
    stops the local brokers; deletes var/, and DOCKET_DATA_ROOT and DOCKET_BROKER_DIR when
    set, never a path holding $HOME, the checkout, or files git tracks. Exit status 1 when
    it refused anything."""
    sys.exit(run_clean())
