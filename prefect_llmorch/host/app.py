"""The embedded server's app: Prefect's own, whose refusals for a locked database are tried
again inside the server before a client sees them.

Prefect's server (`prefect.server.api.server:create_app`) answers 503 when SQLite refuses a
write as locked: two writers at once, e.g. a run's flow-run creation beside the previous
run's artifacts or a slot lease, where SQLite cannot wait for the other (a deferred
transaction that must upgrade its lock) and fails at once. Prefect's client then sleeps 2 s
before it asks again (then 4, 8, ...): the ~2 s stalls at the start of runs, seen in
benchmarks on a quiet machine. The other writer is done within milliseconds, so the request
is tried again here, after 25 ms, then 50, 100, 200, 400 ms; only then does the client get
the 503 and its own back-off, which a server overloaded for longer still needs.

A failed attempt changed nothing: the server rolled its transaction back before answering
503, which is why Prefect's client may send the same request again; this does the same,
sooner. Only HTTP requests are tried again (the body is kept for that); anything else
passes through.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Awaitable, Callable

__all__ = ["RETRY_DELAYS", "RetryLocked", "create_app"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds to wait before each new attempt of a request answered 503 (~0.8 s in all).
RETRY_DELAYS = (0.025, 0.05, 0.1, 0.2, 0.4)


class RetryLocked:
    """ASGI middleware: an HTTP request answered 503 is sent to `app` again after each of
    `delays` (with up to 50 % jitter, so two refused writers do not meet again); the last
    answer, whatever it is, goes to the client."""

    def __init__(self, app: ASGIApp, delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.app = app
        self.delays = delays

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        while True:  # the whole request body, to send it again
            message = await receive()
            body.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        for delay in (*self.delays, None):
            answer = _Answer(send, hold=delay is not None)
            try:
                # a copy: Starlette's routing rewrites the scope it is given (`root_path`, `path`)
                await self.app(dict(scope), _replay(body, receive), answer.send)
            except Exception:
                # Starlette's ServerErrorMiddleware sends the handler's 503, then raises the
                # error again for the server's log: a 503 held back is tried again instead
                if not answer.refused:
                    raise
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


def create_app(*args: Any, **kwargs: Any) -> ASGIApp:
    """Prefect's server app (`prefect.server.api.server:create_app`), wrapped in `RetryLocked`:
    the factory `uvicorn --factory` runs for the embedded server (`host/server.py`)."""
    from prefect.server.api.server import create_app as prefect_app

    own_signals()
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
