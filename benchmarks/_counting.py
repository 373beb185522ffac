"""Count what a run costs the Prefect API: HTTP requests sent by this process, rows the server wrote.

Benchmark instrumentation only (never imported by the package or the tests):

- HTTP requests: every request that leaves this process through httpx's transports (the
  Prefect client's and ours), by method and path with ids replaced by `{id}`. Task-run
  state changes travel as events over a websocket, which is one request however many
  events it carries: they show up as database rows instead.
- Database rows: the row count of every table of the server's SQLite database before and
  after, read with `sqlite3` (the server writes events asynchronously: `settle()` waits until
  the counts stop changing).
"""

from __future__ import annotations

import collections
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_lock = threading.Lock()
requests: collections.Counter[str] = collections.Counter()
_installed = False


def _key(request: httpx.Request) -> str:
    return f"{request.method} {_ID.sub('{id}', request.url.path)}"


def install() -> None:
    """Wrap httpx's sync and async transports once, counting every request."""
    global _installed
    if _installed:
        return
    sync_send = httpx.HTTPTransport.handle_request
    async_send = httpx.AsyncHTTPTransport.handle_async_request

    def handle_request(self, request):  # type: ignore[no-untyped-def]
        with _lock:
            requests[_key(request)] += 1
        return sync_send(self, request)

    async def handle_async_request(self, request):  # type: ignore[no-untyped-def]
        with _lock:
            requests[_key(request)] += 1
        return await async_send(self, request)

    httpx.HTTPTransport.handle_request = handle_request  # type: ignore[method-assign]
    httpx.AsyncHTTPTransport.handle_async_request = handle_async_request  # type: ignore[method-assign]
    _installed = True


def database_path() -> str | None:
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    url = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url or "")
    m = re.match(r"sqlite\+aiosqlite:///(.+)", url)
    return m.group(1) if m else None


def row_counts() -> dict[str, int]:
    path = database_path()
    if not path:
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table' and name not like 'sqlite_%' and name != 'alembic_version'")]
        return {t: con.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()


def settle(timeout: float = 20.0, quiet: float = 1.5) -> dict[str, int]:
    """Row counts once they have not changed for `quiet` seconds (or at `timeout`)."""
    last, since, end = row_counts(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.25)
        now = row_counts()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


class Counts:
    """What one measured block cost: `requests` (by key) and `rows` (by table), both deltas."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.rows: dict[str, int] = {}

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


@contextmanager
def counting() -> Iterator[Counts]:
    install()
    counts = Counts()
    rows0 = settle()
    with _lock:
        req0 = collections.Counter(requests)
    try:
        yield counts
    finally:
        with _lock:
            req1 = collections.Counter(requests)
        rows1 = settle()
        counts.requests = {k: v for k, v in (req1 - req0).items() if v}
        counts.rows = {t: rows1.get(t, 0) - rows0.get(t, 0) for t in rows1 if rows1.get(t, 0) != rows0.get(t, 0)}
