"""Open a local HTML page in headless Chromium and report what a person would see: images that
failed to load, console errors, and a full-page screenshot. Speaks the Chrome DevTools protocol
over `--remote-debugging-pipe` (file descriptors 3 and 4), so it needs no package beyond the browser."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-pipe",
]  # fmt: skip
IMAGES_JS = "JSON.stringify([...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0})))"


class _Pipe:
    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.to_browser, self.from_browser, self.buffer, self.next_id = to_browser, from_browser, b"", 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self.next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._wait(lambda m: m.get("method") == method, timeout)

    def _wait(self, wanted, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raise TimeoutError("no answer from Chromium")


def render(chromium: str, page: Path, screenshot: Path, width: int = 1400) -> dict:
    """Load `page`, wait for it, and return {"images", "broken_images", "console_errors"}; writes `screenshot`."""
    browser_reads, we_write = os.pipe()
    we_read, browser_writes = os.pipe()

    def descriptors() -> None:  # the protocol's fixed descriptors in the child (via high numbers: no clash)
        reads, writes = os.dup2(browser_reads, 100), os.dup2(browser_writes, 101)
        os.dup2(reads, 3)
        os.dup2(writes, 4)

    # Chromium's helper processes may still write to the profile while it is removed: ignore what they leave.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=descriptors, close_fds=False,  # noqa: PLW1509 (no threads here); keeps 3 and 4
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        os.close(browser_reads)
        os.close(browser_writes)
        pipe = _Pipe(we_write, we_read)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
            pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
            pipe.wait_event("Page.loadEventFired")
            images = json.loads(pipe.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True}, session)["result"]["value"])
            shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session, timeout=120)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the browser and its helpers, before the profile goes
            process.wait()
            os.close(we_write)
            os.close(we_read)
    errors = [
        event["params"].get("args", [{}])[0].get("value", event["params"])
        for event in pipe.events
        if event.get("method") == "Runtime.consoleAPICalled" and event["params"].get("type") in ("error", "assert")
    ]
    errors += [event["params"]["exceptionDetails"].get("text") for event in pipe.events if event.get("method") == "Runtime.exceptionThrown"]
    errors += [event["params"]["entry"]["text"] for event in pipe.events if event.get("method") == "Log.entryAdded" and event["params"]["entry"]["level"] == "error"]
    return {"images": len(images), "broken_images": [image["alt"] for image in images if not image["ok"]], "console_errors": errors}
