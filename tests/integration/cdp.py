"""A headless Chromium driven over the DevTools protocol (websockets), for the browser tests: open a
page, type, press Enter, evaluate JavaScript, take a screenshot. Chromium is Debian's ``chromium``."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pipeline_testdata import stop_process_group, wait_for


def chromium_path() -> str | None:
    """The Chromium executable, or ``None``."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class ChromiumPage:
    """One headless Chromium with one page; use as a context manager (the browser is stopped by pid)."""

    def __init__(self, size: tuple[int, int] = (1280, 900)) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("Chromium not found: apt-get install -y chromium")
        self._profile = tempfile.TemporaryDirectory(prefix="regionrank-cdp-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={self._profile.name}", f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = itertools.count(1)
        self._ws: Any = None

    def __enter__(self) -> ChromiumPage:
        from websockets.sync.client import connect

        try:
            port_file = Path(self._profile.name) / "DevToolsActivePort"
            port = wait_for(lambda: port_file.is_file() and port_file.read_text().split("\n")[0], timeout=60,
                            what="Chromium's DevTools port")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.loads(r.read()) if t["type"] == "page")
            self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self.proc.poll() is None:
            stop_process_group(self.proc)
        self._profile.cleanup()

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are skipped)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        wait_for(lambda: self.evaluate("document.readyState") == "complete", timeout=60, what=f"{url} to load")

    def type_text(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` as keyboard input."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      **({"text": "\r"} if kind == "keyDown" else {}))

    def screenshot(self, out: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    def wait(self, expression: str, *, timeout: float = 60.0) -> Any:
        """Poll a JavaScript expression until it is truthy."""
        deadline = time.monotonic() + timeout
        return wait_for(lambda: self.evaluate(expression), timeout=max(0.1, deadline - time.monotonic()), what=expression)
