"""A pseudo-terminal to run a command in, and to close, as a developer closes the
terminal window that runs `make run` (Linux).

:class:`Terminal` starts ``argv`` as the first process of a new session whose
controlling terminal is the pseudo-terminal: under a stand-in for the user's shell
(``shell=True``, the default), or with ``shell=False`` as the terminal's first process
itself, as ``xterm -e make run``, ``tmux new-session 'make run'`` or ``ssh -t host make
run`` start it. The shell stand-in is a small Python process that runs ``argv`` in its
own process group, which is therefore the terminal's foreground group. Everything
written to the terminal is copied to a file. :meth:`Terminal.hang_up` closes the
terminal's master side, which is what a terminal emulator does when its window closes;
the kernel then does the rest: SIGHUP to the session leader only, and once the leader
has exited, SIGHUP to the foreground process group, whose writes to the terminal fail
with EIO from the hang-up on. The shell stand-in takes SIGHUP as an interactive bash
does: it passes it on to the job (its own group, so itself too) and dies of it; the job
therefore gets two SIGHUPs, the shell's and the kernel's. A leader that catches SIGHUP
and waits for its children before it dies, as GNU make does, passes nothing on: its
children hear no signal at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import threading
from pathlib import Path

# The user's shell, reduced to what matters here: run the command in the foreground; on
# SIGHUP pass it on to the job (here: the whole group, the shell included) and die of it.
SHELL_STAND_IN = """\
import os, signal, subprocess, sys


def hang_up(signum, frame):
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    os.killpg(0, signal.SIGHUP)


signal.signal(signal.SIGHUP, hang_up)
sys.exit(subprocess.call(sys.argv[1:]))
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _take_terminal() -> None:
    """Popen preexec_fn, after setsid: make stdin (the terminal) the controlling terminal
    of the new session, with SIGHUP's default action as in a real terminal session (a
    test suite run under `nohup` passes SIG_IGN down, and make would then outlive the
    hang-up it is meant to die of); and die with the test process (Linux)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def plain(text: str) -> str:
    """Terminal output as a file would have it: no colour codes, ``\\n`` line ends."""
    return _ANSI.sub("", text).replace("\r\n", "\n")


class Terminal:
    """``argv`` running in a pseudo-terminal, under the shell stand-in or (``shell=False``)
    as the terminal's first process; its output copied to ``log_path`` (appended)."""

    def __init__(self, argv: list[str], log_path: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, shell: bool = True) -> None:
        if sys.platform != "linux":
            raise RuntimeError("tests.terminal needs Linux (TIOCSCTTY, /proc)")
        self.log_path = log_path
        self.master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": the copy reads like a file
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        try:
            self.proc = subprocess.Popen(  # noqa: PLW1509  preexec_fn: see _take_terminal
                [sys.executable, "-c", SHELL_STAND_IN, *argv] if shell else argv, cwd=cwd, env=env,
                stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=_take_terminal)
        finally:
            os.close(slave)
        self.pgid = self.proc.pid  # the session's and the foreground group's id (the leader's pid)
        self._closing = threading.Event()
        self._copier = threading.Thread(target=self._copy, name="terminal-copy", daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        with open(self.log_path, "ab", buffering=0) as log:
            while not self._closing.is_set():
                ready, _, _ = select.select([self.master], [], [], 0.1)  # wake up to see _closing
                if not ready:
                    continue
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: no process holds the terminal any more
                    return
                if not data:
                    return
                log.write(data)

    def hang_up(self) -> None:
        """Close the terminal, as its window closing does (once; later calls do nothing)."""
        if self.master < 0:
            return
        self._closing.set()
        self._copier.join(timeout=10)
        os.close(self.master)
        self.master = -1

    def group_members(self) -> list[int]:
        """pids of the live (not zombie) processes of the foreground group: the shell
        stand-in (if any), the command and whatever it started without a group of its own."""
        return members_of_group(self.pgid)

    def close(self) -> None:
        """Whatever state the test left: the terminal closed, the group gone, the leader reaped."""
        self.hang_up()
        # The group id cannot have been taken over while the leader is unreaped or the
        # group still has members; otherwise there is nothing to kill.
        if self.proc.returncode is None or self.group_members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def members_of_group(pgid: int) -> list[int]:
    """pids of the live (not zombie) processes whose process group is ``pgid`` (/proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            found.append(int(entry.name))
    return found
