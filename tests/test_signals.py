"""Ctrl-C and SIGTERM stop `llmorch run` (issue 13 item 2), in a subprocess with a real
ephemeral server (and, through `stop_with_signal`, against `prefect server start` in
tests/test_deploy.py, which shares its server): no queued call starts, the running compute call's worker is killed, the
report with the finished results is printed, the flow run ends Cancelled, exit 130 / 143.

What happened is read from the tools' own records (tests/toolboxes_signals.py) and from the
flow run's row in the server's database; the exit time after the signal is printed (`-s`)
but never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from homes import migrated_home
from toolboxes_signals import LOG_ENV, records

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent

# s1 finishes; s2 (compute) and s3 (inout) run long; s4-s6 wait for s2: queued.
PLAN = """\
s1: quick(1)
s2: spin(120.0)
s3: wait_io(120.0)
s4: quick(s2)
s5: quick(s4)
s6: quick(s2)
"""


def _env(tmp_path: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of `llmorch run`: the embedded default, or the server at `api_url`."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(
        PREFECT_HOME=str(migrated_home(tmp_path / "home")),  # its server skips the migrations
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        **{LOG_ENV: str(tmp_path / "calls.log")},
    )
    return env


def _wait_for(predicate, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"llmorch run exited early ({proc.returncode}):\n{out}\n{err[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"timed out waiting for the calls to start:\n{err[-3000:]}")


def _flow_run_states(home: Path) -> list[tuple[str, str]]:
    """(state_type, state_name) of every flow run in the ephemeral server's database."""
    con = sqlite3.connect(home / "prefect.db")
    try:
        return [tuple(r) for r in con.execute("select state_type, state_name from flow_run")]
    finally:
        con.close()


def stop_with_signal(tmp_path: Path, env: dict[str, str], sig: signal.Signals, code: int) -> dict:
    """Start `llmorch run` of PLAN with `env` (its Prefect server), send `sig` once the calls
    run, check what the user sees and what the tools did; return the report, the exit time."""
    plan = tmp_path / "long.plan"
    plan.write_text(PLAN)
    log = Path(env[LOG_ENV])
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect_llmorch.cli", "run", str(plan), "-t", "toolboxes_signals:toolbox", "-P", "2", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    def started() -> bool:
        seen = {(r[0], r[1]) for r in records(str(log))}
        return {("end", "quick"), ("start", "spin"), ("start", "wait_io")} <= seen

    _wait_for(started, 240, proc)
    spin_pid = next(r[3] for r in records(str(log)) if r[:2] == ("start", "spin"))
    assert psutil.pid_exists(spin_pid)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running 60 s after {sig.name}:\n{err[-3000:]}")
    took = time.monotonic() - sent
    server = "a server" if env.get("PREFECT_API_URL") else "the ephemeral server"
    print(f"\n{sig.name} ({server}): exited {proc.returncode} {took:.2f} s after the signal")

    assert proc.returncode == code, err[-3000:]
    report = json.loads(out)
    assert report["state"] == "Cancelled"
    assert sig.name in report["message"]
    rows = {c["id"]: c for c in report["calls"]}
    assert rows["s1"]["state"] == "Completed" and report["result"] == {"s1": 2}
    assert all(rows[c]["state"] == "Cancelled" for c in ("s2", "s3", "s4", "s5", "s6"))
    assert "killed" in rows["s2"]["reason"]
    # The killed call says when it ran: sent to its worker before the tool began, ended after.
    spin_start = next(r[4] for r in records(str(log)) if r[:2] == ("start", "spin"))
    assert rows["s2"]["start"] is not None and rows["s2"]["end"] is not None
    assert report["t0"] + rows["s2"]["start"] - 1e-6 <= spin_start <= report["t0"] + rows["s2"]["end"] + 1e-6
    assert rows["s2"]["pid"] == spin_pid
    # The long compute call's worker is gone; the queued calls never started (their own records).
    assert not psutil.pid_exists(spin_pid) or psutil.Process(spin_pid).status() == psutil.STATUS_ZOMBIE
    calls = records(str(log))
    assert [r[2] for r in calls if r[:2] == ("start", "quick")] == ["1"]
    assert not any(r[0] == "end" and r[1] in ("spin", "wait_io") for r in calls)
    assert "time: " in err and "Prefect start" in err  # where the wall time went, on stderr
    return {"report": report, "took": took}


def test_signal_stops_the_run(tmp_path: Path) -> None:
    """Ctrl-C on the embedded default; SIGTERM is checked against `prefect server start`, in
    tests/test_deploy.py (one server start fewer)."""
    stop_with_signal(tmp_path, _env(tmp_path), signal.SIGINT, 130)
    assert _flow_run_states(tmp_path / "home") == [("CANCELLED", "Cancelled")]


def test_second_ctrl_c_exits_at_once(tmp_path: Path, prefect_server) -> None:  # noqa: ANN001
    """The first SIGINT starts stopping; a second one exits at once with 130, no report.
    Against the session's server: the first SIGINT on the embedded default is the test above."""
    plan = tmp_path / "long.plan"
    plan.write_text(PLAN)
    log = tmp_path / "calls.log"
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect_llmorch.cli", "run", str(plan), "-t", "toolboxes_signals:toolbox", "-P", "2", "--json"],
            cwd=tmp_path, env=_env(tmp_path, prefect_server.url), stdout=subprocess.PIPE, stderr=err_file, text=True,
        )
        _wait_for(lambda: any(r[:2] == ("start", "spin") for r in records(str(log))), 240, proc)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while "stopping the run" not in errors.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"still running 60 s after two SIGINTs:\n{errors.read_text()[-3000:]}")
    assert proc.returncode == 130, errors.read_text()[-3000:]
    assert out == ""  # exited before any report
