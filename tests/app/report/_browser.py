"""A real headless Chromium driven over the DevTools protocol on a pipe (stdlib only).

``chromium --remote-debugging-pipe`` reads protocol commands on fd 3 and writes replies and events
on fd 4, each a JSON text ended by a NUL byte: no websocket, no port, no extra Python package.
:func:`open_page` loads one file, waits for its load event and returns what the page logged
(console errors, uncaught exceptions, browser log errors), every URL it requested, the result of a
JavaScript expression evaluated in it and a PNG screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INSTALL_HINT = ("no Chromium found (looked for $MMTRAIN_CHROMIUM, chromium, chromium-browser, google-chrome). "
                "The report's browser test needs Debian's chromium: `sudo apt-get install -y chromium` "
                "(bash scripts/install.sh installs it unless MMTRAIN_SKIP_APT=1).")


def find_chromium() -> str | None:
    candidates = [os.environ.get("MMTRAIN_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    return next((found for name in candidates if name and (found := shutil.which(name))), None)


@dataclass
class PageVisit:
    """What one page load showed."""

    errors: list[str] = field(default_factory=list)  # console.error/assert, exceptions, log errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    value: Any = None  # the evaluated expression's result (returnByValue)
    screenshot: bytes = b""


class DevToolsPipe:
    """One Chromium process and its protocol pipe."""

    def __init__(self, executable: str, width: int = 1200, height: int = 900) -> None:
        self.profile = tempfile.TemporaryDirectory(prefix="mmtrain-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child: its fd 3 reads our commands, fd 4 writes to us
            read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        args = [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--window-size={width},{height}",
                f"--user-data-dir={self.profile.name}", "about:blank"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, preexec_fn=wire_fds, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 15.0) -> dict[str, Any]:
        """Send a command and return its result (events arriving meanwhile are kept in ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self._next_id, timeout, method)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 15.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._until(lambda m: m.get("method") == method, timeout, method)

    def _until(self, wanted, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium did not answer {what} within {timeout} s")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    stderr = self.process.stderr.read().decode(errors="replace")[-2000:] if self.process.stderr else ""
                    raise RuntimeError(f"Chromium closed its DevTools pipe while waiting for {what}:\n{stderr}")
                self._buffer += chunk

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.send("Browser.close", timeout=5.0)
                self.process.wait(timeout=5.0)
        except Exception:
            self.process.kill()
            self.process.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.process.stderr:
                self.process.stderr.close()
            self.profile.cleanup()


def _errors(events: list[dict[str, Any]], session: str) -> list[str]:
    out = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            out.append("console." + params["type"] + ": " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return out


def open_page(path: Path, expression: str, executable: str, timeout: float = 15.0, full_page: bool = False) -> PageVisit:
    """Load ``path`` in a fresh headless Chromium; evaluate ``expression`` once loaded; screenshot it
    (the first 1200x900 pixels, or the whole page with ``full_page``)."""
    browser = DevToolsPipe(executable)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.events.clear()
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired", timeout)
        value = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                  "awaitPromise": True}, session=session)
        if "exceptionDetails" in value:
            raise RuntimeError(f"the check expression failed: {value['exceptionDetails']}")
        options: dict[str, Any] = {"format": "png"}
        if full_page:
            size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            options.update(captureBeyondViewport=True,
                           clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        shot = browser.send("Page.captureScreenshot", options, session=session, timeout=timeout)

        time.sleep(0.1)  # late console messages (none expected from a static page)
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)
        requests = [e["params"]["request"]["url"][:200] for e in browser.events
                    if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session]
        return PageVisit(errors=_errors(browser.events, session), requests=requests,
                         value=value.get("result", {}).get("value"), screenshot=base64.b64decode(shot["data"]))
    finally:
        browser.close()
