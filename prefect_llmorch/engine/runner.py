"""`LLMOrchTaskRunner`: Prefect task runs on P processors, the LLMOrch way.

Before, every task on threads, compute calls fighting over the GIL and the cores:

    @flow(task_runner=ThreadPoolTaskRunner())
    def f(): ...

After, tasks tagged `compute` run in P pre-warmed worker processes, never more than P at
once; tasks tagged `inout` (or untagged) start at once on threads, without a processor:

    from prefect_llmorch import LLMOrchTaskRunner

    @flow(task_runner=LLMOrchTaskRunner(processors=2))
    def f(): ...

How it works. `submit` does not start a task run: it records the submission and starts
it when every future it depends on (in `wait_for` or in its parameters) is done. Ready
inout task runs start at once; ready compute task runs start one per free processor,
chosen by the coordination policy (`policy.select`). Each task run's Prefect engine runs in
a thread of the flow process, so states, hooks and the UI graph stay native; the body of a
compiled compute call (see `compiler.py`) borrows a worker process from `runner.pool`.

Machine-wide guard: a Prefect global concurrency limit (`llmorch-processors`, created with
limit P if absent) is held one slot per processor that this flow run uses. Slots are taken
ahead of need, when the runner starts (while the planner is still writing), and given back
when no compute call is left, so two flow runs on one machine never run more than P
compute calls together, and no call pays the limit's round trip on its critical path.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import itertools
import logging
import queue
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import psutil
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import TaskRunner

from prefect_llmorch.schedule.policy import check_policy, select
from prefect_llmorch.engine.workers import WorkerPool

if TYPE_CHECKING:
    from prefect.tasks import Task

    from prefect_llmorch.graph import FRG

logger = logging.getLogger("prefect_llmorch.engine.runner")

#: Attribute a compiled task carries to name its call in the FRG.
CALL_ATTR = "llmorch_call_id"

#: How long to wait before asking again for a slot of a full global limit.
_FULL_LIMIT_RETRY_SECONDS = 0.5

#: Lease of the global limit's slots; renewed every third of it while held.
_LEASE_SECONDS = 60.0

#: How long Prefect trusts "this tag set has no concurrency limits" (its cache's TTL).
_TAG_CACHE_TTL = 5.0


def default_processors() -> int:
    """The machine's core count (physical cores are not what the OS schedules on)."""
    return psutil.cpu_count(logical=True) or 1


@dataclass(eq=False)
class _Submission:
    seq: int
    task: "Task[Any, Any]"
    kind: str
    call_id: str | None
    task_run_id: uuid.UUID
    parameters: dict[str, Any]
    wait_for: list[PrefectFuture[Any]]
    dependencies: dict[str, Any] | None
    context: contextvars.Context
    future: concurrent.futures.Future[Any]
    waiting: int = 0
    state: str = "pending"  # pending -> ready -> running -> done
    upstream: list[PrefectFuture[Any]] = field(default_factory=list)
    tags: frozenset[str] = frozenset()


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

    Note:
        The runner guarantees at most P compute task runs *in its flow run* by itself;
        the global limit adds the guarantee across flow runs. When the limit cannot be
        used (API unreachable), the runner logs why and keeps its own bound.

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
    ) -> None:
        super().__init__()
        if processors is not None and processors < 1:
            raise ValueError(f"processors must be at least 1, got {processors}")
        self.processors = processors or default_processors()
        self.policy = policy  # validated by the property
        self.concurrency_limit = concurrency_limit
        self.pin = pin
        self.preload = tuple(preload)
        self._init_state()

    def _init_state(self) -> None:
        self.pool: WorkerPool | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._stack: ExitStack | None = None
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._subs: list[_Submission] = []
        self._running_compute = 0
        self._frg: "FRG | None" = None
        self._expecting_more = True
        self._held: list[tuple[Any, int]] = []  # (lease id, slots) of the global limit
        self._lease_renewed: dict[Any, float] = {}
        self._prefect_api: Any = None  # the API thread's own Prefect client
        self._holder_id: Any = None
        self._acquiring = 0
        self._slots = 0
        self._limit_broken: str | None = None
        self.max_running_compute = 0  # observed, for tests and reports
        self._closing = False
        self._stopping = False
        self._limit_size: int | None = None  # the global limit's size, once read
        # Tag sets whose (absent) tag concurrency limits Prefect has already looked up.
        self._warm: set[frozenset[str]] = set()
        self._warming: dict[frozenset[str], list[_Submission]] = {}
        # (monotonic time of the read, tags that have a `tag:` concurrency limit), or None.
        self._tag_limits: tuple[float, frozenset[str]] | None = None
        self._api: "queue.PriorityQueue[tuple[tuple[int, ...], int, str, Any]]" = queue.PriorityQueue()

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

    def _settings(self) -> tuple[Any, ...]:
        return (self.processors, self.policy, self.concurrency_limit, self.pin, self.preload)

    def duplicate(self) -> "LLMOrchTaskRunner":
        return type(self)(
            processors=self.processors,
            policy=self.policy,
            concurrency_limit=self.concurrency_limit,
            pin=self.pin,
            preload=self.preload,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LLMOrchTaskRunner) and self._settings() == other._settings()

    def __hash__(self) -> int:
        return hash(self._settings())

    def __getstate__(self) -> dict[str, Any]:
        # Runners are cloudpickled when a flow run is sent to a subprocess: keep settings only.
        return {"processors": self.processors, "policy": self.policy, "concurrency_limit": self.concurrency_limit, "pin": self.pin, "preload": self.preload}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- life cycle -------------------------------------------------------------------
    def __enter__(self) -> "LLMOrchTaskRunner":
        super().__enter__()
        stack = ExitStack()
        try:
            self.pool = stack.enter_context(WorkerPool(self.processors, pin=self.pin, preload=self.preload))
            self._executor = stack.enter_context(
                concurrent.futures.ThreadPoolExecutor(max_workers=512, thread_name_prefix="llmorch-task")
            )
            self._start_api_thread(stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with self._lock:
            self._closing = True  # nothing starts from now on
            for sub in self._subs:
                if sub.state in ("pending", "ready"):
                    sub.state = "done"
                    sub.future.cancel()
            executor = self._executor
        if executor is not None:
            # Running task runs end before the slots of the global limit go back.
            executor.shutdown(wait=True)
        if self._stack is not None:
            self._stack.close()
            self._stack = None
        self.pool = None
        self._executor = None
        super().__exit__(*exc_info)

    # -- what the compiler tells us ---------------------------------------------------
    def use_graph(self, frg: "FRG") -> None:
        """Give the policy the FRG of the plan (for critical-path priorities)."""
        with self._lock:
            self._frg = frg

    def no_more_submissions(self) -> None:
        """Every call of the plan is submitted: slots not needed any more can go back."""
        with self._lock:
            self._expecting_more = False
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
        if not self._started or self._executor is None:
            raise RuntimeError("LLMOrchTaskRunner is not started")
        from prefect.context import TagsContext
        from prefect._internal.uuid7 import uuid7

        tags = set(task.tags) | set(TagsContext.get().current_tags)
        kind = "compute" if "compute" in tags else "inout"
        wait_list = list(wait_for or [])
        upstream = wait_list + _futures_in(parameters)
        sub = _Submission(
            seq=next(self._seq),
            task=task,
            kind=kind,
            call_id=getattr(task, CALL_ATTR, None),
            task_run_id=uuid7(),
            parameters=parameters,
            wait_for=wait_list,
            dependencies=dependencies,
            context=contextvars.copy_context(),
            future=concurrent.futures.Future(),
            upstream=upstream,
            tags=frozenset(tags),
        )
        key = frozenset(tags)
        with self._lock:
            self._subs.append(sub)
            sub.waiting = len(upstream)
            snapshot = self._tag_limits
            if key and key not in self._warm and snapshot and time.monotonic() - snapshot[0] < _TAG_CACHE_TTL / 2:
                self._warm.add(key)  # the tag limits were read moments ago: nothing to wait for
                self._api_job("warm", key)  # but start the engine's service for the set early
            if key and key not in self._warm:
                sub.waiting += 1
                if key not in self._warming:
                    self._warming[key] = []
                    self._api_job("warm", key)
                self._warming[key].append(sub)
            if sub.waiting == 0:
                sub.state = "ready"
        for up in upstream:
            up.add_done_callback(lambda _f, s=sub: self._upstream_done(s))
        self._dispatch()
        return PrefectConcurrentFuture(task_run_id=sub.task_run_id, wrapped_future=sub.future)

    def _upstream_done(self, sub: _Submission) -> None:
        with self._lock:
            sub.waiting -= 1
            if sub.waiting == 0 and sub.state == "pending":
                sub.state = "ready"
        self._safe_dispatch()

    def _safe_dispatch(self) -> None:
        """`_dispatch` for callbacks and background threads, where an exception would be
        swallowed and leave calls that never start (a hang): fail them instead."""
        try:
            self._dispatch()
        except BaseException as exc:
            logger.error("LLMOrchTaskRunner could not start ready task runs: %s", exc)
            with self._lock:
                ready = [s for s in self._subs if s.state == "ready"]
                for s in ready:
                    s.state = "done"
            for s in ready:
                if not s.future.done():
                    s.future.set_exception(exc)

    # -- dispatch ---------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start what may start now: every ready inout run, then compute runs on free processors."""
        with self._lock:
            if self._executor is None or self._closing:
                return
            ready = [s for s in self._subs if s.state == "ready"]
            start = [s for s in ready if s.kind == "inout"]
            compute = [s for s in ready if s.kind == "compute"]
            free = min(self.processors, self._slots) - self._running_compute
            if compute and free > 0:
                start.extend(self._choose(compute, free))
            for s in start:
                s.state = "running"
                if s.kind == "compute":
                    self._running_compute += 1
                    self.max_running_compute = max(self.max_running_compute, self._running_compute)
            executor = self._executor
        for s in start:
            executor.submit(s.context.run, self._run, s)
        if start:
            self._adjust_slots()

    def _choose(self, compute: list[_Submission], free: int) -> list[_Submission]:
        frg = self._frg
        if frg is not None and all(s.call_id in frg.rank for s in compute):
            by_id = {s.call_id: s for s in compute}
            arrival = {s.call_id: s.seq for s in compute}
            chosen = select(self.policy, frg, list(by_id), free, arrival)
            return [by_id[c] for c in chosen]
        return sorted(compute, key=lambda s: s.seq)[:free]  # no graph: first come, first served

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
        self._prime_tag_cache(sub.tags)
        token = _CURRENT.set(self)
        try:
            if sub.task.isasync:
                import asyncio

                state = asyncio.run(run_task_async(**kwargs))
            else:
                state = run_task_sync(**kwargs)
        except BaseException as exc:  # the engine itself failed: never leave a future pending
            if not sub.future.done():
                sub.future.set_exception(exc)
            state = None
        finally:
            _CURRENT.reset(token)
            if state is None and not sub.future.done():
                sub.future.set_exception(RuntimeError(f"task run {sub.task.name} ended without a state"))
            with self._lock:
                sub.state = "done"
                if sub.kind == "compute":
                    self._running_compute -= 1
        if state is not None and not sub.future.done():
            sub.future.set_result(state)
        self._safe_dispatch()
        self._adjust_slots()

    # -- the Prefect API calls of the runner, one at a time --------------------------
    #
    # Two kinds of concurrency-limit calls come from here: tag look-ups and slots of the
    # global limit. Prefect's task engine asks the API for slots of every tag of every task
    # run (`tag:inout`, `tag:rank:2`, ...), caching "no limits" per tag set for 5 s. That
    # request is a write (the server reads the limits, then UPDATEs them, in one transaction);
    # on a SQLite server (ephemeral, or `prefect server start` by default) it fails at once
    # with "database is locked" when the server's own writes (it records the task-run states
    # our engines emit) land in between, the server answers 503 and the client retries 2 s
    # later (2**1 s, +-20% jitter): a stall of 1.6-2.4 s between engine start and function
    # body, on the critical path, for every new tag set and again after the cache's 5 s.
    # Untagged tasks never ask. So this thread *reads* which `tag:` limits exist (a read
    # never hits the lock), every 2.5 s while calls are unfinished, and `_run` marks a task
    # run's tag set as limit-free in Prefect's own cache just before starting its engine,
    # when none of its tags has a limit (as Prefect itself would after asking). A tag limit
    # that exists is still enforced by the engine itself. The same thread takes or gives
    # back slots of the global limit.

    def _start_api_thread(self, stack: ExitStack) -> None:
        from prefect.context import FlowRunContext

        run_ctx = FlowRunContext.get()
        if run_ctx is not None and run_ctx.flow_run is not None:
            self._holder_id = run_ctx.flow_run.id  # the UI shows which flow run holds the slots
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(self._api_loop,), daemon=True, name="llmorch-api")
        thread.start()
        stack.callback(thread.join, 15)
        stack.callback(self._api_job, "stop", None)  # the thread gives every slot back, then ends
        # The tag sets of the first calls of any plan, before the plan arrives.
        for kind in ("inout", "compute"):
            self._api_job("warm", frozenset({kind, "rank:1"}))
        if self.concurrency_limit:
            self._api_job("prepare", None)
        else:
            self._slots = self.processors

    def _api_job(self, op: str, arg: Any) -> None:
        if op == "warm":
            ranks = [int(t[5:]) for t in arg if t.startswith("rank:") and t[5:].isdigit()]
            priority: tuple[int, ...] = (1, 0 if "inout" in arg else 1, min(ranks, default=0))
        else:
            # Slots before tag-set warm-ups: a lease is a write, and once the flow's first task
            # runs flood the server with state events a write waits seconds behind them
            # (measured: first compute call 2.4-4.5 s late when the lease came after the warm-ups).
            priority = {"stop": (-1,), "prepare": (0,), "release": (0,), "acquire": (0,)}[op]
        self._api.put((priority, next(self._seq), op, arg))

    def _api_loop(self) -> None:
        while True:
            try:
                _, _, op, arg = self._api.get(timeout=1.0)
            except queue.Empty:
                op = arg = None
            snapshot = self._tag_limits
            if snapshot is None or time.monotonic() - snapshot[0] > _TAG_CACHE_TTL / 2:
                with self._lock:  # keep the tag-limit snapshot fresh while calls remain
                    active = any(s.state != "done" for s in self._subs)
                if active:
                    self._read_tag_limits()
            self._renew_leases()
            if op is None:
                continue
            if op == "stop":
                self._stopping = True
                self._drain_releases()
                self._release_all_slots()
                return
            try:
                getattr(self, f"_api_{op}")(arg)
            except BaseException as exc:  # never let the API thread die
                logger.warning("llmorch API call %s failed: %s", op, exc)

    def _drain_releases(self) -> None:
        """At stop: give back leases already queued for release; drop everything else."""
        while True:
            try:
                _, _, op, arg = self._api.get_nowait()
            except queue.Empty:
                return
            if op == "release":
                try:
                    self._api_release(arg)
                except BaseException as exc:  # the lease expires on its own
                    logger.debug("releasing a lease: %s", exc)

    def _api_warm(self, key: frozenset[str]) -> None:
        snapshot = self._tag_limits
        if key not in self._warm and (snapshot is None or time.monotonic() - snapshot[0] > _TAG_CACHE_TTL / 2):
            self._read_tag_limits()
        try:  # start the engine's acquisition service of this tag set now (~0.1 s the first time)
            from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService

            ConcurrencySlotAcquisitionWithLeaseService.instance(frozenset(f"tag:{t}" for t in key))
        except Exception as exc:
            logger.debug("tag set %s: %s", sorted(key), exc)
        with self._lock:
            self._warm.add(key)
            waiting = self._warming.pop(key, [])
            for sub in waiting:
                sub.waiting -= 1
                if sub.waiting == 0 and sub.state == "pending":
                    sub.state = "ready"
        if waiting:
            self._safe_dispatch()

    def _read_tag_limits(self) -> None:
        """Read (never write) which tags have a `tag:` concurrency limit, active or not."""
        started = time.monotonic()
        limited: set[str] = set()
        try:
            client = self._api_client()
            offset, page_size = 0, 200
            while True:
                page = self._quick(client.read_global_concurrency_limits, limit=page_size, offset=offset)
                limited.update(lim.name[4:] for lim in page if lim.name.startswith("tag:"))
                if len(page) < page_size:
                    break
                offset += page_size
        except Exception as exc:  # unknown: the engine asks the API itself, as usual
            logger.debug("reading tag concurrency limits: %s", exc)
            self._tag_limits = None
            return
        self._tag_limits = (started, frozenset(limited))

    def _prime_tag_cache(self, tags: frozenset[str]) -> None:
        """Tell Prefect's engine that this tag set has no limits, when we know it (see above)."""
        snapshot = self._tag_limits
        if not tags or snapshot is None or tags & snapshot[1] or time.monotonic() - snapshot[0] > _TAG_CACHE_TTL:
            return
        try:  # Prefect's own "no limits" cache (prefect.concurrency.services, Prefect >= 3.4)
            from prefect.concurrency.services import _cache_lock, _no_limits_cache
        except ImportError:
            return
        with _cache_lock:
            _no_limits_cache[frozenset(f"tag:{t}" for t in tags)] = True

    def _api_prepare(self, _: Any) -> None:
        """Create the global limit `llmorch-processors` (limit P) if absent, then take slots."""
        try:
            from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
            from prefect.exceptions import ObjectNotFound

            client = self._api_client()  # also warms the API thread's client before the first lease
            try:
                limit = self._quick(client.read_global_concurrency_limit_by_name, self.concurrency_limit)
                self._limit_size = limit.limit
                if limit.limit < self.processors:
                    logger.warning(
                        "global concurrency limit %r has limit %s: this flow run uses at most %s of its %s processors",
                        self.concurrency_limit, limit.limit, limit.limit, self.processors,
                    )
            except ObjectNotFound:
                try:
                    self._quick(
                        client.create_global_concurrency_limit,
                        GlobalConcurrencyLimitCreate(name=self.concurrency_limit, limit=self.processors),  # type: ignore[arg-type]
                    )
                except Exception:  # created meanwhile by another flow run
                    self._limit_size = self._quick(client.read_global_concurrency_limit_by_name, self.concurrency_limit).limit
        except BaseException as exc:
            self._limit_unusable(exc)
            return
        self._adjust_slots()

    def _api_acquire(self, n: int) -> None:
        """Take `n` slots in one lease (one API write); if they are not free together (other
        flow runs hold some), take them one at a time."""
        with self._lock:
            self._acquiring = 0
            need = self._slot_target() - self._slots
            if self._stopping or self._limit_broken is not None or need <= 0:
                return
            n = min(n, need)
        try:
            lease = self._lease_request(n)
        except BaseException as exc:  # limit deleted, API down: keep our own bound
            self._limit_unusable(exc)
            return
        if lease is None:  # not free now (other flow runs hold them): ask again in a moment
            with self._lock:
                self._acquiring = 1
            retry = threading.Timer(_FULL_LIMIT_RETRY_SECONDS, self._api_job, args=("acquire", 1))
            retry.daemon = True
            retry.start()
            return
        with self._lock:
            self._held.append((lease, n))
            self._slots += n
        self._safe_dispatch()
        self._adjust_slots()

    def _lease_request(self, n: int) -> Any:
        """One `increment-with-lease` write for `n` slots; the lease id, or None when the
        limit has not `n` free slots.

        Our own retries, not the client's: a SQLite server answers 503 "database is locked"
        when a write of its own lands in between, and the client would wait 2 s to retry.
        """
        import uuid as _uuid

        from prefect.client.schemas.objects import ConcurrencyLeaseHolder
        from prefect.exceptions import PrefectHTTPStatusError

        client = self._api_client()
        holder = ConcurrencyLeaseHolder(type="flow_run", id=self._holder_id or _uuid.uuid4())
        try:
            response = self._quick(
                client.increment_concurrency_slots_with_lease,
                names=[self.concurrency_limit], slots=n, mode="concurrency",  # type: ignore[list-item]
                lease_duration=_LEASE_SECONDS, holder=holder,
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 423:  # full: the caller tries again later (or slot by slot)
                return None
            raise
        body = response.json()
        if not body.get("limits"):
            raise LookupError(f"global concurrency limit {self.concurrency_limit!r} does not exist")
        self._lease_renewed[body["lease_id"]] = time.monotonic()
        return body["lease_id"]

    @staticmethod
    def _quick(call: Any, *args: Any, **kwargs: Any) -> Any:
        """An API call with our own fast retries (20 ms doubling, for up to 3 s) instead of
        the client's 2 s wait after a SQLite server's 503 "database is locked"."""
        from prefect.exceptions import PrefectHTTPStatusError
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        delay, deadline = 0.02, time.monotonic() + 3.0
        while True:
            try:
                with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
                    return call(*args, **kwargs)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code < 500 or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _renew_leases(self) -> None:
        """Keep held leases alive (they expire after _LEASE_SECONDS unless renewed)."""
        now = time.monotonic()
        for lease_id, renewed in list(self._lease_renewed.items()):
            if now - renewed > _LEASE_SECONDS / 3:
                try:
                    self._quick(self._api_client().renew_concurrency_lease, lease_id, lease_duration=_LEASE_SECONDS)
                    self._lease_renewed[lease_id] = now
                except Exception as exc:  # expired meanwhile: the slots went back to the limit
                    logger.warning("could not renew a lease of %s (%s); taking new slots", self.concurrency_limit, exc)
                    with self._lock:
                        self._lease_renewed.pop(lease_id, None)
                        for held in [h for h in self._held if h[0] == lease_id]:
                            self._held.remove(held)
                            self._slots -= held[1]
                    self._adjust_slots()

    def _api_client(self) -> Any:
        if self._prefect_api is None:
            from prefect.client.orchestration import get_client

            self._prefect_api = get_client(sync_client=True)
            self._prefect_api.__enter__()
        return self._prefect_api

    def _api_release(self, lease_id: Any) -> None:
        self._lease_renewed.pop(lease_id, None)
        self._quick(self._api_client().release_concurrency_slots_with_lease, lease_id)

    def _limit_unusable(self, exc: BaseException) -> None:
        with self._lock:
            if self._limit_broken is None:
                self._limit_broken = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "global concurrency limit %r cannot be used (%s); this flow run keeps its own bound of %s compute calls",
                    self.concurrency_limit, self._limit_broken, self.processors,
                )
            self._slots = self.processors
        self._safe_dispatch()

    def _slot_target(self) -> int:
        most = min(self.processors, self._limit_size or self.processors)
        if self._expecting_more:
            return most
        unfinished = sum(1 for s in self._subs if s.kind == "compute" and s.state != "done")
        return min(most, unfinished)

    def _adjust_slots(self) -> None:
        """Take slots up to the target; give back idle ones beyond it (off the critical path).

        One acquisition is in flight at a time; a lease is given back whole, when all of
        its slots are idle and not needed any more.
        """
        if not self.concurrency_limit or self._executor is None:
            return
        with self._lock:
            if self._limit_broken is not None:
                return
            target = self._slot_target()
            missing = target - self._slots - self._acquiring
            if missing > 0 and self._acquiring == 0:
                self._acquiring = missing
                self._api_job("acquire", missing)
            while self._slots > target:
                spare = min(self._slots - target, self._slots - self._running_compute)
                lease = next((held for held in reversed(self._held) if held[1] <= spare), None)
                if lease is None:
                    break
                self._held.remove(lease)
                self._slots -= lease[1]
                self._api_job("release", lease[0])

    def _release_all_slots(self) -> None:
        with self._lock:
            held, self._held = self._held, []
            self._slots = 0
        for lease_id, _ in held:
            try:
                self._api_release(lease_id)
            except BaseException as exc:  # the lease expires on its own
                logger.debug("releasing a slot: %s", exc)
        if self._prefect_api is not None:
            client, self._prefect_api = self._prefect_api, None
            client.__exit__(None, None, None)

    @property
    def slots_held(self) -> int:
        return self._slots


_CURRENT: contextvars.ContextVar[LLMOrchTaskRunner | None] = contextvars.ContextVar("llmorch_runner", default=None)


def current_runner() -> LLMOrchTaskRunner | None:
    """The LLMOrchTaskRunner running the current task run, if any."""
    return _CURRENT.get()


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
