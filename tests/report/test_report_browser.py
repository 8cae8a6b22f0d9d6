"""report.html in a real browser: Debian's headless Chromium, driven over the DevTools protocol.

Opens the report of a real run (conftest.py), checks that the main sections and every
chart are present and visible (laid out with a non-zero size, images decoded), that
the page made no request outside the file itself, and that nothing was logged as an
error; keeps a full-page screenshot in the test's temp dir.
Chromium comes from Debian's `chromium` package (.ci/run installs it).
"""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
START_TIMEOUT_SECONDS = 60
COMMAND_TIMEOUT_SECONDS = 60
MAIN_SECTIONS = ["overview", "data", "samples", "training", "evaluation", "mobile", "serving"]
MAIN_CHARTS = ["chart-component-times", "chart-class-balance", "chart-samples",
               "chart-training-loss", "chart-training-accuracy", "chart-slice-metrics",
               "chart-confusion-matrix", "chart-tflite-size", "chart-tflite-latency"]

# Runs in the page: the layout of every section and image, after the images are decoded.
LAYOUT_SCRIPT = """
(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map(image => image.decode().catch(() => null)));
  const box = element => {
    const rect = element.getBoundingClientRect();
    const style = getComputedStyle(element);
    return {width: rect.width, height: rect.height, display: style.display,
            visibility: style.visibility, opacity: style.opacity};
  };
  return JSON.stringify({
    sections: Object.fromEntries(Array.from(document.querySelectorAll('section')).map(
      section => [section.id, Object.assign(box(section), {className: section.className})])),
    images: Object.fromEntries(images.map(image => [image.id || image.alt, Object.assign(
      box(image), {complete: image.complete, naturalWidth: image.naturalWidth,
                   naturalHeight: image.naturalHeight})])),
    height: document.documentElement.scrollHeight,
  });
})()
"""


class DevToolsPage:
    """A minimal DevTools-protocol client for one page target (websocket-client)."""

    def __init__(self, websocket_url: str):
        import websocket

        # Chromium refuses DevTools connections that send an Origin it was not told to allow.
        self.socket = websocket.create_connection(websocket_url, timeout=COMMAND_TIMEOUT_SECONDS,
                                                  suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)
        raise TimeoutError(f"no answer to {method} in {COMMAND_TIMEOUT_SECONDS}s")

    def wait_for_event(self, method: str):
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if any(event.get("method") == method for event in self.events):
                return
            self.events.append(json.loads(self.socket.recv()))
        raise TimeoutError(f"no {method} in {COMMAND_TIMEOUT_SECONDS}s")

    def close(self):
        self.socket.close()


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium with DevTools on 127.0.0.1 (a free port), in a fresh profile."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (Debian's package; "
                    ".ci/run installs it before `make test`)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not os.path.exists(port_file) or not open(port_file).read().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"chromium did not start: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    port = int(open(port_file).read().split()[0])
    try:
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def _page_target(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
        targets = json.load(answer)
    return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")


def test_report_renders_in_headless_chromium(report_runs, chromium, tmp_path):
    report = report_runs["good"].report_path
    page = DevToolsPage(_page_target(chromium))
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=report.as_uri())
        page.wait_for_event("Page.loadEventFired")
        result = page.call("Runtime.evaluate", expression=LAYOUT_SCRIPT, awaitPromise=True,
                           returnByValue=True)
        layout = json.loads(result["result"]["value"])
        screenshot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": 1280, "height": layout["height"],
                                     "scale": 1})
        events = list(page.events)
    finally:
        page.close()

    screenshot_path = tmp_path / "report.png"
    screenshot_path.write_bytes(base64.b64decode(screenshot["data"]))
    assert screenshot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot_path.stat().st_size > 50_000  # a full page of charts, not a blank one

    def visible(box):
        return (box["width"] > 0 and box["height"] > 0 and box["display"] != "none"
                and box["visibility"] == "visible" and float(box["opacity"]) > 0)

    for section_id in MAIN_SECTIONS:
        box = layout["sections"][section_id]
        assert box["className"] == "present" and visible(box), (section_id, box)
    assert "forecast" not in layout["sections"]  # another task's section: left out
    for chart_id in MAIN_CHARTS:
        assert chart_id in layout["images"], chart_id
    for image_id, box in layout["images"].items():
        assert visible(box) and box["complete"], (image_id, box)
        assert box["naturalWidth"] > 0 and box["naturalHeight"] > 0, (image_id, box)
        assert box["width"] >= 100, (image_id, box)  # drawn at a readable size

    errors = [event["params"] for event in events
              if event.get("method") == "Runtime.exceptionThrown"
              or (event.get("method") == "Runtime.consoleAPICalled"
                  and event["params"]["type"] in ("error", "assert"))
              or (event.get("method") == "Log.entryAdded"
                  and event["params"]["entry"]["level"] == "error")]
    assert errors == []
    requested = [event["params"]["request"]["url"] for event in events
                 if event.get("method") == "Network.requestWillBeSent"]
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested
