"""`LLMOrchDaskTaskRunner`: the same plan, its compute calls on a Dask cluster.

Before, a plan on the P processes of one machine:

    run_plan(plan, "prefect_llmorch.examples.toolbox:toolbox", processors=2)

After, the same plan on the processors of a Dask cluster (`dask scheduler`, then on each
machine `dask worker tcp://HOST:8786 --nthreads 1 --resources processor=1`):

    from prefect_llmorch.engine.dask import LLMOrchDaskTaskRunner

    runner = LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:8786")
    run_plan(plan, "prefect_llmorch.examples.toolbox:toolbox", task_runner=runner)

P is the sum of the workers' `processor` resources. Compiled plan calls are coordinated in
the flow process as by `LLMOrchTaskRunner` (policy, P, global limits), and a compute call
sends only its function call to Dask (`DaskProcessorPool`); any other task goes to the held
`DaskTaskRunner`. What runs where, what Dask guarantees, worker loss, resources and GPUs:
docs/dask.md; the contract: CONTRIBUTING.md, "dask.py".
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import re
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any, Callable, Iterable

import dask
import distributed
from prefect.futures import PrefectFuture
from prefect_dask.task_runners import DaskTaskRunner

from prefect_llmorch.procs.pool import CALL_ENV, call_env
from prefect_llmorch.engine.runner import CALL_ATTR, LLMOrchTaskRunner, not_started
from prefect_llmorch.procs.workers import (
    CallCancelled, CallTimeout, Cancel, Outcome, ToolExit, WorkerDied, WorkerError,
)
from prefect_llmorch.graph import PROCESSORS
from prefect_llmorch.schedule.resources import DemandExceedsCapacity

__all__ = ["LLMOrchDaskTaskRunner", "DaskProcessorPool", "PROCESSOR", "cluster_processors"]

logger = logging.getLogger("prefect_llmorch.engine.dask")

#: The Dask worker resource a compute call takes one of (per processor it needs).
PROCESSOR = "processor"

#: The Dask resources the compute call run from this context asks for (the runner sets it
#: from the call's demand when it passes the call out); None: one `processor`.
CALL_DASK_RESOURCES: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "llmorch_dask_resources", default=None
)


def cluster_resources(client: distributed.Client) -> dict[str, dict[str, float]]:
    """Every worker's Dask resources (`processor`, `gpu_mem_gb`, ...), by worker address."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return {addr: {k: float(v) for k, v in (w.get("resources") or {}).items()} for addr, w in workers.items()}


def cluster_processors(client: distributed.Client) -> dict[str, int]:
    """The `processor` resource of every worker the scheduler knows, by worker address."""
    return {addr: int(r.get(PROCESSOR, 0)) for addr, r in cluster_resources(client).items()}


def _call_on_worker(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], call: str = "", env: dict[str, str] | None = None,
) -> tuple[Any, float, float, int, str]:
    """Runs on a Dask worker: the function call, with wall-clock start/end, pid and worker
    address; `env` is set in the worker's environment for the call (restored after). A
    tool's SystemExit/KeyboardInterrupt becomes that call's `ToolExit`."""
    address = _worker_address()
    pid = os.getpid()
    start = time.time()
    try:
        with call_env(env):
            value = fn(*args, **kwargs)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # the tool's exit, not the worker's: a failed call
            error = ToolExit(call or getattr(fn, "__name__", "call"), exc)
            error.__cause__ = exc
            exc = error
        # Exception attributes travel with the pickled exception: the compiler records them.
        try:
            exc.llmorch_timing = (start, time.time(), pid)  # type: ignore[attr-defined]
            exc.llmorch_worker_address = address  # type: ignore[attr-defined]
        except Exception:  # an exception type without a __dict__
            pass
        raise exc
    return value, start, time.time(), pid, address


def _worker_address() -> str:
    """The address of the Dask worker this thread belongs to; "" when not on a worker."""
    try:
        return distributed.get_worker().address
    except ValueError:
        return ""


def _key(label: str) -> str:
    return "llmorch-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") + "-" + uuid.uuid4().hex[:12]


class DaskProcessorPool:
    """What `compiler.py` calls `runner.pool`: runs one compute call on a Dask processor.

    `run` has the contract of `workers.WorkerPool.run`: it blocks until the call is done and
    returns an `Outcome` (value, wall-clock start/end of the function body, pid, and the
    worker index: the worker's position among the addresses seen, in order).

    Args:
        client: a connected (synchronous) Dask client.
        no_worker_timeout: fail a waiting call with `WorkerDied` when no worker has offered a
            `processor` for this many seconds (None: wait forever, as Dask does).
        watch_interval: how often a waiting call checks that a worker is left. The result
            itself is waited for, not polled; this is only the watchdog's period.
    """

    def __init__(self, client: distributed.Client, *, no_worker_timeout: float | None = 60.0, watch_interval: float = 2.0) -> None:
        self.client = client
        self.no_worker_timeout = no_worker_timeout
        self.watch_interval = watch_interval
        self._index: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._no_worker_since: float | None = None

    def worker_index(self, address: str) -> int:
        with self._lock:
            return self._index.setdefault(address, len(self._index))

    def run(
        self,
        call: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        cancel: Cancel | None = None,
    ) -> Outcome:
        """Run `fn(*args, **kwargs)` on a Dask worker with one free `processor`.

        `cancel.set()` cancels its Dask task: the call ends at once with `CallCancelled`
        (a thread already running on a worker runs on until `fn` returns, as with timeouts).

        Raises:
            CallTimeout: past `timeout`. The Dask task is cancelled, but a running thread
                cannot be stopped: the worker's processor stays busy until `fn` returns.
            CallCancelled: `cancel` was set.
            WorkerDied: the call's workers died too often (`KilledWorker`), or no worker
                offering a `processor` was left for `no_worker_timeout` seconds.
            Exception: whatever `fn` raised (Dask keeps the worker's traceback).
        """
        if self._closed:
            raise RuntimeError("DaskProcessorPool is shut down")
        if cancel is not None and cancel.is_set():
            raise CallCancelled(f"{call} was cancelled before it started ({cancel.reason})", call=call)
        fut = self.client.submit(
            _call_on_worker, fn, args, kwargs or {}, call, dict(CALL_ENV.get() or {}) or None,
            key=_key(call), pure=False, resources=dict(CALL_DASK_RESOURCES.get() or {PROCESSOR: 1}),
        )
        # On cancel, the Dask task is cancelled; a thread already running on a worker runs on
        # (Dask cannot interrupt it) and keeps that worker's `processor` until it returns.
        forget = cancel.on_set(fut.cancel) if cancel is not None else (lambda: None)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                wait = self.watch_interval
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.monotonic()))
                try:
                    value, start, end, pid, address = fut.result(timeout=wait)
                    break
                except TimeoutError:
                    if cancel is not None and cancel.is_set():
                        raise CallCancelled(f"{call} was cancelled ({cancel.reason}); its Dask task was cancelled", call=call) from None
                    if deadline is not None and time.monotonic() >= deadline:
                        raise CallTimeout(
                            f"{call} ran past its timeout of {timeout:g} s on Dask (the worker thread runs on "
                            "until the function returns; Dask cannot interrupt it)",
                            call=call,
                        ) from None
                    self._check_workers(call)
        except distributed.KilledWorker as exc:
            raise WorkerDied(
                f"{call}: the Dask workers running it died too often ({exc}); "
                "see distributed.scheduler.allowed-failures",
                call=call,
            ) from exc
        except distributed.client.FutureCancelledError as exc:
            if cancel is not None and cancel.is_set():
                raise CallCancelled(f"{call} was cancelled ({cancel.reason}); its Dask task was cancelled", call=call) from None
            raise WorkerError(f"{call}: its Dask task was cancelled ({exc})", call=call) from exc
        except BaseException as exc:
            address = getattr(exc, "llmorch_worker_address", None)
            if address:  # set on the worker, so the exception takes attributes
                exc.llmorch_worker = self.worker_index(address)  # type: ignore[attr-defined]
            if not fut.done():
                fut.cancel()
            raise
        finally:
            forget()  # the token no longer holds the Dask future (nor its result)
        return Outcome(value=value, start=start, end=end, pid=pid, worker=self.worker_index(address))

    def _check_workers(self, call: str) -> None:
        """Fail the call when no worker offering a processor has been seen for too long."""
        if self.no_worker_timeout is None:
            return
        try:
            alive = sum(cluster_processors(self.client).values())
        except Exception:  # scheduler unreachable counts as no worker
            alive = 0
        now = time.monotonic()
        with self._lock:
            if alive > 0:
                self._no_worker_since = None
                return
            if self._no_worker_since is None:
                self._no_worker_since = now
            gone = now - self._no_worker_since
        if gone >= self.no_worker_timeout:
            raise WorkerDied(
                f"{call}: no Dask worker offering a `{PROCESSOR}` resource for {gone:.0f} s "
                f"(no_worker_timeout={self.no_worker_timeout:g}); the call cannot run",
                call=call,
            )

    def warm(self, modules: Iterable[str]) -> None:
        """Import modules on every worker now (off the critical path of the first calls)."""
        mods = list(dict.fromkeys(["prefect_llmorch.engine.dask", *modules]))

        def _import_all() -> None:
            for m in mods:
                importlib.import_module(m)

        try:
            self.client.run(_import_all)
        except Exception as exc:  # a missing module will fail its call clearly later
            logger.warning("could not pre-import %s on the Dask workers: %s", ", ".join(mods), exc)

    def shutdown(self) -> None:
        """Refuse new calls. Safe to call several times; the client is not ours to close."""
        self._closed = True

    def cancel_all(self, reason: str) -> None:
        """Refuse new calls (`ProcessorPool`); running ones end through their own `Cancel`
        tokens, which the runner's `cancel_all` sets (each cancels its Dask task)."""
        self._closed = True


class LLMOrchDaskTaskRunner(LLMOrchTaskRunner):
    """Run a plan's compute calls on the `processor`s of a Dask cluster, P at most at once.

    Holds a `prefect_dask.DaskTaskRunner` (`dask_runner`, same cluster settings) that owns
    the cluster and its client and runs every other task. The copy Prefect enters around each
    task run it ships to a Dask worker starts nothing until something is submitted to it.

    Args:
        cluster: a running `distributed` cluster object.
        address: address of a running Dask scheduler (`tcp://127.0.0.1:8786`).
        cluster_class: cluster class (or its qualified name) for a temporary cluster.
        cluster_kwargs: kwargs for the temporary cluster. For the default `LocalCluster`,
            `threads_per_worker` defaults to 1 and `resources` to
            `{"processor": threads_per_worker}`.
        adapt_kwargs, client_kwargs, performance_report_path: as for `DaskTaskRunner`.
        policy: `critical-path` (default) or `paper`.
        concurrency_limit: the Prefect global concurrency limit (created with limit P if
            absent); None disables it.
        preload: modules the workers import when the runner starts (your toolbox module).
        worker_timeout: seconds to wait at start for a worker offering a `processor`.
        no_worker_timeout: seconds a compute call waits with no such worker left before it
            fails (None: forever).
        resources: capacities of resource classes (`{"search-api": 2}`), added to (and
            overriding) what the workers offer, summed over them.
        gpus: GPU devices the workers see (`[{"id": 0, "mem_gb": 80}]`): calls demanding
            `gpu_mem_gb` are placed on one and run with `CUDA_VISIBLE_DEVICES` set to it.

    Attributes:
        dask_runner: the held `DaskTaskRunner` (a fresh one each time the runner starts).
        client: the started runner's Dask client (`dask_runner.client`).
        processors: P, the workers' `processor` resources (0 until started); with
            `adapt_kwargs` (a finite `maximum`, a `LocalCluster`), what the cluster may grow to.

    Raises:
        ValueError: conflicting cluster settings (as `DaskTaskRunner`), an unknown policy,
            or (at start) a cluster none of whose workers offers a `processor`.

    Examples:
        Against a running scheduler:

        >>> from prefect_llmorch import run_plan                                    # doctest: +SKIP
        >>> runner = LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:8786")         # doctest: +SKIP
        >>> run_plan("s1: burn(1.0)\\ns2: burn(1.0)", "prefect_llmorch.examples.toolbox:toolbox",
        ...          task_runner=runner)                                             # doctest: +SKIP

        A temporary local cluster of two single-processor workers, in a flow of your own:

        >>> from prefect import flow, task
        >>> @task(tags={"compute"})
        ... def square(x: int) -> int:
        ...     return x * x
        >>> @flow(task_runner=LLMOrchDaskTaskRunner(cluster_kwargs={"n_workers": 2}))
        ... def squares() -> list[int]:
        ...     return [f.result() for f in [square.submit(i) for i in range(4)]]
    """

    def __init__(
        self,
        cluster: distributed.deploy.Cluster | None = None,
        address: str | None = None,
        cluster_class: str | Callable[..., Any] | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        adapt_kwargs: dict[str, Any] | None = None,
        client_kwargs: dict[str, Any] | None = None,
        performance_report_path: str | None = None,
        *,
        policy: str = "critical-path",
        concurrency_limit: str | None = "llmorch-processors",
        preload: Iterable[str] = (),
        worker_timeout: float = 60.0,
        no_worker_timeout: float | None = 60.0,
        resources: dict[str, float] | None = None,
        gpus: Any = None,
    ) -> None:
        from prefect_llmorch.schedule.policy import check_policy

        check_policy(policy)  # before any cluster setting is looked at
        if worker_timeout <= 0:
            raise ValueError(f"worker_timeout must be positive, got {worker_timeout}")
        if no_worker_timeout is not None and no_worker_timeout <= 0:
            raise ValueError(f"no_worker_timeout must be positive or None, got {no_worker_timeout}")
        self._dask_settings: dict[str, Any] = dict(
            cluster=cluster,
            address=address,
            cluster_class=cluster_class,
            cluster_kwargs=cluster_kwargs,
            adapt_kwargs=adapt_kwargs,
            client_kwargs=client_kwargs,
            performance_report_path=performance_report_path,
        )
        # Validates the cluster settings (and resolves `cluster_class`) now; constructing it connects to nothing.
        self.dask_runner = DaskTaskRunner(**self._dask_settings)
        made = self.dask_runner.resolved_cluster_class  # None: the default LocalCluster
        local = made is None or isinstance(made, type) and issubclass(made, distributed.LocalCluster)
        if local and not address and cluster is None:  # a LocalCluster (or a subclass): a `processor` per thread
            kwargs = self._dask_settings["cluster_kwargs"] = self.dask_runner.cluster_kwargs
            kwargs.setdefault("resources", {PROCESSOR: kwargs.setdefault("threads_per_worker", 1)})
        LLMOrchTaskRunner.__init__(
            self, processors=1, policy=policy, concurrency_limit=concurrency_limit, preload=preload,
            resources=resources, gpus=gpus,
        )
        self._given_resources = dict(self.resources)  # what the settings say; the workers add theirs at start
        self.worker_resources: dict[str, dict[str, float]] = {}
        self.worker_timeout = worker_timeout
        self.no_worker_timeout = no_worker_timeout
        self.processors = 0  # P: known once started (the workers' `processor` resources)
        self.worker_processors: dict[str, int] = {}
        self._deferred = False  # entered on a Dask worker, not started yet
        self._start_lock = threading.Lock()

    # -- settings (those of the held DaskTaskRunner) ------------------------------------
    @property
    def address(self) -> str | None:
        return self._dask_settings["address"]

    @property
    def cluster_kwargs(self) -> dict[str, Any]:
        return self.dask_runner.cluster_kwargs

    @property
    def adapt_kwargs(self) -> dict[str, Any]:
        return self.dask_runner.adapt_kwargs

    @property
    def client_kwargs(self) -> dict[str, Any]:
        return self.dask_runner.client_kwargs

    @property
    def client(self) -> distributed.Client:
        """The Dask client of the started runner (its `DaskTaskRunner`'s `client`): submit
        your own Dask work to the same cluster, or read `client.cluster`.

        Unlike `DaskTaskRunner.client`, it does not start a cluster on a runner that is not
        started (a cluster nobody would close): enter the runner, or use it in a flow.

        Raises:
            RuntimeError: the runner is not started.
        """
        if self._deferred:  # the copy Prefect enters on a Dask worker starts when used
            self._start_deferred()
        if not self._started or self.pool is None:
            raise not_started(self)
        return self.dask_runner.client

    def _init_kwargs(self) -> dict[str, Any]:
        return dict(
            self._dask_settings,
            policy=self.policy,
            concurrency_limit=self.concurrency_limit,
            preload=self.preload,
            worker_timeout=self.worker_timeout,
            no_worker_timeout=self.no_worker_timeout,
            resources=dict(self._given_resources) or None,
            gpus=[dict(g) for g in self.gpus] or None,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LLMOrchDaskTaskRunner):
            return False
        # The Dask settings as `DaskTaskRunner.__eq__` compares them (settings, not cluster
        # objects; the defaults it fills in equal to leaving them out), then ours.
        by_dask = ("cluster", "address", "cluster_class", "cluster_kwargs", "adapt_kwargs", "client_kwargs")
        mine, theirs = ({k: v for k, v in r._init_kwargs().items() if k not in by_dask} for r in (self, other))
        return self.dask_runner == other.dask_runner and mine == theirs

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.address, self.policy, self.concurrency_limit, self.preload))

    def __getstate__(self) -> dict[str, Any]:
        # Cloudpickled with a flow run sent to a subprocess, and with each task run Prefect
        # sends to a Dask worker: settings only (no client, no locks, no cluster object).
        state = self._init_kwargs()
        state["cluster"] = None
        return state

    # -- life cycle -------------------------------------------------------------------
    def _open(self) -> None:
        # Prefect's `hydrated_context` enters a copy of the flow's runner around every task
        # run it ships to a Dask worker; that copy waits until a task is submitted to it.
        self._deferred = bool(_worker_address())
        if not self._deferred:
            LLMOrchTaskRunner._open(self)

    @property
    def started_dask(self) -> bool:
        """Whether the runner holds a Dask client, worker pool and threads now."""
        return self.pool is not None

    def _open_pool(self, stack: ExitStack) -> None:
        # A fresh DaskTaskRunner each start: a closed one keeps its closed client.
        dask_runner = DaskTaskRunner(**self._dask_settings)
        stack.enter_context(dask_runner)
        client = dask_runner.client  # public: creates the cluster if asked, connects
        self.dask_runner = dask_runner
        grows_to = self._adaptive_workers()
        if grows_to is None:
            self.worker_processors = self._wait_for_processors(client)
            self._offered(cluster_resources(client))
        else:  # adaptive: P and capacities are what the cluster may grow to
            self.worker_processors = {a: int(r[PROCESSOR]) for a, r in grows_to.items()}
            self._offered(grows_to)
        self.processors = sum(self.worker_processors.values())
        pool = DaskProcessorPool(client, no_worker_timeout=self.no_worker_timeout)
        for addr in sorted(self.worker_processors) if grows_to is None else ():
            pool.worker_index(addr)
        stack.callback(pool.shutdown)
        self.pool = pool
        threading.Thread(target=pool.warm, args=(self.preload,), daemon=True, name="llmorch-dask-warm").start()
        logger.info("Dask cluster %s: P = %s processors on %s workers", client, self.processors, len(self.worker_processors))

    def _adaptive_workers(self) -> dict[str, dict[str, float]] | None:
        """With `adapt_kwargs` on a cluster this runner creates, a finite `maximum` and worker
        resources the settings give (a `LocalCluster`'s defaults): the resources of the
        `maximum` workers the cluster may grow to, by made-up name. None otherwise: P is then
        what the workers present at start offer."""
        maximum = self.adapt_kwargs.get("maximum")
        per_worker = (self.cluster_kwargs or {}).get("resources") or {}
        if not self.adapt_kwargs or self.address or self._dask_settings["cluster"] is not None:
            return None
        if not isinstance(maximum, (int, float)) or not 1 <= maximum < float("inf") or per_worker.get(PROCESSOR, 0) <= 0:
            return None
        return {f"adaptive worker {i}": {k: float(v) for k, v in per_worker.items()} for i in range(int(maximum))}

    def _offered(self, workers: dict[str, dict[str, float]]) -> None:
        """The resources the workers offer beyond `processor`, summed, become capacities
        (those given to the runner win)."""
        self.worker_resources = {a: r for a, r in workers.items() if r.get(PROCESSOR, 0) > 0}
        offered: dict[str, float] = {}
        for res in self.worker_resources.values():
            for name, amount in res.items():
                if name != PROCESSOR and amount > 0:
                    offered[name] = offered.get(name, 0.0) + amount
        if self.gpus:
            offered.pop("gpu_mem_gb", None)  # the devices say how much there is
        self._offered_capacities = offered
        self.resources = {**offered, **self._given_resources}

    def use_resources(self, resources: Any, gpus: Any = None) -> None:
        """As `LLMOrchTaskRunner.use_resources`, on top of what the workers offer."""
        LLMOrchTaskRunner.use_resources(self, {**getattr(self, "_offered_capacities", {}), **(resources or {})}, gpus)

    def _dask_request(self, node: str, demand: Any) -> dict[str, float]:
        """What a compute call asks Dask for: its demand among the resources workers offer
        (`processor` for `processors`).

        Raises:
            DemandExceedsCapacity: no single worker offers that much (it could never start).
        """
        request: dict[str, float] = {}
        for name, amount in (demand or {PROCESSORS: 1.0}).items():
            dask_name = PROCESSOR if name == PROCESSORS else name
            largest = max((r.get(dask_name, 0.0) for r in self.worker_resources.values()), default=0.0)
            if name != PROCESSORS and largest <= 0:
                continue  # no worker offers it: the Coordinator alone bounds it (resources=/gpus=)
            if amount > largest + 1e-9:
                exc = DemandExceedsCapacity(node, name, amount, largest)
                exc.args = (
                    f"call {node} needs {name}={amount:g} but the largest Dask worker offers {dask_name}={largest:g}; "
                    "it could never start",
                )
                raise exc
            request[dask_name] = amount
        return request

    def _placed(self, sub: Any, device: Any) -> None:
        """A compute call passed out: its device (as the local runner) and its Dask request."""
        LLMOrchTaskRunner._placed(self, sub, device)
        sub.context.run(CALL_DASK_RESOURCES.set, self._dask_request(sub.node, sub.demand))

    def _start_deferred(self) -> None:
        with self._start_lock:
            if self._deferred:
                LLMOrchTaskRunner._open(self)
                self._deferred = False

    def _wait_for_processors(self, client: distributed.Client) -> dict[str, int]:
        deadline = time.monotonic() + self.worker_timeout
        where = self.address or "the cluster"
        while True:
            found = cluster_processors(client)
            if any(found.values()):
                return {a: n for a, n in found.items() if n > 0}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                adaptive = (
                    "; with adapt_kwargs, give a finite `maximum` and the workers' `resources` in cluster_kwargs "
                    "(P is then what the cluster may grow to), or a `minimum` of at least 1"
                ) if self.adapt_kwargs else ""
                raise ValueError(
                    f"no Dask worker at {where} offers a `{PROCESSOR}` resource after "
                    f"{self.worker_timeout:g} s ({len(found)} workers without it); start workers with "
                    f"`dask worker <scheduler> --nthreads 1 --resources {PROCESSOR}=1`{adaptive}"
                )
            try:  # wait for one more worker to arrive, not a fixed sleep
                client.wait_for_workers(len(found) + 1, timeout=min(remaining, 5.0))
            except TimeoutError:
                pass

    def __exit__(self, *exc_info: Any) -> None:
        with self._start_lock:
            self._deferred = False  # a copy never used stays never started
        LLMOrchTaskRunner.__exit__(self, *exc_info)  # cancels waiting calls, closes the stack

    # -- submit -----------------------------------------------------------------------
    def submit(  # type: ignore[override]
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, Any] | None = None,
    ) -> PrefectFuture[Any]:
        if self._deferred:
            self._start_deferred()
        if self._cancelled or not self._started or self._executor is None:
            return self._refuse(task)  # after a Ctrl-C a plan call ends Cancelled, as on the local runner
        if getattr(task, CALL_ATTR, None) is not None:
            # A compiled plan call: coordinated here, its compute body sent to Dask by `pool`.
            call_id = getattr(task, CALL_ATTR).call_id
            frg = self._frg
            if frg is not None and call_id in frg and frg.kind[call_id] == "compute":
                self._dask_request(call_id, frg.demand[call_id])  # one that could never start fails now
            return LLMOrchTaskRunner.submit(self, task, parameters, wait_for, dependencies)
        from prefect.context import TagsContext

        if "compute" not in (set(task.tags) | set(TagsContext.get().current_tags)):
            return self.dask_runner.submit(task, parameters, wait_for, dependencies)
        # DaskTaskRunner.submit has no `resources`: Dask's annotation gives the task a processor
        # (a context variable since dask 2023.7: this submission's alone, not other threads').
        with dask.annotate(resources={PROCESSOR: 1}):
            return self.dask_runner.submit(task, parameters, wait_for, dependencies)
