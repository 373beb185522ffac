"""Shared fixtures. Prefect tests run against one ephemeral test server per session."""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
import threading
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
# Slots given back at a run's end, not kept for the process's next run (leases.KEEP_SLOTS_SECONDS):
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

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_server():
    """One `prefect server start` (SQLite, its own PREFECT_HOME) for the session: `llmorch`
    commands whose test is not about the embedded default run against it (set
    `PREFECT_API_URL` to its `.url`) instead of each starting an ephemeral server."""
    from prefect_llmorch.testing.server import prefect_server as start

    with start() as server:
        yield server


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
