"""What outlives one run in this process: held by one owner, ended at exit in one order.

A run's state belongs to its runner and its flow run. A few things outlive runs by design,
or are reached from places that have no run to ask (a signal handler, a paused approval
flow, an exit hook): the embedded Prefect server, the live runners a Ctrl-C stops, the
terminal that asks approvals, the MCP sessions, the rate limits made, the cost history
read. Each is one object of its own class, held here (`hold`); what must be ended at exit
says in which stage (`at_exit`), and the stages run in this order (CONTRIBUTING.md,
"Process-wide state"):

1. `RECORDS`: runs' records (artifacts) sent, before Prefect stops its events worker;
2. `LEASES`: slots kept for a next runner given back, while the server still answers;
3. `SESSIONS`: MCP sessions closed (a stdio server ends with its session);
4. `WORKERS`: spare worker processes stopped;
5. `SERVER`: the embedded Prefect server stopped, last: every stage above may talk to it.

    terminal = PROCESS.hold(Terminal)          # this process's one Terminal, made on first use
    PROCESS.at_exit(Stage.LEASES, give_back)   # called once at exit, before Stage.SERVER's

Python ends a process in two phases, so the owner hooks into both, each at its first use:
`RECORDS` runs from a `threading._register_atexit` callback (before non-daemon threads are
joined, and before the Prefect services registered earlier stop: those callbacks run
last-registered first; CONTRIBUTING.md, private names), the other stages from one `atexit`
callback. Exit hooks registered after that one (Prefect's own) run before it.

A forked child holds nothing of its parent's (its threads, processes and sessions are not
the child's): the first `hold` or `at_exit` in a new process starts empty.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import threading
from typing import Any, Callable, TypeVar

__all__ = ["PROCESS", "Process", "Stage"]

logger = logging.getLogger("prefect_llmorch.host.process")

T = TypeVar("T")


class Stage(enum.IntEnum):
    """When something held ends at exit: in this order, lowest first."""

    RECORDS = 1
    LEASES = 2
    SESSIONS = 3
    WORKERS = 4
    SERVER = 5


class Process:
    """The owner of what outlives one run in this process (`PROCESS`; tests make their own).

    `hold(kind)` gives the one `kind()` of this process, made on first use; `at_exit(stage,
    close)` has `close()` called once, at exit (or by `close()`), in stage order. A closer
    that fails is logged and never keeps the later ones from running.
    """

    def __init__(self, *, hook: bool = True) -> None:
        self._lock = threading.RLock()  # re-entered: a kind's constructor may hold another
        self._pid = os.getpid()
        self._held: dict[type, Any] = {}
        self._closers: dict[Callable[[], None], Stage] = {}  # in the order registered
        self._done: set[Callable[[], None]] = set()
        self._hook = hook  # False: no exit hooks (a test's own owner, closed by hand)
        self._hooked: set[str] = set()

    def _same_process(self) -> None:
        # under the lock; a forked child drops its parent's objects (not their resources: the
        # parent ends those)
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._held.clear()
            self._closers.clear()
            self._done.clear()

    def hold(self, kind: type[T]) -> T:
        """This process's one `kind` (`kind()` the first time)."""
        found = self._held.get(kind)  # no lock on the way that finds it: a signal handler asks
        if found is not None and self._pid == os.getpid():
            return found  # type: ignore[no-any-return]
        with self._lock:
            self._same_process()
            found = self._held.get(kind)
            if found is None:
                found = self._held[kind] = kind()
            return found  # type: ignore[no-any-return]

    def held(self) -> list[object]:
        """What this process holds now, in the order it was made."""
        with self._lock:
            self._same_process()
            return list(self._held.values())

    def at_exit(self, stage: Stage, close: Callable[[], None]) -> None:
        """Call `close()` once at exit, in `stage` (again with the same `close`: nothing new)."""
        with self._lock:
            self._same_process()
            if close in self._closers:
                return
            self._closers[close] = stage
            if not self._hook:
                return
            if stage is Stage.RECORDS and "threading" not in self._hooked:
                self._hooked.add("threading")
                threading._register_atexit(self._before_threads_join)  # type: ignore[attr-defined]
            elif stage is not Stage.RECORDS and "atexit" not in self._hooked:
                self._hooked.add("atexit")
                atexit.register(self.close)

    def _before_threads_join(self) -> None:
        self.close(through=Stage.RECORDS)

    def close(self, through: Stage = Stage.SERVER) -> None:
        """Call the closers of every stage up to `through`, in stage order (within a stage, in
        the order registered); each closer runs once, however often this is called."""
        with self._lock:
            self._same_process()
            due = sorted(
                ((stage, i, close) for i, (close, stage) in enumerate(self._closers.items())
                 if stage <= through and close not in self._done),
                key=lambda item: (item[0], item[1]),
            )
            self._done.update(close for _, _, close in due)
        for stage, _, close in due:  # not under the lock: a closer may wait for threads that hold things
            try:
                close()
            except Exception as exc:  # one failing never keeps the later stages from running
                logger.warning("ending %s at exit (%s) failed: %s: %s",
                               getattr(close, "__qualname__", close), stage.name, type(exc).__name__, exc)


#: The owner of this process's long-lived objects: the one process-global registry of the
#: package besides those listed in CONTRIBUTING.md ("Process-wide state").
PROCESS = Process()
