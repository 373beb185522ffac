"""Plain Prefect tasks (module level, importable) for the runner tests: each records where
and when its function ran, from inside the function."""

from __future__ import annotations

import os
import time

from prefect import task


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@task(tags={"compute"})
def where(seconds: float = 0.2) -> tuple[int, float, float]:
    """Burns `seconds` of CPU; returns (pid, start, end) of its own body."""
    start = time.time()
    _burn(seconds)
    return os.getpid(), start, time.time()


@task(tags={"compute"})
def spin(marker: str, seconds: float = 60.0) -> int:
    """Writes its pid to `marker` (the test knows it started), then burns CPU."""
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    _burn(seconds)
    return os.getpid()


@task(tags={"compute"})
def square(x: int) -> int:
    return x * x


@task(tags={"compute"})
def compute_parent(x: int) -> int:
    """A compute task that submits a compute child and waits for it (not allowed)."""
    return square.submit(x).result()


@task(tags={"compute"})
async def async_compute_parent(x: int) -> int:
    """The same, as an async task (it runs on a thread of the flow process)."""
    return square.submit(x).result()


@task(tags={"inout"})
def inout_parent(x: int) -> list[int]:
    """An inout task that submits two compute children and waits for both."""
    futures = [square.submit(x), square.submit(x + 1)]
    return [f.result() for f in futures]
