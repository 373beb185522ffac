"""A tool's `SystemExit` / `KeyboardInterrupt` is that call's failure, like any exception
(issue 13, item 3): in a compute worker process, in an inout call's thread, through
`run_plan` and `llmorch run`. A real Ctrl-C in the main thread stays a KeyboardInterrupt."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

import toolboxes_exits
from prefect_llmorch.engine.compiler import _run_with_timeout
from prefect_llmorch.procs.pool import Cancel
from prefect_llmorch.procs.workers import ToolExit, WorkerPool

ROOT = Path(__file__).resolve().parent.parent

MIXED = """s1: echo(1)
s2: exit_io(3)
s3: square(4)
s4: exit_cpu(5)
s5: interrupt_io()
s6: interrupt_cpu()
s7: square(s3.value)
s8: echo(s1.value)
"""


def test_a_worker_s_systemexit_and_keyboardinterrupt_fail_that_call_and_the_worker_serves_on() -> None:
    with WorkerPool(1) as pool:
        (pid,) = pool.pids
        with pytest.raises(ToolExit) as info:
            pool.run("s4 · exit_cpu", toolboxes_exits.exit_cpu, (5,))
        assert str(info.value) == "s4 · exit_cpu: the tool raised SystemExit(5)"
        assert (info.value.raised, info.value.code) == ("SystemExit", 5)
        assert "raise SystemExit(code)" in str(info.value.__cause__)  # the worker's traceback
        with pytest.raises(ToolExit, match=r"^s6 · interrupt_cpu: the tool raised KeyboardInterrupt\(\)$"):
            pool.run("s6 · interrupt_cpu", toolboxes_exits.interrupt_cpu)
        # the worker caught both and lives on: the same process runs the next call
        out = pool.run("s3 · square", toolboxes_exits.square, (4,))
        assert out.value == {"value": 16, "pid": pid} and pool.pids == [pid]


def test_an_inout_tool_s_systemexit_in_its_thread_is_a_toolexit() -> None:
    with pytest.raises(ToolExit) as info:
        _run_with_timeout(toolboxes_exits.exit_io, (3,), {}, None, "s2 · exit_io", Cancel())
    assert str(info.value) == "s2 · exit_io: the tool raised SystemExit(3)"
    assert isinstance(info.value.__cause__, SystemExit) and info.value.code == 3
    with pytest.raises(ToolExit, match=r"the tool raised KeyboardInterrupt\(\)"):
        _run_with_timeout(toolboxes_exits.interrupt_io, (), {}, None, "s5 · interrupt_io", Cancel())


CTRL_C_CHILD = """
import signal, sys, threading
from prefect_llmorch.engine.compiler import _run_with_timeout
from prefect_llmorch.procs.pool import Cancel
from prefect_llmorch.procs.workers import ToolExit

# A user's terminal process has Python's own SIGINT handler; a process started from a
# non-interactive shell's background job inherits SIGINT ignored, so install it here.
signal.signal(signal.SIGINT, signal.default_int_handler)
release, finished = threading.Event(), threading.Event()
TO_THE_TOOL_THREAD = sys.argv[1] == "tool-thread"

def tool():
    print("tool running", flush=True)
    if TO_THE_TOOL_THREAD:  # the kernel may hand a process's SIGINT to any thread
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    release.wait(20)
    finished.set()
    return "late"

try:
    print("returned:", _run_with_timeout(tool, (), {}, None, "s1 · tool", Cancel()), flush=True)
except ToolExit as exc:
    print("converted:", exc, flush=True)
except KeyboardInterrupt as exc:
    print("user interrupt:", type(exc).__name__, "while the tool ran" if not finished.is_set() else "after the tool", flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("to", ["process", "tool-thread"])
def test_the_user_s_ctrl_c_in_the_main_thread_stays_a_keyboardinterrupt(to: str) -> None:
    """A real SIGINT to a process whose main thread waits for an inout tool is the user's, not the
    tool's; it interrupts the wait at once even when it lands in the tool's thread."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", CTRL_C_CHILD, to], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "tool running"
        if to == "process":
            child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert out.strip() == "user interrupt: KeyboardInterrupt while the tool ran" and child.returncode == 130


def _api_states(run_id: uuid.UUID) -> tuple[str, dict[str, tuple[str, str]]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return run.state.type.value, {t.name: (t.state.type.value, t.state.message or "") for t in tasks if t.state}


def _latest_run_id() -> uuid.UUID:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["llmorch-run"])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
    return run.id


@pytest.mark.usefixtures("prefect_harness")  # one database: what a tool's exit does does not depend on it
def test_tools_that_exit_fail_their_calls_and_the_rest_of_the_plan_runs() -> None:
    from prefect_llmorch.flows.run import PlanRunFailed, run_plan

    with pytest.raises(PlanRunFailed) as info:
        run_plan(MIXED, "toolboxes_exits:toolbox", processors=2, concurrency_limit=None)
    report = info.value.report
    rows = {c.id: c for c in report.calls}
    assert {i for i, r in rows.items() if r.state == "Failed"} == {"s2", "s4", "s5", "s6"}
    assert rows["s2"].reason == "ToolExit: s2 · exit_io: the tool raised SystemExit(3)"
    assert rows["s4"].reason == "ToolExit: s4 · exit_cpu: the tool raised SystemExit(5)"
    assert rows["s5"].reason == "ToolExit: s5 · interrupt_io: the tool raised KeyboardInterrupt()"
    assert rows["s6"].reason == "ToolExit: s6 · interrupt_cpu: the tool raised KeyboardInterrupt()"
    # finished results kept, and calls after the failures (s7 needs s3, s8 needs s1) still ran
    assert report.results["s3"]["value"] == 16 and report.results["s7"]["value"] == 256
    assert report.results["s8"] == {"value": 1, "pid": os.getpid()}
    assert rows["s3"].pid != os.getpid() and rows["s7"].pid != os.getpid()  # worker processes ran them
    assert report.state == "Failed"

    run_id = _latest_run_id()
    deadline = time.monotonic() + 60  # the API learns task states from events, a little later
    while True:
        flow_state, tasks = _api_states(run_id)
        settled = all(tasks.get(f"{i} · {rows[i].function}", ("",))[0] in ("COMPLETED", "FAILED") for i in rows)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert flow_state == "FAILED"  # not CRASHED
    assert tasks["s2 · exit_io"][0] == "FAILED" and "s2 · exit_io: the tool raised SystemExit(3)" in tasks["s2 · exit_io"][1]
    assert tasks["s6 · interrupt_cpu"][0] == "FAILED" and "KeyboardInterrupt()" in tasks["s6 · interrupt_cpu"][1]
    assert tasks["s7 · square"][0] == "COMPLETED"


@pytest.mark.slow
def test_llmorch_run_exits_1_not_the_tool_s_code(tmp_path: Path, prefect_server) -> None:  # noqa: ANN001
    import subprocess
    import sys

    plan = tmp_path / "exits.plan"
    plan.write_text(MIXED)
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", PYTHONPATH=str(ROOT / "tests"),
               PREFECT_API_URL=prefect_server.url)  # (the session's server: not a test of the embedded default)
    out = subprocess.run(
        [sys.executable, "-m", "prefect_llmorch.cli", "run", str(plan), "-t", "toolboxes_exits:toolbox", "-P", "2",
         "--no-global-limit", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    states = {c["id"]: c["state"] for c in doc["calls"]}
    assert doc["state"] == "Failed"
    assert states == {"s1": "Completed", "s2": "Failed", "s3": "Completed", "s4": "Failed",
                      "s5": "Failed", "s6": "Failed", "s7": "Completed", "s8": "Completed"}
    assert "the tool raised SystemExit(3)" in doc["message"]
