"""Tools for the caching tests: each appends a line (function, argument, pid) to the log file
named by its `log` argument every time it really runs. Module level: workers import them."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from prefect_llmorch import Toolbox, compute, inout


def _log(name: str, arg: object, log: str) -> None:
    with open(log, "a") as f:
        f.write(f"{name} {arg} {os.getpid()}\n")


@compute(cache=True)
def square(x: int, log: str) -> int:
    _log("square", x, log)
    return x * x


@inout(cache=True)
def lookup(q: str, log: str) -> dict:
    _log("lookup", q, log)
    return {"q": q, "n": len(q)}


@inout(effects=True)
def send(message: str, log: str) -> str:
    _log("send", message, log)
    return f"sent {message}"


@inout(cache=True)
def flaky(x: int, flag: str, log: str) -> int:
    """Fails while the file `flag` exists."""
    _log("flaky", x, log)
    if Path(flag).exists():
        raise RuntimeError("flag file present")
    return x + 1


@inout(cache=True)
def unstorable(x: int, log: str) -> object:
    _log("unstorable", x, log)
    return threading.Lock()  # cannot be pickled


@inout(cache=True)
def wait_while(flag: str, name: str, log: str) -> str:
    """Records its start, then waits while the file `flag` exists (a call still running when
    its process is killed)."""
    import time

    _log("wait_while", name, log)
    while Path(flag).exists():
        time.sleep(0.1)
    return name


TICKERS = {"Apple": "AAPL", "Microsoft": "MSFT"}


@inout(cache=True)
def ticker(company: str, log: str) -> str:
    """The company's ticker symbol; `?name` for an unknown company (a bad value, not an error)."""
    _log("ticker", company, log)
    return TICKERS.get(company, "?" + company)


@compute(cache=True)
def quote(symbol: str, log: str) -> float:
    """Fails on an unknown symbol: trace-back recovery then repairs the call that produced it."""
    _log("quote", symbol, log)
    if symbol.startswith("?"):
        raise ValueError(f"unknown ticker symbol {symbol!r}")
    return {"AAPL": 190.0, "MSFT": 410.0}[symbol]


toolbox = Toolbox(square, lookup, send, flaky, unstorable, wait_while, ticker, quote)
