"""`docket clean` (launcher/clean.py), what `make clean` runs: it refuses while workers
hold their data directories, and never deletes $HOME, the checkout or files git tracks.
No broker needed: each test runs in a throwaway git repository laid out as a checkout,
and the brokers' stop is a stand-in that records its calls."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from app.settings import SETTINGS
from launcher import broker, clean

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository laid out as a docket checkout (tracked launcher/clean.py and
    broker/pom.xml, var/ ignored and holding state), the current directory; no DOCKET_*
    setting set; the brokers' stop recorded in ``stops`` instead of done."""
    repo = tmp_path / "checkout"
    for name, text in {"launcher/clean.py": "", "broker/pom.xml": "<project/>\n", ".gitignore": "var/\n",
                       "var/docket-a/tables/ledger-0.db": "state", "var/broker/data/meta.properties": "x"}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.chdir(repo)
    stops.clear()
    monkeypatch.setattr(broker, "stop_broker", lambda broker_dir, timeout=30.0: stops.append(broker_dir))
    return repo.resolve()


stops: list[Path] = []


def run_clean():
    return CliRunner().invoke(cli, ["clean"], catch_exceptions=False)


@contextlib.contextmanager
def holding(lock: Path, pid: bytes):
    """Hold ``lock``'s flock through a file description of this test's own, the file
    naming ``pid``, as a worker or a stack holds theirs."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, pid)
        yield
    finally:
        os.close(fd)


def test_lock_file_name_is_the_workers() -> None:
    """CleanRefusesWhileWorkersRun: the lock file `docket clean` tries is the one
    agents/plumbing.py claim_data_dir holds (clean does not import it: it imports Faust)."""
    from agents.plumbing import DATA_DIR_LOCK

    assert clean.DATA_DIR_LOCK == DATA_DIR_LOCK


@needs_git
def test_a_held_data_directory_refuses_and_nothing_is_stopped_or_deleted(checkout: Path) -> None:
    """CleanRefusesWhileWorkersRun: while a worker holds its data directory under var/
    (here the test holds the flock itself, through a file description of its own),
    `docket clean` exits 1 naming the directory, the pid and what to do, stops no broker
    and deletes nothing; once the lock is released (the lock file stays, as a dead
    worker's does), it stops the brokers and deletes var/."""
    data_dir = checkout / "var" / "docket-a"
    with holding(data_dir / clean.DATA_DIR_LOCK, b"4242"):
        result = run_clean()
        assert result.exit_code == 1, result.output
        assert f"a docket worker (pid 4242) holds {data_dir}" in result.stderr
        assert "nothing stopped or deleted; stop `make run` (Ctrl-C) first" in result.stderr
        assert "then run `make clean` again" in result.stderr
        assert "rm -rf" not in result.stdout
        assert stops == []
        assert (data_dir / "tables" / "ledger-0.db").read_text() == "state"
    result = run_clean()
    assert result.exit_code == 0, result.output
    assert stops == [checkout / "var" / "broker", Path("var/test-broker")]
    assert result.stdout == f"rm -rf {checkout / 'var'}\n"
    assert not (checkout / "var").exists()


@needs_git
def test_a_tracked_directory_is_kept_and_an_untracked_one_deleted(checkout: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """CleanKeepsTrackedFiles: DOCKET_BROKER_DIR set to the checkout's own broker/ (git
    tracks its pom.xml) is refused with what to do, while DOCKET_DATA_ROOT, an untracked
    directory inside the checkout, and var/ are deleted; exit 1 for the refusal."""
    scratch = checkout / "scratch"
    (scratch / "docket-b").mkdir(parents=True)
    monkeypatch.setenv("DOCKET_BROKER_DIR", "broker")
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(scratch))
    result = run_clean()
    assert result.exit_code == 1, result.output
    assert (f"not deleting {checkout / 'broker'} (DOCKET_BROKER_DIR): it holds files git tracks in {checkout} "
            "(broker/pom.xml); set DOCKET_BROKER_DIR to a directory of docket's own") in result.stderr
    assert result.stdout == f"rm -rf {checkout / 'var'}\nrm -rf {scratch}\n"
    assert (checkout / "broker" / "pom.xml").read_text() == "<project/>\n"
    assert not scratch.exists() and not (checkout / "var").exists()


@needs_git
def test_home_and_the_checkout_are_refused(checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CleanKeepsTrackedFiles: a DOCKET_DATA_ROOT that is $HOME, or a DOCKET_BROKER_DIR
    that holds the checkout, is refused, and both stay; the real checkout (which holds
    this test) and its tracked broker/ are refused too, its var/ is not."""
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(home))
    monkeypatch.setenv("DOCKET_BROKER_DIR", str(checkout.parent))
    result = run_clean()
    assert result.exit_code == 1, result.output
    assert f"not deleting {home} (DOCKET_DATA_ROOT): it holds {home}; set DOCKET_DATA_ROOT to" in result.stderr
    assert f"not deleting {checkout.parent} (DOCKET_BROKER_DIR): it holds " in result.stderr
    assert (home / "notes").is_dir() and (checkout / "broker" / "pom.xml").is_file()
    assert result.stdout == f"rm -rf {checkout / 'var'}\n"

    real = clean.CHECKOUT
    assert clean.refusal(real, [real]) == f"it holds {real}"
    assert clean.refusal(real.parent, [real]) == f"it holds {real}"
    assert clean.refusal(real / "broker", [real]) is not None  # broker/pom.xml is tracked
    assert clean.refusal(real / "var" / "broker", [real]) is None


def test_without_git_only_var_inside_the_checkout_is_deleted(tmp_path: Path) -> None:
    """CleanKeepsTrackedFiles: where git cannot tell what is tracked (no .git), a path
    inside the checkout is refused unless it is var/ or lies in it."""
    root = tmp_path / "tarball"
    root.mkdir()
    why = clean.refusal(root / "data", [root])
    assert why is not None and "git cannot tell" in why
    assert clean.refusal(root / "var", [root]) is None
    assert clean.refusal(root / "var" / "console", [root]) is None
    assert clean.refusal(tmp_path / "elsewhere", [root]) is None


def test_var_is_kept_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CleanKeepsTrackedFiles: `docket clean` run by hand in a directory that is no docket
    checkout leaves its var/ alone (someone else's) and exits 1 saying why."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    (tmp_path / "var" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(broker, "stop_broker", lambda broker_dir, timeout=30.0: None)
    result = run_clean()
    assert result.exit_code == 1, result.output
    assert "is not a docket checkout; run `make clean` in one" in result.stderr
    assert (tmp_path / "var" / "mine").is_dir()


@needs_git
@pytest.mark.parametrize("command", ["start", "run"])
def test_the_broker_refuses_a_tracked_directory(checkout: Path, monkeypatch: pytest.MonkeyPatch,
                                                command: str) -> None:
    """CleanKeepsTrackedFiles: `docket broker start` and `docket broker run` with
    DOCKET_BROKER_DIR set to the checkout's broker/ exit 1 before writing in it (no
    Java is looked for: the stand-in would fail the test)."""
    def no_java() -> str:
        raise AssertionError("the broker got as far as looking for Java")

    monkeypatch.setattr(broker, "java_executable", no_java)
    monkeypatch.setenv("DOCKET_BROKER_DIR", str(checkout / "broker"))
    result = CliRunner().invoke(cli, ["broker", command], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert (f"DOCKET_BROKER_DIR {checkout / 'broker'} is not a directory of docket's own: it holds files git "
            "tracks") in result.stderr
    assert sorted(p.name for p in (checkout / "broker").iterdir()) == ["pom.xml"]


def test_the_files_clean_recognises_are_the_ones_docket_writes() -> None:
    """CleanDeletesOnlyDocketsOwn: the names `docket clean` takes for docket's own are the
    ones the stack and the broker launcher write (clean does not import them: the broker
    launcher imports clean)."""
    from launcher import stack

    assert set(clean.DATA_ROOT_FILES) == {stack.TOKEN_FILE, stack.STACK_LOG}
    assert set(clean.BROKER_FILES) == {broker.CONFIG_FILE, broker.LOG4J_FILE}
    assert {broker.LOG_FILE, broker.PID_FILE, broker.BACKGROUND_FILE} < clean.BROKER_EARLY_FILES


@needs_git
def test_a_directory_docket_did_not_make_keeps_everything_of_its_own(checkout: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """CleanDeletesOnlyDocketsOwn: DOCKET_BROKER_DIR naming a directory docket's broker
    did not make (a repository's .git) is refused and kept whole; DOCKET_DATA_ROOT
    naming a directory that also holds other files (as /var/lib would) loses only what
    docket made there: a worker's data directory, the token, a broker directory; the
    rest and the directory itself stay, and a line says what was kept."""
    other_repo = tmp_path / "other" / ".git"
    (other_repo / "objects").mkdir(parents=True)
    (other_repo / "HEAD").write_text("ref: refs/heads/main\n")
    root = tmp_path / "shared"
    for name, text in {"docket-a/docket-domain": "inventory\n", "api-token": "t\n",
                       "broker/server.properties": "x=1\n", "broker/log4j2.properties": "x\n",
                       "keep/file": "mine", "notes.txt": "mine"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setenv("DOCKET_BROKER_DIR", str(other_repo))
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(root))
    result = run_clean()
    assert result.exit_code == 1, result.output
    assert (f"not deleting {other_repo} (DOCKET_BROKER_DIR): it does not look like a broker directory docket "
            "made (no server.properties and log4j2.properties in it)") in result.stderr
    assert (other_repo / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert sorted(p.name for p in root.iterdir()) == ["keep", "notes.txt"]
    assert (root / "keep" / "file").read_text() == "mine"
    assert f"kept {root} (DOCKET_DATA_ROOT) and what docket did not make there: keep, notes.txt" in result.stderr
    assert result.stdout == (f"rm -rf {checkout / 'var'}\nrm -rf {root / 'api-token'}\nrm -rf {root / 'broker'}\n"
                             f"rm -rf {root / 'docket-a'}\n")


@needs_git
def test_a_running_stack_refuses_whatever_data_root_the_shell_names(checkout: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """CleanRefusesWhileWorkersRun, StackHoldsItsBrokerDirectory: while a `docket stack
    run` holds DOCKET_BROKER_DIR (its stack lock), `docket clean` stops and deletes
    nothing, even when this shell's DOCKET_DATA_ROOT is not the stack's (its workers'
    data directories are elsewhere): a stack's broker was stopped under it so."""
    from launcher import stacklock

    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    monkeypatch.setenv("DOCKET_BROKER_DIR", str(broker_dir))
    with holding(broker_dir / stacklock.STACK_LOCK, b"5151"):
        result = run_clean()
        assert result.exit_code == 1, result.output
        assert f"a `docket stack run` (pid 5151) runs its broker from {broker_dir}" in result.stderr
        assert "nothing stopped or deleted" in result.stderr
        assert stops == [] and (checkout / "var").is_dir() and broker_dir.is_dir()
    assert run_clean().exit_code == 0
    assert stops and not broker_dir.exists()


def test_a_second_stack_on_one_broker_directory_is_refused(tmp_path: Path) -> None:
    """StackHoldsItsBrokerDirectory: the stack lock of a broker directory another
    process holds is waited for, with a line saying so, then refused with what to do;
    once it is free it is taken, and held by this process until it ends."""
    from launcher import stacklock
    from launcher.stack import StackError, hold_broker_dir

    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    said: list[str] = []
    with holding(broker_dir / stacklock.STACK_LOCK, b"6262"):
        with pytest.raises(StackError, match=r"another `docket stack run` \(pid 6262\) runs its broker from .*"
                                             r"give this stack a DOCKET_BROKER_DIR and a DOCKET_BROKER_PORT"):
            hold_broker_dir(broker_dir, wait_s=0.3, echo=lambda text, err=False: said.append(text))
        assert said and "waiting up to 0.3 s for it to stop" in said[0]
    try:
        hold_broker_dir(broker_dir, wait_s=0.3, echo=lambda text, err=False: said.append(text))
        assert stacklock.holder(broker_dir) == str(os.getpid())
    finally:
        os.close(stacklock._held.pop(broker_dir.resolve()))
    assert stacklock.holder(broker_dir) is None


@needs_git
def test_a_stack_writes_no_lock_into_a_tracked_directory(checkout: Path) -> None:
    """CleanKeepsTrackedFiles, StackHoldsItsBrokerDirectory: a stack whose
    DOCKET_BROKER_DIR is the checkout's broker/ is refused before its lock file is
    written there."""
    from launcher.stack import hold_broker_dir

    with pytest.raises(broker.BrokerError, match="is not a directory of docket's own"):
        hold_broker_dir(checkout / "broker", wait_s=0.1)
    assert sorted(p.name for p in (checkout / "broker").iterdir()) == ["pom.xml"]


@pytest.mark.parametrize("command", ["start", "run"])
def test_the_broker_refuses_a_directory_of_someone_elses_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              command: str) -> None:
    """BrokerRefusesAForeignDirectory: `docket broker start | run` with DOCKET_BROKER_DIR
    naming a directory that holds files docket's broker did not make exits 1, naming
    them, before writing there; `make clean` would otherwise take the directory for the
    broker's (a user check lost its own file that way). An empty directory, or one the
    broker made, is taken."""
    def no_java() -> str:
        raise AssertionError("the broker got as far as looking for Java")

    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.setattr(broker, "java_executable", no_java)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("mine")
    monkeypatch.setenv("DOCKET_BROKER_DIR", str(mine))
    result = CliRunner().invoke(cli, ["broker", command], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert (f"DOCKET_BROKER_DIR {mine.resolve()} is not a directory of docket's own: it holds files docket's broker "
            "did not make (precious.txt); set DOCKET_BROKER_DIR to a new or empty directory") in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["precious.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    broker._check_broker_dir(empty)  # noqa: SLF001  taken: nothing raised
    broker._check_broker_dir(tmp_path / "new")  # noqa: SLF001


@needs_git
def test_a_broker_directory_keeps_what_docket_did_not_write_there(checkout: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """CleanDeletesOnlyDocketsOwn: in a DOCKET_BROKER_DIR docket's broker ran in, a file
    someone put there later stays, with the directory, and a line says so; the broker's
    own files, its log and its data go (before: rm -rf of the whole directory)."""
    broker_dir = tmp_path / "b"
    for name, text in {"server.properties": "x=1\n", "log4j2.properties": "x\n", "broker.log": "log\n",
                       "broker.log.1": "old\n", "data/meta.properties": "m\n", "precious.txt": "mine"}.items():
        (broker_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (broker_dir / name).write_text(text)
    monkeypatch.setenv("DOCKET_BROKER_DIR", str(broker_dir))
    result = run_clean()
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in broker_dir.iterdir()) == ["precious.txt"]
    assert f"kept {broker_dir} (DOCKET_BROKER_DIR) and what docket did not make there: precious.txt" in result.stderr
    assert f"rm -rf {broker_dir / 'data'}" in result.stdout and f"rm -rf {broker_dir}\n" not in result.stdout
    (broker_dir / "precious.txt").unlink()
    (broker_dir / "server.properties").write_text("x=1\n")
    (broker_dir / "log4j2.properties").write_text("x\n")
    assert run_clean().exit_code == 0
    assert not broker_dir.exists()  # nothing but docket's: the directory goes whole
