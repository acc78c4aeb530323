"""`make run` beside a broker started with `make broker-start` (specs/integration.allium
StackUsesTheBackgroundBroker). Before, the stack started a second broker process on the
same directory, which refused after 20 s and tore the whole stack down (found by a
fresh-clone user check). A real broker; the stack's other processes are stand-ins."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

from app.settings import SETTINGS, load
from launcher import broker as launcher


def test_stack_run_uses_the_background_broker_and_leaves_it_running(tmp_path: Path, monkeypatch) -> None:
    """StackUsesTheBackgroundBroker: with a broker of DOCKET_BROKER_DIR started in the
    background, `docket stack run` runs no Procfile ``broker``, hands the components that
    broker's address (the one it was started on, even with DOCKET_BROKER_PORT changed
    since), says so in its banner, and leaves it running when it stops."""
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    port = launcher.free_port()
    settings = dataclasses.replace(load(), broker_dir=tmp_path / "broker", broker_port=port,
                                   kafka_bootstrap=f"127.0.0.1:{port}")
    handle = launcher.start_broker(settings, 90, die_with_parent=True)
    try:
        assert launcher.background_pid(settings.broker_dir) == handle.pid
        py = shlex.quote(sys.executable)
        procfile = tmp_path / "Procfile"
        procfile.write_text(
            f"broker: exec {py} -c 'print(\"BROKER STARTED\", flush=True)'\n"
            f"app: exec {py} -c 'import os; print(\"KAFKA=\" + os.environ[\"DOCKET_KAFKA_BOOTSTRAP\"], flush=True)'\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
        env.update({"DOCKET_DATA_ROOT": str(tmp_path / "var"), "DOCKET_API_TOKENS": "stand-in-token",
                    "DOCKET_BROKER_DIR": str(settings.broker_dir), "DOCKET_BROKER_PORT": str(launcher.free_port()),
                    "PYTHONUNBUFFERED": "1"})
        proc = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "stack", "run",
                               "--procfile", str(procfile)], env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        out = proc.stdout + proc.stderr
        assert f"KAFKA=127.0.0.1:{port}" in out, out
        assert "BROKER STARTED" not in out and "broker.1" not in out, out
        assert "the local broker already running on" in out and "neither starts nor stops it" in out, out
        assert launcher.running_pid(settings.broker_dir) == handle.pid  # still running: not the stack's to stop
    finally:
        launcher.stop_broker(settings.broker_dir, timeout=15)
    assert launcher.background_pid(settings.broker_dir) is None
    assert not (settings.broker_dir / launcher.BACKGROUND_FILE).exists()
