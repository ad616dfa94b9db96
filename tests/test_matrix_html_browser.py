"""matrix.html in a real headless Chromium (Debian's ``chromium`` package).

The page is driven over the DevTools protocol through ``--remote-debugging-pipe``
(JSON messages separated by NUL bytes on file descriptors 3 and 4), so the test
needs no browser driver and no package beyond the browser itself. It checks one
table row per scenario x variant x driver, that the driver and outcome filters
hide the rows they should, and saves a screenshot as an artefact.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness.matrix import merge, render_html
from tests.test_matrix_merge import results_doc

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "reports" / "test-artefacts"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe")

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="Chromium is not installed; install Debian's package with "
                            "'apt-get install -y chromium' to run the HTML report test")


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class PipeBrowser:
    """A headless Chromium and a minimal DevTools client over its debugging pipe."""

    def __init__(self, profile: Path, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The browser expects its command pipe on fd 3 and its reply pipe on fd 4. Move
        # the child's ends above 9 first, so that redirecting one cannot overwrite the other
        # (bash, not sh: dash accepts single-digit descriptors only).
        to_browser_r, from_browser_w = (_high_fd(to_browser_r), _high_fd(from_browser_w))
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, BROWSER, *FLAGS, f"--user-data-dir={profile}"],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._buffer = b""

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait (bounded) for its reply."""
        ident = next(self._ids)
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == ident:
                    if "error" in reply:
                        raise AssertionError(f"{method} failed: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"Chromium did not answer {method} within "
                                     f"{self.timeout_s} s; stderr: {self._stderr_tail()}")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise AssertionError(f"Chromium closed its pipe during {method}; stderr: "
                                     f"{self._stderr_tail()}")
            self._buffer += chunk

    def _stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return (self.proc.stderr.read() or b"").decode(errors="replace")[-1500:]

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)


class Page:
    """One tab: evaluate JavaScript, wait for a condition, take a screenshot."""

    def __init__(self, browser: PipeBrowser, url: str) -> None:
        self.browser = browser
        target = browser.send("Target.createTarget", url=url)["targetId"]
        self.session = browser.send("Target.attachToTarget", targetId=target,
                                    flatten=True)["sessionId"]
        browser.send("Emulation.setDeviceMetricsOverride", self.session, width=1400,
                     height=900, deviceScaleFactor=1, mobile=False)

    def js(self, expression: str) -> Any:
        reply = self.browser.send("Runtime.evaluate", self.session, expression=expression,
                                  returnByValue=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout_s} s for {expression!r} in the page")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        data = self.browser.send("Page.captureScreenshot", self.session, format="png",
                                 captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))


def _matrix() -> dict[str, Any]:
    baseline = results_doc("3.13.0", "2.1.9", run_id="20260101-000000-a")
    older = results_doc("3.13.0", "2.0.58", run_id="20260101-000001-b",
                        moved={("loop-bound-pool", "default-pool", "psycopg"): "REPRODUCED"})
    return merge.merge([(baseline, {"slot": "baseline"}, "a"),
                        (older, {"slot": "sqlalchemy"}, "b")])


@pytest.fixture
def page(tmp_path: Path):
    matrix = _matrix()
    html = tmp_path / "matrix.html"
    html.write_text(render_html.render(matrix))
    browser = PipeBrowser(tmp_path / "profile")
    try:
        tab = Page(browser, html.as_uri())
        # A new tab is about:blank (and "complete") before it has navigated to the file.
        tab.wait_for("location.protocol === 'file:' && document.readyState === 'complete'")
        yield tab, matrix
    finally:
        browser.close()


def test_rows_filters_and_screenshot(page, tmp_path: Path) -> None:
    tab, matrix = page
    expected_rows = {(r["scenario"], r["variant"], r["driver"]) for r in matrix["results"]}
    visible = "[...document.querySelectorAll('tr.cell-row')].filter(r => !r.hidden).length"
    assert tab.js("document.querySelectorAll('tr.cell-row').length") == len(expected_rows)
    assert tab.js(visible) == len(expected_rows)
    assert tab.js("document.getElementById('shown').textContent") == (
        f"{len(expected_rows)} of {len(expected_rows)} rows")

    # Filter by driver, as a person would with the select box.
    tab.js("const s = document.getElementById('f-driver'); s.value = 'psycopg';"
           "s.dispatchEvent(new Event('change'))")
    psycopg_rows = {k for k in expected_rows if k[2] == "psycopg"}
    assert tab.js(visible) == len(psycopg_rows)
    assert set(tab.js("[...document.querySelectorAll('tr.cell-row')].filter(r => !r.hidden)"
                      ".map(r => r.dataset.driver)")) == {"psycopg"}

    # Only rows that differ between environments: the one moved psycopg cell.
    tab.js("const c = document.getElementById('f-differs'); c.checked = true;"
           "c.dispatchEvent(new Event('change'))")
    assert tab.js(visible) == 1
    assert tab.js("[...document.querySelectorAll('tr.scenario-row')].filter(r => !r.hidden)"
                  ".map(r => r.dataset.scenario)") == ["loop-bound-pool"]
    tab.js("document.querySelector('tr.cell-row:not([hidden]) td.moved details').open = true")

    shot = tmp_path / "matrix-html.png"
    tab.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTEFACTS / "matrix-html.png")


def test_outcome_filter_matches_cells(page) -> None:
    tab, matrix = page
    tab.js("const s = document.getElementById('f-outcome'); s.value = 'REPRODUCED';"
           "s.dispatchEvent(new Event('change'))")
    with_reproduced = {(r["scenario"], r["variant"], r["driver"]) for r in matrix["results"]
                       if r["outcome"] == "REPRODUCED"}
    shown = tab.js("[...document.querySelectorAll('tr.cell-row')].filter(r => !r.hidden)"
                   ".map(r => r.dataset.outcomes)")
    assert len(shown) == len(with_reproduced)
    assert all("REPRODUCED" in outcomes.split() for outcomes in shown)
