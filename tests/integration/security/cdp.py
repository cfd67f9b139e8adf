"""A tiny headless-Chromium driver over the DevTools protocol: open a page, read its text, screenshot it.

Only what the Flower test needs: extra request headers (basic auth on every request the page
makes, its AJAX calls included), navigation, JavaScript evaluation and PNG screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
# Flags that make Chromium run headless as root on a machine without network (see TESTBED.md).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    "--window-size=1600,1000",
]
START_TIMEOUT_S = 30.0


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="trainyard-chromium-", ignore_cleanup_errors=True)
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None

    def __enter__(self) -> Browser:
        binary = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
        self._process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port = self._devtools_port()
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(p for p in pages if p.get("type") == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.send("Page.enable")
        self.send("Network.enable")
        return self

    def __exit__(self, *_: object) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._process is not None:
            # Chromium's helpers (zygote, GPU, network) share its session: end them all together.
            _signal_group(self._process, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(self._process, signal.SIGKILL)
                self._process.wait()
        time.sleep(0.2)
        self._profile.cleanup()  # ignore_cleanup_errors: a helper may still be writing its last file

    def _devtools_port(self) -> int:
        # Chromium writes the port it chose into the profile directory.
        marker = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            assert self._process is not None and self._process.poll() is None, "chromium exited"
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are kept in `events`."""
        assert self._ws is not None
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if "method" in message:
                self.events.append(message)
            elif message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def set_headers(self, headers: dict[str, str]) -> None:
        self.send("Network.setExtraHTTPHeaders", headers=headers)

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def html(self) -> str:
        return str(self.evaluate("document.documentElement.outerHTML") or "")

    def wait_for_text(self, *needles: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if all(needle in text for needle in needles):
                return text
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in text]
                raise TimeoutError(f"page never showed {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.3)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def status_of(self, url: str) -> int:
        """HTTP status of a top-level navigation, as the browser saw it."""
        self.events.clear()
        self.open(url)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for event in self.events:
                if event["method"] == "Network.responseReceivedExtraInfo" and event["params"].get("statusCode"):
                    return int(event["params"]["statusCode"])
                if event["method"] == "Network.responseReceived" and event["params"]["type"] == "Document":
                    return int(event["params"]["response"]["status"])
            self.send("Runtime.evaluate", expression="1")  # collects the events that arrived meanwhile
            time.sleep(0.1)
        raise TimeoutError(f"no response for {url}")
