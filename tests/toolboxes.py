"""Test toolboxes: module-level functions, so worker processes can import them."""

from __future__ import annotations

import os
import signal
import time
from typing import NoReturn

from prefect_llmorch import Toolbox, compute, inout


def _burn(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


@compute(cost=0.3)
def crunch(seconds: float = 0.3, tag: str = "") -> int:
    """Burn CPU, return the worker's pid."""
    _burn(seconds)
    return os.getpid()


@inout(cost=0.2)
def fetch(seconds: float = 0.2, value: object = None) -> object:
    """Wait, then echo the value."""
    time.sleep(seconds)
    return value


@compute
def add(a: float, b: float) -> float:
    return a + b


@compute
def die(seconds: float = 0.2) -> None:
    """Kill the worker process running this call (a crash mid-call)."""
    _burn(seconds)
    os.kill(os.getpid(), signal.SIGKILL)


@compute(timeout=0.5)
def hang(seconds: float = 30.0) -> None:
    """Burn past the 0.5 s timeout."""
    _burn(seconds)


@inout
def fail(message: str = "boom") -> NoReturn:
    # NoReturn, not None: plans pass its (never given) result on, which a None would not type-check
    raise ValueError(message)


toolbox = Toolbox(crunch, fetch, add, die, hang, fail)
