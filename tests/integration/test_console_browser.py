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

A second test renders canned States through the console's own web layer (make_app with
a stand-in controller, no broker, a few seconds): what the live stack cannot show on
demand (the safety panel broken, diverged and pending positions, refusals, a missing or
wrong token), the tour walked to its end and remembered, the bodies each control sends,
the rate control and the stop confirmation.

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


# ------------------------------------------------------------- the page on canned States
#
# What the live stack cannot show on demand (a broken safety panel, diverged positions,
# refusals, a wrong token), rendered from a canned State served by the console's own web
# layer (console/web.py make_app) with a stand-in controller: no broker, a few seconds.

BROKEN_STATE: dict[str, Any] = {
    "t": 75.0, "rate": 50, "produced": 3700,
    "nodes": [
        {"name": "a", "kind": "instance", "state": "faulty", "pid": 11, "starts": 1, "slowed": False,
         "corrupt": "state", "lag": 3, "events_per_s": 49.8},
        {"name": "b", "kind": "instance", "state": "dead", "pid": None, "starts": 1, "slowed": False,
         "corrupt": None, "lag": 120, "events_per_s": 0.0},
        {"name": "c", "kind": "instance", "state": "slowed", "pid": 13, "starts": 2, "slowed": True,
         "corrupt": None, "lag": 40, "events_per_s": 21.5},
        {"name": "clerk", "kind": "clerk", "state": "ready", "pid": 14, "starts": 1, "slowed": False,
         "corrupt": None, "pending": 7, "decisions_per_s": 20.1, "divergences_per_s": 1.5},
        {"name": "broker", "kind": "broker", "state": "ready", "pid": 15, "starts": 1, "slowed": False,
         "corrupt": None},
    ],
    "strip": {"partitions": 2, "positions": [
        {"p": 0, "o": 151, "fate": "agreed", "instances": ["a", "c"]},
        {"p": 0, "o": 152, "fate": "withheld", "instances": ["b", "c"], "outvoted": ["a"]},
        {"p": 1, "o": 98, "fate": "diverged", "instances": []},
        {"p": 1, "o": 99, "fate": "pending", "instances": []},
    ]},
    "safety": {"checked": 612, "wrong": 1, "first_wrong": {"p": 0, "o": 17, "why": "digest 3fa.. != replay's 9bc.."},
               "balance_ok": False, "balance_detail": "sku-3: 5 != 7",
               "text": "SAFETY BROKEN: 1 wrong result of 612 (first: 0@17)"},
    "liveness": {"series": [[float(t), 30.0 + t % 7, 80.0 + 40 * (t % 5)] for t in range(10, 60)]
                 + [[float(t), 900.0, 4200.0] for t in range(66, 75)],
                 "stalled": [{"p": 1, "o": 99, "age_ms": 4200}],
                 "window": {"s": 60, "p50_ms": 41.5, "p99_ms": 3900.0}},
    "score": {"delay_s": 41.3, "safety_unbroken": False},
    "log": [{"t": 9.1, "text": "killed b (SIGKILL)"}, {"t": 30.5, "text": "corrupt a: state"}],
}


class StandInController:
    """console/stack.py Controller's interface as make_app uses it: records each call;
    a kill of b is refused as the real one refuses it (b is dead)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.notes: list[str] = []

    async def act(self, name: str, action: str, body: Any) -> dict:
        from console.stack import ControlError
        self.calls.append((name, action, body))
        if name == "b" and action == "kill":
            raise ControlError(409, "already_dead", "b is not running (dead)")
        return next(n for n in BROKEN_STATE["nodes"] if n["name"] == name)

    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.fixture
def canned_console() -> Iterator[tuple[str, str, StandInController, list]]:
    """(base URL, token, controller, [rates set, stops asked]) of make_app serving BROKEN_STATE."""
    import asyncio
    import threading

    from console.web import make_app, serve

    token = secrets.token_urlsafe(12)
    controller = StandInController()
    asked: list = []
    app = make_app(controller, lambda: BROKEN_STATE, lambda r: asked.append(("rate", r)), token,
                   lambda: asked.append(("stop",)))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="canned-console", daemon=True)
    thread.start()
    port = _free_port()
    runner = asyncio.run_coroutine_threadsafe(serve(app, port), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}/", token, controller, asked
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_console_page_renders_a_broken_safety_refusals_and_the_tour(canned_console, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, token, controller, asked = canned_console
    driver = browser

    def wait(what: str, condition: Callable[[], Any], timeout_s: float = 10) -> Any:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(lambda _: condition(), what)

    def css(sel: str) -> Any:
        return driver.find_element(By.CSS_SELECTOR, sel)

    # no token in the URL: the page says where to get one; a wrong one: refused
    driver.get(base)
    wait("no-token", lambda: css("#conn").get_attribute("data-conn") == "no-token")
    assert "#token=" in css("#notice").text
    driver.get(f"{base}#token=not-the-token")
    driver.refresh()
    wait("bad-token", lambda: css("#conn").get_attribute("data-conn") == "bad-token", 20)

    driver.get(f"{base}#token={token}")
    driver.refresh()
    wait("the canned state", lambda: css("#conn").get_attribute("data-conn") == "open"
         and css('.node[data-node="clerk"]').get_attribute("data-state") == "ready")

    # the tour, first open: walk it to the end; dismissal is remembered across a reload
    wait("the tour", lambda: css("#tour").is_displayed())
    steps = []
    while css("#tour").is_displayed():
        steps.append(css("#tour-title").text)
        css("#tour-next").click()
    assert len(steps) >= 5 and any("Kill b" in s for s in steps) and any("Corrupt a" in s for s in steps), steps
    assert driver.execute_script("return localStorage.getItem('docket.console.tour')") == "done"
    driver.refresh()
    wait("the canned state after a reload", lambda: driver.find_elements(By.CSS_SELECTOR, '.node[data-node="a"]'))
    assert not css("#tour").is_displayed()

    # the safety panel and the score when safety broke
    assert css("#safety").get_attribute("data-ok") == "false"
    assert css("#safety-text").text == BROKEN_STATE["safety"]["text"]
    assert "partition 0, offset 17" in css("#safety-first").text
    assert css("#balance").get_attribute("data-ok") == "false"
    assert css("#score").get_attribute("data-unbroken") == "false"
    assert css("#score-value").text == "41.3"

    # nodes: state, figures, the setting in force
    states = _node_states(driver)
    assert states == {"a": "faulty", "b": "dead", "c": "slowed", "clerk": "ready", "broker": "ready"}, states
    assert css('.node[data-node="b"] [data-field="state"]').text == "dead"
    assert not css("#stack-phase").is_displayed()
    assert css('.node[data-node="clerk"] [data-field="pending"]').text == "7"
    assert css('button[data-node="a"][data-action="corrupt"][data-arg="state"]').get_attribute("aria-pressed") == "true"
    assert css('button[data-node="c"][data-action="slow"][data-arg="on"]').get_attribute("aria-pressed") == "true"
    assert not driver.find_elements(By.CSS_SELECTOR, 'button[data-node="clerk"][data-action="corrupt"]')

    # the strip: every fate, who agreed, whose copy was withheld
    # (the strip, plot, stalled list and log are redrawn with every State: read them in
    # one script, so no element goes stale between finding and reading it)
    page = driver.execute_script("""
        const all = (sel) => Array.from(document.querySelectorAll(sel));
        return {
          cells: all("#strip .pos").map((e) => [e.dataset.p, e.dataset.o, e.dataset.fate, e.dataset.agree,
                                               e.dataset.outvoted]),
          rows: all("#strip .strip-row").length,
          p50: document.querySelector("#latency-plot path.p50").getAttribute("d"),
          p99: document.querySelector("#latency-plot path.p99").getAttribute("d"),
          gaps: all("#latency-plot .gap").length,
          ticks: all("#latency-plot .ytick").map((e) => e.textContent),
          now: document.querySelector("#latency-now").textContent,
          stalled: all("#stalled li").map((e) => [e.dataset.p, e.dataset.o, e.textContent]),
          log: all("#log .log-text").map((e) => e.textContent),
        };""")
    assert sorted(map(tuple, page["cells"])) == [("0", "151", "agreed", "a-c", ""), ("0", "152", "withheld", "b-c", "a"),
                                                 ("1", "98", "diverged", "", ""), ("1", "99", "pending", "", "")], page
    assert page["rows"] == 2, page

    # liveness: both lines drawn, broken at the silent seconds; the stalled position
    for line in ("p50", "p99"):
        assert page[line].count("M") == 2 and page[line].count("L") > 40, (line, page[line])
    assert page["gaps"] >= 1, page
    assert "100 ms" in page["ticks"] and "1 s" in page["ticks"], page["ticks"]
    assert page["now"] == "last 60 s: p50 42 ms, p99 3.9 s", page["now"]
    assert page["stalled"] == [["1", "99", "p1@99 waiting 4.2 s"]], page["stalled"]
    assert page["log"] == ["corrupt a: state", "killed b (SIGKILL)"], page["log"]

    # controls: the bodies the API expects; a refusal shows the server's words
    _click(driver, "c", "slow", "off")
    _click(driver, "a", "corrupt", "off")
    _click(driver, "c", "corrupt", "bitflip")
    _click(driver, "broker", "stop")
    _click(driver, "b", "kill")
    msg = wait("the refusal", lambda: driver.find_elements(
        By.CSS_SELECTOR, '.node[data-node="b"] .node-msg[data-error="already_dead"]'))[0]
    assert "409" in msg.text and "b is not running (dead)" in msg.text, msg.text
    assert controller.calls == [("c", "slow", {"on": False}), ("a", "corrupt", {"kind": None}),
                                ("c", "corrupt", {"kind": "bitflip"}), ("broker", "stop", {}),
                                ("b", "kill", {})], controller.calls

    # the rate: accepted, and refused out of range with the server's message
    # Type over the value with the field focused throughout: WebDriver's clear() blurs it,
    # and the page then writes the State's rate back before the keys arrive (flaky "50120").
    from selenium.webdriver.common.keys import Keys

    rate = css("#rate-input")
    rate.click()
    rate.send_keys(Keys.CONTROL, "a")
    rate.send_keys("120")
    css("#rate-set").click()
    wait("the rate set", lambda: ("rate", 120) in asked)
    rate.click()
    rate.send_keys(Keys.CONTROL, "a")
    rate.send_keys("5000")
    css("#rate-set").click()
    wait("the rate refused", lambda: css("#notice").get_attribute("data-kind") == "error"
         and "bad_rate" in css("#notice").text)

    # stop: nothing without the confirmation, then stopped
    css("#stop").click()
    WebDriverWait(driver, 5).until(lambda d: d.switch_to.alert).dismiss()
    assert ("stop",) not in asked and css("body").get_attribute("data-stopped") is None
    css("#stop").click()
    WebDriverWait(driver, 5).until(lambda d: d.switch_to.alert).accept()
    wait("stopped", lambda: ("stop",) in asked and css("body").get_attribute("data-stopped") == "true")
    assert css("#conn").get_attribute("data-conn") == "stopped"
