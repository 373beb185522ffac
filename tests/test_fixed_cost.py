"""No fixed cost per ask (issue 27.5), as exact invariants: the planner's LLM request leaves
before Prefect has started the flow run (`PlanningAhead`), the final state is in Prefect when
`ask_query` returns and the artifacts follow the answer without being lost (`send_records`),
and a plan handed over parsed is not parsed again (`Handoff`). The LLM is
the scripted OpenAI-compatible server (real HTTP); `benchmarks/ask_overhead.py` measures."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from homes import migrated_home
from llm_fixtures import fake_llm, llm  # noqa: F401
from prefect_llmorch.flows.report import RECORDS_THREAD, records_sent
from prefect_llmorch.llm.planning import plan_query

TOOLBOX = "toolboxes:toolbox"


def _toolbox():
    from prefect_llmorch.functions import load_toolbox

    return load_toolbox(TOOLBOX)


def _wait_for_requests(server, n: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while len(server.chat_requests) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(server.chat_requests) == n


def _api_server_process() -> Any:
    """The process serving this session's Prefect API (the test harness's server): the child
    of this process listening on the API's port."""
    from urllib.parse import urlparse

    import psutil
    from prefect.settings import PREFECT_API_URL

    port = urlparse(PREFECT_API_URL.value()).port
    for child in psutil.Process().children(recursive=True):
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in child.net_connections("inet")):
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no child process listens on the API's port {port}")


@pytest.mark.usefixtures("prefect_harness")
def test_the_planner_request_reaches_the_llm_while_the_prefect_api_is_frozen(fake_llm, llm) -> None:  # noqa: F811
    """The planner's request does not wait for Prefect: with the API's server process stopped
    (SIGSTOP), no flow run can be created, and the request still reaches the LLM. Then the
    server goes on and the ask completes, its final state in Prefect when `ask_query` returns."""
    from prefect_llmorch.flows.ask import ask_query

    arrived = threading.Event()

    def plan(_request: dict) -> str:  # on the server's thread, as the request arrives
        arrived.set()
        return "s1: add(1, 2)\n"

    fake_llm.add(plan)
    server = _api_server_process()
    reports: list[Any] = []
    server.suspend()
    try:
        asker = threading.Thread(target=lambda: reports.append(
            ask_query("one plus two", TOOLBOX, processors=1, endpoint=llm, recovery_rounds=0)))
        asker.start()
        reached = arrived.wait(30)
        assert server.status() == "stopped"  # still frozen when the request arrived
    finally:
        server.resume()
    assert reached, "the planner request did not reach the LLM while the Prefect API was frozen"
    asker.join(120)
    (report,) = reports
    assert report.result == 3 and len(fake_llm.chat_requests) == 1  # asked once
    run = _latest_run("llmorch-ask")
    assert run.state is not None and run.state.is_completed()  # in Prefect when ask_query returns
    assert records_sent(60)  # the artifacts follow the answer
    assert {"llmorch-frg", "llmorch-schedule", "llmorch-progress"} <= _artifact_keys(run.id)


def _artifact_keys(flow_run_id: object) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key for a in arts if a.key}


def _latest_run(name: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[name])), sort=FlowRunSort.START_TIME_DESC, limit=1,
        )
    return run


@pytest.mark.usefixtures("prefect_harness")
def test_the_answer_does_not_wait_for_the_run_s_artifacts(fake_llm, llm) -> None:  # noqa: F811
    """The artifacts' API round trips come after the answer: held back here behind an
    earlier run's records (a thread of that name, which `send_records` waits for), the
    answer still comes, its flow run Completed; the artifacts follow."""
    from prefect_llmorch.flows.ask import ask_query

    earlier_done = threading.Event()

    def plan(_request: dict) -> str:  # the run has begun: "earlier records" from here on
        threading.Thread(target=earlier_done.wait, args=(60,), name=RECORDS_THREAD).start()
        return "s1: add(1, 2)\ns2: add(s1, 4)\n"

    try:
        fake_llm.add(plan)
        report = ask_query("one plus two, plus four", TOOLBOX, processors=1, endpoint=llm, recovery_rounds=0)
        run = _latest_run("llmorch-ask")
        assert report.result == 7 and run.state is not None and run.state.is_completed()
        assert _artifact_keys(run.id) == set()  # nothing sent yet: the answer did not wait
        assert not records_sent(0.2)
    finally:
        earlier_done.set()
    assert records_sent(60)
    assert {"llmorch-frg", "llmorch-schedule", "llmorch-progress"} <= _artifact_keys(run.id)


SCRIPT = """
import sys
from prefect_llmorch import run_plan

report = run_plan(f"s1: add(1, {sys.argv[1]})\\n", "toolboxes:toolbox", processors=1, concurrency_limit=None)
print(report.result, flush=True)
"""  # and it exits at once


@pytest.mark.usefixtures("prefect_harness")
def test_a_script_that_exits_right_after_its_answer_loses_no_artifact(tmp_path) -> None:  # noqa: ANN001
    from prefect.settings import get_current_settings

    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=str(get_current_settings().api.url),  # this session's test server
        PREFECT_HOME=str(tmp_path / "home"),
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]),
    )
    (tmp_path / "script.py").write_text(SCRIPT)
    value = 1000 + int(time.time()) % 1000
    done = subprocess.run(
        [sys.executable, "script.py", str(value)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.split()[-1]) == 1 + value
    # sent before Prefect stopped its events worker (else: an ERROR, the artifact's event lost)
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr, done.stderr[-3000:]
    run = _latest_run("llmorch-run")
    assert run.state is not None and run.state.is_completed()
    assert {"llmorch-frg", "llmorch-schedule", "llmorch-progress"} <= _artifact_keys(run.id)


def test_the_request_sent_ahead_is_the_planners_first_and_is_sent_once(fake_llm, llm) -> None:  # noqa: F811
    from prefect_llmorch.llm.ahead import PlanningAhead

    fake_llm.add("s1: add(1, 2)\n")
    tb = _toolbox()
    ahead = PlanningAhead(llm, "one plus two", tb)
    _wait_for_requests(fake_llm, 1)  # before the planner asked for anything
    result = plan_query("one plus two", tb, ahead)
    ahead.close()
    assert result.text.strip() == "s1: add(1, 2)" and len(fake_llm.chat_requests) == 1


def test_a_planner_asking_something_else_gets_its_own_answer(fake_llm, llm) -> None:  # noqa: F811
    from prefect_llmorch.llm.ahead import PlanningAhead

    fake_llm.add("not asked for", "s1: add(2, 2)\n")
    tb = _toolbox()
    ahead = PlanningAhead(llm, "one plus two", tb)
    _wait_for_requests(fake_llm, 1)  # the server answers in arrival order
    result = plan_query("two plus two", tb, ahead)  # another question: the stream ahead is not it
    ahead.close()
    assert result.text.strip() == "s1: add(2, 2)" and len(fake_llm.chat_requests) == 2


def test_a_plan_handed_over_is_taken_only_for_its_text_and_toolbox() -> None:
    import concurrent.futures

    from prefect_llmorch.flows.handoff import Handoff, handed, handing
    from prefect_llmorch.plan.parser import parse

    tb = _toolbox()
    text = "s1: add(1, 2)\n"
    plan = parse(text, tb)
    done: concurrent.futures.Future = concurrent.futures.Future()
    done.set_result(plan)
    handoff = Handoff(toolbox=tb, text=text, plan=done)
    assert handoff.parsed(text, tb) is plan  # the very object: not parsed again
    assert handoff.parsed("s1: add(2, 2)\n", tb) is None
    assert handed().parsed(text, tb) is None
    with handing(handoff):
        assert handed() is handoff
    assert handed() is not handoff


EMBEDDED_SCRIPT = """
import threading
from prefect_llmorch import Toolbox, inout, run_plan
from prefect_llmorch.flows.report import RECORDS_THREAD
from prefect_llmorch.flows.run import EARLIER_RECORDS_SECONDS
from prefect_llmorch.host.server import start_ephemeral_server

called = threading.Event()

@inout
def mark() -> str:
    called.set()
    return "ok"

def earlier_records() -> None:  # as a previous run's records, still being sent
    seen.append(called.wait(EARLIER_RECORDS_SECONDS - 1))

seen: list[bool] = []
start_ephemeral_server()  # first: it takes seconds to start
threading.Thread(target=earlier_records, name=RECORDS_THREAD).start()
report = run_plan("s1: mark()\\n", Toolbox(mark), processors=1, concurrency_limit=None)
for t in threading.enumerate():
    if t.name == RECORDS_THREAD:
        t.join()
print(report.result, "call while earlier records were sent:", seen[0], flush=True)
"""


@pytest.mark.slow
def test_on_the_embedded_server_a_run_does_not_wait_for_earlier_records(tmp_path) -> None:  # noqa: ANN001
    """The embedded server retries the SQLite writes that earlier runs' records collide with
    (`host/app.py`), so a run there starts while they are still being sent: its call runs
    while the "earlier records" thread still waits (it gives up before a run that waited for
    it would have started)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(migrated_home(tmp_path)), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    out = subprocess.run([sys.executable, "-c", EMBEDDED_SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "ok call while earlier records were sent: True", out.stdout
