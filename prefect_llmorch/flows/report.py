"""What a run did: `RunReport` (the `llmorch run --json` object), its rows, its artifacts.

Every call time is relative to `t0`, the moment the plan is available; what `latency`,
`time_to_first_call`, `best`, `overhead` and `makespan` measure, and how records are sent
after the answer: CONTRIBUTING.md, "flows/report.py".
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping
from uuid import UUID

from prefect_llmorch.engine.compiler import CallRecord, Recorder, final_state
from prefect_llmorch.graph import FRG
from prefect_llmorch.host.process import PROCESS, Stage
from prefect_llmorch.host.server import api_client
from prefect_llmorch.schedule.policy import POLICIES
from prefect_llmorch.schedule.simulator import simulate

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

__all__ = [
    "CallRow", "Planning", "PlanRunFailed", "RunReport",
    "best_schedule", "build_report", "failure_message", "jsonable", "measured_lower_bound", "plan_failed",
    "Record", "create_artifact", "markdown_record", "records_sent", "report_artifacts", "send_records",
]

logger = logging.getLogger("prefect_llmorch.flows.report")

#: Keys of one call in `--json` (in this order); `reason` only when it did not complete.
CALL_KEYS = ("id", "function", "kind", "rank", "state", "start", "end", "pid")


@dataclass
class CallRow:
    """One call of the report: what happened to it.

    Attributes:
        id, function, kind, rank: the call.
        state: `Completed`, `Failed`, `Cancelled`, `NotReady` (never ran: an input did not
            complete), `Crashed`, or `Pending`/`Running` when the run ended without it.
        start, end: seconds from the report's `t0` around the function body (None: it
            never ran, or died before its times were taken).
        pid, processor: the process that ran it; the worker index of a compute call.
        error: the exception, as `Type: message`, when it failed or was cancelled.
        attempt: 0, or the recovery round it was re-run in.
        reason: what happened, when it did not complete (None when it did).
        released: seconds from `t0` at which the call became known (0 for a whole plan;
            `llmorch-ask`: when the planner streamed its line, or the final plan came).
        cached: Completed from Prefect's cache (a `cache=True` function): it did not run.
    """

    id: str
    function: str
    kind: str
    rank: int
    state: str
    start: float | None = None
    end: float | None = None
    pid: int | None = None
    processor: int | None = None
    error: str | None = None
    attempt: int = 0
    reason: str | None = None
    released: float = 0.0
    cached: bool = False

    @property
    def duration(self) -> float:
        """Measured seconds (0 when it did not run)."""
        return max(self.end - self.start, 0.0) if self.start is not None and self.end is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in CALL_KEYS}
        if self.state != "Completed":
            out["reason"] = self.reason
        if self.cached:
            out["cached"] = True
        return out

    def __getitem__(self, key: str) -> Any:
        """`row["start"]`: for callers written against the dict rows; use attributes."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class Planning:
    """How `llmorch-ask` got its plan: the plan text, the LLM answers, the tokens."""

    plan: str
    attempts: int
    tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class RunReport:
    """What a run did: the `llmorch run --json` object (`to_json`).

    Times are seconds relative to `t0` (epoch seconds); the figures are defined in
    CONTRIBUTING.md, "flows/report.py".
    """

    state: str
    processors: int
    calls: list[CallRow]
    result: Any
    results: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0
    latency: float = 0.0
    time_to_first_call: float | None = None
    best: float = 0.0
    makespan: float = 0.0
    lower_bound: float = 0.0  # max(critical path, compute work / P), measured durations
    sequential: float = 0.0  # sum of the call times
    failed: list[str] = field(default_factory=list)
    message: str = ""
    planning: Planning | None = None
    recovery: dict[str, Any] | None = None  # `RecoveryController.to_dict()`
    #: the plan simulated with the costs the policy used (`schedule.predict.predict`): `latency`,
    #: `critical_path`, `calls` (start, end), `costs` (`declared` or `history`: `history` only
    #: when learned costs were used; then `declared` lists functions that had none); None: not made
    predicted: dict[str, Any] | None = None
    #: the join step's rounds (ask: `flows.joiner.Rounds.to_dict`); None: no join happened
    joiner: dict[str, Any] | None = None

    @property
    def overhead(self) -> float:
        """`latency - best`: what our side added to the best schedule."""
        return round(self.latency - self.best, 6)

    @property
    def speedup(self) -> float:
        """Sum of the call times over the latency."""
        return self.sequential / self.latency if self.latency > 0 else 0.0

    @property
    def extra(self) -> dict[str, Any]:
        """The optional `--json` keys: `plan`, `attempts`, `tokens` (ask), `recovery`."""
        out: dict[str, Any] = {}
        if self.planning is not None:
            out.update(plan=self.planning.plan, attempts=self.planning.attempts, tokens=dict(self.planning.tokens))
        if self.recovery is not None:
            out["recovery"] = self.recovery
        if self.joiner is not None:
            out["joiner"] = self.joiner
        return out

    def row(self, call_id: str) -> CallRow:
        """The row of one call."""
        for c in self.calls:
            if c.id == call_id:
                return c
        raise KeyError(f"no call {call_id!r} in the report; calls: {', '.join(c.id for c in self.calls)}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "t0": self.t0,
            "latency": self.latency,
            "time_to_first_call": self.time_to_first_call,
            "best": self.best,
            "overhead": self.overhead,
            "makespan": self.makespan,
            "lower_bound": self.lower_bound,
            "processors": self.processors,
            "calls": [c.to_json() for c in self.calls],
            "result": jsonable(self.result),
        }
        if self.message:
            out["message"] = self.message
        if self.predicted is not None:
            out["predicted"] = self.predicted
        out.update(self.extra)
        return out

    def summary(self) -> str:
        """One line for people: latency and where it went."""
        first = "-" if self.time_to_first_call is None else f"{self.time_to_first_call:.3f} s"
        line = (
            f"latency {self.latency:.3f} s (first call after {first}; best schedule {self.best:.3f} s, "
            f"overhead {self.overhead:.3f} s) | makespan {self.makespan:.3f} s | P = {self.processors}"
        )
        if self.predicted is not None:  # an estimate, from costs (not the measured times)
            line += f" | predicted {estimate(self.predicted['latency'])} ({costs_used(self.predicted)})"
        return line

    def measured_line(self) -> str:
        """The second line for people: what the measured call times allow (the lower bound is
        from measured times, the prediction from costs: each says which it uses)."""
        return (
            f"lower bound {self.lower_bound:.3f} s (measured call times) | sum of call times {self.sequential:.3f} s | "
            f"speedup {self.speedup:.2f}x (call times / latency)"
        )


def estimate(seconds: float) -> str:
    """An estimate in seconds, 3 significant digits: `4.50 s`, `0.125 s`, `1.30 s`, `123 s`.

    >>> estimate(6.88496), estimate(1.30073), estimate(4.5), estimate(1234.5), estimate(0)
    ('6.88 s', '1.30 s', '4.50 s', '1234 s', '0 s')
    """
    if seconds == 0:
        return "0 s"
    if abs(seconds) >= 100:
        return f"{seconds:.0f} s"
    return f"{seconds:#.3g} s"


def costs_used(predicted: Mapping[str, Any]) -> str:
    """`declared costs`, `history costs`, or `history costs; declared: chatbot`."""
    text = f"{predicted.get('costs', 'declared')} costs"
    if predicted.get("declared"):
        text += f"; declared: {', '.join(predicted['declared'])}"
    return text


class PlanRunFailed(RuntimeError):
    """Some calls of the plan failed; `report` keeps everything that completed."""

    def __init__(self, message: str, report: RunReport) -> None:
        self.report = report
        super().__init__(message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (PlanRunFailed, (str(self), self.report))


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


def jsonable(value: Any) -> Any:
    """`value` if JSON can hold it, else the same with `repr` of what it cannot."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [jsonable(v) for v in value]
        return repr(value)


def measured_lower_bound(frg: FRG, durations: Mapping[str, float], processors: int) -> float:
    """max(critical path, compute work / P), with each call's *measured* duration."""
    costs = {cid: durations.get(cid, 0.0) for cid in frg.ids}
    return round(FRG.from_edges(frg.ids, frg.deps, frg.kind, costs, functions=frg.function).lower_bound(processors), 6)


def best_schedule(
    frg: FRG, durations: Mapping[str, float], processors: int, release: Mapping[str, float] | None = None
) -> float:
    """The shortest simulated schedule of `frg` with measured `durations` on P processors.

    `release[id]` is when a call became known (streamed in by the planner); it cannot
    start earlier. Modelled as an inout predecessor lasting that long, so the simulator
    (the runner's own Coordinator) needs no new notion.

    >>> frg = FRG.from_edges(["a", "b", "c"], {"c": ["a"]}, costs={})
    >>> best_schedule(frg, {"a": 1.0, "b": 1.0, "c": 1.0}, 2)
    2.0
    >>> best_schedule(frg, {"a": 1.0, "b": 1.0, "c": 1.0}, 2, release={"b": 1.5})
    2.5
    """
    ids: list[str] = []
    deps: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    costs: dict[str, float] = {}
    for cid in frg.ids:
        at = (release or {}).get(cid, 0.0)
        cdeps = list(frg.deps[cid])
        if at > 0:
            gate = f"release:{cid}"
            ids.append(gate)
            kinds[gate], costs[gate] = "inout", at
            cdeps.append(gate)
        ids.append(cid)
        deps[cid], kinds[cid], costs[cid] = cdeps, frg.kind[cid], durations.get(cid, 0.0)
    if not ids:
        return 0.0
    graph = FRG.from_edges(ids, deps, kinds, costs)
    return round(min(simulate(graph, processors, policy).makespan for policy in POLICIES), 6)


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


def failure_message(report: RunReport) -> str:
    """`2 of 5 calls did not complete (...)` and one line per such call, saying why."""
    lines = []
    for c in report.calls:
        if c.state == "Failed":
            lines.append(f"{c.id} · {c.function} failed: {c.reason}")
        elif c.state != "Completed":
            lines.append(f"{c.id} · {c.function} ended {c.state}: {c.reason}")
    done = sum(1 for c in report.calls if c.state == "Completed")
    return f"{len(report.failed)} of {len(report.calls)} calls did not complete ({done} completed, results kept):\n" + "\n".join(lines)


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
