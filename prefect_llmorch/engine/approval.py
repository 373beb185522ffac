"""A person's approval of one call, with its arguments, before it runs (`@inout(approve=True)`).

    @inout(approve=True)
    def delete_file(path: str) -> str: ...

Each call of such a function waits for a person: in the Prefect UI, or on the terminal that
runs `llmorch run` / `llmorch ask`. Approved, it runs; rejected, it fails with
`ApprovalRejected` ("rejected by the user"), a failure like any other that trace-back
recovery may plan around; unanswered for `approval_timeout()` seconds, it fails with
`ApprovalTimeout`, which says so.

Each call gets a paused flow run of its own (`llmorch-approval`, a subflow under the call's
approval task run) whose `ApprovalInput` form the UI's Resume button or the terminal
(`terminal_prompts`) answers; why not a pause of the plan's flow run or of a task run, and
how the runner holds nothing meanwhile (`Compiler.runner_graph`): docs/approval.md.
"""

from __future__ import annotations

import contextvars
import logging
import os
import select
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from pydantic import Field

from prefect import flow
from prefect.input import RunInput

from prefect_llmorch.procs.pool import Cancel
from prefect_llmorch.host.process import PROCESS

__all__ = [
    "ApprovalInput", "ApprovalRejected", "ApprovalTimeout", "ApprovalUnavailable", "Verdict", "approval_timeout",
    "request_approval", "pending_approvals", "terminal_prompts", "APPROVAL_FLOW",
]

logger = logging.getLogger("prefect_llmorch.engine.approval")

#: The name of the flow runs that wait for approvals.
APPROVAL_FLOW = "llmorch-approval"
#: Seconds to wait for a person, unless `LLMORCH_APPROVAL_TIMEOUT` says otherwise.
DEFAULT_TIMEOUT = 3600.0
#: How often the waiting flow run asks the API whether it was resumed (Prefect's default is 10 s).
POLL_SECONDS = 1
#: Characters of one argument's value shown in a request.
MAX_VALUE_CHARS = 500


def approval_timeout() -> float:
    """Seconds a call waits for approval: `LLMORCH_APPROVAL_TIMEOUT`, else one hour.

    Raises:
        ValueError: the variable is not a number > 0.
    """
    text = os.environ.get("LLMORCH_APPROVAL_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"LLMORCH_APPROVAL_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


class ApprovalInput(RunInput):
    """The form the Prefect UI shows on a paused `llmorch-approval` run (and what the terminal sends)."""

    approve: bool = Field(False, description="Run this call with these arguments? Leave off to reject it.")
    note: str = Field("", description="Optional: why (shown in the run's report when rejected).")


class ApprovalRejected(RuntimeError):
    """A person rejected the call: it did not run."""


class ApprovalTimeout(RuntimeError):
    """Nobody approved the call in time: it did not run."""


class ApprovalUnavailable(RuntimeError):
    """The approval could not be asked (the API refused the pause, ...): the call did not run."""


@dataclass(frozen=True)
class Verdict:
    """What became of one approval request.

    Attributes:
        outcome: `approved`, `rejected`, `timed out`, `cancelled` (the run stopped it while
            it waited), `unavailable` (it could not be asked: see `note`), or `skipped` (no
            request was made: the call will not run, or fails on its arguments by itself).
        by: who answered (`ui`: the Prefect UI or API, `terminal`), or "".
        note: the person's note, or why there was no request.
        flow_run_id: the `llmorch-approval` flow run, if one was made.
        waited: seconds the call waited.
    """

    outcome: str
    by: str = ""
    note: str = ""
    flow_run_id: str | None = None
    waited: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, value: Any) -> "Verdict | None":
        """The verdict an approval task returned (a dict once Prefect stored it), else None."""
        if isinstance(value, Verdict):
            return value
        if isinstance(value, Mapping) and "outcome" in value:
            return cls(**{k: value[k] for k in ("outcome", "by", "note", "flow_run_id", "waited") if k in value})
        return None


# -- the terminal --------------------------------------------------------------------------

@dataclass
class _Pending:
    flow_run_id: uuid.UUID
    call: str  # its id
    label: str  # `s3 · delete_file`
    arguments: dict[str, str]
    decided: threading.Event
    #: the thread that asked (`request_approval`'s helper): a withdrawal ends its own request only
    thread: int | None = None


@dataclass
class _Terminal:
    """The approvals waiting in this process and the terminal that asks them (held by
    `PROCESS`): one terminal per process, shared by every flow run that asks; the approval
    flow, run by Prefect in a task's helper thread, finds it here."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: list[_Pending] = field(default_factory=list)
    #: whether to ask on the terminal (`terminal_prompts`), and the thread asking
    on: bool = False
    thread: threading.Thread | None = None
    #: where terminal answers come from (tests put a pipe here); None: the standard input
    stdin: Any = None
    #: bytes read from the terminal and not yet a whole line (reads go to the file
    #: descriptor, not through Python's buffer, so that `select` sees every line typed)
    typed: bytearray = field(default_factory=bytearray)
    #: the terminal's answers, as sent: (flow run id, approve)
    answers: list[tuple[str, bool]] = field(default_factory=list)


def _terminal() -> _Terminal:
    return PROCESS.hold(_Terminal)


def terminal_prompts(enabled: bool, stdin: Any = None) -> None:
    """Ask pending approvals on the terminal (y/n, on standard error; answers read from
    `stdin`, default the process's standard input) from now on; `llmorch run` and `llmorch
    ask` turn this on when standard input is a terminal."""
    terminal = _terminal()
    terminal.on = enabled
    terminal.stdin = stdin


def pending_approvals() -> list[tuple[str, str, dict[str, str]]]:
    """The approvals waiting in this process: (flow run id, call, arguments as shown)."""
    terminal = _terminal()
    with terminal.lock:
        return [(str(p.flow_run_id), p.label, dict(p.arguments)) for p in terminal.pending]


def _register(entry: _Pending) -> None:
    terminal = _terminal()
    with terminal.lock:
        terminal.pending.append(entry)
        start = terminal.on and (terminal.thread is None or not terminal.thread.is_alive())
        if start:
            # in this context: its settings name the API the answers go to
            t = threading.Thread(target=contextvars.copy_context().run, args=(_prompt_loop,), name="llmorch-approvals", daemon=True)
            terminal.thread = t
    if start:
        t.start()


def _unregister(entry: _Pending) -> None:
    entry.decided.set()
    terminal = _terminal()
    with terminal.lock:
        if entry in terminal.pending:
            terminal.pending.remove(entry)


def _prompt_loop() -> None:
    """Ask each pending approval in turn until none is left (then end; the next request
    starts a new loop). An answer is sent as the UI sends it: whichever comes first decides."""
    terminal = _terminal()
    while terminal.on:
        with terminal.lock:
            entry = next((p for p in terminal.pending if not p.decided.is_set()), None)
            if entry is None:
                terminal.thread = None
                return
        answer = _ask(entry)
        if answer is None:  # decided elsewhere (the UI) while asking
            print(f"\n{entry.label}: answered in the Prefect UI", file=sys.stderr, flush=True)
            continue
        from prefect.flow_runs import resume_flow_run

        sent = (str(entry.flow_run_id), answer)
        terminal.answers.append(sent)  # before the run resumes: it reads who answered
        for attempt in range(10):  # the question is asked as the run pauses: a quick answer may come first
            try:
                resume_flow_run(entry.flow_run_id, run_input={"approve": answer, "note": ""})
                break
            except Exception as exc:  # not paused (yet, or any more: answered in the UI, timed out)
                if entry.decided.is_set() or attempt == 9:
                    terminal.answers.remove(sent)
                    print(f"{entry.label}: too late ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
                    break
                entry.decided.wait(0.3)
        entry.decided.set()


def _ask(entry: _Pending) -> bool | None:
    """y/n for one request; None once it was decided elsewhere."""
    args = ", ".join(f"{k}={v}" for k, v in entry.arguments.items())
    question = f"\napprove {entry.label}({args})? [y/n] "
    print(question, end="", file=sys.stderr, flush=True)
    stdin = _terminal().stdin
    stream = stdin if stdin is not None else sys.stdin
    while not entry.decided.is_set():
        line = _read_line(stream)
        if line is None:
            continue
        if line == "":  # end of input: the terminal has nothing more to say
            entry.decided.wait()
            return None
        word = line.strip().lower()
        if word in ("y", "yes"):
            return True
        if word in ("n", "no"):
            return False
        print("please answer y or n: ", end="", file=sys.stderr, flush=True)
    return None


def _read_line(stream: Any) -> str | None:
    """The next line typed (without waiting more than 0.2 s): a line, "" at end of input,
    None when no whole line came."""
    typed = _terminal().typed
    if b"\n" not in typed:
        try:
            fd = stream.fileno()
            ready, _, _ = select.select([fd], [], [], 0.2)
            chunk = os.read(fd, 4096) if ready else None
        except (OSError, ValueError):  # no readable standard input after all
            time.sleep(0.2)
            return None
        if chunk == b"":
            return ""
        if chunk:
            typed.extend(chunk)
    if b"\n" not in typed:
        return None
    line, _, rest = bytes(typed).partition(b"\n")
    typed[:] = rest
    return line.decode(errors="replace")


# -- the request ---------------------------------------------------------------------------

def describe(label: str, arguments: Mapping[str, str], timeout: float) -> str:
    """The markdown the UI shows above the form."""
    rows = "\n".join(f"| `{k}` | `{_cell(v)}` |" for k, v in arguments.items()) or "| (none) | |"
    return (
        f"**{label}** waits for your approval to run with these arguments:\n\n"
        f"| argument | value |\n|---|---|\n{rows}\n\n"
        "Turn **approve** on and submit to run it. Submitted with approve off, the call fails "
        "(\"rejected by the user\") and trace-back recovery may plan around it. "
        f"Unanswered within {timeout:g} s, it fails as timed out."
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def shown(arguments: Mapping[str, Any], scrub: Callable[[str], str]) -> dict[str, str]:
    """The arguments as a request shows them: `repr`, shortened, every loaded secret `***`."""
    out: dict[str, str] = {}
    for name, value in arguments.items():
        try:
            text = repr(value)
        except Exception:
            text = f"<{type(value).__name__}>"
        if len(text) > MAX_VALUE_CHARS:
            text = text[: MAX_VALUE_CHARS - 1] + "…"
        out[name] = scrub(text)
    return out


@flow(
    name=APPROVAL_FLOW, flow_run_name="approve {call} · {function}", log_prints=False,
    persist_result=False, validate_parameters=False,
)
def approval_flow(call: str, function: str, arguments: dict[str, str], timeout: float) -> dict[str, Any]:
    """Wait, paused, for a person's `ApprovalInput` on this call; returns `{approve, note, by}`.

    Raises:
        FlowPauseTimeout: nobody answered within `timeout` seconds (Prefect's server then
            fails the run: "The flow was paused and never resumed.").
    """
    from prefect.context import FlowRunContext
    from prefect.flow_runs import pause_flow_run

    ctx = FlowRunContext.get()
    assert ctx is not None and ctx.flow_run is not None
    label = f"{call} · {function}"
    entry = _Pending(ctx.flow_run.id, call, label, dict(arguments), threading.Event(), threading.get_ident())
    form = ApprovalInput.with_initial_data(description=describe(label, arguments, timeout))
    _register(entry)
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=max(1, int(round(timeout))), poll_interval=POLL_SECONDS, key=f"approve-{call}",
        )
    finally:
        _unregister(entry)
    by = "terminal" if str(entry.flow_run_id) in {r for r, _ in _terminal().answers} else "ui"
    return {"approve": bool(answer.approve), "note": answer.note, "by": by}


def request_approval(
    call: str, function: str, arguments: Mapping[str, str], *, timeout: float, cancel: Cancel | None = None,
) -> Verdict:
    """Ask a person to approve `call` (its function and its arguments as shown), and wait.

    Runs an `llmorch-approval` subflow (of the current flow run or task run) that pauses for
    an `ApprovalInput`. Returns when it is answered, times out, or `cancel` is set (the
    subflow is then resumed with a rejection, so that nothing is left paused).
    """
    import concurrent.futures

    from prefect.exceptions import FlowPauseTimeout

    started = time.monotonic()
    cancel = cancel if cancel is not None else Cancel()  # one that is never set: a plain wait
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    ids: list[str] = []

    def run() -> None:
        try:
            state = approval_flow(call, function, dict(arguments), timeout, return_state=True)
            ids.append(str(state.state_details.flow_run_id or ""))
            done.set_result(state)
        except BaseException as exc:  # never leave the caller waiting
            done.set_exception(exc)

    # The subflow runs in a copy of this context (the task run's), on a helper thread, so
    # that a cancel of the call does not wait for Prefect's pause loop.
    ctx = contextvars.copy_context()
    asker = threading.Thread(target=ctx.run, args=(run,), daemon=True, name=f"llmorch-approve-{call}")
    asker.start()
    cancel.wait(done, None)
    if not done.done():  # cancelled while waiting: end the paused run too (as the UI would)
        threading.Thread(target=contextvars.copy_context().run, args=(_withdraw, asker.ident, done), daemon=True,
                         name=f"llmorch-withdraw-{call}").start()
        return Verdict("cancelled", note=cancel.reason, waited=time.monotonic() - started)
    waited = time.monotonic() - started
    state = done.result()
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    if state.is_completed():
        value = state.result()
        outcome = "approved" if value.get("approve") else "rejected"
        return Verdict(outcome, by=value.get("by", "ui"), note=value.get("note", ""), flow_run_id=run_id, waited=waited)
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, FlowPauseTimeout) or "never resumed" in (state.message or ""):
        return Verdict("timed out", note=f"no answer within {timeout:g} s", flow_run_id=run_id, waited=waited)
    raise RuntimeError(f"the approval of {call} · {function} could not be asked: {state.message or state.name}")


def _withdraw(asker: int | None, done: Any) -> None:
    """Resume the paused approval run asked for by thread `asker` with a rejection (its call
    was cancelled), so that no run is left paused; it may not have paused yet: try for a few
    seconds. By thread, not call id: a re-submitted attempt of the same call asks anew."""
    from prefect.flow_runs import resume_flow_run

    deadline = time.monotonic() + 10
    while not done.done() and time.monotonic() < deadline:
        terminal = _terminal()
        with terminal.lock:
            entries = [p for p in terminal.pending if p.thread == asker]
        for entry in entries:
            try:
                resume_flow_run(entry.flow_run_id, run_input={"approve": False, "note": "the call was cancelled"})
            except Exception:  # not paused yet, or any more
                continue
            entry.decided.set()
        time.sleep(0.2)
