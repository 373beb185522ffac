"""The Prefect server a benchmark runs against: `with server(kind) as description: ...`.

- `harness`: `prefect_test_harness` (a temporary SQLite database and its own API server,
  isolated from other flow runs on the machine; same code paths as ephemeral mode);
- `ephemeral`: the default without `PREFECT_API_URL`: the embedded server `llmorch run`
  starts (`host/server.py`, started here up front, as `llmorch run` does; stopped at exit);
- `start`: a `prefect server start` this script starts (its own PREFECT_HOME and SQLite
  database, a free port), reached through `PREFECT_API_URL`, stopped at the end;
- `postgres`: the same on a temporary PostgreSQL cluster (tests/pg_server.py), the production
  database; both stopped at the end.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

KINDS = ("harness", "ephemeral", "start", "postgres")


@contextmanager
def server(kind: str) -> Iterator[str]:
    """The server of `kind` for the runs inside; their records (artifacts, sent after each
    answer) and events are out before it stops, and Prefect's process-wide events worker is
    drained on both sides, so a second server of the same script gets one of its own (else
    its runs' events went to the first server's address and failed)."""
    from prefect.events.worker import EventsWorker

    from prefect_llmorch.flows.report import records_sent

    records_sent(60)
    EventsWorker.drain_all()
    try:
        with _server(kind) as description:
            yield description
            records_sent(60)
    finally:
        EventsWorker.drain_all()


@contextmanager
def _server(kind: str) -> Iterator[str]:
    t = time.time()
    if kind == "harness":
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield f"prefect_test_harness (temporary SQLite), started in {time.time() - t:.1f} s"
    elif kind == "ephemeral":
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from prefect_llmorch.host.server import start_ephemeral_server

        # No PREFECT_API_URL while the server starts (one from the shell would win), then the
        # embedded server's URL for the runs: `start_ephemeral_server` sets it in the process's
        # environment, which a settings context of None still overrides, so every client of
        # the runs would start Prefect's own temporary server (`uvicorn --app-dir ...`, one per
        # racing thread: Prefect's start is check-then-act) and orphan the extra ones at exit.
        with temporary_settings(updates={PREFECT_API_URL: None}):
            started = start_ephemeral_server()
        assert started is not None, "no embedded server started"
        with temporary_settings(updates={PREFECT_API_URL: started.url}):
            yield f"ephemeral (Prefect's default, no PREFECT_API_URL), started in {started.seconds:.1f} s"
    elif kind == "start":
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from prefect_llmorch.testing.server import prefect_server

        with prefect_server() as srv, temporary_settings(updates={PREFECT_API_URL: srv.url}):
            yield f"`prefect server start` (SQLite, pid {srv.pid}) at {srv.url}, started in {srv.seconds:.1f} s"
    elif kind == "postgres":
        import os
        import sys
        from pathlib import Path

        from prefect.settings import PREFECT_API_URL, temporary_settings

        from prefect_llmorch.testing.server import prefect_server

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from pg_server import postgres_cluster

        with postgres_cluster() as cluster:
            env = {k: v for k, v in os.environ.items() if not (k.startswith("PREFECT_") and "DATABASE" in k)}
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = cluster.create_database("prefect")
            with prefect_server(env) as srv, temporary_settings(updates={PREFECT_API_URL: srv.url}):
                yield f"`prefect server start` on PostgreSQL (pid {srv.pid}) at {srv.url}, started in {srv.seconds:.1f} s"
    else:
        raise ValueError(f"unknown server {kind!r}: one of {', '.join(KINDS)}")
