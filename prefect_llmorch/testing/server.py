"""A real `prefect server start` for tests and benchmarks: its own PREFECT_HOME (SQLite), a
free port, stopped on exit. Starting one costs about what one ephemeral start does, so a test
session that runs several `llmorch` commands not about the embedded default points them all
at one of these (`PREFECT_API_URL`) instead of letting each start its own.

Nothing here imports Prefect: the server is a subprocess, reached over HTTP.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping


def free_port() -> int:
    """A TCP port nothing listens on now (on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: "subprocess.Popen[bytes] | None" = None, timeout: float = 180.0) -> None:
    """Return once `url`/health answers 200; raise RuntimeError when `proc` exits first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server at {url} exited with code {proc.returncode} before it answered")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.3)


@dataclass
class PrefectServer:
    url: str  # the API URL, for PREFECT_API_URL
    home: Path  # the server's own PREFECT_HOME (its database and server.log)
    pid: int
    seconds: float  # how long it took to answer

    @property
    def log(self) -> Path:
        return self.home / "server.log"


@contextmanager
def prefect_server(env: Mapping[str, str] | None = None, timeout: float = 180.0) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port with a fresh PREFECT_HOME, until the block ends."""
    t0 = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="llmorch-server-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_env = {**(os.environ if env is None else env), "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env.pop("PREFECT_API_URL", None)
    server_env["PREFECT_UI_API_URL"] = url  # the UI's pages call this server, not the default port
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        try:
            wait_healthy(url, proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log: {home / 'server.log'}") from None
        yield PrefectServer(url, home, proc.pid, time.monotonic() - t0)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
