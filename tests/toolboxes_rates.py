"""Test toolbox of the rate-limit test (tests/test_rates.py): `fetch` demands one of the
`search-api` resource class and appends its own record (run, call, start) to `log`."""

from __future__ import annotations

import json
import os
import time

from prefect_llmorch import Toolbox, compute, inout


@inout(resources={"search-api": 1})
def fetch(run: int, i: int, log: str) -> int:
    """A call of a rate-limited API: records when it started (its own clock)."""
    line = json.dumps({"run": run, "i": i, "start": time.time()}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one short O_APPEND write: lines never interleave
    finally:
        os.close(fd)
    return i


def _record(log: str, tag: str, start: float) -> None:
    line = json.dumps({"tag": tag, "start": start, "end": time.time(), "pid": os.getpid()}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@compute(resources={"burn-api": 1})  # its own class: another test leaves search-api's limit paced
def rated_burn(tag: str, log: str) -> str:
    """A compute call of a rate-limited resource: records its own start and end."""
    start = time.time()
    time.sleep(0.2)
    _record(log, tag, start)
    return tag


@compute
def plain_burn(tag: str, log: str) -> str:
    """A compute call of no resource class: records its own start and end."""
    start = time.time()
    time.sleep(0.2)
    _record(log, tag, start)
    return tag


@inout(resources={"wait-api": 1})  # its own class: the tests take its one slot from outside
def waited(tag: str, log: str) -> str:
    """A call of a rate-limited API that records that it ran."""
    _record(log, tag, time.time())
    return tag


@inout(resources={"search-api": 1})
def then_fetch(after: str, tag: str, log: str) -> str:
    """A call of `search-api` that runs after `after` (its input)."""
    _record(log, tag, time.time())
    return tag


toolbox = Toolbox(fetch, rated_burn, plain_burn, waited, then_fetch)


def most_in_any_window(starts: list[float], window: float) -> int:
    """The most starts in any half-open window [t, t + window)."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while starts[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
