"""Test toolbox of the approval tests (tests/test_approval.py).

Every function appends its own record (function, argument, pid, start, end) to the file
named by its `log` argument (an argument: compute workers keep their forkserver's
environment), so a test reads when each tool really ran from the tools themselves.
"""

from __future__ import annotations

import json
import os
import time

from prefect_llmorch import Toolbox, compute, inout


def _record(log: str, function: str, arg: object, start: float) -> None:
    line = json.dumps({"function": function, "arg": arg, "pid": os.getpid(), "start": start, "end": time.time()}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one short O_APPEND write: lines never interleave
    finally:
        os.close(fd)


@inout(approve=True)
def send(to: str, log: str) -> str:
    """Send a message (an effect: a person approves each call)."""
    start = time.time()
    _record(log, "send", to, start)
    return f"sent to {to}"


@compute(approve=True)
def wipe(n: int, log: str) -> int:
    """Wipe n things on a processor (a person approves each call)."""
    start = time.time()
    _record(log, "wipe", n, start)
    return n


@compute
def crunch(n: int, log: str) -> int:
    """Hold a processor a little."""
    start = time.time()
    began = time.thread_time()
    while time.thread_time() - began < 0.05:
        pass
    _record(log, "crunch", n, start)
    return n * 2


@inout
def lookup(key: str, log: str) -> str:
    start = time.time()
    time.sleep(0.05)
    _record(log, "lookup", key, start)
    return key.upper()


toolbox = Toolbox(send, wipe, crunch, lookup)


def records(log: str) -> list[dict]:
    try:
        with open(log) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
