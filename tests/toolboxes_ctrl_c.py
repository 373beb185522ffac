"""A tool that presses Ctrl-C as a terminal does (tests/test_cancelled_calls.py): SIGINT to its
whole process group (the `llmorch` command and its worker processes), then waits to be stopped.
Module level: worker processes import it."""

from __future__ import annotations

import os
import signal
import time

from prefect_llmorch import Toolbox, compute, inout


@compute(cost=1.0)
def press_ctrl_c(seconds: float) -> float:
    """SIGINT to the process group, then `seconds` of sleep (cut short by the run's stop)."""
    os.killpg(os.getpgid(0), signal.SIGINT)
    time.sleep(seconds)
    return seconds


@inout(cost=0.1)
def echo(x: int) -> int:
    return x


toolbox = Toolbox(press_ctrl_c, echo)
