"""One execution pipeline for `llmorch-run` and `llmorch-ask`: submit, adopt, recover, report.

Inside a flow run, an `Execution` takes a plan's calls and turns them into task runs:

    with Execution(toolbox, processors=2, recovery=RecoveryConfig(llm)) as ex:
        ex.adopt(call)               # ask: a call the planner streamed in, started at once
        ex.start(plan, kept=...)     # the final plan: what was not adopted unchanged is submitted
        report = ex.finish()         # recovery rounds, then the `RunReport`
    return ex.end(report, report_artifacts(ex.frg, report))   # the flow's final state

`llmorch-run` calls `start(plan)` alone; `llmorch-ask` adopts calls while the LLM writes the
plan, then starts the final plan, keeping the adopted calls the planner did not change (the
others become *stale*: not started if they had not started, their records and results
ignored).

Both end the same way, in this order:

1. `finish`: recovery (when configured) runs its rounds; the calls' records become the report;
2. `close` (also on leaving the `with` block early, after an error): the heartbeats stop, and
   the watch on the server (the run is over); the progress updates stop, their last one kept as
   a record; the MCP sessions end;
3. `finish` hands the report to `run.run_flow` (`Handoff.reports`) before Prefect may fail to
   record the run's end, then marks it: `Crashed` when the server died, `Cancelled` on Ctrl-C /
   SIGTERM, else a message naming each call that did not complete;
4. `end`, once the flow added its own parts to the report: the calls' durations are remembered
   (`storage.history`), the records sent once the caller has the answer (none when the server
   died: nothing to send them to), and the report becomes the flow's state (`conclude`);
5. `run.run_flow`, once the flow call returned: the answer is the caller's (the records go
   now), or, when the server died under the run, `PlanRunServerGone` with the last report.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping

from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture

from prefect_llmorch.credentials import CredentialStore
from prefect_llmorch.engine.compiler import Compiler, Recorder, wait_all
from prefect_llmorch.engine.rates import rates_of
from prefect_llmorch.host import interrupt
from prefect_llmorch.host.server import ServerGone, serves, when_gone
from prefect_llmorch.flows.handoff import handed
from prefect_llmorch.flows.progress import RunProgress
from prefect_llmorch.flows.recovery import ARTIFACT_KEY as RECOVERY_ARTIFACT, RecoveryConfig, RecoveryController
from prefect_llmorch.flows.report import Record, build_report, markdown_record, send_records
from prefect_llmorch.report import PlanRunFailed, RunReport, failure_message
from prefect_llmorch.functions import Toolbox
from prefect_llmorch.graph import FRG
from prefect_llmorch.plan.model import Call, Plan
from prefect_llmorch.storage.history import remember_records

__all__ = ["JOIN_FAILED", "Execution", "conclude", "current_llmorch_runner", "execute", "mark_gone"]


def _log() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """The flow run's logger (shown on the run's page), else this module's."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def current_llmorch_runner() -> Any:
    """The flow run's task runner if it is ours (it takes the FRG: `use_graph`), else None."""
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    if runner is not None and all(hasattr(runner, m) for m in ("use_graph", "no_more_submissions", "expect_more")):
        return runner
    return None


class Execution:
    """One run of a plan's calls inside the current flow run; leaving its `with` block
    closes it (`close`), so an error before `finish` leaves no thread of it running.

    Args:
        toolbox: the functions the plan calls.
        processors: P (for the report's best schedule and lower bound).
        self_fn: the body of the built-in `self`, if the plan may call it.
        secrets: credentials by block name; None loads the `ToolCredentials` blocks the
            calls' functions declare, as calls arrive (a missing block fails before its
            call is submitted).
        recorder: where call times (relative to `recorder.t0`), states and results go.
        recovery: trace-back recovery settings; None: a failed call fails the run.
        runner: the `LLMOrchTaskRunner` (or one like it); default: the flow run's, if ours.
        cache: reuse and store results of `cache=True` functions (False: `--no-cache`).
        costs: seconds per function (learned: `storage.history.function_costs`) for the
            critical-path policy, over the toolbox's declared costs.
    """

    def __init__(
        self,
        toolbox: Toolbox,
        *,
        processors: int,
        self_fn: Callable[[str], Any] | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        recorder: Recorder | None = None,
        recovery: RecoveryConfig | None = None,
        runner: Any = None,
        cache: bool = True,
        costs: Mapping[str, float] | None = None,
    ) -> None:
        self.toolbox = toolbox
        self.processors = processors
        self.costs = dict(costs or {})
        self.runner = runner if runner is not None else current_llmorch_runner()
        self.recorder = recorder if recorder is not None else Recorder()
        self._store = CredentialStore(toolbox) if secrets is None else None
        self.frg = FRG.build(Plan(()), toolbox)
        self.compiler = Compiler(
            frg=self.frg, toolbox=toolbox, recorder=self.recorder, self_fn=self_fn,
            secrets=self._store if self._store is not None else secrets,
            pool=getattr(self.runner, "pool", None),  # compute calls run on the runner's processors
            cache=cache,
            # paced at the call, machine-wide; `guard="local"` (--no-global-limit) opts out of every
            # llmorch-* limit, rates too: the runner's Coordinator still paces this run's calls
            rates=rates_of(getattr(self.runner, "resources", None)) if getattr(self.runner, "guard", "global") == "global" else {},
        )
        self.futures: dict[str, PrefectFuture[Any]] = {}
        #: seconds after `t0` at which each call became known (ask: streamed calls)
        self.release: dict[str, float] = {}
        self.plan: Plan | None = None
        self._adopted: list[Call] = []  # kept alive: the compiler tells stale calls by identity
        self._base = Plan(())  # the calls of earlier rounds (a continuation follows them)
        self._settled = False
        # Hooks go in before the first submission; failures are held until the plan is final.
        self.controller = RecoveryController(recovery, toolbox, self.compiler, self.runner) if recovery else None
        self.progress = RunProgress.start(self.recorder)  # the `llmorch-progress` artifact
        self._stop_heartbeats = heartbeats(handed().heartbeats)
        #: what publishes this run's artifacts once `finish` returned (`report.send_records`)
        self.records: list[Record] = []
        self._closed = False
        #: set when this process's embedded Prefect server died under the run (`_server_died`)
        self.gone: ServerGone | None = None
        self._forget_server = _watch_server(self._server_died)
        interrupt.rearm()  # under the CLI, SIGTERM stops the run as Ctrl-C does

    def __enter__(self) -> "Execution":
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        """Close; on a script's Ctrl-C or exit, first cancel the calls: at once, before
        Prefect's engine handles the exception (its way out does not always pass it to the
        runner's exit: a script then waited at exit for its longest inout call, seen in CI).
        The flow's waits (`compiler.wait_all`, `planner.Inbox`) wake in short slices, so a
        Ctrl-C the kernel hands to another thread still reaches the main thread."""
        if kind is not None and issubclass(kind, (KeyboardInterrupt, SystemExit)):
            self._cancel_all()
        self.close()

    def _server_died(self, error: ServerGone) -> None:
        """The run's Prefect server (this process's embedded one) died: nothing more can be
        recorded, so the run stops as on Ctrl-C (no new call starts, running calls are
        cancelled) and `finish` reports what completed (`run.run_flow` raises it)."""
        self.gone = error
        self._cancel_all()

    def _cancel_all(self) -> None:
        if self.runner is not None and hasattr(self.runner, "cancel_all"):
            self.runner.cancel_all()

    def _check_server(self) -> None:
        if self.gone is not None:
            raise ServerGone(str(self.gone))

    def _graph(self, plan: Plan) -> FRG:
        per_call = {c.id: self.costs[c.function] for c in plan.calls if c.function in self.costs}
        return FRG.build(plan, self.toolbox, costs=per_call or None)

    # -- submitting ---------------------------------------------------------------------
    def adopt(self, call: Call, *, at: float | None = None) -> None:
        """Start a call of a plan that is still being written (its inputs were adopted).

        `at` (epoch seconds, default now) is when the planner handed the call over.
        """
        if self.plan is not None:
            raise RuntimeError(f"cannot adopt {call.id}: the plan is final (start() was called)")
        self._check_server()
        self._require([call])
        self._adopted.append(call)
        self.release[call.id] = self.recorder.rel(time.time() if at is None else at)
        # Ranks of earlier calls never change when a later call arrives: the FRG of the calls
        # so far (tiny) lets the policy see the current critical paths.
        self._use_graph(self._graph(Plan(self._base.calls + tuple(self._adopted))))
        self.compiler.submit([call], self.futures)

    def start(self, plan: Plan, kept: Iterable[str] = (), *, planned_at: float | None = None) -> None:
        """Run the final plan: submit its calls, except the adopted ones in `kept`.

        Args:
            plan: the plan, checked against the toolbox.
            kept: ids of adopted calls that are in `plan` unchanged (with their inputs).
            planned_at: when the plan came (epoch seconds; ask): the calls submitted now
                could not start before; None (run): the plan was there at `t0`.
        """
        if self.plan is not None:
            raise RuntimeError("start() was called already")
        self._check_server()
        # Only calls adopted here are running: a replayed (cached) planner result names
        # calls that streamed in an earlier attempt of this flow run.
        keep = set(kept) & {c.id for c in self._adopted}
        stale = [c for c in self._adopted if c.id not in keep]
        if stale:
            self.compiler.stale.update(id(c) for c in stale)
            _log().warning(
                "calls %s were started from a draft plan that was repaired: not started if they had "
                "not started, their results ignored", ", ".join(c.id for c in stale),
            )
        earlier = set(self._base.ids)
        if self._base.calls and plan.calls[: len(self._base)] != self._base.calls:
            raise ValueError("a continuation must keep the calls of earlier rounds, first and unchanged")
        self.plan = plan
        self._settled = False
        frg = self._graph(plan)
        self._use_graph(frg)
        todo = [c for c in plan.calls if c.id not in keep and c.id not in earlier]
        self._require(todo)
        if self.controller is not None:
            self.controller.release(plan, frg)
        if planned_at is not None:
            at = self.recorder.rel(planned_at)
            self.release.update((c.id, at) for c in todo)
        self.compiler.submit(todo, self.futures)
        for cid in [cid for cid in self.futures if cid not in frg.rank]:
            self.futures.pop(cid)  # a stale call the final plan dropped: the runner lets it end
        if self.runner is not None:
            self.runner.no_more_submissions()

    def abandon(self) -> None:
        """No plan came: every adopted call is stale; wait for the started ones to end."""
        self.compiler.stale.update(id(c) for c in self._adopted)
        if self.runner is not None:
            self.runner.no_more_submissions()
        wait_all(self.futures.values())

    # -- finishing ----------------------------------------------------------------------
    def finish(self) -> RunReport:
        """Wait for the calls, run recovery rounds while calls fail, return the report.

        The report's `message` names each call that did not complete and why (recovery's
        rounds when recovery ran); the flow adds its parts, then ends with `end`.
        """
        if self.plan is None:
            raise RuntimeError("finish() before start(): no plan to finish")
        self.settle()
        report = build_report(self.frg, self.recorder, self.processors, self.futures, self.release)
        self.close(records=True)
        kept = handed().reports
        if kept is not None:  # the caller's, should Prefect fail to record the flow run's end
            kept.append(report)
        if self.gone is not None:  # the server died: `run.run_flow` raises with this report
            return mark_gone(report, self.gone)
        if interrupt.received():  # Ctrl-C / SIGTERM: the flow ends Cancelled (`conclude`)
            return interrupt.mark(report)
        if report.failed:
            report.message = failure_message(report)
        elif self.plan.answer is not None:  # the plan names its answer (NESTFUL's var_result)
            from prefect_llmorch.plan.evaluate import EvaluationError, MissingResultError, evaluate

            try:
                report.result = evaluate(self.plan.answer, self.recorder.results)
            except (EvaluationError, MissingResultError) as exc:
                report.message = f"the plan's answer cannot be computed: {exc}"
        if self.controller is not None and (rounds := self.controller.annotate(report)) is not None:
            self.records.append(markdown_record(RECOVERY_ARTIFACT, *rounds))  # in the report now, an artifact later
        return report

    def settle(self) -> None:
        """Wait for the submitted calls, running recovery rounds while calls fail (a no-op
        when nothing was submitted since the last `settle`). The join step reads the
        results then; `finish` settles first."""
        if self.plan is None:
            raise RuntimeError("settle() before start(): no plan to run")
        if self._settled:
            return
        if self.controller is not None:
            self.frg = self.controller.run(self.futures)  # resubmits repaired calls into futures
            self.plan = self.controller.plan  # repairs may have changed calls
        # Bounded when recovery gave up waiting on a round: never hang on a stuck call.
        timed_out = self.controller is not None and self.controller.outcome == "timed out"
        wait_all(self.futures.values(), timeout=0 if timed_out else None)
        self._settled = True

    def continue_plan(self) -> None:
        """The join step continues the plan: calls of the next round may be adopted as they
        stream (`adopt`) and then `start`ed with the whole plan (every earlier call first,
        unchanged), in the same flow run, on the same runner; its FRG grows."""
        if self.plan is None:
            raise RuntimeError("continue_plan() before start(): no plan to continue")
        self.settle()
        self._base, self.plan, self._adopted = self.plan, None, []
        if self.runner is not None:
            self.runner.expect_more()
        if self.controller is not None:
            self.controller.hold()  # failures of streamed calls wait for the final continuation

    def close(self, *, records: bool = False) -> None:
        """Stop what the execution started (step 2 of the module's list); safe to call more
        than once. The progress's last update goes into `records` (`records=True`: `finish`,
        for the flow to send after the answer), else now; nowhere when the server died."""
        if self._closed:
            return
        self._closed = True
        self._stop_heartbeats()
        self._forget_server()
        self.progress.stop()
        if self.gone is None and records:
            self.records.append(self.progress.send_final)
        elif self.gone is None:  # no report to send it with (an error came first): now
            send_records([self.progress.send_final], after=None)
        _close_mcp_sessions(self.toolbox)

    def send(self, *artifacts: Record) -> None:
        """Send `records` and then `artifacts` once the caller has the answer
        (`Handoff.answered`; a deployment's run: now), unless the server died: nothing to
        send them to."""
        if self.gone is None:
            send_records([*self.records, *artifacts], after=handed().answered)

    def end(self, report: RunReport, *artifacts: Record) -> Any:
        """The flow's last step (step 4 of the module's list), once `report` is complete:
        remember the calls' durations, send the records, return the flow's state."""
        remember_records(report.calls)
        self.send(*artifacts)
        return conclude(report)

    # -- helpers ------------------------------------------------------------------------
    def _use_graph(self, frg: FRG) -> None:
        self.frg = frg
        self.compiler.frg = frg
        if self.runner is not None:
            self.runner.use_graph(self.compiler.runner_graph(frg))  # with approval nodes, if any

    def _require(self, calls: list[Call]) -> None:
        if self._store is not None:  # fails early, naming the block, if one is missing
            self._store.require(calls)


def _watch_server(callback: Callable[[ServerGone], None]) -> Callable[[], None]:
    """`callback` when this process's embedded Prefect server dies, if the current flow run
    uses it (a run on another server goes on); returns what stops watching."""
    from prefect.settings import get_current_settings

    return when_gone(callback) if serves(get_current_settings().api.url) else lambda: None


#: The name of the `Completed` state of an ask whose join step failed (Prefect names
#: variants of a state type the same way: `Cached`, `RolledBack`).
JOIN_FAILED = "JoinFailed"


def conclude(report: RunReport) -> Any:
    """The flow's final state from its finished report: the report itself when every call
    completed; `PlanRunFailed` raised when calls failed.

    A run stopped by Ctrl-C / SIGTERM (`interrupt.mark`) returns a `Cancelled` state, and
    an ask whose calls completed but whose join step failed a `Completed` one named
    `JoinFailed` (the calls' work is done and kept; the report's `result` is the last
    result, its message says why); the report is the state's result."""
    if report.state == "Cancelled":
        return interrupt.cancelled(report)
    if report.failed:
        raise PlanRunFailed(report.message, report)
    if report.joiner is not None and report.joiner.get("failed"):
        from prefect.states import Completed

        return Completed(name=JOIN_FAILED, message=report.message, data=report)
    return report


def mark_gone(report: RunReport, error: ServerGone) -> RunReport:
    """Mark `report` as cut short by the server's death (state `Crashed`, a message saying so
    and what completed, whose results the report keeps); returns it."""
    stopped = [c.id for c in report.calls if c.state != "Completed"]
    report.state = "Crashed"
    report.message = (
        f"{error} ({len(report.calls) - len(stopped)} of {len(report.calls)} calls completed: their results are in "
        "this report" + (f"; not completed: {', '.join(stopped)}" if stopped else "") + ")"
    )
    return report


def _close_mcp_sessions(toolbox: Toolbox) -> None:
    """End this flow run's sessions with the MCP servers its toolbox's tools come from."""
    if any(getattr(spec.fn, "__llmorch_mcp__", None) is not None for spec in toolbox.values()):
        from prefect_llmorch.mcp import close_run_sessions

        close_run_sessions(toolbox)


def execute(
    plan: Plan,
    toolbox: Toolbox,
    *,
    processors: int,
    self_fn: Callable[[str], Any] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    recorder: Recorder | None = None,
    recovery: RecoveryConfig | None = None,
) -> tuple[FRG, Recorder, RunReport]:
    """Run a checked plan inside the current flow run; returns the FRG, records and report.

    With `recovery`, calls that finally fail are repaired by trace-back recovery
    (`prefect_llmorch.flows.recovery`); the report then carries `recovery`.
    """
    with Execution(
        toolbox, processors=processors, self_fn=self_fn, secrets=secrets, recorder=recorder, recovery=recovery,
    ) as ex:
        ex.start(plan)
        report = ex.finish()
    ex.send()  # the progress and recovery records; the caller's flow publishes the rest
    return ex.frg, ex.recorder, report


def heartbeats(seconds: int | None) -> Callable[[], None]:
    """Send the current flow run's heartbeats every `seconds` (None: none) from a thread,
    the events Prefect's own heartbeat thread sends (`prefect.flow-run.heartbeat` about the
    flow run, related to its flow, deployment and tags); returns what stops them, at once."""
    run = FlowRunContext.get()
    if seconds is None or run is None or run.flow_run is None:
        return lambda: None
    import prefect
    from prefect.events import RelatedResource, emit_event
    from prefect.events.related import tags_as_related_resources

    flow_run = run.flow_run
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
        "prefect.resource.name": flow_run.name or "",
        "prefect.version": prefect.__version__,
    }
    related = [RelatedResource.model_validate({
        "prefect.resource.id": f"prefect.flow.{flow_run.flow_id}", "prefect.resource.role": "flow",
        "prefect.resource.name": run.flow.name if run.flow else "",
    })]
    if flow_run.deployment_id:
        related.append(RelatedResource.model_validate({
            "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}", "prefect.resource.role": "deployment",
        }))
    related += tags_as_related_resources(set(flow_run.tags or []))
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
            except Exception:  # noqa: BLE001 - as Prefect's: a missed beat is logged, not fatal
                logging.getLogger(__name__).debug("could not send a flow-run heartbeat", exc_info=True)
            stop.wait(seconds)

    ctx = contextvars.copy_context()  # the run's API settings
    threading.Thread(target=ctx.run, args=(beat,), daemon=True, name="llmorch-heartbeat").start()
    return stop.set
