"""Test toolboxes for tools that exit or interrupt, and for secrets hidden in exception chains.

Module-level functions, so compute worker processes can import them (`toolboxes_exits:...`).
The credentials block is `exits-secret` (secret `token`); tests save it before running.
"""

from __future__ import annotations

import os
import signal
import time

from prefect_llmorch import Toolbox, compute, inout

BLOCK = "exits-secret"


@inout
def echo(value: int) -> dict[str, int]:
    """Return the value with this process's pid (inout runs in the flow's process)."""
    return {"value": value, "pid": os.getpid()}


@compute
def square(value: int) -> dict[str, int]:
    """Square it in a worker; the pid shows where it ran."""
    return {"value": value * value, "pid": os.getpid()}


@inout
def exit_io(code: int) -> int:
    """sys.exit in the call's (helper) thread."""
    raise SystemExit(code)


@inout
def interrupt_io() -> int:
    """A tool that raises KeyboardInterrupt itself (not the user's Ctrl-C)."""
    raise KeyboardInterrupt


@compute
def exit_cpu(code: int) -> int:
    """sys.exit inside a compute worker process."""
    raise SystemExit(code)


@compute
def interrupt_cpu() -> int:
    raise KeyboardInterrupt


@compute
def die_cpu(log: str) -> int:
    """Append `start <pid> <time>` to `log`, then SIGKILL this worker process mid-call."""
    with open(log, "a") as fh:
        fh.write(f"start {os.getpid()} {time.time():.6f}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def _leak(credentials: dict[str, str]) -> None:
    """`X from exc` where only `exc` (and a note, and the implicit context) hold the secret."""
    token = credentials["token"]
    try:
        try:
            {}[f"token {token}"]
        except KeyError as inner:  # implicit context: "During handling of the above exception..."
            raise ValueError(f"rejected {token}") from inner
    except ValueError as exc:
        error = RuntimeError("the service refused the request")
        error.add_note(f"sent with token={token}")
        raise error from exc


@inout(credentials=BLOCK)
def leak_io(value: int, credentials: dict[str, str]) -> int:
    _leak(credentials)
    return value


@compute(credentials=BLOCK)
def leak_cpu(value: int, credentials: dict[str, str]) -> int:
    _leak(credentials)
    return value


toolbox = Toolbox(echo, square, exit_io, interrupt_io, exit_cpu, interrupt_cpu, die_cpu, leak_io, leak_cpu)
