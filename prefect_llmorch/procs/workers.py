"""Pre-warmed worker processes for compute calls: one call per process at a time.

Why not `concurrent.futures.ProcessPoolExecutor`: a timeout must kill the process that
runs the call, and one dead worker must not break the other calls (ProcessPoolExecutor
fails every pending future with `BrokenProcessPool`). Each `Worker` here is one process
with its own pipe; the caller waits on the pipe and the process sentinel at once
(`multiprocessing.connection.wait`), like `concurrent.futures.process` does.

Workers never import Prefect nor talk to the Prefect API (each would start its own
ephemeral server): they get a pickled function and arguments, and send back the result
with the wall-clock start and end of the function body and their pid.

No Prefect here.
"""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable

from prefect_llmorch.host.process import PROCESS, Stage
from prefect_llmorch.procs.pool import CALL_ENV, call_env
from prefect_llmorch.procs.pool import (  # re-exported: the pool's vocabulary
    CallCancelled,
    CallNotSent,
    CallTimeout,
    Cancel,
    Outcome,
    WorkerDied,
    WorkerError,
)

__all__ = [
    "WorkerPool", "Worker", "prestart_pool", "take_pool", "RemoteTraceback", "ToolExit",
    "Outcome", "Cancel", "WorkerError", "WorkerDied", "CallTimeout", "CallCancelled", "CallNotSent",
]

# forkserver: workers fork from a clean single-threaded server process (safe although
# the flow process runs threads) in milliseconds, so a killed worker is replaced fast.
_START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class RemoteTraceback(Exception):
    """Carries the worker's formatted traceback as the `__cause__` of its exception."""

    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class ToolExit(RuntimeError):
    """A tool raised `SystemExit` or `KeyboardInterrupt`: that call's failure, like any exception.

    Converted where the tool ran (its worker process's reply, the inout call's helper thread),
    so that a `BaseException` raised in the caller's own thread (the user's Ctrl-C in the main
    thread) stays what it is. `raised` is the tool's exception type name, `code` its exit code.
    """

    def __init__(self, call: str, raised: BaseException) -> None:
        self.call = call
        self.raised = type(raised).__name__
        self.code = raised.code if isinstance(raised, SystemExit) else None
        super().__init__(f"{call}: the tool raised {raised!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_tool_exit, (self.call, self.raised, self.code, str(self)))


def _tool_exit(call: str, raised: str, code: Any, message: str) -> ToolExit:
    exc = ToolExit.__new__(ToolExit)
    RuntimeError.__init__(exc, message)
    exc.call, exc.raised, exc.code = call, raised, code
    return exc


def _dumps(obj: Any) -> bytes:
    try:
        if not _mentions_main(obj):
            return pickle.dumps(obj)
    except Exception:  # closures, lambdas: by value below
        pass
    # Workers do not import the user's __main__ (see _start_without_main): functions
    # defined there travel by value, as cloudpickle sends them.
    import cloudpickle

    return cloudpickle.dumps(obj)


def _mentions_main(obj: Any) -> bool:
    """Whether a (fn, args, kwargs) message holds something defined in `__main__`."""
    if isinstance(obj, tuple):
        return any(_mentions_main(o) for o in obj)
    if isinstance(obj, (list, dict)):
        values = obj.values() if isinstance(obj, dict) else obj
        return any(_mentions_main(o) for o in values)
    return getattr(obj, "__module__", None) == "__main__" or getattr(type(obj), "__module__", None) == "__main__"


class _Starts:
    """Worker starts under way in this process, and multiprocessing's own preparation hook
    while ours is in: `spawn.get_preparation_data` is one function for the whole process, and
    starts of several runners overlap (held by `host.process.PROCESS`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.original: Any = None


def _start_without_main(process: Any) -> None:
    """Start a worker process without re-importing the parent's `__main__` in it.

    multiprocessing re-runs the main script in each new forkserver/spawn child (CPython
    3.11's forkserver does not preload it, though it means to), which costs a script that
    imports Prefect about a second per worker, and runs unguarded top-level code again.
    Our workers need nothing from `__main__`: `_dumps` sends functions defined there by
    value. So the child's preparation data leaves the main module out. The hook stays in
    while any worker starts, so starts run in parallel.
    """
    from multiprocessing import spawn

    starts = PROCESS.hold(_Starts)
    with starts.lock:
        if starts.count == 0:
            starts.original = spawn.get_preparation_data
            spawn.get_preparation_data = _without_main
        starts.count += 1
    try:
        process.start()
    finally:
        with starts.lock:
            starts.count -= 1
            if starts.count == 0:
                spawn.get_preparation_data = starts.original


def _without_main(name: str) -> dict[str, Any]:
    data = PROCESS.hold(_Starts).original(name)
    data.pop("init_main_from_path", None)
    data.pop("init_main_from_name", None)
    return data


def _exit_with(owner: int) -> None:
    """End this worker when the process that owns it is gone (`kill -9` of a script or of
    `llmorch`): a tool running then would run to its end, holding a processor and the
    owner's standard output (`python agent.py | tee log` would not return)."""
    import select

    try:
        fd = os.pidfd_open(owner)
        select.select([fd], [], [])
    except (AttributeError, OSError):  # no pidfd: poll
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(0.5)
    os._exit(1)


def _worker_main(conn: Connection, affinity: list[int] | None, owner: int | None = None) -> None:
    """Worker loop: receive (fn, args, kwargs) or ("import", modules); reply."""
    if owner is not None:
        threading.Thread(target=_exit_with, args=(owner,), daemon=True, name="llmorch-owner").start()
    # A terminal's Ctrl-C reaches the whole process group: the parent decides what stops
    # (it kills the worker of a cancelled call), so the tool must not see a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if affinity:
        try:
            import psutil

            psutil.Process().cpu_affinity(affinity)
        except Exception:  # pinning is best effort (not every platform allows it)
            pass
    pid = os.getpid()
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            op, payload = pickle.loads(message)
        except Exception as exc:
            conn.send_bytes(_dumps(("error", _portable(exc), traceback.format_exc(), 0.0, 0.0, pid)))
            continue
        if op == "import":
            for module in payload:
                try:
                    importlib.import_module(module)
                except Exception:  # a failed warm-up shows again, clearly, at call time
                    pass
            conn.send_bytes(_dumps(("ok", None, 0.0, 0.0, pid)))
            continue
        fn, args, kwargs, env = payload
        start = time.time()
        try:
            with call_env(env):  # set per call, before the function runs (e.g. CUDA_VISIBLE_DEVICES)
                value = fn(*args, **kwargs)
        except BaseException as exc:  # report everything, including SystemExit
            conn.send_bytes(_dumps(("error", _portable(exc), traceback.format_exc(), start, time.time(), pid)))
            continue
        end = time.time()
        try:
            data = _dumps(("ok", value, start, end, pid))
        except Exception as exc:
            data = _dumps(
                ("error", TypeError(f"result of type {type(value).__name__} cannot be sent back: {exc}"), "", start, end, pid)
            )
        conn.send_bytes(data)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it pickles, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class Worker:
    """One worker process and its pipe."""

    def __init__(self, ctx: Any, index: int, affinity: list[int] | None) -> None:
        self.index = index
        self._affinity = affinity
        self.cancelled = ""  # why, when its call was cancelled and the process killed
        parent, child = ctx.Pipe(duplex=True)
        self.conn: Connection = parent
        self.process = ctx.Process(
            target=_worker_main, args=(child, affinity, os.getpid()), name=f"llmorch-worker-{index}", daemon=True
        )
        _start_without_main(self.process)
        child.close()

    @property
    def pid(self) -> int:
        return self.process.pid  # type: ignore[return-value]

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.close()  # EOF ends the loop
        except OSError:
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2)

    def run(
        self, call: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None,
        env: dict[str, str] | None = None,
    ) -> Outcome:
        """Run one call; raise its exception (remote traceback as cause), `CallTimeout`
        or `WorkerDied`. The caller replaces the worker after the last two."""
        sent = time.time()  # before the send: the idle worker may begin before send_bytes returns
        try:
            self.conn.send_bytes(_dumps(("call", (fn, args, kwargs, env or {}))))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise CallNotSent(
                f"{call}: its function or arguments cannot be pickled, so it cannot be sent to a worker "
                f"process ({type(exc).__name__}: {exc}); define the function at module level (importable) "
                "and pass picklable arguments",
                call=call,
            ) from exc
        except (BrokenPipeError, OSError):
            raise WorkerDied(f"{call}: worker process {self.pid} was dead before the call started", call=call, pid=self.pid) from None
        ready = wait([self.conn, self.process.sentinel], timeout)
        if self.conn in ready:
            try:
                reply = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                ready = [self.process.sentinel]
            else:
                try:
                    return dataclasses.replace(_unpack(call, reply), worker=self.index)
                except BaseException as exc:
                    exc.llmorch_worker = self.index  # type: ignore[attr-defined]
                    raise
        if not ready:
            self.kill()
            raise _ran(CallTimeout(
                f"{call} ran past its timeout of {timeout:g} s; worker process {self.pid} was killed",
                call=call,
                pid=self.pid,
            ), sent)
        self.process.join(timeout=5)
        code = self.process.exitcode
        if self.cancelled:
            raise _ran(CallCancelled(
                f"{call} was cancelled ({self.cancelled}); worker process {self.pid} was killed", call=call, pid=self.pid
            ), sent)
        raise _ran(WorkerDied(
            f"{call}: worker process {self.pid} died while running it (exit code {code})",
            call=call,
            pid=self.pid,
        ), sent)

    def warm(self, modules: list[str]) -> None:
        self.conn.send_bytes(_dumps(("import", modules)))
        if wait([self.conn, self.process.sentinel], 60) and self.conn.poll():
            self.conn.recv_bytes()


def _ran(exc: WorkerError, sent: float) -> WorkerError:
    """`exc` timed like a tool's failure (`llmorch_timing`): a call whose worker was killed
    ran from when it was sent until its death was seen (the worker cannot say any more)."""
    exc.llmorch_timing = (sent, time.time(), exc.pid)  # type: ignore[attr-defined]
    return exc


def _unpack(call: str, reply: tuple[Any, ...]) -> Outcome:
    if reply[0] == "ok":
        _, value, start, end, pid = reply
        return Outcome(value, start, end, pid)
    _, exc, tb, start, end, pid = reply
    if not isinstance(exc, Exception):  # the tool's SystemExit/KeyboardInterrupt: this call's failure
        exc = ToolExit(call, exc)
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    exc.llmorch_timing = (start, end, pid)  # type: ignore[attr-defined]
    raise exc


@dataclass(frozen=True)
class _NoWorker:
    """Put in the idle queue when no worker will come: whoever takes it fails, not waits."""

    reason: str


class WorkerPool:
    """P worker processes; `run` borrows an idle one for one call.

    The caller (the task runner) keeps at most P calls in flight, so `run` normally finds
    an idle worker at once; it waits only while a killed worker is being replaced.

    Args:
        processors: number of worker processes (P).
        pin: pin worker i to CPU i % cpu_count with psutil.
        preload: modules each worker imports at start (e.g. the toolbox), off the
            critical path.
    """

    def __init__(self, processors: int, *, pin: bool = False, preload: Iterable[str] = ()) -> None:
        if processors < 1:
            raise ValueError(f"processors must be at least 1, got {processors}")
        self.processors = processors
        self._pin = pin
        self._ctx = mp.get_context(_START_METHOD)
        self._idle: "queue.Queue[Worker]" = queue.Queue()
        self._workers: dict[int, Worker] = {}
        self._running: dict[Worker, Cancel | None] = {}  # every worker running a call -> its token
        self._cancelled_all = ""  # why, once cancel_all() was called: no call starts any more
        self._lock = threading.Lock()
        self._closed = False
        self._preload = list(preload)
        cpus = os.cpu_count() or 1
        starts = [(i, [i % cpus] if pin else None) for i in range(processors)]
        if processors <= 2:
            for i, affinity in starts:
                self._spawn(i, affinity)
        else:  # in parallel: a start waits for the forkserver, one after the other cost ~60 ms each
            threads = [threading.Thread(target=self._spawn, args=a, daemon=True) for a in starts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    def _spawn(self, index: int, affinity: list[int] | None) -> None:
        try:
            worker = Worker(self._ctx, index, affinity)
        except Exception as exc:  # no process could be started: callers must not wait for it
            self._idle.put(_NoWorker(f"worker process {index} could not be started: {exc}"))
            return
        with self._lock:
            if self._closed:
                worker.stop()
                return
            self._workers[index] = worker
        if self._preload:
            threading.Thread(target=self._warm_then_idle, args=(worker,), daemon=True).start()
        else:
            self._idle.put(worker)

    def _warm_then_idle(self, worker: Worker) -> None:
        try:
            worker.warm(self._preload)
        except OSError:
            pass
        self._idle.put(worker)

    def warm(self, modules: Iterable[str]) -> None:
        """Import modules in every worker, in the background (before the plan arrives)."""
        mods = [m for m in modules if m not in self._preload]
        if not mods:
            return
        self._preload.extend(mods)

        def _all() -> None:
            borrowed = [self._idle.get() for _ in range(self.processors)]
            for w in borrowed:
                try:
                    w.warm(mods)
                except OSError:
                    pass
                self._idle.put(w)

        threading.Thread(target=_all, daemon=True).start()

    def healthy(self, idle: bool = False) -> bool:
        """Open, not cancelled, all P workers alive (and, with `idle`, none running a call)."""
        with self._lock:
            if self._closed or self._cancelled_all or len(self._workers) != self.processors or (idle and self._running):
                return False
            workers = list(self._workers.values())
        return all(w.alive() for w in workers)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers.values()]

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
        """Run `fn(*args, **kwargs)` in an idle worker process; `cancel.set()` stops it.

        Raises:
            CallTimeout: past `timeout`; the worker was killed and is being replaced.
            CallCancelled: cancelled; if it was running, its worker was killed and is being replaced.
            WorkerDied: the worker died mid-call; it is being replaced.
            Exception: whatever `fn` raised, with the worker traceback as `__cause__`.
        """
        if self._closed:
            raise RuntimeError("WorkerPool is shut down")
        worker = self._idle.get()
        if isinstance(worker, _NoWorker):
            self._idle.put(worker)  # every later call sees it too
            raise WorkerDied(f"{call}: {worker.reason}", call=call)
        with self._lock:
            refused = self._cancelled_all or (cancel.reason if cancel is not None and cancel.is_set() else "")
            if not refused:
                self._running[worker] = cancel
        if refused:
            self._idle.put(worker)
            raise CallCancelled(f"{call} was cancelled before it started ({refused})", call=call)
        if cancel is not None:
            forget = cancel.on_set(lambda: self._kill_for(cancel))
        try:
            outcome = worker.run(call, fn, args, kwargs or {}, timeout, dict(CALL_ENV.get() or {}))
        except WorkerError as exc:
            self._release(worker)
            self._replace(worker)
            if worker.cancelled and not isinstance(exc, CallCancelled):
                # killed by the cancel before or while the call was sent: a cancel, not a death
                cancelled = CallCancelled(f"{call} was cancelled ({worker.cancelled})", call=call, pid=exc.pid)
                if hasattr(exc, "llmorch_timing"):
                    cancelled.llmorch_timing = exc.llmorch_timing  # type: ignore[attr-defined]
                raise cancelled from None
            raise
        except BaseException:
            self._give_back(worker)
            raise
        finally:
            if cancel is not None:
                forget()
        self._give_back(worker)
        return outcome

    def _release(self, worker: Worker) -> None:
        with self._lock:
            self._running.pop(worker, None)

    def _give_back(self, worker: Worker) -> None:
        """Return a worker whose call ended; one that a late cancel is killing is replaced."""
        self._release(worker)
        if worker.cancelled:
            self._replace(worker)
        else:
            self._idle.put(worker)

    def _replace(self, worker: Worker) -> None:
        worker.kill()
        with self._lock:
            self._workers.pop(worker.index, None)
        if not self._closed:
            # Replace in the background: the failure is reported now, not after a start-up.
            threading.Thread(target=self._spawn, args=(worker.index, worker._affinity), daemon=True).start()

    def _kill_for(self, cancel: Cancel) -> None:
        """`cancel` was set: kill the worker running its call, if it still runs."""
        with self._lock:
            worker = next((w for w, token in self._running.items() if token is cancel), None)
            if worker is not None:
                worker.cancelled = cancel.reason or "cancelled"
        if worker is not None and worker.process.is_alive():
            worker.process.kill()  # Worker.run, waiting on the sentinel, raises CallCancelled

    def cancel_all(self, reason: str = "cancelled") -> None:
        """Kill every worker running a call (each call raises `CallCancelled` with `reason`;
        the workers are replaced) and refuse every later call. Safe to call several times."""
        with self._lock:
            if not self._cancelled_all:
                self._cancelled_all = reason
            running = list(self._running)
            for worker in running:
                worker.cancelled = worker.cancelled or reason
        for worker in running:
            if worker.process.is_alive():
                worker.process.kill()  # Worker.run, waiting on the sentinel, raises CallCancelled

    def shutdown(self) -> None:
        """Stop every worker. Safe to call several times."""
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
            self._workers.clear()
        self._idle.put(_NoWorker("the worker pool was shut down"))  # wakes callers still waiting
        for w in workers:
            w.stop()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# -- a pool started ahead of its runner, or kept after it ---------------------------------

#: Seconds a runner's pool is kept, at its end, for this process's next runner with the same
#: P and pinning (`LLMORCH_KEEP_WORKERS_SECONDS`; 0: shut down at once). Back-to-back runs in
#: a warm process then start no worker processes: the start and the toolbox import in each
#: worker sat before the first compute call and took cores from the first calls.
KEEP_WORKERS_SECONDS = 30.0


def _keep_workers_seconds() -> float:
    try:
        return max(float(os.environ.get("LLMORCH_KEEP_WORKERS_SECONDS", KEEP_WORKERS_SECONDS)), 0.0)
    except ValueError:
        return KEEP_WORKERS_SECONDS


@dataclass(eq=False)
class _Spare:
    """The pool waiting for this process's next runner: being started (`thread`), or kept
    from the last runner (`timer` shuts it down if nobody takes it)."""

    settings: tuple[int, bool]  # (P, pin)
    box: list["WorkerPool"]  # the pool, once started
    thread: threading.Thread | None = None
    timer: threading.Timer | None = None

    def pool(self) -> "WorkerPool | None":
        if self.thread is not None:
            self.thread.join()
        if self.timer is not None:
            self.timer.cancel()
        return self.box[0] if self.box else None


class _Offered:
    """The one pool waiting for this process's next runner (held by `host.process.PROCESS`,
    which stops it at exit, stage WORKERS)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spare: _Spare | None = None
        PROCESS.at_exit(Stage.WORKERS, _discard_at_exit)


def prestart_pool(processors: int, *, pin: bool = False, preload: Iterable[str] = ()) -> None:
    """Start a `WorkerPool` now, in the background, for the next `take_pool` of this process
    (`llmorch run` starts it while Prefect's server starts). One at a time: a second call
    shuts the first pool down."""
    box: list[WorkerPool] = []
    modules = list(preload)
    thread = threading.Thread(
        target=lambda: box.append(WorkerPool(processors, pin=pin, preload=modules)),
        daemon=True, name="llmorch-prestart",
    )
    thread.start()
    _offer(_Spare((processors, pin), box, thread=thread))


def _offer(spare: _Spare) -> None:
    offered = PROCESS.hold(_Offered)
    with offered.lock:
        previous, offered.spare = offered.spare, spare
    if previous is not None:
        _discard(previous)


def _withdraw(only: _Spare | None = None) -> _Spare | None:
    """Take the waiting pool off offer (only if it is `only`, when given)."""
    offered = PROCESS.hold(_Offered)
    with offered.lock:
        if only is not None and offered.spare is not only:
            return None
        taken, offered.spare = offered.spare, None
    return taken


def take_pool(processors: int, *, pin: bool = False, preload: Iterable[str] = ()) -> WorkerPool:
    """The pool `prestart_pool` started or the last runner kept (`keep_pool`), when it has
    these settings and every worker is alive (modules it has not imported yet are warmed
    now); otherwise a new `WorkerPool`."""
    taken = _withdraw()
    if taken is not None:
        if taken.settings == (processors, pin):
            pool = taken.pool()
            if pool is not None and pool.healthy():
                pool.warm(preload)
                return pool
        _discard(taken)
    return WorkerPool(processors, pin=pin, preload=preload)


def keep_pool(pool: WorkerPool) -> None:
    """A runner's pool at its end: kept `LLMORCH_KEEP_WORKERS_SECONDS` for this process's
    next `take_pool` when every worker is idle and alive, else shut down."""
    seconds = _keep_workers_seconds()
    if seconds <= 0 or not pool.healthy(idle=True):
        pool.shutdown()
        return
    spare = _Spare((pool.processors, pool._pin), [pool])
    spare.timer = threading.Timer(seconds, _expire, args=(spare,))
    spare.timer.daemon = True
    spare.timer.start()
    _offer(spare)


def _expire(spare: _Spare) -> None:
    """A kept pool nobody took: shut it down."""
    if _withdraw(spare) is not None:
        _discard(spare)


def _discard(spare: _Spare) -> None:
    pool = spare.pool()
    if pool is not None:
        pool.shutdown()


def _discard_at_exit() -> None:
    spare = _withdraw()
    if spare is not None:
        _discard(spare)

