"""Where an instance and the Clerk spend their CPU at a given rate: py-spy samples the
running processes (non-blocking, so the profile does not slow them; only the thread
holding the GIL, so a thread preempted inside a socket write, which a busy 2-core
machine does constantly, is not charged as if it were working) and writes collapsed
stacks; :func:`top` turns them into the costliest functions, per event. The kernel's
CPU account of each process (:func:`cpu_times`) is the figure to trust for totals.

Collapsed stacks are one line per distinct stack, ``frame;frame;...;frame count``,
outermost first, each frame ``function (file:line)``: the input of flamegraph.pl and
speedscope, kept next to the report.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from bench.common import say

SAMPLE_RATE = 100  # samples per second per process

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    if exe.exists():
        return str(exe)
    found = shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed; `make bench` installs it (pip install py-spy)")
    return found


def stat_times(stat: str) -> tuple[str, float, float]:
    """(name, user, system CPU seconds) from the text of a /proc/<pid>/stat or
    /proc/<pid>/task/<tid>/stat file (proc(5): the name in parentheses may itself hold
    spaces and parentheses, so the fields are counted from the last ``)``)."""
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return name, int(fields[11]) / tick, int(fields[12]) / tick


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (Linux /proc)."""
    _, user, system = stat_times(Path(f"/proc/{pid}/stat").read_text())
    return user, system


def cpu_seconds(pids: dict[str, int] | None) -> dict[str, float]:
    """role -> CPU seconds (user + system) the process of ``pids`` has used so far; a
    process gone is left out."""
    out = {}
    for role, pid in (pids or {}).items():
        try:
            user, system = cpu_times(pid)
        except OSError:
            continue
        out[role] = user + system
    return out


def box_cpu_seconds(stat: str | None = None) -> dict[str, float]:
    """The whole machine's CPU seconds so far, summed over its CPUs (the first line of
    Linux's /proc/stat, or ``stat``: its text): ``busy`` (user, nice, system, irq,
    softirq; guest time is inside user), ``idle`` (idle, iowait) and ``steal`` (time the
    hypervisor ran something else while this VM had work: proc(5)). Raises OSError when
    /proc/stat cannot be read, ValueError when its first line is not the ``cpu`` line."""
    text = Path("/proc/stat").read_text() if stat is None else stat
    fields = text.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        raise ValueError(f"not /proc/stat's cpu line: {fields[:1]}")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "idle": (idle + iowait) / tick,
            "steal": steal / tick}


def cpu_delta(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, dict]:
    """role -> {seconds: CPU seconds used between two :func:`cpu_seconds` readings,
    cores: those seconds over the ``seconds`` of wall time between them}, for the roles
    in both."""
    return {role: {"seconds": round(after[role] - before[role], 3),
                   "cores": round((after[role] - before[role]) / seconds, 3) if seconds > 0 else None}
            for role in sorted(after) if role in before}


async def record(pids: dict[str, int], seconds: float, out_dir: Path,
                 also: dict[str, int] | None = None) -> tuple[dict[str, Path], dict[str, dict]]:
    """Sample every process of ``pids`` for ``seconds`` at once. Returns role ->
    collapsed file, and role -> the user and system CPU seconds it used meanwhile
    (the kernel's account), for ``pids`` and for the processes of ``also`` (not
    sampled: the broker, the load generator)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    accounted = {**(also or {}), **pids}
    before = {role: cpu_times(pid) for role, pid in accounted.items()}
    outputs = {role: out_dir / f"profile-{role}.collapsed.txt" for role in pids}
    procs = {}
    for role, pid in pids.items():
        procs[role] = await asyncio.create_subprocess_exec(
            py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(SAMPLE_RATE),
            "--nonblocking", "--gil", "--format", "raw", "--output", str(outputs[role]),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    say(f"profiling {', '.join(f'{r} (pid {p})' for r, p in pids.items())} for {seconds:.0f} s ...")
    for role, proc in procs.items():
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
        except TimeoutError:
            proc.kill()
            raise RuntimeError(f"py-spy on {role} did not finish") from None
        if proc.returncode != 0 or not outputs[role].exists():
            raise RuntimeError(f"py-spy on {role} failed: {out.decode(errors='replace')[-500:]}")
    cpu = {}
    for role, pid in accounted.items():
        (u0, s0), (u1, s1) = before[role], cpu_times(pid)
        cpu[role] = {"user_s": round(u1 - u0, 2), "system_s": round(s1 - s0, 2)}
    return outputs, cpu


def parse_frame(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``: a function, wherever in it."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({Path(m['file']).name})"


def read_collapsed(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([parse_frame(f) for f in stack.split(";")], int(count)))
    return stacks


# Waiting for the socket, not work: py-spy's idle detection does not always drop these
# samples when it samples without pausing the process.
IDLE_LEAVES = ("EpollSelector.select (selectors.py)", "select (selectors.py)")


def top(text: str, events: int, n: int = 15) -> dict:
    """The ``n`` costliest functions by own time (self) and by time including callees
    (total), as a share of the busy samples and as CPU microseconds per event, given
    the number of events the process handled while sampled. Samples waiting in the
    event loop's select() are idle: counted apart, not as cost."""
    stacks = read_collapsed(text)
    idle = sum(c for frames, c in stacks if frames[-1] in IDLE_LEAVES)
    stacks = [(frames, c) for frames, c in stacks if frames[-1] not in IDLE_LEAVES]
    total = sum(c for _, c in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count

    def rows(counter: Counter[str]) -> list[dict]:
        return [{"function": f, "share": round(c / total, 4),
                 "us_per_event": round(c / SAMPLE_RATE / events * 1e6, 1) if events else None}
                for f, c in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]

    return {"samples": total, "idle_samples": idle, "cpu_seconds": round(total / SAMPLE_RATE, 2), "events": events,
            "cpu_us_per_event": round(total / SAMPLE_RATE / events * 1e6, 1) if events else None,
            "self": rows(own), "total": rows(inclusive)}
