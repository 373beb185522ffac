"""Functions for the Ctrl-C / SIGTERM tests (tests/test_signals.py): module-level, so worker
processes import them.

Each call appends `event name key pid time` lines (`start` when it begins, `end` when it
returns) to the file named by `LLMORCH_SIGNALS_LOG`, so a test knows from the tools
themselves which calls started, which finished, and in which process they ran.
"""

from __future__ import annotations

import os
import time

from prefect_llmorch import Toolbox, compute, inout

LOG_ENV = "LLMORCH_SIGNALS_LOG"


def _log(event: str, name: str, key: object) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{event} {name} {key} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def records(path: str) -> list[tuple[str, str, str, int, float]]:
    """Every record in `path`: (event, name, key, pid, time)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 5:
                out.append((parts[0], parts[1], parts[2], int(parts[3]), float(parts[4])))
    return out


@compute(cost=0.1)
def quick(x: int) -> int:
    """A short compute call."""
    _log("start", "quick", x)
    _log("end", "quick", x)
    return x + 1


@compute(cost=60.0)
def spin(seconds: float) -> float:
    """A long compute call: CPU for `seconds` (only a kill stops it early)."""
    _log("start", "spin", seconds)
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        n += 1
    _log("end", "spin", seconds)
    return seconds


@inout(cost=60.0)
def wait_io(seconds: float) -> float:
    """A long inout call (a thread that cannot be stopped, only abandoned)."""
    _log("start", "wait_io", seconds)
    time.sleep(seconds)
    _log("end", "wait_io", seconds)
    return seconds


toolbox = Toolbox(quick, spin, wait_io)
