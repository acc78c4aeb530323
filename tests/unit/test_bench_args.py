"""The benchmarks' command lines refuse what cannot be measured before they start a
broker or measure anything (bench/run.py, bench/soak.py; bench/common.py's argparse
types): a bad value costs a usage error at once, never a run's results."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import run, soak
from bench.common import positive_float, positive_int, writable_dir


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.5"])
def test_positive_int_refuses_what_is_not_a_count(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)


def test_positive_types_take_what_is() -> None:
    assert positive_int("8") == 8
    assert positive_float("0.5") == 0.5
    for text in ("0", "-2", "nan", "x", "inf", "1e400"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(text)


def test_writable_dir_creates_the_directory_or_says_why_not(tmp_path: Path) -> None:
    assert writable_dir(str(tmp_path / "a" / "b")) is None
    assert (tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    problem = writable_dir(str(blocker / "x"))
    assert problem is not None and str(blocker / "x") in problem


@pytest.mark.parametrize("argv", [
    ["--http-partitions", "8", "0"], ["--native-partitions", "-1"], ["--native-rates", "50", "0"],
    ["--http-rates", "0"], ["--http-duration-s", "0"], ["--http-floor-s", "0"], ["--quix-events", "0"],
])
def test_bench_run_refuses_non_positive_values_at_start(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    assert exit_.value.code == 2
    assert "must be greater than 0" in capsys.readouterr().err


def test_bench_run_and_soak_refuse_an_unwritable_out_at_start(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for main in (run.main, soak.main):
        with pytest.raises(SystemExit) as exit_:
            main(["--out", str(blocker / "reports")])
        assert exit_.value.code == 2
        assert "cannot write reports to" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--rate", "0"], ["--duration-s", "0"], ["--sample-s", "-5"]])
def test_soak_refuses_non_positive_values_at_start(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        soak.main(argv)
    assert exit_.value.code == 2
    assert "must be greater than 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--http-duration-s", "inf"], ["--native-duration-s", "1e400"]])
def test_bench_run_refuses_an_endless_duration_at_start(argv: list[str], capsys) -> None:
    """inf got past the check and failed minutes later, after the broker and the stack had started."""
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    assert exit_.value.code == 2
    assert "must be a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "option"), [
    (["--http-rates", "100", "1000", "--http-duration-s", "0.005"], "--http-duration-s 0.005 s at 100/s"),
    (["--http-rates", "100", "--http-floor-s", "0.001"], "--http-floor-s 0.001 s at 100/s"),
    (["--smoke", "--native-rates", "50", "--native-duration-s", "0.01"], "--native-duration-s 0.01 s at 50/s"),
])
def test_bench_run_refuses_a_duration_shorter_than_one_request_at_start(argv: list[str], option: str,
                                                                       capsys) -> None:
    """A duration shorter than one interval of the lowest rate sends nothing and gave a
    figure of nothing; the smoke's own durations and one request exactly pass."""
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "sends nothing" in err
    for ok in (["--smoke"], ["--http-rates", "100", "--http-duration-s", "0.01"]):
        assert run.too_short(run.plan_of(run.parser().parse_args(ok))) is None, ok


def test_the_least_duration_named_is_accepted_and_only_measurements_run_are_checked() -> None:
    args = run.parser().parse_args(["--native-rates", "3", "7", "--native-duration-s", "0.3"])
    problem = run.too_short(run.plan_of(args))
    least = problem.rsplit("at least ", 1)[1].removesuffix(" s")
    args = run.parser().parse_args(["--native-rates", "3", "7", "--native-duration-s", least])
    assert run.too_short(run.plan_of(args)) is None, least  # rounded up, not down
    args = run.parser().parse_args(["--only", "faust_floor", "--http-duration-s", "0.001"])
    assert run.too_short(run.plan_of(args), args.only) is None
    assert run.too_short(run.plan_of(args), ["http"]) is not None


def test_drain_events_default_to_the_plans_and_may_be_given(capsys) -> None:
    assert run.plan_of(run.parser().parse_args([]))["drain_events"] == run.FULL["drain_events"]
    assert run.plan_of(run.parser().parse_args(["--smoke"]))["drain_events"] == run.SMOKE["drain_events"]
    assert run.plan_of(run.parser().parse_args(["--drain-events", "7000"]))["drain_events"] == 7000
    with pytest.raises(SystemExit):
        run.parser().parse_args(["--drain-events", "0"])
    assert "must be greater than 0" in capsys.readouterr().err


def test_profile_seconds_may_be_zero_but_not_negative(capsys) -> None:
    assert run.parser().parse_args(["--profile-s", "0"]).profile_s == 0
    with pytest.raises(SystemExit):
        run.parser().parse_args(["--profile-s", "-5"])
    assert "must be 0 or more" in capsys.readouterr().err


def test_soak_refuses_a_duration_too_short_to_judge(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        soak.main(["--duration-s", "6"])
    assert exit_.value.code == 2
    assert "--duration-s 6 is too short to judge" in capsys.readouterr().err


SIGTERMED = """
import asyncio, sys
from pathlib import Path
from bench.common import run_stoppable

async def measure():
    try:
        print("ready", flush=True)
        await asyncio.sleep(60)
    finally:
        await asyncio.sleep(0)  # an async cleanup, as BenchStack's stop is
        Path(sys.argv[1]).write_text("stopped in order")
    return 0

sys.exit(run_stoppable(measure()))
"""


def test_sigterm_stops_a_benchmark_as_ctrl_c_does(tmp_path: Path) -> None:
    """bench/common.py run_stoppable (bench.run and make soak): a SIGTERM'd run still
    runs its cleanup (stack, broker, work directory), where Python's default ended the
    process at once; it says so in one line, no traceback, and exits 143."""
    import signal
    import subprocess
    import sys

    marker = tmp_path / "cleanup"
    proc = subprocess.Popen([sys.executable, "-c", SIGTERMED, str(marker)], cwd=Path(run.__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert marker.read_text() == "stopped in order"
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err


def test_a_failed_partition_count_or_http_floor_fails_the_run() -> None:
    assert run.partial_failures("http", {"rates": [], "by_partitions": [{"partitions": 2, "error": "E"}],
                                         "floor": {"error": "RuntimeError: the HTTP floor's server exited 1"}}) == \
        ["http with 2 partitions", "http floor"]
    assert run.partial_failures("http", {"rates": [], "floor": {"rates": []}}) == []
    assert run.partial_failures("kafka_native", {"rates": []}) == []


def test_a_failed_drains_row_still_names_its_partitions_and_events() -> None:
    import dataclasses

    from app.settings import load
    from bench import report
    settings = dataclasses.replace(load(), partitions=3)
    failed = {**run.failed_context("drain", settings, {"drain_events": 1234}), "error": "BenchError: no"}
    name, figure = report.drain_row(failed)
    assert name.startswith("**docket draining a backlog, 3 partitions**") and "1,234 events produced at once" in name
    assert figure == "failed: BenchError: no"
    assert run.failed_context("quix", settings, {"drain_events": 1234}) == {}


WARDEN_SIGTERMED = """
import argparse, sys
from pathlib import Path
from bench.common import run_stoppable
from bench.soak import warden_run

args = argparse.Namespace(warden_rate=10_000, warden_ttl_s=300, warden_ttls=2.0)
sys.exit(run_stoppable(warden_run(args, Path(sys.argv[1]))))
"""


def test_sigterm_stops_the_soak_during_its_warden_measurement(tmp_path: Path) -> None:
    """bench/soak.py warden_run: the Warden measurement (1.5 to 3 minutes, a process of
    its own) is awaited on the event loop, so a SIGTERM stops `make soak` during it too:
    the measurement's process is terminated and the soak exits 143 at once, where it
    used to finish the measurement first."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", WARDEN_SIGTERMED, str(tmp_path)], cwd=Path(run.__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = ["pgrep", "-f", f"bench.warden_memory .*--json {tmp_path}/warden.json"]
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(child, capture_output=True).returncode != 0:  # the measurement is running
            assert proc.poll() is None and time.monotonic() < deadline, "the Warden measurement never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert subprocess.run(child, capture_output=True).returncode == 1, "the Warden measurement outlived the soak"


def test_only_a_complete_run_without_a_failure_replaces_the_readme_table() -> None:
    """`make bench` (bench/run.py) writes the README's table from a full run whose every
    measurement came back; a failed one (2026-12-05: instance a exited while an HTTP
    stack started) would have replaced the last complete run's figures with an error."""
    full = run.parser().parse_args([])
    assert run.updates_readme(full, [])
    assert not run.updates_readme(full, ["http"])
    for argv in (["--smoke"], ["--no-readme"], ["--only", "kafka_native"]):
        assert not run.updates_readme(run.parser().parse_args(argv), [])
