"""`affedge report` opened in a real browser: Debian's chromium, headless.

The page is driven over the DevTools protocol on ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-terminated JSON: the standard library is enough, no websocket
package). The test collects what a person would see go wrong: uncaught exceptions and console
errors, error log entries (a blocked or failed load lands there), requests to anything but
``data:`` and ``file:`` URLs; it reads the table rows from the DOM and screenshots the page.

Skipped only where chromium is not installed; .ci/run installs it and sets
AFFEDGE_REQUIRE_CHROMIUM=1, under which a missing chromium fails instead.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from affedge.bench.html_report import write_report_html

CHROMIUM = shutil.which("chromium")
TIMEOUT_S = 90.0  # a hang guard on a loaded 2-core machine, not a timing assertion
WIDTH, HEIGHT = 1280, 1000


def _above_9(fd: int) -> int:
    """``fd`` moved to a number above 9, so that redirecting onto 3 and 4 cannot clobber it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """A headless chromium driven over the DevTools pipe; one page, events kept in order."""

    def __init__(self, executable: str, profile: Path, log: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = _above_9(to_browser_r), _above_9(from_browser_w)
        args = [
            "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
            "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        # The pipe must sit on fds 3 (commands in) and 4 (replies out) of the browser; bash,
        # not dash, because dash cannot redirect from fds above 9.
        script = (
            f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} '
            f"{to_browser_r}<&- {from_browser_w}>&-"
        )
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", script, executable, *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Call ``method`` and return its result; events read meanwhile go to ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event ``method`` (already received, or read until it comes)."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._log.close()


def open_page(url: str, width: int = WIDTH, height: int = HEIGHT) -> dict[str, Any]:
    """Load ``url`` in a fresh headless chromium; return the problems seen, the DOM facts the
    tests need and a PNG screenshot of the first ``height`` pixels."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="affedge-chromium-") as tmp:
        browser = Browser(CHROMIUM, Path(tmp) / "profile", Path(tmp) / "chromium.log")
        try:
            target = browser.send("Target.createTarget", url="about:blank")["targetId"]
            session = browser.send("Target.attachToTarget", targetId=target, flatten=True)[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", session)
            browser.send(
                "Emulation.setDeviceMetricsOverride", session,
                width=width, height=height, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            browser.send("Page.navigate", session, url=url)
            browser.wait_for("Page.loadEventFired")
            facts = browser.send(
                "Runtime.evaluate", session, returnByValue=True, expression="""({
                    title: document.title,
                    rows: [...document.querySelectorAll('tbody tr')].map(
                        tr => [...tr.cells].map(td => td.textContent.trim())),
                    images: document.images.length,
                    decoded: [...document.images].filter(
                        i => i.complete && i.naturalWidth > 0).length,
                    text: document.body.innerText,
                })""",
            )["result"]["value"]  # fmt: skip
            shot = browser.send("Page.captureScreenshot", session, format="png")["data"]
        finally:
            browser.close()
            log = (Path(tmp) / "chromium.log").read_text(errors="replace")
    events = browser.events
    problems = [p for p in map(problem, events) if p]
    requests = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    return {
        **facts,
        "problems": problems,
        "external": [u for u in requests if not u.startswith(("data:", "file:"))],
        "requests": requests,
        "png": base64.b64decode(shot),
        "log": log,
    }


def problem(event: dict[str, Any]) -> str | None:
    """One line for an event a person would see as an error, else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return "exception: " + details.get("exception", {}).get("description", details["text"])
    if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
        return f"console.{params['type']}: {args}"
    if method == "Log.entryAdded" and params["entry"]["level"] == "error":
        entry = params["entry"]
        return f"log: {entry['text']} {entry.get('url', '')}".strip()
    return None


def non_white_share(png: bytes) -> float:
    """Share of pixels that are not (near) white."""
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    return float((pixels.min(axis=-1) < 0.94).mean())


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("AFFEDGE_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed and AFFEDGE_REQUIRE_CHROMIUM is set")
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    return CHROMIUM


def _results(folder: Path) -> None:
    """A small results folder: a bench report, an eval report with a confusion matrix PNG,
    and a system name that would run script if the page did not escape it."""
    from affedge.bench.eval_all import plot_confusion

    folder.mkdir()
    bench = {
        "benchmark": "bench",
        "date": "2026-01-02T03:04:05+00:00",
        "command": "affedge bench --threads 2",
        "machine": {"cpu": "Test CPU 9000", "cores_usable": 2, "os": "Linux", "python": "3.11",
                    "packages": {"affedge": "0.1.0"}},
        "results": [
            {"system": "affedge:tiny", "threads": 2, "items_per_s": 123.456, "accuracy": 0.875},
            {"system": "vader", "threads": 2, "items_per_s": 9876.5, "accuracy": 0.5},
            {"system": "<script>console.error('xss')</script>", "threads": 2,
             "error": "exit 1: <img src=x onerror=console.error(1)>"},
        ],
    }  # fmt: skip
    (folder / "bench.json").write_text(json.dumps(bench))
    confusion = {"positive": {"positive": 5, "negative": 1}, "negative": {"positive": 2,
                 "negative": 4}}  # fmt: skip
    (folder / "eval_tiny").mkdir()
    plot_confusion(confusion, "tiny: polarity / sst2", folder / "eval_tiny/confusion_x.png")


def test_report_renders_in_chromium(chromium, tmp_path):
    pytest.importorskip("matplotlib")
    _results(tmp_path / "results")
    page = tmp_path / "report.html"
    write_report_html(tmp_path / "results", page)

    seen = open_page(page.resolve().as_uri())

    assert seen["problems"] == [], seen["problems"]
    assert seen["external"] == [], seen["external"]
    assert seen["title"] == "affedge results: results"
    rows = [r for r in seen["rows"] if r and r[0]]
    assert rows[0][:4] == ["affedge:tiny", "2", "123.5", "0.875"]
    assert rows[1][:4] == ["vader", "2", "9876.5", "0.5"]
    # The hostile name is shown as text, not run: no console error above, literal text here.
    assert "<script>console.error('xss')</script>" in seen["text"]
    assert "exit 1: <img src=x onerror=console.error(1)>" in seen["text"]
    assert "Test CPU 9000" in seen["text"] and "affedge bench --threads 2" in seen["text"]
    assert seen["images"] == seen["decoded"] == 1  # the embedded confusion matrix
    share = non_white_share(seen["png"])
    assert 0.02 < share < 0.9, f"screenshot is {share:.1%} non-white"


def test_a_page_with_an_error_is_caught(chromium, tmp_path):
    """The harness itself can fail: a script error and an external request are reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><title>bad</title><p>text</p>"
        '<img src="http://127.0.0.1:9/x.png"><script>undefinedFunction()</script>'
    )
    seen = open_page(page.resolve().as_uri())
    assert any("undefinedFunction" in p for p in seen["problems"]), seen["problems"]
    assert seen["external"] == ["http://127.0.0.1:9/x.png"]
