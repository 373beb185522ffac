"""The embedded (ephemeral) Prefect server: started up front, and never outliving its process.

Without `PREFECT_API_URL`, Prefect starts a temporary API server (uvicorn + SQLite) as a
child process the first time the API is used, and stops it when this process exits
normally. A `kill -9` (or an OOM kill) of this process gives it no chance to: the server
would run on, orphaned, holding its port and its database. `start_ephemeral_server()`
starts it now (so the command can say how long Prefect's start took) and hands its pid to a
watchdog process that ends it as soon as this process is gone, however it went.

    started = start_ephemeral_server()      # None when PREFECT_API_URL names a server
    started.seconds, started.pids
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["EphemeralServer", "ephemeral_server_pids", "reap_when_gone", "start_ephemeral_server"]

#: How Prefect's temporary server shows in its command line.
SERVER_APP = "prefect.server.api.server:create_app"

# Runs in its own session (so a Ctrl-C or a kill of our process group spares it): waits for
# the parent to exit, then ends each server process that is still the one it was told about
# (same pid and creation time, so a recycled pid is never killed).
_WATCHDOG = r"""
import os, select, signal, sys, time
import psutil
parent = int(sys.argv[1])
targets = [tuple(map(float, a.split(":"))) for a in sys.argv[2:]]
try:
    fd = os.pidfd_open(parent)
    select.select([fd], [], [])
except (AttributeError, OSError):  # no pidfd: poll
    while psutil.pid_exists(parent) and psutil.Process(parent).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.5)
procs = []
for pid, created in targets:
    try:
        p = psutil.Process(int(pid))
        if abs(p.create_time() - created) < 0.01:
            procs.append(p)
    except psutil.Error:
        pass
for p in procs:
    try:
        p.terminate()
    except psutil.Error:
        pass
gone, alive = psutil.wait_procs(procs, timeout=5)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
"""


@dataclass(frozen=True)
class EphemeralServer:
    """The temporary server this process started: its pids and how long the start took."""

    pids: tuple[int, ...]
    seconds: float


def ephemeral_server_pids() -> list[int]:
    """Pids of this process's children that are Prefect's temporary API server."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=False):
        try:
            if any(SERVER_APP in part for part in child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def reap_when_gone(pids: list[int]) -> subprocess.Popen[bytes] | None:
    """Start a watchdog that ends `pids` (and only those processes) when this process exits."""
    import psutil

    targets = []
    for pid in pids:
        try:
            targets.append(f"{pid}:{psutil.Process(pid).create_time()!r}")
        except psutil.Error:
            continue
    if not targets:
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), *targets],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def start_ephemeral_server() -> EphemeralServer | None:
    """Start Prefect's temporary server now (when no `PREFECT_API_URL` is set) and guard it.

    Returns None when a server is configured (nothing to start). Raises whatever Prefect
    raises when the server cannot start (e.g. its start-up timeout).
    """
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from prefect import get_client

    t0 = time.perf_counter()
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()  # returns the exception rather than raising it
    if problem is not None:
        raise problem
    seconds = time.perf_counter() - t0
    pids = ephemeral_server_pids()
    if pids:
        reap_when_gone(pids)
    return EphemeralServer(pids=tuple(pids), seconds=seconds)
