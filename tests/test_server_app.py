"""`host/app.py`: a request the server answered 503 (SQLite refused a write as locked) is
tried again inside the server, body and all, before the client sees it; other answers pass
through at once. A plain ASGI app stands in for Prefect's, counting what it is sent."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect_llmorch.host.app import RetryLocked

NO_WAIT = (0.0, 0.0, 0.0)


class _App:
    """Answers 503 `refusals` times, then 200 echoing the request body it read."""

    def __init__(self, refusals: int, raise_after_503: bool = False) -> None:
        self.refusals = refusals
        self.raise_after_503 = raise_after_503
        self.bodies: list[bytes] = []
        self.paths: list[object] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        self.paths.append(scope.get("path"))
        scope["path"] = "/api" + str(scope.get("path"))  # as Starlette's Mount rewrites it
        status = 503 if len(self.bodies) <= self.refusals else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"locked" if status == 503 else body})
        if status == 503 and self.raise_after_503:  # as Starlette's ServerErrorMiddleware does
            raise RuntimeError("database is locked")


def _request(app: Any, chunks: list[bytes], scope_type: str = "http") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": scope_type, "path": "/flow_runs/"}, receive, send))
    return sent


def test_a_refused_request_is_sent_again_with_its_whole_body_and_the_client_sees_one_answer() -> None:
    app = _App(refusals=2)
    sent = _request(RetryLocked(app, NO_WAIT), [b'{"name": ', b'"run"}'])
    assert app.bodies == [b'{"name": "run"}'] * 3  # the body, all of it, every time
    assert app.paths == ["/flow_runs/"] * 3  # the request as it came, every time
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
    assert sent[-1]["body"] == b'{"name": "run"}'


def test_after_the_last_delay_the_client_gets_the_503_for_its_own_back_off() -> None:
    app = _App(refusals=10)
    sent = _request(RetryLocked(app, NO_WAIT), [b"x"])
    assert len(app.bodies) == len(NO_WAIT) + 1
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [503]
    assert sent[-1]["body"] == b"locked"


def test_other_answers_and_other_scopes_pass_through_once() -> None:
    app = _App(refusals=0)
    sent = _request(RetryLocked(app, NO_WAIT), [b"ok"])
    assert len(app.bodies) == 1 and [m.get("status") for m in sent if "status" in m] == [200]
    app = _App(refusals=5)
    sent = _request(RetryLocked(app, NO_WAIT), [b""], scope_type="lifespan")
    assert len(app.bodies) == 1 and sent[0]["status"] == 503  # not HTTP: not tried again


def test_a_503_whose_error_is_raised_again_after_it_is_tried_again_too() -> None:
    """Prefect's app answers 503 from an exception handler, and Starlette raises the error
    again after sending it (for the server's log): held back, it is tried again; the last
    one reaches the client and its error the server."""
    app = _App(refusals=1, raise_after_503=True)
    sent = _request(RetryLocked(app, NO_WAIT), [b"x"])
    assert len(app.bodies) == 2 and [m.get("status") for m in sent if "status" in m] == [200]
    app = _App(refusals=10, raise_after_503=True)
    try:
        _request(RetryLocked(app, NO_WAIT), [b"x"])
    except RuntimeError as exc:
        assert str(exc) == "database is locked" and len(app.bodies) == len(NO_WAIT) + 1
    else:
        raise AssertionError("the last attempt's error must reach the server")


def test_each_new_attempt_of_a_refused_request_is_marked_retrying_and_the_first_is_not() -> None:
    from prefect_llmorch.host.app import retrying

    seen: list[bool] = []
    app = _App(refusals=2)

    async def watching(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(retrying())
        await app(scope, receive, send)

    sent = _request(RetryLocked(watching, NO_WAIT), [b"x"])
    assert seen == [False, True, True]
    assert [m.get("status") for m in sent if "status" in m] == [200]
    assert retrying() is False  # reset once the request is answered


def test_a_retried_attempt_holds_sqlite_s_write_lock_from_its_begin(tmp_path: Any) -> None:
    """The stall this fixes: after a run, Prefect's task-run recorder commits statement after
    statement, and a request's DEFERRED transaction (read, then write) was refused each time
    one landed between its read and its write. On a new attempt the transaction begins
    IMMEDIATE: it has the write lock before its first statement, so no commit can come
    between. Seen from a second connection that asks for the write lock without waiting:
    free during the first attempt's transaction, held during the retried one's."""
    import sqlite3

    import sqlalchemy as sa

    from prefect_llmorch.host.app import sqlite_configuration

    path = tmp_path / "prefect.db"
    config = sqlite_configuration(f"sqlite+aiosqlite:///{path}")
    probes: list[str] = []

    def probe() -> str:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return "free"
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return "locked"
        finally:
            other.close()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        engine = await config.engine()
        session = await config.session(engine)
        async with session:
            async with config.begin_transaction(session):
                await session.execute(sa.text("SELECT 1"))  # the transaction's BEGIN is sent now
                probes.append(probe())
        status = 503 if len(probes) == 1 else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = _request(RetryLocked(app, NO_WAIT), [b"x"])
    assert probes == ["free", "locked"]
    assert [m.get("status") for m in sent if "status" in m] == [200]
    assert probe() == "free"  # committed: nothing left holding it
