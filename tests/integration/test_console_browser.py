"""The fault console (issue 16) in a real browser: `docket console` as a subprocess (its
own broker, instances a, b and c, the Clerk and a workload), its page driven in headless
Chromium through selenium.

Open the page with the token, skip the tour, wait for a, b, c and the Clerk to be ready
and the safety panel to read SAFETY HOLDS; kill b (b goes dead, a second kill is refused
with the server's message, the Clerk keeps publishing with a and c), restart b (ready
again), corrupt a with bitflips (withheld positions appear in the strip); the safety
panel reads 0 wrong results at every poll of the whole test. A screenshot goes to
test-artifacts/console.png (on failure test-artifacts/console-failure.png). Then the
page's stop button (after its confirm) stops the console, which must exit 0.

Debian's chromium and chromium-driver are required, never optional: `make test`
installs them (the Makefile's `browser` prerequisite); without them the test fails
saying how to install them. Selenium is pointed at the system chromedriver, so Selenium
Manager never runs (and never reaches for the network).

The page's hooks (ids, data attributes) are listed at the top of console/static/console.js.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.broker import set_parent_death_signal

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
INSTALL = ("install them with `apt-get install -y --no-install-recommends chromium chromium-driver` "
           "(as root, or with sudo), or run `make test`, which does")

# Deadlines (seconds). The stack's first start includes the broker's JVM and three
# Faust workers on 2 busy cores; a restart includes the group's session timeout.
STARTUP_S = 120
KILL_S = 20
RESTART_S = 75
WITHHELD_S = 45
STOP_S = 60


def _browser_paths() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
    missing = [name for name, path in (("chromium", chromium), ("chromedriver (package chromium-driver)", driver)) if not path]
    if missing:
        pytest.fail(f"the console's browser test needs {' and '.join(missing)}: {INSTALL}", pytrace=False)
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Console:
    """`docket console --port PORT` with a known token, its output in a log file."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.token = secrets.token_urlsafe(18)
        self.log_path = workdir / "console.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
        env["DOCKET_API_TOKENS"] = self.token
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "console", "--port", str(self.port),
             "--data-dir", str(workdir / "console-data")],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown can end all it started
            # and it dies with the test run, even when pytest is killed
            preexec_fn=set_parent_death_signal if sys.platform == "linux" else None,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/#token={self.token}"

    def log_tail(self, n: int = 60) -> str:
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()
            return "--- docket console output (tail) ---\n" + "\n".join(lines[-n:])
        return "(no console output)"

    def serves_page(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"docket console exited with {self.proc.returncode} before serving its page\n"
                                 f"{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def post_stop(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/stop", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with contextlib.suppress(OSError):
            urllib.request.urlopen(req, timeout=5).close()

    def close(self) -> None:
        """Whatever happened: ask it to stop, then SIGTERM, then SIGKILL its process group."""
        if self.proc.poll() is None:
            self.post_stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_S)
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait_s)
        # anything it started that outlived it (it should have stopped them all)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    c = Console(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1250", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _node(driver: Any, name: str) -> Any:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f'.node[data-node="{name}"]')


def _node_states(driver: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By
    return {e.get_attribute("data-node"): e.get_attribute("data-state")
            for e in driver.find_elements(By.CSS_SELECTOR, ".node[data-node]")}


def _click(driver: Any, node: str, action: str, arg: str | None = None) -> None:
    from selenium.webdriver.common.by import By
    sel = f'button[data-node="{node}"][data-action="{action}"]' + (f'[data-arg="{arg}"]' if arg else "")
    driver.find_element(By.CSS_SELECTOR, sel).click()


SAFE = re.compile(r"^SAFETY HOLDS: 0 wrong results of (\d+)$")


def test_console_page_kill_restart_corrupt_and_stop(console: Console, browser: Any) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    began = time.monotonic()
    driver = browser
    ARTIFACTS.mkdir(exist_ok=True)
    safety_seen: list[str] = []

    def safety() -> str:
        """The safety panel's text; fails the test the moment it reads anything but 0 wrong."""
        box = driver.find_element(By.ID, "safety")
        text = driver.find_element(By.ID, "safety-text").text.strip()
        if box.get_attribute("data-ok") == "false" or text.startswith("SAFETY BROKEN"):
            raise AssertionError(f"the safety panel broke: {text!r} "
                                 f"({driver.find_element(By.ID, 'safety-first').text})")
        if text.startswith("SAFETY HOLDS"):
            assert SAFE.match(text), f"safety text not in the contract's form: {text!r}"
            safety_seen.append(text)
        return text

    def wait(what: str, timeout_s: float, condition: Callable[[], Any]) -> Any:
        """Poll ``condition`` (and the safety panel) until it is truthy, or fail naming
        ``what``, the nodes' states and the console's output."""
        def poll(_: Any) -> Any:
            safety()
            if console.proc.poll() is not None:
                raise AssertionError(f"docket console exited with {console.proc.returncode} while waiting for "
                                     f"{what}\n{console.log_tail()}")
            return condition()
        try:
            return WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(poll)
        except TimeoutException:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}; nodes: {_node_states(driver)}; "
                f"connection: {driver.find_element(By.ID, 'conn').get_attribute('data-conn')}; "
                f"safety: {safety()!r}\n{console.log_tail()}") from None

    try:
        WebDriverWait(driver, STARTUP_S, poll_frequency=0.5).until(lambda _: console.serves_page())
        driver.get(console.url)

        # first open: the tour shows (once there are cards to point at); dismiss it
        wait("the guided tour to open", 30, lambda: driver.find_element(By.ID, "tour").is_displayed())
        assert driver.find_element(By.ID, "tour-step-n").text.lower().startswith("tour 1 of")
        driver.find_element(By.ID, "tour-skip").click()
        assert driver.execute_script("return localStorage.getItem('docket.console.tour')") == "done"

        wait("a, b, c and the clerk ready, and SAFETY HOLDS", STARTUP_S,
             lambda: all(_node_states(driver).get(n) == "ready" for n in ("a", "b", "c", "clerk"))
             and safety().startswith("SAFETY HOLDS")
             and driver.find_elements(By.CSS_SELECTOR, '#strip .pos[data-fate="agreed"]'))
        wait("the page's stream live", 10,
             lambda: driver.find_element(By.ID, "conn").get_attribute("data-conn") == "open")

        # kill b: it goes dead; a second kill is refused and the page shows why
        _click(driver, "b", "kill")
        wait("b dead", KILL_S, lambda: _node(driver, "b").get_attribute("data-state") == "dead")
        _click(driver, "b", "kill")
        msg = wait("the refusal of a second kill of b", 10, lambda: driver.find_element(
            By.CSS_SELECTOR, '.node[data-node="b"] .node-msg[data-error="already_dead"]'))
        assert "409" in msg.text, msg.text
        # the Clerk keeps publishing with a and c
        wait("positions agreed by a and c", KILL_S + 20, lambda: driver.find_elements(
            By.CSS_SELECTOR, '#strip .pos[data-fate="agreed"][data-agree="a-c"]'))

        # restart b: it comes back ready
        _click(driver, "b", "restart")
        wait("b starting or restoring", KILL_S, lambda: _node(driver, "b").get_attribute("data-state") != "dead")
        wait("b ready again", RESTART_S, lambda: _node(driver, "b").get_attribute("data-state") == "ready")
        assert _node(driver, "b").find_element(By.CSS_SELECTOR, '[data-field="starts"]').text == "2"

        # corrupt a with bitflips: a turns faulty and its copies get withheld
        _click(driver, "a", "corrupt", "bitflip")
        wait("a faulty", KILL_S, lambda: _node(driver, "a").get_attribute("data-state") == "faulty")
        wait("positions withheld from a in the strip", WITHHELD_S, lambda: driver.find_elements(
            By.CSS_SELECTOR, '#strip .pos[data-fate="withheld"][data-outvoted*="a"]'))
        assert driver.find_element(
            By.CSS_SELECTOR, 'button[data-node="a"][data-action="corrupt"][data-arg="bitflip"]'
        ).get_attribute("aria-pressed") == "true"

        final = safety()
        m = SAFE.match(final)
        assert m and int(m.group(1)) > 0, final
        assert driver.find_elements(By.CSS_SELECTOR, "#log li:not(.empty)"), "the console's log shows no action"
        driver.save_screenshot(str(ARTIFACTS / "console.png"))
    except BaseException:
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(ARTIFACTS / "console-failure.png"))
        raise

    # stop from the page: confirm, then the console stops everything and exits 0
    driver.find_element(By.ID, "stop").click()
    WebDriverWait(driver, 5).until(lambda d: d.switch_to.alert).accept()
    WebDriverWait(driver, 10).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-stopped") == "true")
    try:
        code = console.proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"docket console still running {STOP_S} s after the page's stop\n"
                             f"{console.log_tail()}") from None
    assert code == 0, f"docket console exited with {code} after the page's stop\n{console.log_tail()}"
    assert safety_seen, "the safety panel never read SAFETY HOLDS"
    print(f"console browser test: {time.monotonic() - began:.1f} s; screenshot {ARTIFACTS / 'console.png'}")
