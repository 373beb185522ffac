"""Functions for the trace-back recovery tests: module-level, so worker processes import them.

Every function appends one line `name:key pid time` to the file named by the environment
variable `LLMORCH_RECOVERY_LOG` (when set) each time it really runs, so a test can tell
which calls were recomputed and which results were reused.
"""

from __future__ import annotations

import os
import time

from prefect_llmorch import Toolbox, compute, inout

from toolboxes import die  # a compute call whose worker process is killed mid-call

LOG_ENV = "LLMORCH_RECOVERY_LOG"

TICKERS = {"Apple": "AAPL", "Microsoft": "MSFT", "Alphabet": "GOOG"}
PRICES = {"AAPL": 190.0, "MSFT": 410.0, "GOOG": 150.0}


def log(name: str, key: object = "") -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = f"{name}:{key} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def runs(path: str) -> list[str]:
    """The `name:key` of every run logged in `path`, in order."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [ln.split(" ", 1)[0] for ln in fh if ln.strip()]


def _burn(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


@inout(cost=0.05)
def lookup(company: str) -> str:
    """Find the ticker symbol of a company (a name the market does not know gives `?name`)."""
    log("lookup", company)
    time.sleep(0.05)
    return TICKERS.get(company, f"?{company}")


@compute(cost=0.1)
def price(ticker: str) -> float:
    """The last price of a ticker symbol; fails on an unknown symbol."""
    log("price", ticker)
    _burn(0.05)
    if ticker not in PRICES:
        raise ValueError(f"unknown ticker symbol {ticker!r}")
    return PRICES[ticker]


@inout
def search_old(query: str) -> str:
    """The retired search API (always fails)."""
    log("search_old", query)
    raise RuntimeError("search_old was retired; use search")


@inout
def search(query: str) -> str:
    """Search the web; returns the top snippet."""
    log("search", query)
    return f"top result for {query}"


@inout
def echo(value: object = None, delay: float = 0.0, tag: str = "") -> object:
    """Wait `delay` seconds, then return the value."""
    log("echo", tag or value)
    time.sleep(delay)
    return value


@compute(cost=0.3)
def crunch(seconds: float = 0.1, tag: str = "") -> int:
    """Burn CPU for `seconds`; returns the worker's pid."""
    log("crunch", tag)
    _burn(seconds)
    return os.getpid()


def _await(key: str, timeout: float = 30.0) -> None:
    path = os.environ.get(LOG_ENV, "")
    deadline = time.monotonic() + timeout
    while key not in runs(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key!r} was not logged within {timeout} s")
        time.sleep(0.01)


@inout
def wait_then(value: object = None, until: str = "", after: float = 0.0, tag: str = "") -> object:
    """Wait until `until` (a `name:key`) is in the run log, then `after` seconds; return the value."""
    log("wait_then", tag)
    _await(until)
    time.sleep(after)
    return value


@compute
def hold(until: str, after: float = 0.0, tag: str = "") -> int:
    """Hold a processor until `until` is in the run log, then burn `after` seconds more."""
    log("hold", tag)
    _await(until)
    _burn(after)
    return os.getpid()


@inout
def positive(x: float) -> float:
    """Return x; fails unless x > 0."""
    log("positive", x)
    if x <= 0:
        raise ValueError(f"x must be > 0, got {x}")
    return x


@inout
def flaky(key: str, value: object = None, until: str = "") -> object:
    """Fails the first time it runs for a key (within one log file), then echoes the value.
    With `until`, it first waits until that `name:key` is in the run log."""
    path = os.environ.get(LOG_ENV, "")
    first = f"flaky:{key}" not in runs(path)
    log("flaky", key)
    if until:
        _await(until)
    if first:
        raise ConnectionError(f"service for {key!r} is unavailable (first call)")
    return value


@inout(retries=1)
def flaky_retried(key: str) -> str:
    """Like `flaky`, but declares one Prefect retry: the retry succeeds."""
    path = os.environ.get(LOG_ENV, "")
    first = f"flaky_retried:{key}" not in runs(path)
    log("flaky_retried", key)
    if first:
        raise ConnectionError("transient")
    return key


@inout(retries=1)
def broken_retried(key: str) -> str:
    """Declares one Prefect retry and fails both times."""
    log("broken_retried", key)
    raise RuntimeError(f"broken for {key!r}")


@compute
def combine(a: object = None, b: object = None, c: object = None) -> list:
    """Put the values together."""
    log("combine", "")
    return [a, b, c]


toolbox = Toolbox(
    lookup, price, search_old, search, echo, crunch, positive, flaky, flaky_retried,
    broken_retried, combine, die, wait_then, hold,
)
