"""bench/threads.py: per-thread CPU grouped by name, from /proc."""

from __future__ import annotations

import os
import threading

import pytest

from bench.threads import cores_by_group, group, main, read_threads


def _task(root, pid: int, tid: int, name: str, utime: int, stime: int) -> None:
    d = root / str(pid) / "task" / str(tid)
    d.mkdir(parents=True)
    # proc(5): fields after the name's closing parenthesis; utime and stime are the 12th and 13th
    rest = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime), "0", "0"]
    (d / "stat").write_text(f"{tid} ({name}) {' '.join(rest)}\n")


def test_threads_are_read_with_their_names_and_cpu(tmp_path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    # a name with a space and a parenthesis, as the JVM's are, still parses
    _task(tmp_path, 7, 7, "java", 10, 5)
    _task(tmp_path, 7, 8, "C2 CompilerThre", 300, 20)
    _task(tmp_path, 7, 9, "odd) name", 1, 1)
    got = read_threads(7, tmp_path)
    want = {"7": ("java", 15 / tick), "8": ("C2 CompilerThre", 320 / tick), "9": ("odd) name", 2 / tick)}
    assert {t: n for t, (n, _) in got.items()} == {t: n for t, (n, _) in want.items()}
    assert {t: c for t, (_, c) in got.items()} == pytest.approx({t: c for t, (_, c) in want.items()})


def test_cores_are_grouped_by_name_without_digits() -> None:
    assert group("data-plane-kafka-request-handler-3") == "data-plane-kafka-request-handler-#"
    assert group("C1 CompilerThre") == group("C2 CompilerThre") == "C# CompilerThre"
    before = {"1": ("C2 CompilerThre", 10.0), "2": ("C1 CompilerThre", 1.0), "3": ("gone", 5.0)}
    after = {"1": ("C2 CompilerThre", 14.0), "2": ("C1 CompilerThre", 2.0), "4": ("new-thread-1", 0.5)}
    got = cores_by_group(before, after, 10.0)
    # the compiler threads together; a thread born in the span counts from zero; one gone is left out
    assert got == {"C# CompilerThre": pytest.approx(0.5), "new-thread-#": pytest.approx(0.05)}
    with pytest.raises(ValueError):
        cores_by_group(before, after, 0)


def test_a_busy_thread_of_this_process_shows(capsys) -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin, name="spinner")
    t.start()
    try:
        assert main([str(os.getpid()), "--seconds", "0.5"]) == 0
    finally:
        stop.set()
        t.join()
    out = capsys.readouterr().out
    # "<time> 0.5 s: <cores> cores: <group> <cores>, ...": the spinning thread's share shows in the total
    total = float(out.split(" s: ", 1)[1].split(" cores:", 1)[0])
    assert total > 0.05, out
    assert main(["999999999", "--seconds", "0.1"]) == 1  # no such process: a message, status 1


def test_ctrl_c_ends_a_run_without_a_traceback(monkeypatch, capsys) -> None:
    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("bench.threads.time.sleep", interrupted)
    assert main([str(os.getpid()), "--seconds", "50", "--times", "12"]) == 130
    assert capsys.readouterr().err == ""
