"""The Prefect server a benchmark runs against: `with server(kind) as description: ...`.

- `harness`: `prefect_test_harness` (a temporary SQLite database and its own API server,
  isolated from other flow runs on the machine; same code paths as ephemeral mode);
- `ephemeral`: Prefect's default without `PREFECT_API_URL`: the temporary server Prefect
  starts itself on first use (started here up front, as `llmorch run` does);
- `start`: a `prefect server start` this script starts (its own PREFECT_HOME and SQLite
  database, a free port), reached through `PREFECT_API_URL`, stopped at the end.
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
from typing import Iterator

KINDS = ("harness", "ephemeral", "start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(kind: str) -> Iterator[str]:
    t = time.time()
    if kind == "harness":
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield f"prefect_test_harness (temporary SQLite), started in {time.time() - t:.1f} s"
    elif kind == "ephemeral":
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from prefect_llmorch.flows.ephemeral import start_ephemeral_server

        with temporary_settings(updates={PREFECT_API_URL: None}):
            started = start_ephemeral_server()
            yield f"ephemeral (Prefect's default, no PREFECT_API_URL), started in {getattr(started, 'seconds', 0):.1f} s"
    elif kind == "start":
        from prefect.settings import PREFECT_API_URL, temporary_settings

        port = _free_port()
        home = tempfile.mkdtemp(prefix="llmorch-bench-server-")
        env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        log = open(os.path.join(home, "server.log"), "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.time() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"prefect server start did not come up (see {home}/server.log)")
                time.sleep(0.3)
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield f"`prefect server start` (SQLite, pid {proc.pid}) at {url}, started in {time.time() - t:.1f} s"
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    else:
        raise ValueError(f"unknown server {kind!r}: one of {', '.join(KINDS)}")
