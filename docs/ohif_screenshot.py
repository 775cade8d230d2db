"""Open a study in the OHIF viewer that MONAI Label serves, overlay its Multi-AD SEG, and save a screenshot.

Drives headless Chromium over the DevTools protocol (``pip install websocket-client``; Debian ``chromium``): opens
``<server>/ohif/segmentation?StudyInstanceUIDs=<study>``, checks that the page lists the study's series (the CT and
the SEG), double-clicks the SEG's thumbnail (OHIF then lays it over its source series) and writes a PNG::

    python docs/ohif_screenshot.py --server http://127.0.0.1:8000 --study 1.2.840... --output docs/images/ohif_seg.png
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websocket


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, port: int) -> None:
        for _ in range(50):
            try:
                tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                break
            except OSError:
                time.sleep(0.2)
        page = next(t for t in tabs if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.id = 0

    def call(self, method: str, **params):
        self.id += 1
        self.socket.send(json.dumps({"id": self.id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.id:
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while not self.evaluate(expression):
            if time.time() > deadline:
                raise TimeoutError(f"the page did not show {expression!r} within {timeout} s")
            time.sleep(1)

    def click_button(self, text: str) -> bool:
        return bool(self.evaluate(
            f"(() => {{ const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === {text!r});"
            " if (b) { b.click(); return true; } return false; })()"
        ))  # fmt: skip

    def double_click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="the MONAI Label server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--study", required=True, help="StudyInstanceUID of a study with a Multi-AD SEG")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--port", type=int, default=9233, help="DevTools port (default %(default)s)")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    with tempfile.TemporaryDirectory() as profile:
        chromium = subprocess.Popen(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader",
             "--enable-unsafe-swiftshader", "--hide-scrollbars", "--window-size=1600,1000",
             f"--remote-debugging-port={args.port}", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            page = Page(args.port)
            page.call("Page.navigate", url=f"{args.server}/ohif/segmentation?StudyInstanceUIDs={args.study}")
            page.wait_for("document.body.innerText.includes('Multi-AD anomaly')")  # the SEG series is listed
            time.sleep(5)
            box = page.evaluate(
                "(() => { const e = [...document.querySelectorAll('div')].filter(d => d.innerText && "
                "d.innerText.startsWith('SEG') && d.innerText.includes('Multi-AD')).pop(); "
                "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
            )
            page.double_click(*box)
            time.sleep(15)  # OHIF fetches the SEG and lays it over the CT
            page.click_button("Yes")  # "Do you want to open this Segmentation?"
            page.click_button("Confirm and Hide")  # the investigational-use banner
            time.sleep(10)
            shown = page.evaluate("document.body.innerText")
            print("segment listed in the panel:", "anomaly" in shown)
            png = page.call("Page.captureScreenshot", format="png")["data"]
            with open(args.output, "wb") as f:
                f.write(base64.b64decode(png))
            print(f"wrote {args.output}")
        finally:
            chromium.terminate()
            chromium.wait(timeout=30)


if __name__ == "__main__":
    main()
