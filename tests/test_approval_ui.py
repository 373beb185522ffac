"""A call's approval given in a real browser: headless Chromium opens the paused
`approve s1 · send` run in the Prefect UI of a `prefect server start`, clicks *Resume*, turns
*Approve* on, types a note and clicks *Submit* (mouse and keyboard events through the Chrome
DevTools Protocol, the browser's own input path); the call then runs."""

from __future__ import annotations

import contextvars
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

import toolboxes_approval as ta
from prefect_llmorch.testing.server import free_port

pytestmark = pytest.mark.slow

PATIENCE = 120.0  # a hang guard, never a measure


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Browser:
    """Headless Chromium on one page, driven through the DevTools Protocol."""

    def __init__(self, binary: str, url: str) -> None:
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="llmorch-chrome-")
        port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={self.profile}",
             "--window-size=1400,1000", f"--remote-debugging-port={port}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5))
                ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
                break
            except Exception:
                if time.monotonic() > deadline:
                    self.close()
                    raise
                time.sleep(0.2)
        self.ws = connect(ws_url, max_size=2**25)
        self._id = 0

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, what: str, expression: str) -> Any:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"the page never showed {what}: {self.js('document.body.innerText')[:2000]}")

    def click(self, what: str, finder: str) -> None:
        """A mouse click (press and release) at the middle of the element `finder` returns."""
        box = self.wait_for(what, f"(() => {{ const e = {finder}; if (!e) return null; const r = e.getBoundingClientRect(); "
                                  "return r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        try:  # chromium's helpers (zygote, gpu) too
            tree = [psutil.Process(self.proc.pid)] + psutil.Process(self.proc.pid).children(recursive=True)
            for q in tree:
                q.kill()
        except psutil.NoSuchProcess:
            pass
        self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


def _button(text: str, scope: str = "document") -> str:
    return f"Array.from({scope}.querySelectorAll('button')).find(b => b.innerText.trim() === {text!r})"


def test_approve_in_the_prefect_ui_in_a_real_browser(tmp_path: Path, prefect_server: Any) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_llmorch.flows.report import records_sent
    from prefect_llmorch.flows.run import run_plan

    log = str(tmp_path / "calls.jsonl")
    box: dict[str, Any] = {}
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):

        def go() -> None:
            try:
                box["report"] = run_plan(f's1: send("eve", "{log}")\n', ta.toolbox, processors=1, concurrency_limit=None)
            except BaseException as exc:
                box["error"] = exc

        run = threading.Thread(target=contextvars.copy_context().run, args=(go,), name="approval-ui-run")
        run.start()
        paused = None
        deadline = time.monotonic() + PATIENCE
        while paused is None and time.monotonic() < deadline and run.is_alive():
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            paused = next((r for r in runs if r.name == "approve s1 · send"), None)
            time.sleep(0.3)
        assert paused is not None, box
        page = prefect_server.url.removesuffix("/api") + f"/runs/flow-run/{paused.id}"
        browser = _Browser(chromium, page)
        try:
            browser.click("the Resume button", _button("Resume"))
            modal = "document.querySelector('.p-modal')"
            # the modal asks "Do you want to resume this flow run?" until the run's form has loaded
            text = browser.wait_for("the form", f"{modal} && {modal}.querySelector('[role=switch]') && {modal}.innerText")
            assert "s1 · send waits for your approval" in text and "'eve'" in text, text
            browser.click("the Approve switch", f"{modal}.querySelector('[role=switch]')")
            browser.wait_for("Approve on", f"{modal}.querySelector('input[type=checkbox]').checked")
            browser.click("the note", f"{modal}.querySelector('textarea')")
            browser.send("Input.insertText", text="looks right")
            shot = browser.send("Page.captureScreenshot")["data"]
            (tmp_path / "approval-form.png").write_bytes(__import__("base64").b64decode(shot))
            clicked = time.time()
            browser.click("the Submit button", _button("Submit", modal))
            run.join(PATIENCE)
        finally:
            browser.close()
        with get_client(sync_client=True) as client:
            keyset = keyset_from_paused_state(paused.state)  # the keys of the pause the form answered
            answer = json.loads(client.read_flow_run_input(paused.id, keyset["response"]))
        records_sent(60)  # the run's artifacts, sent after its answer, go to this server
    assert not run.is_alive()
    assert "error" not in box, box.get("error")
    assert box["report"].state == "Completed" and box["report"].results["s1"] == "sent to eve"
    assert answer == {"approve": True, "note": "looks right"}  # what the browser's form posted
    ((record),) = ta.records(log)
    assert record["function"] == "send" and record["start"] >= clicked
