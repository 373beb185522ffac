"""The embedded server's app: Prefect's own, whose refusals for a locked database are tried
again inside the server before a client sees them.

Prefect's server (`prefect.server.api.server:create_app`) answers 503 when SQLite refuses a
write as locked. Its write requests run in DEFERRED transactions: they read first, and the
write that follows fails at once (SQLite does not wait: the read's snapshot is stale) when
another writer committed in between. After a run, the server's task-run recorder writes that
run's task runs and states for seconds (its CPU, statement after statement), so the next
run's flow-run creation or a slot lease collided nearly every time, and Prefect's client
slept 2 s, then 4 s, before it asked again: the 3-10 s stalls of back-to-back runs.

So a request answered 503 is tried again here, after 25 ms, then 50, 100, 200, 400 ms, and
each new attempt opens its transactions IMMEDIATE (`retrying()`; `sqlite_configuration`):
SQLite gives it the write lock at BEGIN, waiting its busy timeout for the current writer,
so the attempt cannot be refused again by a commit that lands between its read and its
write. Only then does the client get the 503 and its own back-off, which a server overloaded
for longer still needs. First attempts stay DEFERRED (Prefect's mode): reads that open a
transaction do not queue behind the recorder's writes.

A failed attempt changed nothing: the server rolled its transaction back before answering
503, which is why Prefect's client may send the same request again; this does the same,
sooner. Only HTTP requests are tried again (the body is kept for that); anything else
passes through.

At shutdown (the ASGI lifespan's `lifespan.shutdown`, which uvicorn sends on SIGTERM), the
app first waits, up to `DRAIN_SECONDS`, until Prefect's services have handled every message
of its in-memory topics (`drained()`). Prefect's shutdown cancels its services' consumers at
once: the events still queued were dropped, and the task-run recorder's write in progress was
cancelled ("Error flushing 1 events ... CancelledError"). The recorder writes each task run's
states from those events, and it lags the run, so a process that stopped its server right
after a 100-call run left most of that run's task runs missing or Running in the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

__all__ = ["DRAIN_SECONDS", "RETRY_DELAYS", "drained", "RetryLocked", "create_app", "retrying", "sqlite_configuration"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds to wait before each new attempt of a request answered 503 (~0.8 s in all).
RETRY_DELAYS = (0.025, 0.05, 0.1, 0.2, 0.4)

#: At most this long, at shutdown, to let Prefect's services handle the messages queued
#: (`host/server.py` waits longer than this for the server to exit before it kills it).
DRAIN_SECONDS = 60.0

#: True while a refused request is sent again (its write transactions begin IMMEDIATE).
_RETRYING: contextvars.ContextVar[bool] = contextvars.ContextVar("llmorch_retrying_locked", default=False)


def retrying() -> bool:
    """Whether the current request is a new attempt of one the app answered 503."""
    return _RETRYING.get()


class RetryLocked:
    """ASGI middleware: an HTTP request answered 503 is sent to `app` again after each of
    `delays` (with up to 50 % jitter, so two refused writers do not meet again), with
    `retrying()` true; the last answer, whatever it is, goes to the client."""

    def __init__(self, app: ASGIApp, delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.app = app
        self.delays = delays

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, _drain_before_shutdown(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        while True:  # the whole request body, to send it again
            message = await receive()
            body.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        for attempt, delay in enumerate((*self.delays, None)):
            answer = _Answer(send, hold=delay is not None)
            token = _RETRYING.set(attempt > 0)
            try:
                # a copy: Starlette's routing rewrites the scope it is given (`root_path`, `path`)
                await self.app(dict(scope), _replay(body, receive), answer.send)
            except Exception:
                # Starlette's ServerErrorMiddleware sends the handler's 503, then raises the
                # error again for the server's log: a 503 held back is tried again instead
                if not answer.refused:
                    raise
            finally:
                _RETRYING.reset(token)
            if not answer.refused:
                return
            await asyncio.sleep(delay * (1 + random.random() / 2))  # type: ignore[operator]


class _Answer:
    """Passes the app's response on, unless it is a 503 that will be tried again (`hold`)."""

    def __init__(self, send: Send, hold: bool) -> None:
        self._send = send
        self._hold = hold
        self.refused = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self._hold and message["status"] == 503:
            self.refused = True
        if not self.refused:
            await self._send(message)


def _replay(body: list[Message], receive: Receive) -> Receive:
    """The kept request body, then the client's own `receive` (a disconnect)."""
    pending = list(body)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _drain_before_shutdown(receive: Receive) -> Receive:
    """The server's lifespan messages, `lifespan.shutdown` held until `drained()`."""

    async def received() -> Message:
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            await drained(DRAIN_SECONDS)
        return message

    return received


async def drained(timeout: float) -> bool:
    """Wait until every message delivered to a subscription of Prefect's in-memory topics has
    been handled by its consumer (its `METRICS`: published == consumed, per topic), at most
    `timeout` seconds; whether they were. A message whose handler keeps failing goes to
    Prefect's retry or dead-letter queue and is never counted consumed: then the timeout ends
    the wait."""
    from prefect.server.utilities.messaging.memory import METRICS

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(counts["published"] > counts["consumed"] for counts in list(METRICS.values())):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def sqlite_configuration(connection_url: str) -> Any:
    """Prefect's SQLite database configuration, whose transactions begin IMMEDIATE (as
    Prefect's own `with_for_update` ones do) while `retrying()`: see the module's docstring."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    class WriteLockOnRetry(AioSqliteConfiguration):
        @asynccontextmanager
        async def begin_transaction(self, session: Any, with_for_update: bool = False) -> AsyncIterator[Any]:
            async with super().begin_transaction(session, with_for_update=with_for_update or retrying()) as transaction:
                yield transaction

    return WriteLockOnRetry(connection_url=connection_url)


def create_app(*args: Any, **kwargs: Any) -> ASGIApp:
    """Prefect's server app (`prefect.server.api.server:create_app`), wrapped in `RetryLocked`,
    on `sqlite_configuration` when its database is SQLite: the factory `uvicorn --factory` runs
    for the embedded server (`host/server.py`)."""
    from prefect.server.api.server import create_app as prefect_app
    from prefect.server.database.dependencies import MODELS_DEPENDENCIES
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    own_signals()
    url = str(PREFECT_API_DATABASE_CONNECTION_URL.value() or "")  # as Prefect's `provide_database_interface` reads it
    if url.startswith("sqlite") and MODELS_DEPENDENCIES["database_config"] is None:
        # (the server's lifetime: what `prefect.server.database.dependencies.temporary_database_config` sets)
        MODELS_DEPENDENCIES["database_config"] = sqlite_configuration(url)
    return RetryLocked(prefect_app(*args, **kwargs))


def own_signals() -> None:
    """Take SIGINT and SIGTERM from here on. `ensure_server` starts the server with them
    blocked, so a Ctrl-C sent to the terminal's process group between the fork and the
    server's own session stays pending instead of killing it: such a signal was meant for the
    `llmorch` command (which stops its run), not for this server; it is discarded. (uvicorn's
    handlers are in place by now: later signals stop the server as usual.)"""
    import signal

    from prefect_llmorch.host.interrupt import SIGNALS

    for signum in signal.sigpending() & set(SIGNALS):
        signal.sigwait({signum})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
