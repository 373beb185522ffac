"""The embedded Prefect server never outlives the process that started it (even a kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from prefect_llmorch.host.server import start_ephemeral_server
    started = start_ephemeral_server()
    print(" ".join(map(str, started.pids)), flush=True)
    time.sleep(600)
    """
)


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def test_a_killed_process_takes_its_ephemeral_server_with_it(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        pids = [int(p) for p in line.split()]
        assert pids, f"no ephemeral server found; the script printed {line!r}"
        servers = [psutil.Process(p) for p in pids]
        assert all(s.is_running() for s in servers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(servers, timeout=60)
        assert not alive, f"server processes still running after their parent was killed: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_with_a_configured_server_nothing_is_started(tmp_path) -> None:
    env = _env(tmp_path)
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    out = subprocess.run(
        [sys.executable, "-c", "from prefect_llmorch.host.server import start_ephemeral_server as s; print(s())"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
