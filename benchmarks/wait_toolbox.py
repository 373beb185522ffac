"""The toolbox of `ask_overhead.py`: I/O calls that wait and note, on their own clock, when
they ended (inout calls run on threads of the flow's process, so the list is the caller's)."""

from __future__ import annotations

import time

from prefect_llmorch import Toolbox, inout

#: `time.monotonic()` at the start and at the end of each `wait` call's body, in order.
STARTS: list[float] = []
ENDS: list[float] = []


@inout(cost=0.3)
def wait(i: int, seconds: float = 0.3) -> int:
    """Wait `seconds` (a remote call), note the end, return `i`."""
    STARTS.append(time.monotonic())
    time.sleep(seconds)
    ENDS.append(time.monotonic())
    return i


toolbox = Toolbox(wait)
