"""The `ProcessorPool` protocol: what runs one compute call on one processor.

The compiler and the task runner only need this much of a pool; the local pre-warmed
worker processes (`workers.WorkerPool`) and the Dask side (`engine.dask.DaskProcessorPool`)
implement it. The compiler is handed its pool explicitly, so it never imports the runner.

    >>> import operator
    >>> from prefect_llmorch.procs.workers import WorkerPool
    >>> with WorkerPool(1) as pool:                      # doctest: +SKIP
    ...     isinstance(pool, ProcessorPool), pool.run("s1 · add", operator.add, (1, 2)).value
    (True, 3)

Also here: the vocabulary a pool speaks (`Outcome`, `Cancel`, and the errors a call can end
with), so that both implementations and their callers share one set of names. No Prefect.
"""

from __future__ import annotations

import contextvars

import concurrent.futures
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, runtime_checkable

__all__ = [
    "ProcessorPool",
    "Outcome",
    "Cancel",
    "WorkerError",
    "WorkerDied",
    "CallTimeout",
    "CallCancelled",
    "CallNotSent",
]


class WorkerError(RuntimeError):
    """A compute call could not complete in its worker process."""

    def __init__(self, message: str, *, call: str, pid: int | None = None) -> None:
        self.call = call
        self.pid = pid
        super().__init__(message)


class WorkerDied(WorkerError):
    """The worker process died while running the call (killed, segfault, os._exit)."""


class CallTimeout(WorkerError, TimeoutError):
    """The call ran past its timeout; its worker process was killed and replaced."""


class CallCancelled(WorkerError):
    """The call was cancelled (if it was running, its worker process was killed and replaced)."""


class CallNotSent(WorkerError, TypeError):
    """The function or its arguments cannot be pickled, so the call never reached a worker."""


@dataclass(frozen=True)
class Outcome:
    """What a pool reports for one call."""

    value: Any
    start: float  # wall clock (time.time()) at the start of the function body
    end: float
    pid: int
    worker: int = -1  # index of the worker (the processor), 0..P-1


class Cancel:
    """A one-shot cancellation token for one call, shared by who cancels and who runs it.

    `wait(done, timeout)` lets a thread wait for either its own work (`done`) or the
    cancel; `on_set(fn)` registers what to do on a cancel (e.g. kill the worker process)
    and returns a function that unregisters it once the call has ended.
    """

    def __init__(self) -> None:
        self._set: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0

    def set(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._set.done():
                return
            self._set.set_result(reason)
            callbacks, self._callbacks = list(self._callbacks.values()), {}
        for fn in callbacks:  # outside the lock: they may take other locks
            fn()

    def is_set(self) -> bool:
        return self._set.done()

    @property
    def reason(self) -> str:
        return self._set.result() if self._set.done() else ""

    def on_set(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call `fn()` when the token is set (now, if it already is); returns the unregister."""
        with self._lock:
            if not self._set.done():
                key, self._next = self._next, self._next + 1
                self._callbacks[key] = fn
                return lambda: self._forget(key)
        fn()
        return lambda: None

    def _forget(self, key: int) -> None:
        with self._lock:
            self._callbacks.pop(key, None)

    def wait(self, done: concurrent.futures.Future[Any], timeout: float | None) -> None:
        """Wait until `done` is done, the token is set, or `timeout` passes."""
        wait_first([done, self._set], timeout)


#: How long the main thread blocks at a time while it waits (see `wait_first`).
_MAIN_THREAD_SLICE = 0.2


def wait_first(fs: Iterable[concurrent.futures.Future[Any]], timeout: float | None) -> None:
    """`concurrent.futures.wait(fs, timeout, FIRST_COMPLETED)` that Ctrl-C can always interrupt.

    A SIGINT that the kernel hands to another thread (the tool's), or that arrives just
    before the main thread blocks on a lock, does not interrupt the lock's wait, so its handler (KeyboardInterrupt, `host/interrupt.py`) would
    run only once the wait ends; in the main thread the wait is made of short slices instead.
    """
    fs = list(fs)
    if threading.current_thread() is not threading.main_thread():
        concurrent.futures.wait(fs, timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _MAIN_THREAD_SLICE if deadline is None else min(_MAIN_THREAD_SLICE, deadline - time.monotonic())
        if left <= 0:
            return
        done, _ = concurrent.futures.wait(fs, left, return_when=concurrent.futures.FIRST_COMPLETED)
        if done:
            return


#: Environment variables set in the worker process for the compute call run from this context
#: (the runner sets `CUDA_VISIBLE_DEVICES` to the GPU device the Coordinator placed the call on,
#: or to "" for a call without GPU memory when the run has devices).
CALL_ENV: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("llmorch_call_env", default=None)


@contextmanager
def call_env(env: Mapping[str, str] | None) -> Iterator[None]:
    """On the worker, around the call's function: its `CALL_ENV` set, then put back as it was."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@runtime_checkable
class ProcessorPool(Protocol):
    """Runs one compute call at a time per processor; the caller keeps at most P in flight.

    `run` blocks until the call is done and returns its `Outcome`, or raises what the
    function raised (the worker's traceback as `__cause__`), `CallTimeout`, `CallCancelled`
    (`cancel` was set: a running call is stopped where the pool can stop it),
    `WorkerDied`, or `CallNotSent`. `warm` imports modules on every processor ahead of the
    first call. `cancel_all` stops every running call (each raises `CallCancelled` with
    `reason`) and refuses new ones.
    """

    processors: int

    def run(
        self,
        call: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        cancel: Cancel | None = None,
    ) -> Outcome: ...

    def warm(self, modules: Iterable[str]) -> None: ...

    def cancel_all(self, reason: str) -> None: ...
