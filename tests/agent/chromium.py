"""Headless Chromium driven over the DevTools protocol on a pipe (stdlib only).

`--remote-debugging-pipe` makes Chromium read NUL-terminated JSON commands on fd 3
and write replies and events on fd 4: no port, no websocket library. `open_page`
loads a URL and returns what a test of a self-contained page needs: every network
request the page made (`Network.requestWillBeSent`, any scheme but the page's own
file and data: URLs), every console error, exception and browser log error (a
Content-Security-Policy refusal is one), the DOM as serialized after load, element
boxes for CSS selectors, and a PNG screenshot of the whole page.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--hide-scrollbars", "--disable-dev-shm-usage", "--remote-debugging-pipe")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageResult:
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dom: str = ""
    boxes: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    png: bytes = b""
    png_origin: tuple[float, float] = (0.0, 0.0)  # page coordinates of the PNG's top left


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, proc: subprocess.Popen[bytes]) -> None:
        self.write_fd, self.read_fd, self.proc = write_fd, read_fd, proc
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 60) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console messages, late requests)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._read(deadline))
            except TimeoutError:
                return

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited ({self.proc.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed


def open_page(url: str, user_data_dir: Path, selectors: tuple[str, ...] = (),
              shot: str | None = None, width: int = 1200, height: int = 900) -> PageResult:
    """Load `url` in a fresh headless Chromium and report what happened; the PNG is of
    the first element matching the selector `shot` (None: the whole page)."""
    binary = chromium_path()
    assert binary is not None
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()

    # The child's fd 3 reads commands and fd 4 writes replies. A small Python step
    # moves the pipe ends there and execs Chromium (no preexec_fn: this process may
    # have threads, e.g. a test's HTTP listener).
    argv = [binary, *FLAGS, f"--user-data-dir={user_data_dir}",
            f"--window-size={width},{height}", "about:blank"]
    step = ("import fcntl, os, sys\n"
            "r, w = (fcntl.fcntl(int(fd), fcntl.F_DUPFD_CLOEXEC, 10) for fd in sys.argv[1:3])\n"
            "os.dup2(r, 3)\nos.dup2(w, 4)\nos.execv(sys.argv[3], sys.argv[3:])")
    proc = subprocess.Popen(
        [sys.executable, "-c", step, str(to_child_r), str(from_child_w), *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(to_child_r, from_child_w))
    os.close(to_child_r)
    os.close(from_child_w)
    pipe = _Pipe(to_child_w, from_child_r, proc)
    try:
        return _load(pipe, url, selectors, shot, width, height)
    finally:
        try:
            pipe.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_child_w)
        os.close(from_child_r)


def _load(pipe: _Pipe, url: str, selectors: tuple[str, ...], shot: str | None, width: int,
          height: int) -> PageResult:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"]
    for domain in ("Network", "Runtime", "Log", "Page"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
              session=session)
    pipe.events.clear()
    pipe.send("Page.navigate", {"url": url}, session=session)
    pipe.wait_event("Page.loadEventFired")
    pipe.drain(0.5)
    result = PageResult()
    result.dom = pipe.send("Runtime.evaluate", {
        "expression": "document.documentElement.outerHTML", "returnByValue": True},
        session=session)["result"]["value"]
    for selector in (*selectors, *([shot] if shot else [])):
        expression = (
            f"Array.from(document.querySelectorAll({json.dumps(selector)})).map(e => {{"
            "const r = e.getBoundingClientRect(); return {x: r.x + window.scrollX, "
            "y: r.y + window.scrollY, width: r.width, height: r.height}; })")
        result.boxes[selector] = pipe.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True}, session=session)["result"]["value"]
    params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
    if shot is not None:
        box = result.boxes[shot][0]
        params["clip"] = {**box, "scale": 1}
        result.png_origin = (box["x"], box["y"])
    result.png = base64.b64decode(pipe.send("Page.captureScreenshot", params,
                                            session=session)["data"])
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            requested = params["request"]["url"]
            if requested != url and not requested.startswith("data:"):
                result.requests.append(requested)
        elif method == "Runtime.exceptionThrown":
            result.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.errors.append(json.dumps(params.get("args"))[:500])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            result.errors.append(params["entry"].get("text", ""))
    return result
