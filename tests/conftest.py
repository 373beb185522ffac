"""Shared fixtures. Prefect tests run against one ephemeral test server per session."""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, settings

# The machine is shared and noisy: no per-example time limits (hypothesis' default 200 ms
# deadline fails tests for the load, not for the code).
settings.register_profile("llmorch", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("llmorch")

from prefect_llmorch.schedule.policy import POLICIES

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Declared costs unless a test asks for others: runs of other tests must not reorder a test's
# schedule through the learned-cost history (tests/test_history.py tests the default).
os.environ.setdefault("LLMORCH_COSTS", "declared")
# Slots given back at a run's end, not kept for the process's next run (guard.KEEP_SLOTS_SECONDS):
# tests check that every slot came back as each run ends; tests/test_leases.py tests keeping.
os.environ.setdefault("LLMORCH_KEEP_SLOTS_SECONDS", "0")
# Worker processes shut down at a run's end, not kept for the process's next run
# (workers.KEEP_WORKERS_SECONDS): each test's runs start their own (tests/test_workers.py
# tests the keeping).
os.environ.setdefault("LLMORCH_KEEP_WORKERS_SECONDS", "0")

ROOT = Path(__file__).resolve().parent.parent
# Test toolboxes (`toolboxes:...`) import from tests/; the baselines live with the benchmarks.
for _path in (ROOT / "tests", ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SHARED_DATA = ROOT.parent / "shared" / "data"

# The run log of `toolboxes_recovery`: compute workers fork from a forkserver that keeps the
# environment it started with, so name the log now, before any worker exists.
os.environ.setdefault("LLMORCH_RECOVERY_LOG", str(Path(tempfile.mkdtemp(prefix="llmorch-recovery-")) / "runs.log"))
# The same for `mixed_toolbox` (benchmarks/), whose calls append JSON lines to this file.
os.environ.setdefault("LLMORCH_MIXED_LOG", str(Path(tempfile.mkdtemp(prefix="llmorch-mixed-")) / "calls.jsonl"))


@pytest.fixture
def runlog() -> Iterator[str]:
    """The (emptied) run log of `toolboxes_recovery`: which functions really ran."""
    log = Path(os.environ["LLMORCH_RECOVERY_LOG"])
    log.unlink(missing_ok=True)
    yield str(log)
    log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """A Prefect test server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    from prefect_llmorch.flows.report import records_sent

    with prefect_test_harness(server_startup_timeout=120):
        yield
        records_sent(60)  # the last run's artifacts (sent after its answer), before the server stops


@pytest.fixture(scope="session")
def prefect_server():
    """One `prefect server start` (SQLite, its own PREFECT_HOME) for the session: `llmorch`
    commands whose test is not about the embedded default run against it (set
    `PREFECT_API_URL` to its `.url`) instead of each starting an ephemeral server."""
    from prefect_llmorch.testing.server import prefect_server as start

    with start() as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """A temporary PostgreSQL cluster on 127.0.0.1 (tests/pg_server.py) for the session. Tests
    that use it skip, saying why, when PostgreSQL cannot be started on this machine."""
    from pg_server import PostgresUnavailable, postgres_cluster

    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(postgres_cluster())
        except PostgresUnavailable as exc:
            pytest.skip(f"PostgreSQL cannot be started here: {exc}")
        yield cluster


@pytest.fixture(scope="session")
def prefect_server_postgres(postgres):  # noqa: ANN001
    """One `prefect server start` on a database of the session's PostgreSQL cluster (what
    docs/deploy.md shows for production), its own PREFECT_HOME, until the session ends."""
    from prefect_llmorch.testing.server import prefect_server as start

    # No other database setting of ours may win over this one.
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PREFECT_") and "DATABASE" in k)}
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres.create_database("prefect")
    with start(env) as server:
        yield server


@contextmanager
def _flows_against(url: str) -> Iterator[None]:
    """This thread's flow runs (and the threads they start in its context) use the Prefect
    API at `url`. Events go through one process-wide worker per kind of client, made with the
    API URL of the moment: drained before (it may point at the session's SQLite server) and
    after, so each server learns its own runs' task states."""
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_llmorch.flows.report import records_sent

    records_sent(60)  # earlier runs' artifacts (sent after their answers) go to their own server
    EventsWorker.drain_all()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
            records_sent(60)  # and these runs' to this one, before its worker is drained
    finally:
        EventsWorker.drain_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def prefect_api(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's flow runs run against each database in turn: Prefect's test server on SQLite
    (the session's `prefect_harness`), then `prefect server start` on PostgreSQL. Yields the
    API URL."""
    from prefect.settings import PREFECT_API_URL

    if request.param == "sqlite":
        request.getfixturevalue("prefect_harness")
        yield str(PREFECT_API_URL.value())
        return
    server = request.getfixturevalue("prefect_server_postgres")
    with _flows_against(server.url):
        yield server.url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def prefect_server_url(request: pytest.FixtureRequest) -> str:
    """The API URL of a `prefect server start` of the session, on each database in turn, for
    `llmorch` commands (`PREFECT_API_URL`)."""
    return request.getfixturevalue("prefect_server" if request.param == "sqlite" else "prefect_server_postgres").url


@pytest.fixture(params=POLICIES)
def policy(request) -> str:
    """Each coordination policy in turn."""
    return request.param


# -- a session never outlives its tests ----------------------------------------------------
# pytest-timeout (`timeout` in pyproject.toml) fails a test that hangs. But a thread a test
# left running (not a daemon) keeps the interpreter alive after the summary, forever: one
# livelocked flow run once held CI for its whole 90 minutes that way.

_stderr: dict[str, int] = {}


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # pytest's own faulthandler plugin keeps a copy of the terminal's stderr, outside capture.
    from _pytest.faulthandler import fault_handler_stderr_fd_key

    fd = config.stash.get(fault_handler_stderr_fd_key, None)
    _stderr["fd"] = fd if fd is not None else sys.__stderr__.fileno()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Threads still running 30 s after the session: print their stacks and exit 1."""
    import time

    deadline = time.monotonic() + 30
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0.0))
    left = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if left:
        fd = _stderr.get("fd", 2)
        os.write(fd, f"\nthreads still running after the session: {left}. Every thread's stack:\n".encode())
        faulthandler.dump_traceback(file=fd, all_threads=True)
        os._exit(1)
