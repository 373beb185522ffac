"""A progress artifact on the flow run's page, updated as calls finish.

    progress = RunProgress.start(recorder)   # in the flow, before calls are submitted
    ...                                       # calls run; each final state is counted
    progress.close()                          # stops the updater thread, sends the last update
                                              # (or stop(), then send_final() after the answer)

The recorder's listener only notes a change (an API round trip in a task thread would sit on
the call's critical path); one daemon thread sends at most one update per `INTERVAL`
(CONTRIBUTING.md, "flows/progress.py": why so rarely).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any
from uuid import UUID

from prefect_llmorch.engine.compiler import CallRecord, Recorder

logger = logging.getLogger("prefect_llmorch.flows.progress")

FINAL = ("Completed", "Failed", "Cancelled", "NotReady", "Crashed")
ARTIFACT_KEY = "llmorch-progress"
#: Seconds between two updates of the artifact, and before it is first created.
INTERVAL = 5.0


class RunProgress:
    """Keeps the `llmorch-progress` artifact of the current flow run up to date."""

    def __init__(self, recorder: Recorder, interval: float | None = None) -> None:
        from prefect.context import FlowRunContext

        self.recorder = recorder
        self.interval = INTERVAL if interval is None else interval
        self.artifact_id: UUID | None = None
        run = FlowRunContext.get()
        self.flow_run_id: UUID | None = run.flow_run.id if run is not None and run.flow_run is not None else None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[float, str] | None = None

    @classmethod
    def start(cls, recorder: Recorder, interval: float | None = None) -> "RunProgress":
        """Listen to the recorder; the artifact is created by the updater thread once the run
        has lasted `interval` (by `close` if it ends before), so its API round trip is never
        on the way to a call. Never raises."""
        self = cls(recorder, interval)
        recorder.listeners.append(self._on_change)
        ctx = contextvars.copy_context()  # the flow's settings, run and client context
        self._thread = threading.Thread(target=ctx.run, args=(self._run,), daemon=True, name="llmorch-progress")
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._stop.wait(self.interval):
            return  # a short run: `close` creates the artifact, with the final count
        if self._send(_run_client()):
            self._loop()

    def snapshot(self) -> tuple[float, str]:
        records = list(self.recorder.records.values())
        total = len(records)
        done = [r for r in records if r.state in FINAL]
        failed = sum(1 for r in done if r.state != "Completed")
        pct = round(100.0 * len(done) / total, 1) if total else 0.0
        text = f"{len(done)} of {total} calls finished"
        if failed:
            text += f" ({failed} did not complete)"
        running = sum(1 for r in records if r.state == "Running")
        if running:
            text += f"; {running} running"
        waiting = sum(1 for r in records if r.state == "AwaitingApproval")
        if waiting:
            text += f"; {waiting} waiting for approval"
        return pct, text

    def _on_change(self, record: CallRecord) -> None:
        self._changed.set()

    def _send(self, client: Any, flow_run_id: UUID | None = None) -> bool:
        """Create the artifact with the numbers so far, or update it if they changed; False
        (and a warning) if it cannot be created: progress is a nicety, never a run's failure."""
        snap = self.snapshot()
        if self.artifact_id is None:
            try:
                from prefect_llmorch.flows.report import create_artifact

                run_id = flow_run_id or self.flow_run_id
                self.artifact_id = create_artifact(client, run_id, "progress", ARTIFACT_KEY, snap[0], snap[1])
            except Exception as exc:
                logger.warning("could not create the progress artifact: %s", exc)
                return False
        elif snap != self._last:
            from prefect.client.schemas.actions import ArtifactUpdate

            try:
                client.update_artifact(artifact_id=self.artifact_id, artifact=ArtifactUpdate(data=snap[0], description=snap[1]))
            except Exception as exc:
                logger.debug("progress update failed: %s", exc)
                return True
        self._last = snap
        return True

    def _loop(self) -> None:
        client = _run_client()
        while not self._stop.is_set():
            self._changed.wait(timeout=5.0)
            if self._stop.is_set():
                break
            if self._changed.is_set():
                self._changed.clear()
                self._send(client)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop listening and stop the updater (no API call of its own)."""
        try:
            self.recorder.listeners.remove(self._on_change)
        except ValueError:
            pass
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def send_final(self, client: Any, flow_run_id: UUID) -> None:
        """Send the final numbers with `client` (a `report.Record`): create the artifact if
        the run was too short to have one."""
        self._send(client, flow_run_id)

    def close(self) -> None:
        """Stop the updater and send the final numbers, with the flow run's client."""
        self.stop()
        if self.flow_run_id is not None:
            self.send_final(_run_client(), self.flow_run_id)


def _run_client() -> Any:
    """The flow run's own sync client (from the context this thread runs in)."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)
