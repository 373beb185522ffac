"""Ctrl-C and SIGTERM stop a run: the report of what finished, then exit 130 / 143.

The CLI wraps the flow call in `stop_on_signals()`. On the first SIGINT or SIGTERM:

- the signal is recorded (`received()`), and a thread calls `cancel_all()` on every live
  `LLMOrchTaskRunner` of this process (`live_runners()`, where each runner registers itself: Prefect runs a
  duplicate of the flow's runner, so the registry is how the handler finds it): no queued
  call starts, running compute calls are killed in their workers, inout calls are
  abandoned, and every call's future ends;
- the flow body, which was waiting on those futures, builds its report (`Execution.finish`
  marks it: `mark(report)`) and returns a `Cancelled` final state naming the signal
  (`run.conclude` -> `cancelled(report)`);
- the CLI prints the report and exits with `exit_code()` (128 + the signal number).

A second Ctrl-C (or SIGTERM) exits at once with the same code, without a report.

Why the work is done on a thread: a signal handler runs in the main thread between two
bytecodes, possibly while that thread holds a lock `cancel_all` needs.

Prefect's flow engine installs its own SIGTERM handler while a flow runs (it turns SIGTERM
into a crash); `rearm()`, called by our flows at the start of their body, puts ours back for
the body's duration when the CLI asked for it, so SIGTERM means what SIGINT means.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from prefect_llmorch.host.process import PROCESS

__all__ = ["cancelled", "exit_code", "mark", "rearm", "received", "stop_on_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Cancellable(Protocol):
    def cancel_all(self) -> None: ...


@dataclass
class _Signals:
    """What a signal does in this process (held by `PROCESS`): whether `stop_on_signals` is
    active, the signal received, the handlers it replaced; and the task runners started and
    not yet left (one per flow run), each registered by the runner itself: Prefect runs a
    duplicate of the flow's runner, in the flow's own thread, so the handler finds the live
    ones here."""

    active: bool = False
    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)
    on_second: Callable[[int], None] | None = None
    live: dict[int, Cancellable] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _signals() -> _Signals:
    return PROCESS.hold(_Signals)


def received() -> str | None:
    """The name of the signal that stopped this run (`SIGINT`, `SIGTERM`), or None (also
    outside `stop_on_signals`: a library caller's flows never end Cancelled by it)."""
    guard = _signals()
    if not guard.active or guard.signum is None:
        return None
    return signal.Signals(guard.signum).name


def exit_code() -> int:
    """The shell's code for the signal received: 130 for SIGINT, 143 for SIGTERM (0: none)."""
    signum = _signals().signum
    return 128 + signum if received() is not None and signum is not None else 0


def register(runner: Cancellable) -> None:
    guard = _signals()
    with guard.lock:
        guard.live[id(runner)] = runner


def unregister(runner: Cancellable) -> None:
    guard = _signals()
    with guard.lock:
        guard.live.pop(id(runner), None)


def live_runners() -> list[Any]:
    """The task runners of this process that have started and not yet been left."""
    guard = _signals()
    with guard.lock:
        return list(guard.live.values())


def _cancel_live_runners() -> None:
    """Cancel every live runner, and every one that starts later while the guard is active:
    a signal that comes while Prefect is still starting (before the flow run's runner
    exists) must stop that runner as soon as it does."""
    done: weakref.WeakSet[Cancellable] = weakref.WeakSet()  # not ids: a later runner may reuse one
    while _signals().active:
        for runner in live_runners():
            if runner in done:
                continue
            done.add(runner)
            try:
                runner.cancel_all()
            except Exception as exc:  # never let one runner keep the others running
                _say(f"llmorch: cancelling a task runner failed: {exc}\n")
        time.sleep(0.05)


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _handle(signum: int, frame: Any) -> None:
    guard = _signals()
    if guard.signum is not None:  # the second one: out now
        if guard.on_second is not None:
            guard.on_second(signum)
        os._exit(128 + guard.signum)
    guard.signum = signum
    name = signal.Signals(signum).name
    # os.write, not print: the main thread may be inside a write to stderr right now, and a
    # buffered stream entered again from a signal handler raises.
    _say(f"llmorch: {name}: stopping the run (no new call starts, running calls are cancelled); "
         "press Ctrl-C again to exit at once\n")
    threading.Thread(target=_cancel_live_runners, name="llmorch-interrupt", daemon=True).start()


@contextmanager
def stop_on_signals(on_second: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within: the first SIGINT/SIGTERM stops the run, a second one exits at once.

    Call from the main thread (elsewhere it does nothing). The previous handlers come back
    on the way out (read `received()` / `exit_code()` before leaving).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    guard = _signals()
    guard.signum = None
    guard.on_second = on_second
    guard.previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    guard.active = True
    try:
        yield
    finally:
        guard.active = False
        for s, handler in guard.previous.items():
            signal.signal(s, handler)
        guard.previous = {}


def rearm() -> None:
    """Inside a flow body: our handlers again while `stop_on_signals` is active (Prefect's
    engine replaced SIGTERM's for the flow run and puts ours back when the run ends);
    otherwise nothing changes."""
    if not _signals().active or threading.current_thread() is not threading.main_thread():
        return
    for s in SIGNALS:
        if signal.getsignal(s) is not _handle:
            signal.signal(s, _handle)


def mark(report: Any) -> Any:
    """Mark `report` as stopped by the signal received (state `Cancelled`, a message saying
    which signal and what completed); returns it."""
    name = received() or "a signal"
    stopped = [c.id for c in report.calls if c.state != "Completed"]
    done = len(report.calls) - len(stopped)
    report.state = "Cancelled"
    report.message = (
        f"stopped by {name}: {done} of {len(report.calls)} calls completed"
        + (f"; not completed: {', '.join(stopped)}" if stopped else "")
    )
    return report


def cancelled(report: Any) -> Any:
    """The flow's `Cancelled` final state for a report `mark` marked (its result: the report)."""
    from prefect.states import Cancelled

    return Cancelled(message=report.message, data=report)
