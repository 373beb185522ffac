"""`LLMOrchTaskRunner`: Prefect task runs on P processors, the LLMOrch way.

Before, every task on threads, compute calls fighting over the GIL and the cores:

    @flow(task_runner=ThreadPoolTaskRunner())
    def f(): ...

After, tasks tagged `compute` run in P pre-warmed worker processes, never more than P at
once; tasks tagged `inout` (or untagged) start at once on threads, without a processor:

    from prefect_llmorch import LLMOrchTaskRunner

    @flow(task_runner=LLMOrchTaskRunner(processors=2))
    def f(): ...

How it works (one graph, the Coordinator's `get_ready()`/`done()` protocol, the global
limits, what runs where, nested tasks): CONTRIBUTING.md, "runner.py"; docs/tasks.md for
what a task of yours may do.
"""

from __future__ import annotations

import concurrent.futures
import enum
import contextvars
import copy
import functools
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import psutil
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import TaskRunner

from prefect_llmorch.engine.call_context import call_with_tags
from prefect_llmorch.engine.compiler import BODY_DONE, CALL_ATTR
from prefect_llmorch.host.devices import discover_gpus
from prefect_llmorch.engine.guard import GlobalLimit
from prefect_llmorch.procs.pool import CALL_ENV, CallCancelled, CallNotSent, Cancel
from prefect_llmorch.procs.workers import keep_pool, take_pool
from prefect_llmorch.graph import FRG, GPU_MEM, PROCESSORS, demand_of
from prefect_llmorch.host import interrupt
from prefect_llmorch.schedule.policy import Coordinator, check_policy
from prefect_llmorch.schedule.resources import Capacities, global_limits, limit_name, slots

if TYPE_CHECKING:
    from prefect.tasks import Task

__all__ = [
    "LLMOrchTaskRunner", "NestedComputeSubmit", "GuardUnavailable", "CALL_ATTR", "default_processors",
]

logger = logging.getLogger("prefect_llmorch.engine.runner")

#: Prefect's error when `task.submit()` runs outside a flow run (here: in a worker process).
_PREFECT_NO_RUNNER = "Unable to determine task runner"


def not_started(runner: object, why: str = "") -> RuntimeError:
    """The error of `submit` on a runner that is not started, in Prefect's words: the
    ThreadPool/ProcessPool runners' "Task runner is not started" and the base `map`'s and
    DaskTaskRunner's "The task runner must be started before submitting work."."""
    name = type(runner).__name__
    return RuntimeError(
        f"Task runner is not started{f' ({why})' if why else ''}. The task runner must be started before "
        f"submitting work: use {name} as a flow's task runner (`@flow(task_runner={name}(...))`) or "
        "enter it (`with runner: runner.submit(...)`)."
    )


def default_processors() -> int:
    """The machine's core count (physical cores are not what the OS schedules on)."""
    return psutil.cpu_count(logical=True) or 1


class NestedComputeSubmit(RuntimeError):
    """A compute task tried to submit a compute task: it holds a processor while it waits."""


class CallState(enum.Enum):
    """Where a call is, from the runner's side. The only moves (`_move`):

    - ANNOUNCED: a call of a plan announced before its submission (`use_graph`); the
      Coordinator may pass it out already. -> PASSED when it does; -> PENDING when its
      submission arrives first; -> ABANDONED when no submission will come.
    - PASSED: passed out before its submission: it starts the moment it arrives (-> PENDING,
      then straight to RUNNING) or is done at once if none will come (-> DONE).
    - ABANDONED: announced, never submitted: done at once when the Coordinator passes it out.
    - PENDING: submitted, waiting for its inputs or for its slots (held).
    - RUNNING: the Coordinator passed it out and its slots are held (or it needs none); its
      engine runs it.
    - DONE: its task run reached a final state (or its future ended), or it never starts
      (cancelled, the flow run ended, an upstream future that ended before it was passed out).

    Orthogonal facts stay fields of `_Submission`: `cached`, `released` (its body succeeded:
    its processor and slots are back before Prefect's engine finishes).
    """

    ANNOUNCED = "announced"
    PASSED = "passed"
    ABANDONED = "abandoned"
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


#: Waiting states: not started, not done (what cancelling or an ending flow run finishes).
WAITING = frozenset({CallState.ANNOUNCED, CallState.PASSED, CallState.ABANDONED, CallState.PENDING})

_MOVES = {
    CallState.ANNOUNCED: {CallState.PASSED, CallState.PENDING, CallState.ABANDONED, CallState.DONE},
    CallState.PASSED: {CallState.PENDING, CallState.DONE},
    CallState.ABANDONED: {CallState.DONE},
    CallState.PENDING: {CallState.RUNNING, CallState.DONE},
    CallState.RUNNING: {CallState.DONE},
    CallState.DONE: set(),
}


def _move(sub: "_Submission", to: CallState) -> None:
    """The one transition function of a call's state (a move to where it already is is
    nothing); any other move is a bug in the runner and fails at once, naming the call."""
    if to is sub.state:
        return
    if to not in _MOVES[sub.state]:
        raise AssertionError(f"runner bug: {sub.node} cannot move from {sub.state.name} to {to.name}")
    sub.state = to


@dataclass(eq=False)
class _Submission:
    node: str  # its id in the Coordinator's graph
    # What the engine runs (a plain compute task's copy runs in the pool). The defaults, for
    # a node that is not a task run of ours (yet): an announced call not submitted yet
    # (`_announce`; `_arrive` fills them in) or an upstream future of somewhere else.
    task: "Task[Any, Any] | None" = None
    kind: str = "inout"
    call_id: str | None = None
    task_run_id: uuid.UUID | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    wait_for: list[PrefectFuture[Any]] = field(default_factory=list)
    dependencies: dict[str, Any] | None = None
    context: contextvars.Context = field(default_factory=contextvars.Context)
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    cancel: Cancel = field(default_factory=Cancel)
    deps: frozenset[str] = frozenset()
    cost: float = 1.0
    demand: Any = None  # what a compiled call holds (`FRG.demand`), None: its kind's default
    needs: dict[str, int] = field(default_factory=dict)  # slots it holds while it runs, by limit
    state: "CallState" = field(default_factory=lambda: CallState.PENDING)  # moved only by `_move`
    external: PrefectFuture[Any] | None = None  # an upstream future of somewhere else
    finished: bool = False  # external: its future is done
    probe: Any = None  # a cache=True compute call: is its result stored? (`caching.cache_probe`)
    device: Any = None  # where the Coordinator placed it (while its probe runs)
    cached: bool = False  # the probe found its result: it runs holding no slot
    released: bool = False  # its body succeeded: its processor and slots are back (`_release`)


class LLMOrchTaskRunner(TaskRunner[PrefectConcurrentFuture[Any]]):
    """Run `compute` task runs on P worker processes and `inout` ones on threads.

    Args:
        processors: P, the number of worker processes and the most compute calls that
            run at once. Defaults to the machine's core count.
        policy: which ready compute call starts first: `critical-path` (default:
            longest remaining path first) or `paper` (rank sets first-in first-out).
        concurrency_limit: name of the Prefect global concurrency limit that guards the
            machine across flow runs (created with limit P if absent); None disables it.
        pin: pin worker i to core i (psutil).
        preload: modules the workers import at start (e.g. your toolbox module).
        guard: `"global"` (default): hold the global limit's slots; when they cannot be had
            (the limit deleted, the API down past `guard.GUARD_PATIENCE_SECONDS`), compute
            calls fail with a message saying so, never run unguarded. `"local"`: no global
            limit, only this flow run's own bound of P (as `concurrency_limit=None`).

    Attributes:
        pool: the `ProcessorPool` (P worker processes) while started, else None.
        trace: the Coordinator protocol as driven, in order: `("start", ids)` for each
            non-empty `get_ready()`, `("done", ids)` for each `done()`.

    Note:
        The runner guarantees at most P compute task runs *in its flow run* by itself;
        the global limit adds the guarantee across flow runs (see `guard`).

    Examples:
        >>> from prefect import flow, task
        >>> @task(tags={"compute"})
        ... def square(x: int) -> int:
        ...     return x * x
        >>> @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
        ... def squares() -> list[int]:
        ...     return [f.result() for f in [square.submit(i) for i in range(4)]]
    """

    def __init__(
        self,
        processors: int | None = None,
        policy: str = "critical-path",
        concurrency_limit: str | None = "llmorch-processors",
        pin: bool = False,
        preload: Iterable[str] = (),
        guard: str = "global",
        resources: Any = None,
        gpus: Any = None,
    ) -> None:
        super().__init__()
        if processors is not None and processors < 1:
            raise ValueError(f"processors must be at least 1, got {processors}")
        if guard not in ("global", "local"):
            raise ValueError(f"guard must be 'global' or 'local', got {guard!r}")
        self.guard = guard
        self.processors = processors or default_processors()
        self.policy = policy  # validated by the property
        self.concurrency_limit = concurrency_limit
        self.pin = pin
        self.preload = tuple(preload)
        # Bad capacities fail here, before anything runs (Capacities.of checks them).
        self._use(Capacities.of(self.processors, resources, gpus))
        # Nobody declared devices: ask this machine's nvidia-smi when the runner starts.
        self._discover_gpus = gpus is None and not (isinstance(resources, Mapping) and GPU_MEM in resources)
        self._init_state()

    def _use(self, caps: Capacities) -> None:
        """Capacities and rates (`"10/s"`, `"4,10/s"`: paced at the call, engine/rates.py) as
        `resources`, the devices as `gpus` (their memory is theirs, not a `gpu_mem_gb` setting)."""
        self.resources = {r: a for r, a in caps.settings().items() if not (caps.devices and r == GPU_MEM)}
        self.gpus = [{"id": d.id, "mem_gb": d.mem_gb} for d in caps.devices]

    def _caps(self) -> Capacities:
        return Capacities.of(max(self.processors, 1), self.resources, self.gpus)

    def _init_state(self) -> None:
        self.pool: Any = None  # a ProcessorPool while started
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._stack: ExitStack | None = None
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._co: Coordinator | None = None
        self._subs: dict[str, _Submission] = {}  # node -> submission, in the current graph
        self._by_run: dict[uuid.UUID, str] = {}  # task run id -> node, in the current graph
        self._new: list[_Submission] = []  # submitted, not yet in the Coordinator's graph
        self._held: deque[_Submission] = deque()  # passed out, waiting for global-limit slots
        self._in_use: dict[str, int] = {}  # slots held by running calls, by limit (processors: their key)
        self._unfinished: dict[str, float] = {}  # demand of calls submitted or announced, not finished
        self._counted: dict[str, dict[str, float]] = {}  # node or announced call -> its demand in _unfinished
        self._frg: FRG | None = None
        self._expected: set[str] = set()  # calls of the announced FRG not submitted yet
        self._announced: dict[str, _Submission] = {}  # of those, the ones already in the graph
        self._arrived: list[_Submission] = []  # passed out before they were submitted, now submitted
        self._submitted_calls: set[str] = set()
        self._expecting_more = True
        self._running_compute = 0
        self.max_running_compute = 0  # observed, for tests and reports
        self.cached_without_slot = 0  # compute calls started without a slot: their result was stored
        self._closing = False
        self._rate_wake: tuple[float, threading.Timer] | None = None  # next dispatch for a rate
        self._cancelled = ""
        self.trace: list[tuple[str, tuple[str, ...]]] = []
        self._limit = GlobalLimit(None, lambda: self.processors, self._safe_dispatch)

    # -- settings ---------------------------------------------------------------------
    @property
    def policy(self) -> str:
        """The coordination policy; may be changed before calls are submitted (a
        deployment's runner is built at import, the run says which policy it wants)."""
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        check_policy(value)
        self._policy = value

    def _init_kwargs(self) -> dict[str, Any]:
        """The settings, as the constructor takes them (`duplicate`, pickling, `==`)."""
        return dict(
            processors=self.processors, policy=self.policy, concurrency_limit=self.concurrency_limit, pin=self.pin,
            preload=self.preload, guard=self.guard, resources=dict(self.resources), gpus=[dict(g) for g in self.gpus],
        )

    def _settings(self) -> tuple[Any, ...]:
        kw = self._init_kwargs()
        kw["resources"] = tuple(sorted(self.resources.items()))
        kw["gpus"] = tuple((g["id"], g["mem_gb"]) for g in self.gpus)
        return tuple(kw.values())

    def duplicate(self) -> "LLMOrchTaskRunner":
        return type(self)(**self._init_kwargs())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LLMOrchTaskRunner) and self._settings() == other._settings()

    def __hash__(self) -> int:
        return hash(self._settings())

    def __getstate__(self) -> dict[str, Any]:
        # Runners are cloudpickled when a flow run is sent to a subprocess: keep settings only.
        return self._init_kwargs()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- life cycle -------------------------------------------------------------------
    def __enter__(self) -> "LLMOrchTaskRunner":
        super().__enter__()
        self._init_state()  # a runner entered again after an exit starts clean
        try:
            self._open()
        except BaseException:
            self._started = False
            raise
        return self

    def _open(self) -> None:
        """Start the pool (`_open_pool`), the task-run threads and the global limit; what
        started is closed again if the rest fails. The Dask runner defers this on a worker."""
        stack = ExitStack()
        try:
            self._open_pool(stack)
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=512, thread_name_prefix="llmorch-task")
            # If the start fails past here (`__exit__` shuts it down itself, before the slots go back).
            stack.callback(self._shutdown_executor)
            name = self.concurrency_limit if self.guard == "global" else None
            self._limit = GlobalLimit(name, lambda: self.processors, self._safe_dispatch)
            self._limit.start(stack)
            self._limit.configure(self._resource_limits())
            self._adjust_slots()
        except BaseException:
            stack.close()
            self.pool = None
            raise
        self._stack = stack
        interrupt.register(self)

    def _open_pool(self, stack: ExitStack) -> None:
        """Set `pool` (and P, if the pool says what it is), its closing on `stack`."""
        if self._discover_gpus and not self.gpus:
            self.gpus = [{"id": d.id, "mem_gb": d.mem_gb} for d in discover_gpus()]
        # a pool `llmorch run` started while Prefect's server started, or the one this
        # process's last runner kept, else a new one; at the end kept for the next runner
        self.pool = take_pool(self.processors, pin=self.pin, preload=self.preload)
        stack.callback(keep_pool, self.pool)

    def _resource_limits(self) -> dict[str, int]:
        """The global limits guarding the resource capacities (not the processors'), name -> size."""
        return {n: size for n, size in global_limits(self._caps()).items() if n != limit_name(PROCESSORS)}

    @property
    def _proc_key(self) -> str:
        """The key processor slots are counted under: the processors' limit name, if any."""
        return self._limit.name or PROCESSORS

    def _needs(self, sub: _Submission, device: Any) -> dict[str, int]:
        """The slots a passed-out call holds while it runs (its whole demand, GPU memory on its device)."""
        needs: dict[str, int] = {}
        for r, amount in (sub.demand or demand_of(sub.kind)).items():
            setting = self.resources.get(r)
            if isinstance(setting, str) and "," not in setting:  # a rate, no capacity: nothing to hold
                continue
            if r == PROCESSORS:
                needs[self._proc_key] = int(round(amount))
            elif not self._limit.guarded:
                continue  # unguarded: the Coordinator alone bounds what this run holds
            elif r == GPU_MEM and self.gpus:
                if device is not None:
                    needs[limit_name(GPU_MEM, device)] = slots(amount)
            else:
                needs[limit_name(r)] = slots(amount)
        return needs

    def _count(self, key: str, demand: Any, sign: int) -> None:
        """Add (sign 1) or remove (sign -1) a call's demand from the unfinished demand."""
        if sign > 0:
            if key in self._counted:
                return
            self._counted[key] = demand = dict(demand)
        else:  # what was counted goes (callers pass no demand when they remove one)
            demand = self._counted.pop(key, None)
            if demand is None:
                return
        for r, amount in demand.items():
            self._unfinished[r] = max(0.0, self._unfinished.get(r, 0.0) + sign * amount)

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if exc_info and exc_info[0] is not None and not issubclass(exc_info[0], Exception):
                # A script's Ctrl-C (KeyboardInterrupt) or exit: stop the calls rather than wait
                # for them (compute workers ignore SIGINT, and are killed here).
                self.cancel_all()
            with self._lock:
                queued = self._close()
                executor = self._executor
            for s in queued:
                _finish(s.future, _cancelled_state("not started: the flow run ended first"))
            if executor is not None:
                # Running task runs end before the slots of the global limit go back. Still
                # registered while waiting: a Ctrl-C now cancels them (host/interrupt.py), and
                # threads that cannot be stopped (plain inout tasks) are then left.
                self._wait_running()
                self._shutdown_executor()
        except BaseException:
            self.cancel_all()  # a Ctrl-C while waiting: the calls stop, the slots go back below
            raise
        finally:
            interrupt.unregister(self)
            if self._stack is not None:
                self._stack.close()
                self._stack = None
            self.pool = None
            self._executor = None
            super().__exit__(*exc_info)

    def _close(self) -> list[_Submission]:
        """Nothing starts from now on: the waiting calls are DONE, returned so that their
        futures end Cancelled. Called with the lock held."""
        self._closing = True
        self._stop_rate_wake()
        queued = [s for s in self._subs.values() if s.state in WAITING and s.external is None]
        for s in queued:
            _move(s, CallState.DONE)
        return queued

    def _shutdown_executor(self) -> None:
        """Shut the task-run threads' executor down, once: wait for them, unless the run was
        cancelled (an inout call's thread cannot be stopped; a script's Ctrl-C must not wait)."""
        executor = self._executor
        if executor is not None:
            executor.shutdown(wait=not self._cancelled)
            self._executor = None

    def _wait_running(self) -> None:
        """Until no call of this runner runs, or the runner is cancelled."""
        while not self._cancelled:
            with self._lock:
                if not any(s.state is CallState.RUNNING and s.external is None for s in self._subs.values()):
                    return
            time.sleep(0.02)

    def cancel_all(self) -> None:
        """End the flow run's work now (Prefect's flow engine calls this on cancellation,
        host/interrupt.py on Ctrl-C); safe to call several times. What ends how:
        CONTRIBUTING.md, "runner.py". As Prefect's ThreadPoolTaskRunner, the executor is shut
        down (`submit` raises "Task runner is not started" until the runner is entered
        again); unlike it, this does not wait for the threads it cannot stop.
        """
        reason = "the flow run was cancelled"
        with self._lock:
            if self._cancelled or not self._started:
                return
            self._cancelled = reason
            queued = self._close()
            running = [s for s in self._subs.values() if s.state is CallState.RUNNING and s.external is None]
            self._held.clear()
            executor, self._executor = self._executor, None
        if executor is not None:
            # No wait: running inout threads cannot be stopped (`__exit__` joins them). Calls
            # already handed to it still run `_run`, which ends them (their tokens are set).
            executor.shutdown(wait=False)
        for s in queued:
            s.cancel.set(reason)
            _finish(s.future, _cancelled_state(f"not started: {reason}"))
        for s in running:
            s.cancel.set(reason)
        if self.pool is not None:
            self.pool.cancel_all(reason)
        for s in running:
            if s.kind == "inout" and s.call_id is None:
                _finish(s.future, _cancelled_state(f"{reason}; its thread is left to finish"))

    # -- what the flow tells us -------------------------------------------------------
    def use_resources(self, resources: Any, gpus: Any = None) -> None:
        """Capacities of resource classes for this flow run (`resources`; `gpus` when given,
        else the runner's devices), before its calls are submitted: a deployment's runner
        is built at import, the run's parameters say what it has. Their global limits are
        prepared at once.

        Raises:
            ResourceError: bad capacities or devices (before anything runs).
            RuntimeError: calls of the current graph are still unfinished.
        """
        if gpus is None and not (self._discover_gpus and isinstance(resources, Mapping) and GPU_MEM in resources):
            gpus = self.gpus or None  # the runner's devices, unless discovered ones would contradict the run's
        caps = Capacities.of(max(self.processors, 1), resources, gpus)
        with self._lock:
            if self._co is not None and not self._co.is_finished():
                raise RuntimeError("capacities can change only before the flow run's calls are submitted")
            self._use(caps)
            started = self._executor is not None
        if started:
            self._limit.configure(self._resource_limits())
            self._adjust_slots()

    def use_graph(self, frg: FRG) -> None:
        """The FRG of the plan whose calls are being submitted: their costs, and which calls
        are still to come (nothing starts until they are submitted, or `no_more_submissions`)."""
        with self._lock:
            self._frg = frg
            self._expected = {cid for cid in frg.ids if cid not in self._submitted_calls}
            for cid in self._expected:  # their demand is taken ahead, as P is
                self._count(f"call:{cid}", frg.demand[cid], 1)
            if len(self._expected) == len(frg) and self._idle():
                self._announce(frg)
        self._safe_dispatch()
        self._adjust_slots()

    def _idle(self) -> bool:
        """Nothing of this runner is unfinished or waiting to join the graph."""
        return not self._new and (self._co is None or self._co.is_finished())

    def _announce(self, frg: FRG) -> None:
        """A whole new plan is announced before its calls are submitted: the Coordinator
        gets its graph now and decides as the simulator would; a call it passes out before
        its submission arrives starts when it arrives. So the first calls start while the
        rest are still being submitted, in the same order. Called with the lock held."""
        for cid in frg.ids:
            sub = _Submission(
                node=cid, kind=frg.kind[cid], call_id=cid, deps=frozenset(frg.deps[cid]), cost=frg.cost[cid],
                demand=frg.demand[cid], state=CallState.ANNOUNCED,
            )
            self._announced[cid] = sub
            self._subs[cid] = sub
            self._new.append(sub)

    def no_more_submissions(self) -> None:
        """Every call of the plan is submitted: slots not needed any more can go back."""
        with self._lock:
            self._expecting_more = False
            for cid in self._expected:
                self._count(f"call:{cid}", {}, -1)
            self._expected.clear()
            for sub in self._announced.values():  # announced, never submitted: nothing to run
                if sub.state is CallState.ANNOUNCED:
                    _move(sub, CallState.ABANDONED)
                elif sub.state is CallState.PASSED:
                    _move(sub, CallState.DONE)
                    self._done(sub.node)
            self._announced.clear()
        self._safe_dispatch()
        self._adjust_slots()

    def expect_more(self) -> None:
        """More submissions will come (e.g. a recovery round)."""
        with self._lock:
            self._expecting_more = True
        self._adjust_slots()

    # -- submit -----------------------------------------------------------------------
    def submit(  # type: ignore[override]
        self,
        task: "Task[Any, Any]",
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, Any] | None = None,
    ) -> PrefectConcurrentFuture[Any]:
        if self._cancelled or not self._started or self._executor is None:
            return self._refuse(task)
        from prefect.context import TagsContext

        tags = frozenset(set(task.tags) | set(TagsContext.get().current_tags))
        identity = getattr(task, CALL_ATTR, None)  # a compiled call's (untagged); else the tags say
        kind = identity.kind if identity is not None else ("compute" if "compute" in tags else "inout")
        if kind == "compute":
            self._refuse_nested_compute(task)
        call_id = identity.call_id if identity is not None else None
        cancel = (identity.cancel if identity is not None else None) or Cancel()
        wait_list = list(wait_for or [])
        upstream = wait_list + _futures_in(parameters)
        run_task = task
        if kind == "compute" and call_id is None and self.pool is not None and not task.isasync:
            run_task = _in_pool(task, self.pool, cancel)
        sub = _Submission(
            node="",
            task=run_task,
            kind=kind,
            call_id=call_id,
            task_run_id=_new_task_run_id(),
            parameters=parameters,
            wait_for=wait_list,
            dependencies=dependencies,
            context=contextvars.copy_context(),
            cancel=cancel,
            probe=identity.probe if identity is not None and kind == "compute" else None,
        )
        foreign: list[_Submission] = []
        with self._lock:
            if self._cancelled:  # stopped (Ctrl-C) while this call was being submitted
                return self._refuse(task)
            if self._closing:
                raise RuntimeError("LLMOrchTaskRunner is shutting down (its flow run ended)")  # cancelled: refused above
            seq = next(self._seq)
            announced = self._announced.pop(call_id, None) if call_id is not None else None
            if announced is not None:
                sub = self._arrive(announced, sub)
            elif call_id is not None and call_id not in self._subs:
                sub.node = call_id
            else:
                sub.node = f"{call_id or task.name}~{seq}"
            if call_id is not None:
                self._submitted_calls.add(call_id)
                self._expected.discard(call_id)
                if self._frg is not None and call_id in self._frg:
                    sub.cost = self._frg.cost[call_id]
                    sub.demand = self._frg.demand[call_id]
                self._count(f"call:{call_id}", {}, -1)  # counted as announced: now as submitted
            deps: set[str] = set()
            for fut in upstream:
                node = self._by_run.get(fut.task_run_id)
                if node is None:  # a future of somewhere else: a node done when it is
                    ext = self._external(fut, seq)
                    foreign.append(ext)
                    node = ext.node
                deps.add(node)
            if announced is None:
                sub.deps = frozenset(deps)
                self._add(sub)
            else:  # in the graph already, with the plan's deps (Prefect's engine waits for its inputs)
                self._by_run[sub.task_run_id] = sub.node
            self._count(sub.node, sub.demand or demand_of(kind), 1)
        for ext in foreign:
            assert ext.external is not None
            ext.external.add_done_callback(lambda _f, e=ext: self._external_done(e))
        self._dispatch()
        self._adjust_slots()
        return PrefectConcurrentFuture(task_run_id=sub.task_run_id, wrapped_future=sub.future)

    def _refuse(self, task: "Task[Any, Any]") -> PrefectConcurrentFuture[Any]:
        """A submission to a runner that is cancelled or not started. A call of the plan
        submitted after a Ctrl-C never starts and ends Cancelled (the run's report shows it);
        anything else gets Prefect's not-started error, as from any task runner."""
        if self._cancelled and getattr(task, CALL_ATTR, None) is not None:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            _finish(future, _cancelled_state(f"not started: {self._cancelled}"))
            return PrefectConcurrentFuture(task_run_id=_new_task_run_id(), wrapped_future=future)
        raise not_started(self, self._cancelled and f"cancelled: {self._cancelled}")

    def _arrive(self, announced: _Submission, sub: _Submission) -> _Submission:
        """The submission of an announced call: it takes the call's place in the graph (and
        starts at the next dispatch if it was passed out already). Called with the lock held."""
        for name in ("task", "kind", "task_run_id", "parameters", "wait_for", "dependencies", "context",
                     "future", "cancel", "probe"):
            setattr(announced, name, getattr(sub, name))
        if announced.state is CallState.PASSED:
            self._arrived.append(announced)
        _move(announced, CallState.PENDING)
        return announced

    def _refuse_nested_compute(self, task: "Task[Any, Any]") -> None:
        from prefect.context import TaskRunContext

        parent = TaskRunContext.get()
        if parent is None or parent.task_run is None:
            return
        with self._lock:
            node = self._by_run.get(parent.task_run.id)
            holder = self._subs.get(node) if node is not None else None
        if holder is not None and holder.kind == "compute":
            raise NestedComputeSubmit(
                f"compute task {task.name!r} was submitted from inside compute task {getattr(holder.task, 'name', holder.node)!r}: "
                "a compute task holds a processor while it waits, so nested compute tasks can wait "
                "forever once the waiting parents hold every processor. Submit it from the flow or "
                "from an inout task (which holds no processor while it waits)."
            )

    def _external(self, fut: PrefectFuture[Any], seq: int) -> _Submission:
        ext = _Submission(
            node=f"~upstream {fut.task_run_id}~{seq}", task_run_id=fut.task_run_id, cost=0.0, external=fut,
        )
        self._add(ext)
        return ext

    def _add(self, sub: _Submission) -> None:
        self._subs[sub.node] = sub
        if sub.external is None:
            self._by_run[sub.task_run_id] = sub.node
        self._new.append(sub)

    def _external_done(self, ext: _Submission) -> None:
        with self._lock:
            ext.finished = True
            if ext.state is CallState.RUNNING and self._co is not None:
                _move(ext, CallState.DONE)
                self._done(ext.node)
        self._safe_dispatch()

    # -- dispatch ---------------------------------------------------------------------
    def _safe_dispatch(self) -> None:
        """`_dispatch` for callbacks and background threads, where an exception would be
        swallowed and leave calls that never start (a hang): fail them instead."""
        try:
            self._dispatch()
        except BaseException as exc:
            logger.error("LLMOrchTaskRunner could not start ready task runs: %s", exc)
            with self._lock:
                stuck = [s for s in self._subs.values() if s.state in WAITING and s.external is None]
                for s in stuck:
                    self._drop(s)
                self._announced.clear()  # their submissions join as new nodes
            for s in stuck:
                _finish(s.future, exc=exc)

    def _drop(self, sub: _Submission) -> None:
        """A waiting call that will never start (a failed dispatch fails it): DONE, out of the
        held and arrived queues, its demand uncounted, and done for the Coordinator if it was
        passed out (one not passed out yet is done the moment it is, `_dispatch`), so the
        runner's later calls run on what it would have held. Called with the lock held."""
        _move(sub, CallState.DONE)
        self._held = deque(s for s in self._held if s is not sub)
        self._arrived = [s for s in self._arrived if s is not sub]
        self._count(sub.node, {}, -1)
        if self._co is not None and sub.node in self._co.running:
            self._done(sub.node)

    def _done(self, *nodes: str) -> None:
        """`Coordinator.done`, recorded in `trace`. Called with the lock held."""
        self._co.done(*nodes)  # type: ignore[union-attr]
        self.trace.append(("done", nodes))

    def _grow(self) -> None:
        """Put new submissions into the Coordinator's graph (a fresh graph once the old one
        is all done, so the graph holds only the current burst of work)."""
        if not self._new:
            return
        new, self._new = self._new, []
        co = self._co
        if co is not None and co.is_finished():
            fresh = {s.node for s in new}
            self._subs = {n: s for n, s in self._subs.items() if n in fresh}
            self._by_run = {r: n for r, n in self._by_run.items() if n in fresh}
            for s in new:
                s.deps = frozenset(d for d in s.deps if d in fresh)  # the others are done
            co = None
        subs = list(self._subs.values())
        frg = FRG.from_edges(
            [s.node for s in subs],
            {s.node: s.deps for s in subs},
            kinds={s.node: s.kind for s in subs},
            costs={s.node: s.cost for s in subs},
            functions={s.node: s.call_id or getattr(s.task, "name", "upstream") for s in subs},
            resources={s.node: s.demand for s in subs if s.demand},
        )
        if co is None:
            self._co = Coordinator(frg, self.processors, self.policy, resources=self.resources, gpus=self.gpus)
        else:
            co.grow(frg)

    def _worth_growing(self) -> bool:
        """Whether a new submission could start now. Growing rebuilds the graph (linear in
        its size), so a burst of submissions that must wait anyway (inputs not done, or no
        free processor) joins the graph later, at once, when one of them could start."""
        co = self._co
        if not self._new or co is None or co.is_finished():
            return bool(self._new)
        free = co.free_processors > 0
        for sub in self._new:
            if sub.external is not None:
                return True
            if (sub.kind == "inout" or free) and all(self._subs[d].state is CallState.DONE for d in sub.deps):
                return True
        return False

    def _dispatch(self) -> None:
        """Ask the Coordinator what starts now and start it (compute calls once a slot of
        the global limit is held for them)."""
        start: list[_Submission] = []
        probing: list[_Submission] = []
        with self._lock:
            if self._executor is None or self._closing:
                return
            if self._expected.difference(self._announced):
                return
            if self._worth_growing():
                self._grow()
            co = self._co
            if co is None:
                return
            arrived, self._arrived = self._arrived, []
            for sub in arrived:
                self._pass_out(sub, sub.device, start, probing)
            now = time.monotonic()
            while True:
                ready = co.get_ready(now=now)  # a call on a rated resource starts when its rate allows
                if not ready:
                    break
                self.trace.append(("start", ready))
                finished = []
                for node in ready:
                    sub = self._subs[node]
                    if sub.state is CallState.DONE:  # failed before it was passed out (`_drop`)
                        finished.append(node)
                    elif sub.external is not None or sub.state is CallState.ABANDONED:
                        if sub.finished or sub.state is CallState.ABANDONED:
                            _move(sub, CallState.DONE)
                            finished.append(node)
                        else:
                            _move(sub, CallState.RUNNING)
                    elif sub.state is CallState.ANNOUNCED:  # not submitted yet: it starts when it arrives
                        _move(sub, CallState.PASSED)
                        sub.device = co.device_of(node)
                    else:
                        self._pass_out(sub, co.device_of(node), start, probing)
                if not finished:
                    break
                self._done(*finished)
            self._wake_at(co.next_admission(now))
            start.extend(self._admit_held())
            if self._held and not start and not any(self._in_use.values()):
                # Nothing runs, calls wait, others hold what they need: never hold and wait.
                if self._limit.blocked({k for s in self._held for k in s.needs}):
                    self._limit.back_off()
            self.max_running_compute = max(self.max_running_compute, self._running_compute)
            executor = self._executor
        for s in start:
            self._start_on(executor, s, s.context.run, self._run)
        for s in probing:  # in a copy: on a miss, `_run` enters the call's own context elsewhere
            self._start_on(executor, s, s.context.copy().run, self._probe)

    def _wake_at(self, when: float | None) -> None:
        """Dispatch again at `when` (monotonic), when a ready call waits only for its rate;
        one timer, the earliest. Called with the lock held."""
        if when is None or (self._rate_wake is not None and self._rate_wake[0] <= when):
            return
        self._stop_rate_wake()  # the later one is obsolete: its thread would sleep on for nothing
        timer = threading.Timer(max(when - time.monotonic(), 0.0), lambda: self._rate_due(timer))
        timer.daemon = True
        self._rate_wake = (when, timer)
        timer.start()

    def _stop_rate_wake(self) -> None:
        """Cancel the pending rate timer, if any (replaced, or the runner ends). Lock held."""
        if self._rate_wake is not None:
            self._rate_wake[1].cancel()
            self._rate_wake = None

    def _rate_due(self, timer: threading.Timer) -> None:
        with self._lock:
            if self._rate_wake is not None and self._rate_wake[1] is timer:  # not a replaced one
                self._rate_wake = None
        self._safe_dispatch()

    def _start_on(self, executor: concurrent.futures.ThreadPoolExecutor, sub: _Submission, run: Any, fn: Any) -> None:
        """Start a call on a task-run thread; `cancel_all` may have shut the executor down
        since the call was chosen: it then ends Cancelled instead of never ending."""
        try:
            executor.submit(run, fn, sub)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            if not (self._cancelled or self._closing):
                raise
            with self._lock:
                _move(sub, CallState.DONE)
                self._give_back(sub)
            _finish(sub.future, _cancelled_state(f"not started: {self._cancelled or 'the flow run ended first'}"))

    def _pass_out(self, sub: _Submission, device: Any, start: list[_Submission], probing: list[_Submission]) -> None:
        """A call the Coordinator passed out: to start now, to hold for its global-limit slots,
        or (a `cache=True` compute call) to probe for a stored result first. Lock held."""
        if sub.kind == "compute":
            self._placed(sub, device)
        if sub.probe is not None:  # a stored result needs no slot: look first, unlocked
            sub.device = device
            probing.append(sub)
            return
        sub.needs = self._needs(sub, device)
        if sub.needs:
            self._held.append(sub)
        else:
            _move(sub, CallState.RUNNING)
            start.append(sub)

    def _probe(self, sub: _Submission) -> None:
        """A passed-out `cache=True` compute call: run it at once, holding no slot, when its
        result is stored (Prefect's engine will answer it from the cache); else hold it for
        its slots like any other."""
        try:
            hit = bool(sub.probe(sub.parameters))
        except Exception:
            hit = False
        with self._lock:
            sub.probe = None
            if sub.state is not CallState.PENDING:  # cancelled meanwhile (`cancel_all`)
                return
            if hit:
                sub.cached = True
                _move(sub, CallState.RUNNING)
                self.cached_without_slot += 1
            else:
                sub.needs = self._needs(sub, sub.device)
                self._held.append(sub)
        if hit:
            self._run(sub)
        else:
            self._safe_dispatch()

    def _placed(self, sub: _Submission, device: Any) -> None:
        """A compute call passed out, placed on `device` (None: no GPU memory): the worker runs
        it with that device alone visible, when the run has devices."""
        if self.gpus:
            env = {"CUDA_VISIBLE_DEVICES": "" if device is None else str(device)}
            sub.context.run(CALL_ENV.set, env)

    def _available(self, key: str) -> int:
        """Slots of a limit this runner may fill now (P for unguarded processors)."""
        if key == PROCESSORS:
            return self.processors if not self._limit.guarded else 0
        return self._limit.held_of(key) or 0

    def _admit_held(self) -> list[_Submission]:
        """Start the held calls whose slots are all held and free, in the order passed out
        (a call that must wait does not stop later ones that fit); fail those that cannot
        be guarded. Called with the lock held."""
        start: list[_Submission] = []
        waiting: deque[_Submission] = deque()
        free = {key: self._available(key) - self._in_use.get(key, 0) for s in self._held for key in s.needs}
        while self._held:
            sub = self._held.popleft()
            why = self._limit.failure_of(sub.needs)
            if why is None:
                sizes = {k: self._limit.size_of(k) for k in sub.needs}
                too_big = next(((k, n) for k, n in sub.needs.items() if sizes[k] is not None and sizes[k] < n), None)
                if too_big is not None:
                    why = (f"global concurrency limit {too_big[0]!r} has limit {sizes[too_big[0]]} but {sub.node} "
                           f"needs {too_big[1]} of its slots, and calls do not run unguarded: raise the limit "
                           f"(prefect gcl update {too_big[0]} --limit {too_big[1]}) or run with guard='local'")
            if why is not None:  # no guard to be had: fail, never run unguarded
                sub.task = _failing(sub.task, GuardUnavailable(why))
            elif any(free[k] < n for k, n in sub.needs.items()):
                waiting.append(sub)
                continue
            for k, n in sub.needs.items():
                free[k] -= n
                self._in_use[k] = self._in_use.get(k, 0) + n
            _move(sub, CallState.RUNNING)
            start.append(sub)
            if sub.kind == "compute":
                self._running_compute += 1
        self._held = waiting
        return start

    def _run(self, sub: _Submission) -> None:
        from prefect.task_engine import run_task_async, run_task_sync

        kwargs: dict[str, Any] = dict(
            task=sub.task,
            task_run_id=sub.task_run_id,
            parameters=sub.parameters,
            wait_for=sub.wait_for or None,
            return_type="state",
            dependencies=sub.dependencies,
        )
        BODY_DONE.set(functools.partial(self._release, sub))  # this thread's context is the run's
        state = None
        try:
            assert sub.task is not None, f"{sub.node} started before it was submitted"  # _pass_out starts submissions only
            if sub.task.isasync:
                import asyncio

                state = asyncio.run(run_task_async(**kwargs))
            else:
                state = run_task_sync(**kwargs)
        except BaseException as exc:  # the engine itself failed: never leave a future pending
            _finish(sub.future, exc=exc)
        finally:
            if state is None:
                _finish(sub.future, exc=RuntimeError(f"task run {getattr(sub.task, 'name', sub.node)} ended without a state"))
            with self._lock:
                _move(sub, CallState.DONE)
                self._give_back(sub)
        if state is not None:
            _finish(sub.future, state)
        self._safe_dispatch()
        self._adjust_slots()

    def _release(self, sub: _Submission) -> None:
        """A call's body succeeded (`compiler.body_done`): its processor and slots go back and
        the Coordinator hears it is done now, not once Prefect's engine has finished the run
        (its state, hooks): the next call of that processor starts without waiting for
        them. A dependent's engine still waits for this run's future, as Prefect's does."""
        with self._lock:
            if sub.state is not CallState.RUNNING:
                return
            self._give_back(sub)
        self._safe_dispatch()
        self._adjust_slots()

    def _give_back(self, sub: _Submission) -> None:
        """What a running call held goes back, once. Called with the lock held."""
        if sub.released:
            return
        sub.released = True
        for k, n in sub.needs.items():
            self._in_use[k] = self._in_use.get(k, 0) - n
        self._count(sub.node, {}, -1)
        if self._co is not None and sub.node in self._co.running:
            self._done(sub.node)
        if sub.kind == "compute":
            self._running_compute -= 0 if sub.cached else 1

    # -- the global limit -------------------------------------------------------------
    def _adjust_slots(self) -> None:
        """Size the held slots of every limit: all P while more calls may come (the
        processors'), else what unfinished calls still demand; each resource's limit to
        what submitted and announced calls still demand, up to its capacity."""
        if not self._limit.guarded:
            return
        targets: list[tuple[str, int, int]] = []
        with self._lock:
            proc = self._proc_key
            most = min(self.processors, self._limit.size_of(proc) or self.processors)
            need = slots(self._unfinished.get(PROCESSORS, 0.0)) if self._unfinished.get(PROCESSORS, 0.0) > 0 else 0
            targets.append((proc, most if self._expecting_more else min(most, need), self._in_use.get(proc, 0)))
            others = [key for key in self._limit.names() if key != proc]
            caps = self._caps() if others else None  # built (and validated) only for a resource's limit
            device_mem = {limit_name(GPU_MEM, d.id): d.mem_gb for d in caps.devices} if caps is not None else {}
            for key in others:
                assert caps is not None
                resource = GPU_MEM if key in device_mem else key[len(limit_name("")):]
                cap = int(device_mem.get(key, caps.amounts.get(resource, 0.0)))
                demand = self._unfinished.get(resource, 0.0)
                target = min(cap, slots(demand)) if demand > 0 else 0
                targets.append((key, target, self._in_use.get(key, 0)))
        for key, target, busy in targets:
            self._limit.adjust(target, busy, key)

    @property
    def slots_held(self) -> int:
        """Slots of the global limit this runner holds now."""
        return self._limit.held


def _in_pool(task: "Task[Any, Any]", pool: Any, cancel: Cancel) -> "Task[Any, Any]":
    """A copy of a plain compute task whose function runs in a worker process of `pool`."""
    fn = task.fn
    label = task.name

    @functools.wraps(fn)  # Prefect binds parameters by the wrapped function's signature
    def in_worker(*args: Any, **kwargs: Any) -> Any:
        from prefect.context import TagsContext

        # Run in the task run's thread, whose context is the submitting one: its tags go
        # with the call, as Prefect's runners give them to a task's function.
        current = tuple(sorted(TagsContext.get().current_tags))
        call, call_args = (call_with_tags, (current, fn, *args)) if current else (fn, args)
        try:
            return pool.run(label, call, call_args, kwargs, timeout=task.timeout_seconds, cancel=cancel).value
        except CallCancelled as exc:
            return _cancelled_state(str(exc))
        except CallNotSent as exc:
            raise CallNotSent(
                f"task {label!r} is tagged compute, so LLMOrchTaskRunner runs its function in a worker "
                f"process, but it cannot be sent there: {exc.__cause__}. Define the function at module "
                "level (importable) with picklable arguments and result, or tag the task inout to run "
                "it in a thread of the flow process.",
                call=label,
            ) from exc
        except RuntimeError as exc:
            if _PREFECT_NO_RUNNER in str(exc):
                raise NestedComputeSubmit(
                    f"task {label!r} is tagged compute, so LLMOrchTaskRunner runs its function in a worker "
                    "process, outside the flow run, where Prefect has no task runner to submit tasks to. "
                    "Submit the child tasks from the flow (pass them this task's result), or tag this task "
                    "inout: its function then runs on a thread of the flow process, holds no processor "
                    "while it waits, and can submit compute children."
                ) from exc
            raise

    return _with_fn(task, in_worker)


def _new_task_run_id() -> uuid.UUID:
    """A time-ordered id, as Prefect's own runners make them (a private module of Prefect's:
    see CONTRIBUTING.md, "Prefect private names"); a random one if it is gone."""
    try:
        from prefect._internal.uuid7 import uuid7
    except ImportError:
        return uuid.uuid4()
    return uuid7()


class GuardUnavailable(RuntimeError):
    """The global concurrency limit's slots cannot be had, so the compute call did not run."""


def _failing(task: "Task[Any, Any]", exc: BaseException) -> "Task[Any, Any]":
    """A copy of a task whose run fails with `exc` instead of running its function."""
    fn = task.fn

    @functools.wraps(fn)
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return _with_fn(task, refuse)


def _with_fn(task: "Task[Any, Any]", fn: Any) -> "Task[Any, Any]":
    """A shallow copy of `task` whose engine calls `fn` (see CONTRIBUTING.md, private names)."""
    clone = copy.copy(task)
    clone.fn = fn
    return clone


def _cancelled_state(message: str) -> Any:
    from prefect.states import Cancelled

    return Cancelled(message=message)


def _finish(future: concurrent.futures.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    """Set a submission's future once; later attempts (a cancel racing the end) are ignored."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _futures_in(value: Any, depth: int = 0) -> list[PrefectFuture[Any]]:
    """Futures inside parameters (dicts, lists, tuples, sets), as Prefect resolves them."""
    if isinstance(value, PrefectFuture):
        return [value]
    if depth > 4:
        return []
    if isinstance(value, dict):
        return [f for v in value.values() for f in _futures_in(v, depth + 1)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [f for v in value for f in _futures_in(v, depth + 1)]
    return []
