"""A run's report from Prefect's side: built from the run's records and futures, and its artifacts.

The report itself (`RunReport`, its rows, what its figures measure) is the pure
`prefect_llmorch.report`; here: `build_report` (what Prefect says about calls that never ran),
`plan_failed` (the flow's final state), and the records sent to the API after the answer
(CONTRIBUTING.md, "flows/report.py").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping
from uuid import UUID

from prefect_llmorch.engine.compiler import CallRecord, Recorder, final_state
from prefect_llmorch.graph import FRG
from prefect_llmorch.host.process import PROCESS, Stage
from prefect_llmorch.host.server import api_client
from prefect_llmorch.report import CallRow, RunReport, best_schedule, measured_lower_bound

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

__all__ = [
    "build_report", "plan_failed",
    "Record", "create_artifact", "markdown_record", "records_sent", "report_artifacts", "send_records",
]

logger = logging.getLogger("prefect_llmorch.flows.report")


def plan_failed(error: Exception) -> Any:
    """The `Failed` final state of a flow whose plan is wrong (a `PlanError`): its message is
    the errors alone, each with line and column (what the UI shows: no traceback, no class
    name), and its result the error, which `run_plan` raises."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError
    from prefect.states import Failed

    try:  # the run's log gets each error with its line and a caret (no traceback either)
        report = getattr(error, "report", None)
        get_run_logger().error("the plan cannot run:\n%s", report() if callable(report) else error)
    except MissingContextError:
        pass
    return Failed(message=str(error), data=error)


def _ended(future: Any) -> Any:
    """The state a call's future ended in, or None while it has not ended."""
    if future is None:
        return None
    state = final_state(future)
    if state is None:
        return None
    if state.is_final() or state.name == "NotReady":  # NotReady: Pending, but it is over
        return state
    return None


def _row(rec: CallRecord, future: Any, rows: Mapping[str, CallRow], frg: FRG, released: float) -> CallRow:
    row = CallRow(
        id=rec.id, function=rec.function, kind=rec.kind, rank=rec.rank, state=rec.state,
        start=rec.start, end=rec.end, pid=rec.pid, processor=rec.processor, error=rec.error, attempt=rec.attempt,
        released=released, cached=rec.cached,
    )
    if row.state == "Completed":
        return row
    ended = _ended(future)
    if row.state in ("Pending", "Running", "AwaitingApproval") and ended is not None and not ended.is_completed():
        row.state = ended.name or ended.type.value.title()  # what Prefect says: NotReady, Crashed...
    if row.state in ("Failed", "Cancelled") and row.error:
        row.reason = row.error
    elif row.state == "NotReady" or (row.state == "Pending" and ended is not None):
        upstream = [
            f"{d} {_verb(rows[d].state)}" for d in frg.ordered(frg.deps[rec.id])
            if d in rows and rows[d].state != "Completed"
        ]
        row.reason = "not run: upstream " + ", ".join(upstream) if upstream else "not run: an input did not complete"
    elif row.state == "Cancelled":
        row.reason = (ended.message if ended is not None and ended.message else None) or "cancelled"
    elif ended is not None:  # Failed or Crashed without our record of the error
        row.reason = ended.message or row.state.lower()
    elif row.state == "Running":
        row.reason = "still running when the run ended (recovery gave up waiting)"
    else:
        row.reason = "not started when the run ended (recovery gave up waiting)"
    return row


def _verb(state: str) -> str:
    return {"Failed": "failed", "Cancelled": "was cancelled", "Crashed": "crashed"}.get(state, "did not run")


def build_report(
    frg: FRG,
    recorder: Recorder,
    processors: int,
    futures: Mapping[str, Any],
    release: Mapping[str, float] | None = None,
) -> RunReport:
    """The report of a run of `frg` (the plan as finally run) from its records and futures.

    Args:
        frg: the plan as finally run.
        recorder: the calls' records (times relative to `recorder.t0`) and results.
        processors: P.
        futures: each call's last future (what Prefect says about calls that never ran).
        release: when each call became known, relative to `t0` (ask: streamed calls).
    """
    rows: dict[str, CallRow] = {}
    for cid in frg.topological_order():
        rows[cid] = _row(recorder.records[cid], futures.get(cid), rows, frg, (release or {}).get(cid, 0.0))
    calls = [rows[cid] for cid in frg.ids]
    ran = [c for c in calls if c.start is not None and c.end is not None]
    first = min((c.start for c in ran), default=None)  # type: ignore[type-var]
    last = max((c.end for c in ran), default=0.0)  # type: ignore[type-var]
    durations = {c.id: c.duration for c in calls}
    failed = [c.id for c in calls if c.state != "Completed"]
    if len(frg.sinks) == 1:
        result = recorder.results.get(frg.sinks[0])
    else:
        result = {s: recorder.results[s] for s in frg.sinks if s in recorder.results}
    return RunReport(
        state="Failed" if failed else "Completed",
        processors=processors,
        calls=calls,
        result=result,
        results=dict(recorder.results),
        t0=recorder.t0,
        latency=round(last, 6),
        time_to_first_call=None if first is None else round(first, 6),
        best=best_schedule(frg, durations, processors, release),
        makespan=round(last - first, 6) if first is not None else 0.0,
        lower_bound=measured_lower_bound(frg, durations, processors),
        sequential=round(sum(durations.values()), 6),
        failed=failed,
    )


def _predicted_columns(report: RunReport, call_id: str) -> dict[str, Any]:
    """The schedule artifact's `predicted start` / `predicted end` of a call (none without a prediction)."""
    if report.predicted is None:
        return {}
    start, end = report.predicted.get("calls", {}).get(call_id, (None, None))
    return {"predicted start": start, "predicted end": end}


#: A record of a run for the API (an artifact): sent with a client, for the flow run's id.
Record = Callable[["SyncPrefectClient", UUID], None]


def report_artifacts(frg: FRG, report: RunReport, extra_markdown: str = "") -> Record:
    """The record of the FRG and the schedule of `report` as it is now (the texts are made
    here: the caller may go on changing the report), shown on the flow run's page (Prefect's
    UI renders markdown but not mermaid: `llmorch graph PLAN --mermaid` prints mermaid)."""
    markdown = "## Function-call Relation Graph\n\n" + frg.to_markdown() + "\n" + extra_markdown
    rows = [
        {
            "call": c.id, "function": c.function, "kind": c.kind, "rank": c.rank,
            "processor": "" if c.processor is None else c.processor, "pid": c.pid,
            "start": c.start, "end": c.end, "state": c.state, "reason": c.reason or "",
            **_predicted_columns(report, c.id),
        }
        for c in report.calls
    ]
    summary = report.summary()

    def publish(client: "SyncPrefectClient", flow_run_id: UUID) -> None:
        create_artifact(
            client, flow_run_id, "markdown", "llmorch-frg", markdown,
            "The plan's FRG: each call's rank, kind, inputs (deps) and mutual-exclusion group",
        )
        create_artifact(client, flow_run_id, "table", "llmorch-schedule", json.dumps(rows), summary)

    return publish


def markdown_record(key: str, markdown: str, description: str) -> Record:
    """The record of a markdown artifact (recovery's rounds)."""

    def publish(client: "SyncPrefectClient", flow_run_id: UUID) -> None:
        create_artifact(client, flow_run_id, "markdown", key, markdown, description)

    return publish


def create_artifact(client: "SyncPrefectClient", flow_run_id: UUID, kind: str, key: str, data: Any, description: str) -> UUID:
    """Create an artifact of the flow run with `client` (Prefect's `create_*_artifact` take
    the client and the run from the context, which a record sent after the answer no longer
    has: its client is closed); returns its id."""
    from prefect.client.schemas.actions import ArtifactCreate

    artifact = ArtifactCreate(type=kind, key=key, data=data, description=description, flow_run_id=flow_run_id)
    return client.create_artifact(artifact=artifact).id


#: The name of the threads that send a run's records after its answer (`send_records`).
RECORDS_THREAD = "llmorch-records"


def send_records(records: list[Record], *, after: threading.Event | None) -> None:
    """Send the current flow run's records (its artifacts), in order, each failure a warning
    (they are a record: the answer is in the report).

    `after` (the caller waits for the answer in this process: `run_plan`, `ask_query`, the
    CLI; it sets the event once it has the answer): on a thread of their own, with a client
    of their own for the run's API, once the event is set, so neither the answer nor the
    flow run's final state waits for their round trips (issue 27: the answer within 100 ms
    of the last call). Nothing is lost: the thread is no daemon, and the process waits for
    it at exit (`PROCESS`'s RECORDS stage); it first waits for earlier runs' records, so
    the latest artifact of a key is the latest run's. `records_sent()` waits for them.
    None (a deployment's run): now, before the flow run ends, with the flow run's client."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext, SettingsContext

    run = FlowRunContext.get()
    if not records or run is None or run.flow_run is None:
        return
    flow_run_id = run.flow_run.id
    if after is None:
        _send(records, get_client(sync_client=True), flow_run_id)
        return
    earlier = [t for t in threading.enumerate() if t.name == RECORDS_THREAD]
    settings = SettingsContext.get()  # the run's API (a test's, the embedded server's)

    def work() -> None:  # a new thread starts with an empty context: no client of the run's
        after.wait()
        for thread in earlier:
            thread.join()
        with SettingsContext(profile=settings.profile, settings=settings.settings), api_client() as client:
            _send(records, client, flow_run_id)
            _events_sent()

    # At exit, the records are waited for before Prefect's events worker stops: a record sent
    # after it stopped loses its `prefect.artifact.created` event, and Prefect logs an ERROR
    # ("can't register atexit after shutdown"). The owner's RECORDS stage runs before Prefect
    # stops the services started before its first use, here: after the run's task runs
    # started the events worker (host/process.py).
    PROCESS.at_exit(Stage.RECORDS, records_sent)
    threading.Thread(target=work, name=RECORDS_THREAD, daemon=False).start()


def records_sent(timeout: float | None = None) -> bool:
    """Wait until the records of every run of this process are sent (`send_records`);
    False if some are still being sent after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in [t for t in threading.enumerate() if t.name == RECORDS_THREAD]:
        thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            return False
    return True


def _events_sent(timeout: float = 10.0) -> None:
    """Wait (up to `timeout` s) until the events the records made (`prefect.artifact.created`)
    have left: at exit Prefect's events worker would otherwise stop with them queued and warn
    "Still processing items" on the user's terminal."""
    from prefect.events.worker import EventsWorker

    waiting = threading.Thread(target=EventsWorker.instance().wait_until_empty, daemon=True)
    waiting.start()
    waiting.join(timeout)


def _send(records: list[Record], client: "SyncPrefectClient", flow_run_id: UUID) -> None:
    for publish in records:
        try:
            publish(client, flow_run_id)
        except Exception as exc:  # noqa: BLE001 - a record, never the answer
            logger.warning("could not publish a run's artifact: %s: %s", type(exc).__name__, exc)
