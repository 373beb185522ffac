"""Compile an FRG into Prefect task runs: one task run per call.

Each call becomes a Prefect task `s3 · python` whose parameters are the call's text and the
futures of the calls it uses (Prefect resolves them and draws the FRG's edges); it carries its
`CallIdentity` at `CALL_ATTR` for the runner, and no Prefect tags (an untagged task run makes
no tag-slot write on the call's critical path). The contract: CONTRIBUTING.md, "compiler.py".
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import copy
import functools
import inspect
import logging
import queue
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from prefect import Task
from prefect.futures import PrefectFuture

from prefect_llmorch.functions import CREDENTIALS_PARAM, SELF, FunctionSpec, Toolbox
from prefect_llmorch.graph import FRG
from prefect_llmorch.plan.evaluate import resolve
from prefect_llmorch.plan.model import Call, Plan
from prefect_llmorch.engine import approval
from prefect_llmorch.engine.caching import NotCacheable, cache_probe, task_cache_options
from prefect_llmorch.engine.rates import pace
from prefect_llmorch.schedule.resources import Rate
from prefect_llmorch.procs.pool import CallCancelled, CallTimeout, Cancel, ProcessorPool, WorkerDied
from prefect_llmorch.procs.workers import RemoteTraceback, ToolExit

#: Attribute a compiled task carries: its `CallIdentity`.
CALL_ATTR = "llmorch_identity"

#: Set by the runner for the task run in this context: called once the call's body has
#: succeeded (its function returned and nothing after it can run it again), so its
#: processor and slots go back, and its dependents may start, while Prefect's engine is
#: still finishing the run (its state, its hooks). Unset: nothing to tell.
BODY_DONE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("llmorch_body_done", default=None)


def body_done() -> None:
    """Tell the runner (if any) that this context's call has finished its body."""
    release = BODY_DONE.get()
    if release is not None:
        release()


@dataclass(frozen=True)
class CallIdentity:
    """Which call of the plan a compiled task runs, attached once (at `CALL_ATTR`)."""

    call_id: str
    kind: str  # "inout" or "compute"
    rank: int
    attempt: int = 0  # 0: the plan's own; N: the Nth repair
    call: Call | None = field(default=None, compare=False, repr=False)  # the Call object (stale checks)
    cancel: Cancel | None = field(default=None, compare=False, repr=False)  # this attempt's token
    #: a `cache=True` compute call's `cache_probe(task)`: the runner looks before it takes a slot
    probe: Callable[..., Any] | None = field(default=None, compare=False, repr=False)


#: Name prefix of the Prefect hooks we attach to compiled tasks (`own_hook`): Prefect's task
#: engine logs two INFO lines around every hook it runs, which for ours is bookkeeping noise;
#: `QuietOwnHooks` drops exactly those lines.
HOOK_PREFIX = "llmorch_"

#: Prefect's task engine logs hooks on this logger (`prefect.logging.loggers.task_run_logger`).
TASK_RUN_LOGGER = "prefect.task_runs"


class QuietOwnHooks(logging.Filter):
    """Drops Prefect's `Running hook 'llmorch_...' in response to entering state ...` and
    `Hook 'llmorch_...' finished running successfully` INFO lines (our hooks only: a user's
    hooks, and an error raised by any hook, are still logged). Installed on Prefect's
    `prefect.task_runs` logger when this module is imported (in the flow's process, and in a
    Dask worker, which imports it to unpickle a compiled task)."""

    _OURS = re.compile(r"^(Running hook|Hook) '" + re.escape(HOOK_PREFIX))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not isinstance(record.msg, str):
            return True
        return not self._OURS.match(record.msg)


def quiet_own_hooks() -> None:
    """Install `QuietOwnHooks` on Prefect's task-run logger, once per process."""
    logger = logging.getLogger(TASK_RUN_LOGGER)
    if not any(isinstance(f, QuietOwnHooks) for f in logger.filters):
        logger.addFilter(QuietOwnHooks())


quiet_own_hooks()


def own_hook(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`fn` as a Prefect hook named `llmorch_<name>` (Prefect logs hooks by `__name__`: the
    name says what the hook is for, and `QuietOwnHooks` recognises it)."""

    def hook(task: Any, task_run: Any, state: Any) -> Any:
        return fn(task, task_run, state)

    hook.__name__ = hook.__qualname__ = HOOK_PREFIX + name
    return hook


@dataclass
class CallRecord:
    """What happened to one call (one row of the schedule table)."""

    id: str
    function: str
    kind: str
    rank: int
    state: str = "Pending"
    start: float | None = None  # seconds from the flow start, around the function body
    end: float | None = None
    pid: int | None = None
    processor: int | None = None  # worker index for compute calls; None for inout
    error: str | None = None
    attempt: int = 0
    cached: bool = False  # answered from Prefect's cache: the function did not run


@dataclass
class Recorder:
    """Thread-safe record of every call's timing and state, relative to `t0`."""

    t0: float = field(default_factory=time.time)
    records: dict[str, CallRecord] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    history: list[CallRecord] = field(default_factory=list)  # records replaced by a repair
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    listeners: list[Callable[[CallRecord], None]] = field(default_factory=list, repr=False)

    def add(self, record: CallRecord) -> None:
        with self._lock:
            old = self.records.get(record.id)
            if old is not None and old.state != "Pending":
                self.history.append(old)
            self.records[record.id] = record

    def update(self, call_id: str, **changes: Any) -> None:
        with self._lock:
            rec = self.records[call_id]
            for k, v in changes.items():
                setattr(rec, k, v)
        if "state" in changes:
            for listener in list(self.listeners):
                listener(rec)

    def rel(self, t: float) -> float:
        return round(t - self.t0, 6)


def final_state(future: PrefectFuture[Any]) -> Any:
    """The state a finished future ended in, as this process saw it.

    `PrefectFuture.state` reads the API unless the future already holds its final state, and
    `wait_all` does not set it; the API learns task states from events, so it can
    still say Running for a call that has finished here. `wait(0)` hands the future its own
    final state (a no-op for one that is not done).
    """
    future.wait(timeout=0)
    return future.state


def wait_all(futures: Iterable[PrefectFuture[Any]], timeout: float | None = None, slice_seconds: float = 0.2) -> bool:
    """Wait until every future is done (True) or `timeout` seconds have passed (False).

    Not `prefect.futures.wait(..., timeout=)`: it times out with an alarm signal (main thread)
    or an exception sent into the waiting thread (others), which can land inside
    `threading.Condition`'s own lock handling; the lock is then released by the wrong thread,
    and the thread that finishes the next call blocks on it forever (reproduced: a flow's
    calls hung; tests/test_wait.py). Here done callbacks only put into a `SimpleQueue` (never
    blocks), and the waiting thread wakes at least every `slice_seconds`: a Ctrl-C the kernel
    hands to another thread still reaches a main thread waiting here."""
    pending = list(futures)
    done: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for future in pending:
        future.add_done_callback(done.put)
    left = len(pending)
    deadline = None if timeout is None else time.monotonic() + timeout
    while left:
        seconds = slice_seconds if deadline is None else min(slice_seconds, deadline - time.monotonic())
        if seconds <= 0:
            return False
        try:
            done.get(timeout=seconds)
            left -= 1
        except queue.Empty:
            pass
    return True


def task_name(call: Call, attempt: int = 0) -> str:
    """`s3 · python`, or `s3 · python (repair 1)` for a call repaired by recovery."""
    base = f"{call.id} · {call.function}"
    return f"{base} (repair {attempt})" if attempt else base


def _run_with_timeout(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None, label: str, cancel: Cancel,
) -> Any:
    """Run an inout function in a helper thread, so that its timeout or `cancel` can end the call.

    A thread cannot be killed: past the timeout, or once cancelled, the call ends and its
    thread is left to finish on its own (documented limitation for inout functions).
    """
    if cancel.is_set():
        raise CallCancelled(f"{label} was cancelled before it started ({cancel.reason})", call=label)
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def target() -> None:
        try:
            done.set_result(fn(*args, **kwargs))
        except Exception as exc:
            done.set_exception(exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: the tool's, in its own thread
            error = ToolExit(label, exc)
            error.__cause__ = exc
            done.set_exception(error)

    # The helper thread runs in a copy of this context: the task run's context, settings
    # and client stay available to the function (e.g. get_run_logger()).
    ctx = contextvars.copy_context()
    t = threading.Thread(target=ctx.run, args=(target,), daemon=True, name=f"llmorch-{label}")
    t.start()
    cancel.wait(done, timeout)
    if not done.done():
        if cancel.is_set():
            raise CallCancelled(f"{label} was cancelled ({cancel.reason}); its thread is left to finish", call=label)
        raise CallTimeout(f"{label} ran past its timeout of {timeout:g} s", call=label)
    return done.result()


@dataclass
class Compiler:
    """Turns calls of an FRG into Prefect tasks and submits them.

    Args:
        frg: the Function-call Relation Graph of the plan.
        toolbox: the functions the plan calls.
        recorder: where call timings, states and results go.
        self_fn: the body of the built-in `self` (ask the LLM), if the plan uses it.
        secrets: loaded credentials by block name, passed to functions that declare them
            (never through task parameters).
        on_failure: extra Prefect `on_failure` hooks for every task (recovery uses them;
            name them with `own_hook` so Prefect's log lines about them are dropped).
        gates: called with each call just before its function would run; a gate that
            returns a Prefect `State` ends the task run in that state instead (trace-back
            recovery cancels calls it is going to re-run anyway).
        pool: where compute calls run (`ProcessorPool`: the runner's worker processes, or
            Dask's processors); None runs them in the task's thread.
    """

    frg: FRG
    toolbox: Toolbox
    recorder: Recorder
    self_fn: Callable[[str], Any] | None = None
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    on_failure: list[Callable[..., Any]] = field(default_factory=list)
    gates: list[Callable[[Call], Any]] = field(default_factory=list)
    #: `id()`s of Call objects dropped from the plan (calls started from a draft plan that the
    #: planner then repaired): not started if not started yet, results and records ignored.
    stale: set[int] = field(default_factory=set)
    pool: ProcessorPool | None = None
    #: Reuse and store results of `cache=True` functions (`--no-cache` turns it off for a run).
    cache: bool = True
    #: Rates of resource classes (`engine/rates.py`): a call demanding one waits for Prefect's
    #: rate limit right before its function runs.
    rates: Mapping[str, Rate] = field(default_factory=dict)
    #: Seconds an `approve=True` call waits for a person (None: `approval.approval_timeout()`).
    approval_timeout: float | None = None
    _cancels: dict[tuple[str, int], Cancel] = field(default_factory=dict, repr=False)
    #: Each call's text, rendered once (re-submissions for recovery reuse it), keyed by the
    #: Call object's id; the Call is kept with it so the id cannot be reused.
    _texts: dict[int, tuple[Call, str]] = field(default_factory=dict, repr=False)
    #: One `Task` per function, copied per call (`_copy_of_template`), with its spec.
    _templates: dict[str, tuple[FunctionSpec, Task[..., Any]]] = field(default_factory=dict, repr=False)

    def call_text(self, call: Call) -> str:
        """The call as written (`_call_text`), rendered once per Call object."""
        known = self._texts.get(id(call))
        if known is None or known[0] is not call:
            known = self._texts[id(call)] = (call, _call_text(call))
        return known[1]

    def cancel(self, call_id: str, attempt: int, reason: str) -> None:
        """End attempt `attempt` of a call now: not started, it will not start; running,
        its worker process is killed (compute on the local runner), its Dask task cancelled
        (compute on Dask: a thread already running there runs on, holding its processor),
        or its thread abandoned (inout, and compute without a pool). Its task run ends Cancelled with `reason`. No-op once it ended."""
        token = self._cancels.get((call_id, attempt))
        if token is not None:
            token.set(reason)

    def task_for(self, call: Call, attempt: int = 0) -> Task[..., Any]:
        spec = self.toolbox[call.function]
        kind = spec.kind
        rank = self.frg.rank[call.id]
        recorder = self.recorder

        token = self._cancels[(call.id, attempt)] = Cancel()
        cache_options = task_cache_options(spec, call, enabled=self.cache)
        caching = cache_options.get("persist_result", False)

        def body(call_text: str, inputs: dict[str, Any]) -> Any:
            from prefect.states import Cancelled

            try:
                if id(call) in self.stale:
                    return Cancelled(message="not started: the planner replaced this call of a draft plan")
                for gate in self.gates:
                    verdict = gate(call)
                    if verdict is not None:
                        return verdict
                inputs = dict(inputs)
                approved = approval.Verdict.of(inputs.pop(APPROVAL_INPUT, None))
                value = self._execute(call, spec, inputs, token, approved)
                if caching:
                    self._check_storable(call, value)
                else:  # final: nothing after the body can run it again (a result write could)
                    body_done()
                return value
            except CallCancelled as exc:
                return Cancelled(message=str(exc))
            finally:
                self._cancels.pop((call.id, attempt), None)  # ended: nothing left to cancel

        if caching:  # its cache policy and hook are the call's own: a Task of its own
            options = self._task_options(spec, call, attempt, cache_options)
            options["on_completion"] = [self._on_cached(call)]  # only a cached call can end Cached
            task = Task(fn=_Body(body, f"llmorch_{spec.name}"), **options)
        else:
            task = self._copy_of_template(spec, _Body(body, f"llmorch_{spec.name}"), task_name(call, attempt))
        probe = cache_probe(task) if caching and kind == "compute" else None
        setattr(task, CALL_ATTR, CallIdentity(call.id, kind, rank, attempt, call, token, probe))
        recorder.add(CallRecord(id=call.id, function=call.function, kind=kind, rank=rank, attempt=attempt))
        return task

    def _task_options(self, spec: FunctionSpec, call: Call, attempt: int, cache_options: Mapping[str, Any]) -> dict[str, Any]:
        """`Task(...)`'s keyword arguments for a call of `spec` (`fn` aside)."""
        return dict(
            name=task_name(call, attempt),
            task_run_name=task_name(call, attempt),
            retries=spec.retries,
            retry_delay_seconds=spec.retry_delay,
            log_prints=False,
            on_failure=list(self.on_failure),
            # a person's "no" (or no answer) is final: never retried as a transient error
            retry_condition_fn=_not_refused if spec.approve and spec.retries else None,
            on_completion=[],  # no hook (and no hook log lines) unless the call is cached
            **cache_options,
        )

    def _copy_of_template(self, spec: FunctionSpec, fn: "_Body", name: str) -> Task[..., Any]:
        """A compiled call's Prefect task, as `Task(fn=fn, name=name, task_run_name=name, ...)`
        would build it, without building it: a shallow copy of one `Task` built per function
        with the same options, given the call's `fn`, name and fresh lists and sets.
        `Task.__init__` per call was a large share of the flow process's CPU per call:
        `_generate_task_key` hashes the function's code object (the same for every compiled
        call: a JSON attempt that fails, then cloudpickle) and `inspect.signature` of `fn`
        (see CONTRIBUTING.md, "Prefect private names"; tests/test_prefect_privates.py checks
        the copy against a `Task` built whole)."""
        known = self._templates.get(spec.name)
        if known is None or known[0] is not spec:
            template_call = Call(id="template", function=spec.name, args=())
            options = self._task_options(spec, template_call, 0, task_cache_options(spec, template_call, enabled=False))
            known = self._templates[spec.name] = (spec, Task(fn=_Body(_template_body, fn.__name__), **options))
        task = copy.copy(known[1])
        functools.update_wrapper(task, fn)  # what `Task.__init__` does with its `fn`
        task.fn = fn
        task.name = task.task_run_name = name
        task.tags = set(task.tags)
        task.on_failure_hooks = list(self.on_failure)  # recovery adds its hook before submitting
        task.on_completion_hooks, task.on_running_hooks = [], list(task.on_running_hooks)
        task.on_commit_hooks, task.on_rollback_hooks = list(task.on_commit_hooks), list(task.on_rollback_hooks)
        return task

    def _check_storable(self, call: Call, value: Any) -> None:
        """A `cache=True` call's result must be storable: Prefect would only warn and not
        cache it; here the call fails and says why."""
        import cloudpickle

        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            message = (
                f"{task_name(call)}: the result ({type(value).__name__}) cannot be stored for cache=True "
                f"({type(exc).__name__}: {exc}); return picklable data or declare {call.function} without cache=True"
            )
            records = _RecordsOf(self, call)
            self.recorder.results.pop(call.id, None)
            records.update(call.id, state="Failed", error=f"NotCacheable: {message}")
            raise NotCacheable(message) from None

    def _on_cached(self, call: Call) -> Callable[..., None]:
        """An `on_completion` hook: a call Prefect answered from its cache (the body never
        ran) is recorded as Completed and cached, with its stored result."""

        def record_cached(task: Any, task_run: Any, state: Any) -> None:
            if state.name != "Cached":
                return
            records = _RecordsOf(self, call)  # ignores stale calls
            now = self.recorder.rel(time.time())
            records.set_result(call.id, state.result(raise_on_failure=False))
            records.update(call.id, state="Completed", start=now, end=now, cached=True)

        return own_hook(record_cached, "record_cached")

    def _execute(
        self, call: Call, spec: FunctionSpec, inputs: Mapping[str, Any], cancel: Cancel,
        approved: approval.Verdict | None = None,
    ) -> Any:
        recorder = _RecordsOf(self, call)
        label = task_name(call)
        recorder.update(call.id, state="Running")
        start = end = None
        pid = processor = None
        try:
            if approved is not None:
                _check_verdict(label, approved)
            args, kwargs = resolve(call, inputs)
            validated = spec.validate(args, kwargs)
            call_args, call_kwargs = spec.call_args(validated)
            if spec.credentials:
                if spec.credentials not in self.secrets:
                    raise LookupError(f"{label}: credentials block {spec.credentials!r} was not loaded")
                call_kwargs[CREDENTIALS_PARAM] = dict(self.secrets[spec.credentials])
            fn = spec.fn
            if spec.name == SELF and fn is None:
                if self.self_fn is None:
                    raise RuntimeError(f"{label}: `self` needs an LLM endpoint (set OPENAI_BASE_URL or pass an LLMEndpoint block)")
                fn = self.self_fn
            if self.rates and spec.resources:
                # A rated resource: the machine-wide pace, inside the call's error handling (a
                # refusal fails the call saying so) and ended by its cancel; valid arguments
                # only, and before a worker process is taken.
                pace(spec.resources, self.rates, cancel)
            if spec.kind == "compute" and self.pool is not None:
                try:
                    outcome = self.pool.run(label, fn, call_args, call_kwargs, timeout=spec.timeout, cancel=cancel)  # type: ignore[arg-type]
                except BaseException as exc:
                    timing = getattr(exc, "llmorch_timing", None)
                    if timing:
                        start, end, pid = timing
                    processor = getattr(exc, "llmorch_worker", None)
                    raise
                start, end, pid, processor = outcome.start, outcome.end, outcome.pid, outcome.worker
                value = outcome.value
            else:
                import os

                pid = os.getpid()
                start = time.time()
                try:
                    value = _run_with_timeout(fn, call_args, call_kwargs, spec.timeout, label, cancel)  # type: ignore[arg-type]
                finally:
                    end = time.time()
        except BaseException as exc:
            # The run stopped it: a cancel, reported without a traceback. Else a secret anywhere
            # in the chain (causes, contexts, notes, a worker's traceback) replaces the whole
            # exception, so nothing that formats it (Prefect's logger, the state, the report)
            # ever sees the original.
            stopped = _cancelled_instead(exc, cancel, label)
            hidden = self._hide_secrets(exc) if stopped is None else None
            failure = exc if stopped is None else stopped
            recorder.update(
                call.id,
                state="Cancelled" if isinstance(failure, CallCancelled) else "Failed",
                error=f"{type(failure).__name__}: {failure}" if hidden is None else str(hidden),
                start=recorder.rel(start) if start else None,
                end=recorder.rel(end) if end else None,
                pid=pid,
                processor=processor,
            )
            if stopped is not None:
                raise stopped from None
            if hidden is None:
                raise
        else:
            hidden = None
        if hidden is not None:
            raise hidden from None  # outside the handler: no __context__ to the original either
        recorder.set_result(call.id, value)
        recorder.update(
            call.id, state="Completed", start=recorder.rel(start), end=recorder.rel(end), pid=pid, processor=processor
        )
        return value

    def _hide_secrets(self, exc: BaseException) -> "ToolError | None":
        """None when no loaded secret appears in `exc` as Python would print it (its whole
        chain, notes and tracebacks, a worker's included); else a fresh `ToolError` whose
        message summarises the chain with every secret replaced by `***`."""
        if not any(self._secret_values()):
            return None
        try:
            text = "".join(traceback.format_exception(exc))
        except Exception:  # an exception that cannot even be printed: assume the worst
            text = None
        if text is not None and self._scrub(text) == text:
            return None
        return ToolError(self._scrub(_chain_summary(exc)))

    def _secret_values(self) -> list[str]:
        return [v for values in self.secrets.values() for v in values.values() if isinstance(v, str) and len(v) >= 4]

    def _scrub(self, text: str) -> str:
        """`text` with every loaded credential value replaced by `***`."""
        for value in self._secret_values():
            text = text.replace(value, "***")
        return text

    # -- approval (`approve=True`) ----------------------------------------------------------
    def runner_graph(self, frg: FRG) -> FRG:
        """The graph the runner coordinates: `frg`, with a node `s3~approval` (inout, cost 0,
        the call's deps) before each call that needs a person's approval, so that a waiting
        call holds nothing (docs/approval.md, "Holding nothing while waiting")."""
        asking = [cid for cid in frg.ids if self._approves(frg.function[cid])]
        if not asking:
            return frg
        ids: list[str] = []
        deps: dict[str, frozenset[str]] = {}
        kinds: dict[str, str] = {}
        costs: dict[str, float] = {}
        functions: dict[str, str] = {}
        for cid in frg.ids:
            if cid in asking:
                node = approval_node(cid)
                ids.append(node)
                deps[node], kinds[node], costs[node], functions[node] = frg.deps[cid], "inout", 0.0, "approval"
            ids.append(cid)
            deps[cid] = frg.deps[cid] | ({approval_node(cid)} if cid in asking else frozenset())
            kinds[cid], costs[cid], functions[cid] = frg.kind[cid], frg.cost[cid], frg.function[cid]
        resources = {cid: dict(frg.demand[cid]) for cid in frg.ids if frg.demand[cid]}
        return FRG.from_edges(ids, deps, kinds=kinds, costs=costs, functions=functions, resources=resources)

    def _approves(self, function: str) -> bool:
        spec = self.toolbox.get(function)
        return bool(spec is not None and spec.approve)

    def _approval_task(self, call: Call, attempt: int, token: Cancel) -> Task[..., Any]:
        """The task run that asks a person about `call` (`approve s3 · f`): it resolves the
        call's arguments from the same inputs and waits for the answer
        (`approval.request_approval`), holding nothing. It never fails: it returns the
        `Verdict`, and the call's own task run fails on a rejection or a timeout, so the
        call's failure is the call's (its report row, trace-back recovery). It shares the
        call's cancel token: a cancel of the call ends the wait."""
        spec = self.toolbox[call.function]
        timeout = self.approval_timeout if self.approval_timeout is not None else approval.approval_timeout()

        def ask(call_text: str, inputs: dict[str, Any]) -> dict[str, Any]:
            if token.is_set():
                return approval.Verdict("cancelled", note=token.reason).to_dict()
            if id(call) in self.stale:
                return approval.Verdict("skipped", note="the call will not run").to_dict()
            for gate in self.gates:  # the call's gate would end it anyway: do not ask for nothing
                if gate(call) is not None:
                    return approval.Verdict("skipped", note="the call will not run").to_dict()
            try:
                args, kwargs = resolve(call, inputs)
                validated = spec.validate(args, kwargs)
            except Exception as exc:  # the call itself fails with this, without asking anybody
                return approval.Verdict("skipped", note=f"its arguments are invalid: {type(exc).__name__}").to_dict()
            _RecordsOf(self, call).update(call.id, state="AwaitingApproval")
            try:
                verdict = approval.request_approval(
                    call.id, call.function, approval.shown(validated, self._scrub), timeout=timeout, cancel=token,
                )
            except Exception as exc:  # the API refused the pause, ...: the call fails saying so
                verdict = approval.Verdict("unavailable", note=self._scrub(f"{type(exc).__name__}: {exc}"))
            records = _RecordsOf(self, call)
            if self.recorder.records[call.id].state == "AwaitingApproval":
                records.update(call.id, state="Pending")  # answered: the call's own task run takes it on
            return verdict.to_dict()

        name = f"approve {task_name(call, attempt)}"
        from prefect.cache_policies import NO_CACHE

        # never cached (a person answers each time), and no cache key computed from the inputs
        task = Task(fn=_Body(ask, "llmorch_approval"), name=name, task_run_name=name, log_prints=False,
                    cache_policy=NO_CACHE, persist_result=False)
        setattr(task, CALL_ATTR, CallIdentity(approval_node(call.id), "inout", self.frg.rank.get(call.id, 1), attempt, call, token))
        return task

    def submit(self, calls: Iterable[Call], futures: dict[str, PrefectFuture[Any]], attempt: int = 0) -> dict[str, PrefectFuture[Any]]:
        """Submit calls (in plan order) whose inputs are in `futures` or among `calls`.

        Results of calls outside `calls` are reused through their existing futures.
        Returns the new futures by call id (and adds them to `futures`).
        """
        new: dict[str, PrefectFuture[Any]] = {}
        for call in calls:
            task = self.task_for(call, attempt)
            inputs: dict[str, Any] = {dep: futures[dep] for dep in sorted(call.deps)}
            if self.toolbox[call.function].approve:  # its approval first: the call waits for it
                ask = self._approval_task(call, attempt, getattr(task, CALL_ATTR).cancel)
                inputs[APPROVAL_INPUT] = ask.submit(call_text=self.call_text(call), inputs=dict(inputs))
            fut = task.submit(call_text=self.call_text(call), inputs=inputs)
            futures[call.id] = fut
            new[call.id] = fut
        return new


#: How long a call whose tool ended in `KeyboardInterrupt` (or whose worker died) waits for its
#: run's cancel before that counts as the call's failure: a terminal's Ctrl-C reaches the worker
#: processes and the flow's process together, and a worker's reply can arrive before the flow's
#: signal handler has cancelled the run's calls (`host/interrupt.py` does that on a thread).
INTERRUPT_GRACE = 0.5


def _cancelled_instead(exc: BaseException, cancel: Cancel, label: str) -> CallCancelled | None:
    """The `CallCancelled` a call's failure stands for, when its run cancelled it: whatever it
    ended with once its cancel was set (a `KeyboardInterrupt` from the same Ctrl-C, a worker
    killed by it) is the cancel's doing, not the tool's failure. None: a failure as it is."""
    if isinstance(exc, CallCancelled):
        return None  # already one, with the pool's words
    interrupted = isinstance(exc, ToolExit) and exc.raised == "KeyboardInterrupt"
    if not cancel.is_set() and (interrupted or isinstance(exc, WorkerDied)):  # the same Ctrl-C, maybe
        cancel.wait(concurrent.futures.Future(), INTERRUPT_GRACE)
    if not cancel.is_set():
        return None
    return CallCancelled(f"{label} was cancelled ({cancel.reason})", call=label, pid=getattr(exc, "pid", None))


#: The input through which a call's task receives its approval's verdict.
APPROVAL_INPUT = "~approval"


def approval_node(call_id: str) -> str:
    """The runner's node (and identity) of a call's approval: `s3~approval`."""
    return f"{call_id}~approval"


def _check_verdict(label: str, verdict: approval.Verdict) -> None:
    """Raise the call's failure for a verdict that is not a go-ahead (inside `_execute`, so
    the record says it)."""
    if verdict.outcome in ("approved", "skipped"):
        return
    if verdict.outcome == "rejected":
        note = f": {verdict.note}" if verdict.note else ""
        by = " on the terminal" if verdict.by == "terminal" else " in the Prefect UI" if verdict.by == "ui" else ""
        raise approval.ApprovalRejected(f"{label} was rejected by the user{by}{note}; it did not run")
    if verdict.outcome == "timed out":
        raise approval.ApprovalTimeout(f"{label} was not approved in time ({verdict.note}); it did not run")
    if verdict.outcome == "unavailable":
        raise approval.ApprovalUnavailable(f"{label}: its approval could not be asked ({verdict.note}); it did not run")
    raise CallCancelled(f"{label} was cancelled while it waited for approval ({verdict.note})", call=label)


def _not_refused(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry, unless a person refused the call (or did not answer)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, (approval.ApprovalRejected, approval.ApprovalTimeout, approval.ApprovalUnavailable))


class _Body:
    """A compiled call's task function. A callable object, not the closure itself: Prefect
    captures a function's source text for every Task (`inspect.getsource`, the largest part of
    building a task, which CallCache never uses); for an object that look-up fails at once.
    Its signature is computed once (`__signature__`, set below): Prefect's engine asks for it
    several times per task run, and for a callable object `inspect.signature` builds it anew
    from the bound `__call__` each time."""

    def __init__(self, fn: Callable[[str, dict[str, Any]], Any], name: str) -> None:
        self._fn = fn
        self.__name__ = self.__qualname__ = name

    def __call__(self, call_text: str, inputs: dict[str, Any]) -> Any:
        return self._fn(call_text, inputs)


def _template_body(call_text: str, inputs: dict[str, Any]) -> Any:
    """The function of a template task (`Compiler._copy_of_template`), which never runs."""
    raise AssertionError("a template task ran")


_Body.__signature__ = inspect.signature(_Body(_template_body, "llmorch_body"))  # type: ignore[attr-defined]


class ToolError(RuntimeError):
    """A tool's failure whose message had to be scrubbed of a secret."""


def _chain_summary(exc: BaseException) -> str:
    """`Type: message [note] <- Cause: message ...`: every exception of the chain, one line,
    without tracebacks (a worker's `RemoteTraceback` contributes its exception lines)."""
    parts: list[str] = []
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, RemoteTraceback):
            parts.extend(_remote_causes(link.tb))
        else:
            try:
                text = f"{type(link).__name__}: {link}"
            except Exception:
                text = type(link).__name__
            notes = getattr(link, "__notes__", None)
            if isinstance(notes, list) and notes:
                text += " [" + "; ".join(str(n) for n in notes) + "]"
            parts.append(text)
        link = link.__cause__ if link.__cause__ is not None else (None if link.__suppress_context__ else link.__context__)
    return " <- ".join(parts)


def _remote_causes(tb: str) -> list[str]:
    """The causes in a worker's formatted traceback, latest first, one `Type: message [note]`
    each (frames left out). Python prints the root cause first and the exception itself, which
    the summary already has, last."""
    blocks: list[list[str]] = [[]]
    for line in tb.splitlines():
        if line.startswith(("The above exception was", "During handling of the above")):
            blocks.append([])
        elif line.strip() and not line.startswith((" ", "\t", "Traceback (most recent call last):")):
            blocks[-1].append(line)
    lines = [f"{b[0]} [{'; '.join(b[1:])}]" if len(b) > 1 else b[0] for b in blocks if b]
    return list(reversed(lines[:-1]))


class _RecordsOf:
    """The recorder as one call sees it: writes of a stale call are dropped."""

    def __init__(self, compiler: Compiler, call: Call) -> None:
        self._compiler = compiler
        self._call = call
        self.rel = compiler.recorder.rel

    def _live(self) -> bool:
        return id(self._call) not in self._compiler.stale

    def update(self, call_id: str, **changes: Any) -> None:
        if self._live():
            self._compiler.recorder.update(call_id, **changes)

    def set_result(self, call_id: str, value: Any) -> None:
        if self._live():
            self._compiler.recorder.results[call_id] = value


def _call_text(call: Call) -> str:
    """The call as written, for the UI's parameter view (the plan's own text)."""
    return Plan((call,), dialect="paper").to_text().strip()
