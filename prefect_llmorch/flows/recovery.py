"""Trace-back runtime recovery: repair failed plans with the LLM, re-run only what must.

When calls of a running plan have finally failed (after their Prefect retries), LLMOrch
does not start over. It

1. stops dispatching calls it is going to re-run anyway (a compiled task that has not
   started yet and descends from a recovery point ends `Cancelled` instead of running;
   calls whose inputs failed never start: Prefect marks them `NotReady`);
2. waits for the calls still running to end (their results are kept);
3. finds the *recovery points* (`recovery_points`): for each failed call, its closest
   ancestors (its parents) of the smallest rank among them; a failed call with no
   ancestors is its own recovery point;
4. removes the recovery points and their descendants from the done set;
5. asks the LLM to repair each recovery call in turn, giving it the failed call (id,
   function, arguments as text), its exception, the recovery call and the functions
   available. The answer is one call line of the plan language (`s2: search("...")`). It
   is accepted only if it parses and type-checks, keeps the call's id and its kind
   (inout stays inout, compute stays compute) and uses only results of earlier calls;
   otherwise the error is fed back once, and if the second answer fails too, the round's
   repair has failed (the round counts, nothing is re-run);
6. resumes: the recovery calls (repaired) and their descendants (unchanged) are submitted
   again as `s3 · f (repair k)` task runs, while every other result is reused through its
   completed future, not recomputed.

At most `RecoveryConfig.max_rounds` rounds (default 3); then the run ends `Failed` with a
report of every round (what failed, what was repaired and how, what re-ran), also
published as the markdown artifact `llmorch-recovery`.

Where things live: which calls to trace back to and re-run is pure
(`prefect_llmorch.schedule.recovery`); the repair prompt and the checks of the LLM's answer
know nothing of Prefect (`prefect_llmorch.llm.repair`). This module is the controller: the
Prefect hooks, the gate, the rounds. The execution (`prefect_llmorch.flows.execute`) wires
it in when it is given a `RecoveryConfig(llm)`.

While `llmorch-ask` streams the plan, calls run before the plan is final: the controller
then *holds* their failures (`RecoveryController(..., plan=None)`) and acts on them once the
planner is done (`release(plan, frg)`), dropping the failures of draft calls the planner
replaced.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from prefect_llmorch.engine.compiler import final_state, own_hook, wait_all
from prefect_llmorch.engine.runner import CALL_ATTR
from prefect_llmorch.functions import Toolbox
from prefect_llmorch.graph import FRG
from prefect_llmorch.llm.client import LLMClient, LLMError
from prefect_llmorch.llm.repair import (
    Failure,
    Repair,
    RepairRejected,
    call_text,
    parse_repair,
    plan_text,
    repair_call,
    repair_prompt,
    short,
)
from prefect_llmorch.plan.evaluate import resolve
from prefect_llmorch.plan.model import Call, Plan
from prefect_llmorch.schedule.recovery import recovery_points, rerun_set

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

    from prefect_llmorch.engine.compiler import Compiler
    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.options import Options
    from prefect_llmorch.report import RunReport

__all__ = [
    "RecoveryConfig", "RecoveryController", "RecoveryRound", "ARTIFACT_KEY", "RUNNING",
    # re-exported from schedule.recovery and llm.repair
    "Failure", "Repair", "RepairRejected", "parse_repair", "recovery_points", "rerun_set",
]

#: Key of the markdown artifact that reports every recovery round.
ARTIFACT_KEY = "llmorch-recovery"


@dataclass
class RecoveryConfig:
    """How trace-back recovery runs.

    Args:
        llm: the LLM that repairs calls.
        max_rounds: at most this many recovery rounds (K); then the run ends Failed.
        round_timeout: seconds to wait for the calls of one round to end (never hang).
        temperature: sampling temperature of repair requests (None: the client's default).
        max_value_chars: longest text of one argument value shown to the LLM.
        running: what happens, when a call fails, to running calls that recovery will re-run
            anyway (the recovery points' descendants): `"wait"` lets them end (their results
            are then dropped), `"cancel"` ends them at once (Cancelled; a compute call's
            worker process is killed and replaced, an inout call's thread is abandoned).
            Running calls whose results recovery keeps always run to their end.
    """

    llm: LLMClient
    max_rounds: int = 3
    round_timeout: float = 600.0
    temperature: float | None = None
    max_value_chars: int = 300
    running: str = "wait"
    #: where repair requests' tokens are summed (an ask's budget counts them); None: nowhere
    tokens: Any = None

    def __post_init__(self) -> None:
        if self.max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {self.max_rounds}")
        if self.running not in RUNNING:
            raise ValueError(f"running must be one of {', '.join(map(repr, RUNNING))}, got {self.running!r}")

    @classmethod
    def of(cls, llm: LLMClient, options: "Options", tokens: Any = None) -> "RecoveryConfig | None":
        """The recovery a run's options ask for (`recovery_rounds`, `cancel_running`); None: off."""
        if options.recovery_rounds <= 0:
            return None
        return cls(llm, max_rounds=options.recovery_rounds, running=options.running, tokens=tokens)


#: What recovery does with running calls it will re-run: let them end, or cancel them.
RUNNING = ("wait", "cancel")


@dataclass
class RecoveryRound:
    """One trace-back round: what failed, where it traced back to, what was repaired and re-run."""

    number: int
    failed: list[Failure]
    recovery_points: list[str]
    repairs: list[Repair] = field(default_factory=list)
    rerun: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    #: calls that ended Cancelled because this round re-runs them: not started yet, or
    #: stopped while running (`running="cancel"`)
    cancelled: list[str] = field(default_factory=list)
    outcome: str = ""  # recovered | failed again | repair rejected | llm error | timed out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for r, rep in zip(out["repairs"], self.repairs):
            r["accepted"] = rep.accepted
            r["changed"] = rep.changed
        return out


# --------------------------------------------------------------------------- the controller


class RecoveryController:
    """Runs trace-back recovery for one `execute`: installs the hooks, then runs rounds.

    Args:
        config: the recovery settings and the LLM.
        toolbox: the plan's functions.
        compiler: the compiler submitting the plan's task runs; the controller adds its
            `on_failure` hook and its gate to it (before the first submission).
        runner: the `LLMOrchTaskRunner`, if the flow uses one (told about new submissions
            and the repaired FRG).
        plan: the plan being run (already checked); None while it is still streaming:
            failures are then held until `release(plan, frg)`.
    """

    def __init__(
        self,
        config: RecoveryConfig,
        toolbox: Toolbox,
        compiler: "Compiler",
        runner: "LLMOrchTaskRunner | None" = None,
        plan: Plan | None = None,
    ) -> None:
        self.config = config
        self.plan = plan if plan is not None else Plan(())
        self.toolbox = toolbox
        self.compiler = compiler
        self.runner = runner
        self.recorder = compiler.recorder
        self.frg: FRG = compiler.frg
        self._held: list[tuple[Any, Any, Any]] | None = [] if plan is None else None
        self.rounds: list[RecoveryRound] = []
        self.outcome = "no failure"
        self.unresolved: list[Failure] = []  # failures left when recovery gave up
        self.attempt = 0
        self._calls = {c.id: c for c in self.plan.calls}
        self._lock = threading.Lock()
        self._queue: "queue.Queue[Failure]" = queue.Queue()
        self._failed_now: list[str] = []
        self._own: set[str] = set()  # failed on a field their input lacks: repair them, not it
        self._doomed: frozenset[str] = frozenset()
        compiler.on_failure.append(own_hook(self._on_failure, "recovery"))
        compiler.gates.append(self._gate)

    def hold(self) -> None:
        """A continuation of the plan starts streaming (the join step): hold failures again
        until `release` gives the final plan."""
        with self._lock:
            if self._held is None:
                self._held = []

    def release(self, plan: Plan, frg: FRG) -> None:
        """The plan is final: act on the failures held while it streamed, except those of
        draft calls the planner replaced (the compiler's `stale` calls)."""
        with self._lock:
            held, self._held = self._held or [], None
            self.plan, self.frg = plan, frg
            self._calls = {c.id: c for c in plan.calls}
        for args in held:
            self._on_failure(*args)

    # -- hooks (task threads) ---------------------------------------------------------
    def _on_failure(self, task: Any, task_run: Any, state: Any) -> None:
        """Prefect `on_failure` hook: runs once a call has finally failed (after retries)."""
        with self._lock:
            if self._held is not None:
                self._held.append((task, task_run, state))
                return
        identity = getattr(task, CALL_ATTR, None)
        if identity is None:
            return
        if id(identity.call) in self.compiler.stale:
            return  # a call of a draft plan, replaced by the planner: not the plan's failure
        cid = identity.call_id
        if cid not in self._calls:
            return
        call = self._calls[cid]
        rec = self.recorder.records.get(cid)
        error = rec.error if rec is not None and rec.error else None
        if error is None:
            try:
                exc = state.result(raise_on_failure=False)
            except Exception as e:  # noqa: BLE001 - any reason the result cannot be read
                exc = e
            error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else (state.message or "failed")
        inputs = {d: self.recorder.results.get(d) for d in call.deps}
        try:
            args, kwargs = resolve(call, inputs)
            limit = self.config.max_value_chars
            parts = [short(a, limit) for a in args] + [f"{k}={short(v, limit)}" for k, v in kwargs.items()]
            arguments = f"{call.function}({', '.join(parts)})"
        except Exception as exc:  # noqa: BLE001
            arguments = f"(arguments could not be evaluated: {type(exc).__name__}: {exc})"
        spec = self.toolbox.get(call.function)
        failure = Failure(
            call_id=cid, attempt=self.attempt, call=call_text(call), function=call.function,
            kind=spec.kind if spec else "?", arguments=arguments, error=error,
        )
        with self._lock:
            self._failed_now.append(cid)
            if _own_fault(error):
                self._own.add(cid)
            if len(self.rounds) < self.config.max_rounds:
                points = recovery_points(self.frg.deps, self.frg.rank, self._failed_now, self._own)
                self._doomed = frozenset(rerun_set(self.frg.succs, points))
            doomed, attempt = self._doomed, self.attempt
        if self.config.running == "cancel":
            # Calls whose results recovery drops anyway: end them now, not later (a no-op
            # for calls that already ended: the compiler keeps no token for them).
            for other in self.frg.ordered(doomed - {cid}):
                self.compiler.cancel(other, attempt, f"trace-back recovery will re-run it ({cid} failed)")
        self._queue.put(failure)

    def _gate(self, call: Call) -> Any:
        """Compiler gate: a call about to start that recovery will re-run ends Cancelled."""
        with self._lock:
            doomed = call.id in self._doomed
        if not doomed:
            return None
        from prefect.states import Cancelled

        message = "not started: trace-back recovery will re-run it"
        self.recorder.update(call.id, state="Cancelled", error=message)
        return Cancelled(message=message)

    # -- rounds (flow thread) ---------------------------------------------------------
    def run(self, futures: dict[str, "PrefectFuture[Any]"]) -> FRG:
        """Wait for the submitted calls; while calls failed, run recovery rounds.

        Returns the FRG of the plan as finally run (repairs may change its edges).
        """
        failures = self._collect(futures)
        if failures is None:
            return self.frg
        while failures:
            if len(self.rounds) >= self.config.max_rounds:
                self.outcome = f"gave up after {len(self.rounds)} round(s)"
                self.unresolved = failures
                break
            rnd = RecoveryRound(
                number=len(self.rounds) + 1,
                failed=failures,
                recovery_points=recovery_points(
                    self.frg.deps, self.frg.rank, [f.call_id for f in failures],
                    [f.call_id for f in failures if _own_fault(f.error)],
                ),
            )
            self.rounds.append(rnd)
            repaired = self._repair_all(rnd, failures)
            if repaired is None:
                continue  # the round's repair failed: the same failures, next round
            self._resubmit(rnd, repaired, futures)
            failures = self._collect(futures)
            if failures is None:
                rnd.outcome = "timed out"
                self.outcome = "timed out"
                break
            rnd.outcome = "failed again" if failures else "recovered"
        else:
            if self.rounds:
                self.outcome = f"recovered in {len(self.rounds)} round(s)"
        return self.frg

    def _collect(self, futures: Mapping[str, "PrefectFuture[Any]"]) -> list[Failure] | None:
        """Wait for every submitted call to end; the failures of this attempt (None: timeout)."""
        if not wait_all(futures.values(), self.config.round_timeout):
            self.outcome = "timed out"
            return None
        failures: dict[str, Failure] = {}
        while True:
            try:
                f = self._queue.get_nowait()
            except queue.Empty:
                break
            failures[f.call_id] = f
        # A call that failed without its hook (the engine itself failed) still counts.
        for cid, fut in futures.items():
            st = final_state(fut)
            if st.is_failed() and cid not in failures:
                rec = self.recorder.records.get(cid)
                call = self._calls[cid]
                failures[cid] = Failure(
                    cid, self.attempt, call_text(call), call.function, self.toolbox[call.function].kind,
                    "(unknown)", (rec.error if rec and rec.error else None) or st.message or "failed",
                )
        return [failures[c] for c in self.frg.ordered(failures)]

    def _repair_all(self, rnd: RecoveryRound, failures: list[Failure]) -> dict[str, Call] | None:
        """Ask the LLM to repair each recovery point in turn; None if any repair failed."""
        repaired: dict[str, Call] = {}
        for point in rnd.recovery_points:
            related = [f for f in failures if f.call_id == point or point in self.frg.deps[f.call_id]]
            repair = Repair(call_id=point, before=call_text(self._calls[point]))
            rnd.repairs.append(repair)
            try:
                call = self._ask(point, related, repaired, repair)
            except LLMError as exc:
                repair.rejections.append(f"LLM error: {exc}")
                rnd.outcome = "llm error"
                return None
            finally:
                if self.config.tokens is not None:
                    self.config.tokens.add(repair.prompt_tokens, repair.completion_tokens)
            if call is None:
                rnd.outcome = "repair rejected"
                return None
            repaired[point] = call
            repair.after = call_text(call)
        return repaired

    def _ask(self, point: str, failures: list[Failure], repaired: Mapping[str, Call], repair: Repair) -> Call | None:
        calls = [repaired.get(c.id, c) for c in self.plan.calls]
        earlier = [c.id for c in calls[: [c.id for c in calls].index(point)]]
        original = self._calls[point]
        result = None
        if point in self.recorder.results and point not in {f.call_id for f in failures}:
            result = short(self.recorder.results[point], self.config.max_value_chars)
        prompt = repair_prompt(
            original, failures, Plan(tuple(calls), self.plan.dialect), self.toolbox, earlier=earlier, result=result
        )
        return repair_call(
            self.config.llm, prompt, original, earlier, self.toolbox, repair,
            dialect=self.plan.dialect, temperature=self.config.temperature,
        )

    def _resubmit(self, rnd: RecoveryRound, repaired: Mapping[str, Call], futures: dict[str, "PrefectFuture[Any]"]) -> None:
        calls = tuple(repaired.get(c.id, c) for c in self.plan.calls)
        plan = Plan(calls, self.plan.dialect, self.plan.answer)
        frg = FRG.build(plan, self.toolbox)
        not_done = [cid for cid, fut in futures.items() if not final_state(fut).is_completed()]
        rerun = rerun_set(frg.succs, list(rnd.recovery_points) + not_done)
        rnd.rerun = frg.ordered(rerun)
        rnd.reused = [cid for cid in frg.ids if cid not in rerun]
        rnd.cancelled = [
            cid for cid in rnd.rerun
            if (rec := self.recorder.records.get(cid)) is not None and rec.state == "Cancelled"
        ]
        with self._lock:
            self.plan, self.frg = plan, frg
            self._calls = {c.id: c for c in calls}
            self._failed_now = []
            self._own = set()
            self._doomed = frozenset()
            self.attempt = rnd.number
        self.compiler.frg = frg
        for cid in rerun:
            self.recorder.results.pop(cid, None)
        if self.runner is not None:
            self.runner.use_graph(self.compiler.runner_graph(frg))  # with approval nodes, if any
            self.runner.expect_more()
        self.compiler.submit([c for c in calls if c.id in rerun], futures, attempt=rnd.number)
        if self.runner is not None:
            self.runner.no_more_submissions()

    # -- the report ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "rounds": [r.to_dict() for r in self.rounds],
            "unresolved": [asdict(f) for f in self.unresolved],
            "plan": plan_text(self.plan, "paper"),
        }

    def to_markdown(self) -> str:
        out = [f"## Trace-back recovery: {self.outcome}", ""]
        if not self.rounds:
            out.append("No call failed." if self.outcome == "no failure" else "No round ran.")
        for r in self.rounds:
            out += [f"### Round {r.number}: {r.outcome or 'not run'}", "", "**Failed:**", ""]
            out += [f"- `{f.call}` called as `{f.arguments}`: {f.error}" for f in r.failed]
            out += ["", f"**Recovery points:** {', '.join(f'`{p}`' for p in r.recovery_points)}", ""]
            for rep in r.repairs:
                if rep.accepted:
                    how = f"`{rep.before}` → `{rep.after}`" if rep.changed else f"`{rep.before}` kept unchanged"
                    out.append(f"- repaired {how}")
                else:
                    out.append(f"- `{rep.before}`: no usable repair")
                out += [f"  - rejected: {why}" for why in rep.rejections]
            if r.rerun:
                out += ["", f"**Re-ran (repair {r.number}):** {', '.join(r.rerun)}",
                        f"**Reused:** {', '.join(r.reused) or 'none'}"]
                if r.cancelled:
                    out.append(f"**Cancelled to re-run:** {', '.join(r.cancelled)}")
            out.append("")
        if self.unresolved:
            out += [f"### Still failing after {len(self.rounds)} round(s)", ""]
            out += [f"- `{f.call}` called as `{f.arguments}`: {f.error}" for f in self.unresolved]
            out.append("")
        return "\n".join(out)

    def annotate(self, report: "RunReport") -> tuple[str, str] | None:
        """Put the rounds into the report (`report.recovery`); return the artifact's markdown
        and description (the caller publishes it), or None when there was nothing to recover."""
        if self.outcome == "no failure" and not self.rounds:
            return None
        report.recovery = self.to_dict()
        if report.failed:
            report.message = (
                f"trace-back recovery {self.outcome}; still failing: {', '.join(report.failed)}\n\n" + self.to_markdown()
            )
        return self.to_markdown(), f"trace-back recovery: {self.outcome}"


def _own_fault(error: str | None) -> bool:
    """A failure in the call's own arguments: it selected a field or index its input lacks
    (`AccessError`, as the compiler records it), so the call itself is repaired."""
    return bool(error) and error.startswith("AccessError: ")
