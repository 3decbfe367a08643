"""Open an HTML page in headless Chromium and report what a reader would see go wrong.

Stdlib only: the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages separated by
NUL bytes; Chromium reads commands on fd 3 and writes replies on fd 4). Nothing is injected into
the page: the checks read the DOM from outside with ``Runtime.evaluate`` and listen to the
console and the browser log.

:func:`check_page` returns, per viewport width, the images that did not load, the console
errors and uncaught exceptions, whether the page scrolls sideways as a whole (a layout that
does not fit a phone), and a full-page screenshot.
"""

from __future__ import annotations

import base64
import contextlib
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

# Debian's package; `chromium-browser` and `google-chrome` on other systems.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 30.0

IMAGES_JS = (
    "JSON.stringify(Array.from(document.images).map(i => "
    "({alt: i.alt, complete: i.complete, width: i.naturalWidth, src: i.src.slice(0, 60)})))"
)
WIDTHS_JS = "JSON.stringify([document.documentElement.scrollWidth, window.innerWidth])"


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class View:
    """What one viewport width showed."""

    width: int
    images: list[dict[str, Any]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # alt text (or src) of images not loaded
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors
    scroll_width: int = 0
    inner_width: int = 0
    screenshot: Path | None = None

    @property
    def overflows(self) -> bool:
        """The page as a whole is wider than the screen (tables scroll inside themselves). The
        screen's width, not ``innerWidth``: a phone zooms out to fit a page that is too wide, and
        its window grows with it."""
        return self.scroll_width > self.width

    def problems(self) -> list[str]:
        out = [f"{self.width}px: image not loaded: {b}" for b in self.broken]
        out += [f"{self.width}px: console: {e}" for e in self.errors]
        if self.overflows:
            out.append(
                f"{self.width}px: the page is {self.scroll_width}px wide on a {self.width}px screen"
            )
        return out


class _Pipe:
    """One DevTools connection: send a command, wait for its reply, keep the events."""

    def __init__(self, exe: str, profile: str) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # bash puts our pipe ends on fds 3 and 4, where Chromium expects them; moved above 10
        # first, so that neither end is itself fd 3 or 4 and overwritten by the other (dash
        # reads only one-digit fds in a redirection, hence bash).
        to_chrome_r, from_chrome_w = (_high(fd) for fd in (to_chrome_r, from_chrome_w))
        self.proc = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}',
                exe,
                "--headless",
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> None:
        while not any(
            e.get("method") == method and e.get("sessionId") == session for e in self.events
        ):
            self.events.append(self._read())

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def _high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


def _errors(events: list[dict[str, Any]], session: str) -> list[str]:
    out = []
    for e in events:
        if e.get("sessionId") != session:
            continue
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            out.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(p["entry"].get("text", ""))
    return out


def check_page(
    page: Path, widths: tuple[int, ...] = (1280, 390), shots: Path | None = None
) -> list[View]:
    """Load ``page`` at each viewport width (CSS pixels; 390 is a phone held upright) and report
    what went wrong; with ``shots``, save a full-page screenshot per width there."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found")
    url = Path(page).resolve().as_uri()
    views = []
    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(exe, profile)
        try:
            for width in widths:
                target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
                session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                    "sessionId"
                ]
                for domain in ("Runtime", "Log", "Page"):
                    pipe.send(f"{domain}.enable", session=session)
                phone = width < 640
                pipe.send(
                    "Emulation.setDeviceMetricsOverride",
                    {
                        "width": width,
                        "height": 844 if phone else 800,
                        "deviceScaleFactor": 1,
                        "mobile": phone,
                    },
                    session,
                )
                pipe.send("Page.navigate", {"url": url}, session)
                pipe.wait_for("Page.loadEventFired", session)
                view = View(width)
                view.images = _evaluate(pipe, session, IMAGES_JS)
                view.broken = [
                    i["alt"] or i["src"]
                    for i in view.images
                    if not i["complete"] or i["width"] == 0
                ]
                view.scroll_width, view.inner_width = _evaluate(pipe, session, WIDTHS_JS)
                view.errors = _errors(pipe.events, session)
                if shots is not None:
                    view.screenshot = _screenshot(pipe, session, Path(shots), page, width)
                pipe.send("Target.closeTarget", {"targetId": target})
                views.append(view)
        finally:
            pipe.close()
    return views


def _evaluate(pipe: _Pipe, session: str, expression: str) -> Any:
    result = pipe.send(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
    )
    return json.loads(result["result"]["value"])


def _screenshot(pipe: _Pipe, session: str, folder: Path, page: Path, width: int) -> Path:
    size = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
    data = pipe.send(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
        },
        session,
    )["data"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(page).stem}-{width}px.png"
    path.write_bytes(base64.b64decode(data))
    return path
