"""The embedded Prefect server never outlives the process that started it (even a kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from homes import migrated_home

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
        PREFECT_HOME=str(migrated_home(tmp_path)),  # its server skips the migrations
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


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@pytest.mark.parametrize("command", ["run", "ask"])
def test_a_run_whose_server_dies_ends_at_once_with_what_completed(tmp_path, command: str) -> None:
    """kill -9 of the embedded server mid-run (issue 27): the run stops at once (no new call
    starts, running calls are cancelled) instead of Prefect's clients retrying the dead
    address for a minute per request; the report says the server went away and where its
    log is, keeps the completed call's result, exits 1, and leaves no process behind.
    Before the fix: ~90 s (each request retried 2+4+8+16+32 s), then a report with no calls.
    `llmorch ask` too: the plan comes from the scripted LLM (real HTTP), recovery stays on."""
    from test_signals import PLAN, _env as signals_env  # its plan: s1 finishes, s2/s3 run 120 s, s4-s6 wait

    from prefect_llmorch.testing import FakeLLM
    from toolboxes_signals import LOG_ENV, records

    plan = tmp_path / "long.plan"
    plan.write_text(PLAN)
    env = signals_env(tmp_path)
    log = env[LOG_ENV]
    out_file, err_file = tmp_path / "out.json", tmp_path / "err.txt"
    fake = FakeLLM(api_key="sk-test", model="m").__enter__()
    fake.add(PLAN)
    if command == "run":
        args = ["run", str(plan)]
    else:
        args = ["ask", "Run the long plan."]
        env.update(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test", LLMORCH_MODEL="m")
    with open(out_file, "w") as out, open(err_file, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect_llmorch.cli", *args, "-t", "toolboxes_signals:toolbox", "-P", "2", "--json"],
            cwd=tmp_path, env=env, stdout=out, stderr=err, text=True,
        )
    try:
        deadline = time.monotonic() + 240
        while not {("end", "quick"), ("start", "spin"), ("start", "wait_io")} <= {r[:2] for r in records(log)}:
            assert proc.poll() is None, f"llmorch run exited early ({proc.returncode}):\n{err_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the calls did not start:\n{err_file.read_text()[-3000:]}"
            time.sleep(0.1)
        children = _children(proc.pid)
        server = [c for c in children if "uvicorn" in " ".join(c.cmdline())]
        assert len(server) == 1, [c.cmdline() for c in children]
        server[0].kill()
        killed = time.monotonic()
        try:
            proc.wait(timeout=60)  # generous: the calls still had ~2 minutes to run
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after its Prefect server died:\n{err_file.read_text()[-3000:]}")
        print(f"\nended {time.monotonic() - killed:.2f} s after the server was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.__exit__(None, None, None)
    errors = err_file.read_text()
    assert proc.returncode == 1, errors[-3000:]
    report = json.loads(out_file.read_text())
    assert report["state"] == "Crashed"
    assert report["message"].startswith("Prefect's server went away")
    assert f"(pid {server[0].pid}," in report["message"] and "SIGKILL" in report["message"]
    assert str(tmp_path / "home" / "llmorch-server.log") in report["message"]
    rows = {c["id"]: c for c in report["calls"]}
    assert rows["s1"]["state"] == "Completed" and report["result"] == {"s1": 2}
    assert all(rows[c]["state"] == "Cancelled" for c in ("s2", "s3", "s4", "s5", "s6"))
    assert errors.count("prefect_llmorch.host.server - Prefect's server went away") == 1, errors[-3000:]
    # the long calls were stopped (never ended on their own), the queued ones never started
    calls = records(log)
    assert not any(r[0] == "end" and r[1] in ("spin", "wait_io") for r in calls)
    assert [r[2] for r in calls if r[:2] == ("start", "quick")] == ["1"]
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"


HOLDER = textwrap.dedent(
    """
    import sys
    import time
    from contextlib import ExitStack

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from prefect_llmorch.engine import guard
    from prefect_llmorch.host.server import ensure_server

    ensure_server()
    name = "llmorch-processors"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=3))
    with ExitStack() as stack:
        limit = guard.GlobalLimit(name, lambda: 1, lambda: None, keep_for=0.001)
        limit.start(stack)
        limit.adjust(1, 1)  # one slot held, as a live run holds it: in the ledger
        deadline = time.monotonic() + 120
        while limit.held < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with get_client(sync_client=True) as client:
            # two slots taken and never recorded: what a process killed between taking its
            # slots and writing the ledger left, and what an older version could leave
            client.increment_concurrency_slots(names=[name], slots=2, mode="concurrency")
        print(limit.held, flush=True)
        sys.stdin.read()  # until the test is done
    """
)


def _active_slots(home, name: str) -> int:
    import sqlite3

    con = sqlite3.connect(home / "prefect.db")
    try:
        return int(con.execute("select active_slots from concurrency_limit_v2 where name = ?", (name,)).fetchone()[0])
    finally:
        con.close()


def test_slots_no_process_holds_are_cleared_and_a_live_process_s_are_kept(tmp_path) -> None:
    """`llmorch-processors` of a PREFECT_HOME's database (limit 3) with 1 slot held by a live
    process (its own embedded server, in the ledger) and 2 that no ledger entry names: a run
    of P = 2 used to wait forever (issue 27); it clears the 2, runs, and leaves the live
    process's slot alone."""
    from test_signals import _env as signals_env

    env = signals_env(tmp_path)
    home = tmp_path / "home"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"  # type: ignore[union-attr]
        assert _active_slots(home, "llmorch-processors") == 3
        plan = tmp_path / "two.plan"
        plan.write_text("s1: quick(1)\ns2: quick(2)\n")
        run = subprocess.run(
            [sys.executable, "-m", "prefect_llmorch.cli", "run", str(plan), "-t", "toolboxes_signals:toolbox", "-P", "2", "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert json.loads(run.stdout)["result"] == {"s1": 2, "s2": 3}
        assert "cleared 2 slot(s) that no process held" in run.stderr, run.stderr[-3000:]
        assert _active_slots(home, "llmorch-processors") == 1  # the live holder's, untouched
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
    assert holder.returncode == 0
    assert _active_slots(home, "llmorch-processors") == 0


STARTS = textwrap.dedent(
    """
    import signal, sys
    received = []
    signal.signal(signal.SIGINT, lambda *_: received.append(1))  # the CLI's handler stops the run, not the process
    from prefect_llmorch.host.server import ensure_server
    print("starting", flush=True)
    try:
        server = ensure_server()
    except RuntimeError as exc:
        print("failed:", str(exc).splitlines()[0], flush=True)
        sys.exit(3)
    print("up", len(received), flush=True)
    """
)


def test_ctrl_c_to_the_process_group_while_the_server_starts_never_kills_the_server(tmp_path) -> None:
    """SIGINT sent to the command's process group (a terminal's Ctrl-C) again and again from
    the moment the server's process is being created: the server is in its own session, but
    a signal landing between the fork and its setsid used to reach it and kill it
    ("exited with code -2 while starting": 3 of 6 starts before the fix). The command gets
    the signals (its handler decides), the server starts every time."""
    for attempt in range(3):
        env = _env(tmp_path / str(attempt))
        proc = subprocess.Popen([sys.executable, "-c", STARTS], env=env, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == "starting"  # type: ignore[union-attr]
            log = tmp_path / str(attempt) / "llmorch-server.log"
            deadline = time.monotonic() + 120
            while not log.exists() and time.monotonic() < deadline:
                pass  # the log is opened right before the server's process is created
            storm = time.monotonic()
            while proc.poll() is None and time.monotonic() - storm < 0.05:
                os.killpg(proc.pid, signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert out.startswith("up ") and int(out.split()[1]) > 0, out


INTERRUPTED = textwrap.dedent(
    """
    import os, signal, subprocess
    real = subprocess.Popen

    class Popen(real):  # the stdlib's, so that a Ctrl-C lands at one exact moment
        def __init__(self, args, *rest, **kwargs):
            super().__init__(args, *rest, **kwargs)
            if "uvicorn" in args:  # the server's process exists; SIGINT is blocked here: it stays pending
                os.kill(os.getpid(), signal.SIGINT)

    subprocess.Popen = Popen
    from prefect_llmorch.host.server import ensure_server
    try:
        ensure_server()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)


def test_a_ctrl_c_that_came_while_the_server_was_created_ends_that_server(tmp_path) -> None:
    """The Ctrl-C blocked across the server's creation is raised when it is unblocked: it
    used to be raised before the watchdog existed and outside the block that kills the
    server on any error, so the command exited and its server ran on, with nothing to end it."""
    env = _env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "interrupted", proc.stderr[-2000:]
    left: list[str] = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT_HOME") == env["PREFECT_HOME"] and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
                process.kill()
        except psutil.Error:
            continue
    assert not left, left
