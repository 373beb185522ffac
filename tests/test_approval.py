"""A person's approval of a call (`approve=True`), answered through Prefect's API the way the UI
answers it: the UI reads a paused run's form (the flow-run inputs its pause saved: the schema
and the description) and posts it to `POST /flow_runs/{id}/resume` with `run_input`, which is
what `PrefectClient.resume_flow_run` sends. Times come from the tools' own records."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import toolboxes_approval as ta
from llm_fixtures import KEY, MODEL
from prefect_llmorch.engine.approval import APPROVAL_FLOW, pending_approvals, terminal_prompts
from prefect_llmorch.functions import inout

pytestmark = pytest.mark.usefixtures("prefect_harness")

TB = ta.toolbox
#: A hang guard, never a measure: how long a test waits for something that must happen.
PATIENCE = 120.0


def _paused_approvals() -> list[Any]:
    """The `llmorch-approval` flow runs that are paused, as the UI lists them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
        )
        return [r for r in runs if client.read_flow(r.flow_id).name == APPROVAL_FLOW]


def _wait_for(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


def _approval_of(call: str) -> Any:
    return _wait_for(f"{call} waits for approval", lambda: next((r for r in _paused_approvals() if r.parameters["call"] == call), None))


def _form(run: Any) -> tuple[dict[str, Any], str]:
    """What the UI shows on the paused run: the form's JSON schema and its description."""
    from prefect.client.orchestration import get_client

    keyset = run.state.state_details.run_input_keyset
    with get_client(sync_client=True) as client:
        import json

        schema = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
        description = json.loads(client.read_flow_run_input(run.id, keyset["description"]))
    return schema, description


def _answer(run: Any, approve: bool, note: str = "") -> float:
    """Submit the form as the UI does; returns when it was sent."""
    from prefect.client.orchestration import get_client

    sent = time.time()
    with get_client(sync_client=True) as client:
        result = client.resume_flow_run(run.id, run_input={"approve": approve, "note": note})
    assert result.status.value == "ACCEPT", result
    return sent


class _Run:
    """`run_plan` on a thread: the test answers approvals meanwhile."""

    def __init__(self, plan: str, processors: int = 1, **options: Any) -> None:
        from prefect_llmorch.flows.run import run_plan

        self.report: Any = None
        self.error: BaseException | None = None

        def go() -> None:
            try:
                self.report = run_plan(plan, TB, processors=processors, concurrency_limit=None, **options)
            except BaseException as exc:  # PlanRunFailed carries the report
                self.error = exc
                self.report = getattr(exc, "report", None)

        self.thread = threading.Thread(target=go, name="approval-test-run")
        self.thread.start()

    def join(self) -> Any:
        self.thread.join(PATIENCE)
        assert not self.thread.is_alive(), "the run did not end"
        return self.report

    def rows(self) -> dict[str, Any]:
        return {c.id: c for c in self.report.calls}


def _one(log: str, function: str) -> dict[str, Any]:
    (record,) = [r for r in ta.records(log) if r["function"] == function]
    return record


@pytest.mark.slow
def test_approved_calls_wait_holding_nothing_while_the_others_run(tmp_path: Path) -> None:
    """P=1: a compute call waiting for approval holds no processor (another compute call runs
    meanwhile), an inout one waits on its input first; both run only after their approval,
    and the UI's form shows the call id, the function and the arguments."""
    log = str(tmp_path / "calls.jsonl")
    plan = f's1: wipe(1, "{log}")\ns2: crunch(2, "{log}")\ns3: lookup("bob", "{log}")\ns4: send(s3, "{log}")\n'
    run = _Run(plan, processors=1)
    wipe = _approval_of("s1")
    send = _approval_of("s4")
    assert wipe.name == "approve s1 · wipe" and wipe.parameters["function"] == "wipe"
    assert wipe.parameters["arguments"] == {"n": "1", "log": repr(log)}
    assert send.parameters["arguments"] == {"to": "'BOB'", "log": repr(log)}  # its input, resolved
    schema, description = _form(wipe)
    assert set(schema["properties"]) == {"approve", "note"} and schema["properties"]["approve"]["type"] == "boolean"
    assert "**s1 · wipe**" in description and "| `n` | `1` |" in description
    assert {label for _, label, _ in pending_approvals()} == {"s1 · wipe", "s4 · send"}
    # the calls that do not depend on them finish while they wait, on the one processor
    _wait_for("crunch and lookup ran", lambda: {"crunch", "lookup"} <= {r["function"] for r in ta.records(log)})
    assert not {"wipe", "send"} & {r["function"] for r in ta.records(log)}
    approved_wipe = _answer(wipe, True)
    approved_send = _answer(send, True, "fine")
    report = run.join()
    assert run.error is None and report.state == "Completed", report.message
    assert report.result["s4"] == "sent to BOB" and report.result["s1"] == 1
    assert _one(log, "wipe")["start"] >= approved_wipe > _one(log, "crunch")["end"]
    assert _one(log, "send")["start"] >= approved_send > _one(log, "lookup")["end"]
    assert pending_approvals() == []


@pytest.mark.slow
def test_a_rejected_call_fails_rejected_by_the_user_and_never_runs(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.jsonl")
    plan = f's1: send("eve", "{log}")\ns2: lookup(s1, "{log}")\ns3: lookup("x", "{log}")\n'
    run = _Run(plan)
    _answer(_approval_of("s1"), False, "not eve")
    report = run.join()
    rows = run.rows()
    assert report.state == "Failed"
    assert rows["s1"].state == "Failed"
    assert rows["s1"].reason == "ApprovalRejected: s1 · send was rejected by the user in the Prefect UI: not eve; it did not run"
    assert rows["s2"].state != "Completed" and rows["s3"].state == "Completed"
    assert [r["arg"] for r in ta.records(log)] == ["x"]  # send never ran, nor what needed it


@pytest.mark.slow
def test_an_unanswered_call_times_out_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMORCH_APPROVAL_TIMEOUT", "1")
    log = str(tmp_path / "calls.jsonl")
    report = _Run(f's1: send("eve", "{log}")\ns2: lookup("x", "{log}")\n').join()
    rows = {c.id: c for c in report.calls}
    assert rows["s1"].state == "Failed"
    assert rows["s1"].reason == "ApprovalTimeout: s1 · send was not approved in time (no answer within 1 s); it did not run"
    assert rows["s2"].state == "Completed"
    assert [r["function"] for r in ta.records(log)] == ["lookup"]
    assert _paused_approvals() == []  # Prefect failed the paused run: nothing is left to answer


@pytest.mark.slow
def test_the_terminal_answers_y_or_n_and_the_ui_is_told(tmp_path: Path) -> None:
    """`llmorch run` on a terminal: each request is asked in turn; the answer goes through the
    API the way the UI's does."""
    log = str(tmp_path / "calls.jsonl")
    read, write = os.pipe()
    with os.fdopen(read) as stdin, os.fdopen(write, "w") as keyboard:
        terminal_prompts(True, stdin=stdin)
        try:
            run = _Run(f's1: send("eve", "{log}")\ns2: send(s1, "{log}")\n')
            _approval_of("s1")
            keyboard.write("maybe\ny\n")  # asked again until y or n
            keyboard.flush()
            _approval_of("s2")
            keyboard.write("n\n")
            keyboard.flush()
            report = run.join()
        finally:
            terminal_prompts(False)
    rows = {c.id: c for c in report.calls}
    assert rows["s1"].state == "Completed"
    assert rows["s2"].reason == "ApprovalRejected: s2 · send was rejected by the user on the terminal; it did not run"
    assert [r["arg"] for r in ta.records(log)] == ["eve"]


@pytest.mark.slow
def test_recovery_plans_around_a_rejected_call(tmp_path: Path) -> None:
    """A rejection is a failure like any other: trace-back recovery asks the LLM for another
    call (here: look the address up instead of sending), which runs."""
    from prefect import flow

    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.flows.execute import execute
    from prefect_llmorch.flows.recovery import RecoveryConfig
    from prefect_llmorch.llm.client import LLMClient
    from prefect_llmorch.plan.parser import parse
    from prefect_llmorch.testing import FakeLLM

    log = str(tmp_path / "calls.jsonl")
    box: dict[str, Any] = {}
    with FakeLLM([f's1: lookup("eve", "{log}")'], api_key=KEY, model=MODEL) as server:
        config = RecoveryConfig(LLMClient(server.base_url, MODEL, KEY, max_retries=0, timeout=20), max_rounds=1, round_timeout=90)

        @flow(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
        def recovering() -> Any:
            plan = parse(f's1: send("eve", "{log}")\ns2: lookup(s1, "{log}")\n', TB)
            box["report"] = execute(plan, TB, processors=1, recovery=config)[2]

        runner = threading.Thread(target=recovering)
        runner.start()
        _answer(_approval_of("s1"), False)
        runner.join(PATIENCE)
        prompt = server.chat_requests[0].text
    report = box["report"]
    assert report.state == "Completed", report.message
    assert report.results["s2"] == "EVE" and report.results["s1"] == "EVE"
    assert "rejected by the user" in prompt
    assert [r["function"] for r in ta.records(log)] == ["lookup", "lookup"]


def test_approve_refuses_cache() -> None:
    with pytest.raises(ValueError, match="approve=True cannot be cache=True"):
        inout(approve=True, cache=True)(lambda x: x)
    assert TB["send"].approve and TB["wipe"].approve and not TB["crunch"].approve


def test_the_runner_graph_puts_an_approval_node_before_each_call_that_needs_one() -> None:
    """The runner's graph: `s1~approval` (inout, cost 0, holding nothing) with the call's deps,
    and the call after it; calls without approval are as in the plan's FRG."""
    from prefect_llmorch.engine.compiler import Compiler, Recorder
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.plan.parser import parse

    plan = parse('s1: lookup("a", "l")\ns2: wipe(1, "l")\ns3: send(s1, "l")\ns4: crunch(s2, "l")\n', TB)
    frg = FRG.build(plan, TB)
    graph = Compiler(frg=frg, toolbox=TB, recorder=Recorder()).runner_graph(frg)
    assert graph.ids == ("s1", "s2~approval", "s2", "s3~approval", "s3", "s4")
    assert graph.deps["s2~approval"] == frozenset() and graph.deps["s2"] == {"s2~approval"}
    assert graph.deps["s3~approval"] == {"s1"} and graph.deps["s3"] == {"s1", "s3~approval"}
    assert graph.deps["s4"] == {"s2"}
    assert graph.kind["s2~approval"] == "inout" and dict(graph.demand["s2~approval"]) == {} and graph.cost["s2~approval"] == 0
    assert graph.kind["s2"] == "compute" and dict(graph.demand["s2"]) == {"processors": 1.0}
    plain = FRG.build(parse('s1: lookup("a", "l")\n', TB), TB)
    assert Compiler(frg=plain, toolbox=TB, recorder=Recorder()).runner_graph(plain) is plain  # nothing to ask


def test_a_request_never_shows_a_loaded_secret() -> None:
    from prefect_llmorch.engine.approval import describe, shown
    from prefect_llmorch.engine.compiler import Compiler, Recorder
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.plan.parser import parse

    frg = FRG.build(parse('s1: lookup("a", "l")\n', TB), TB)
    compiler = Compiler(frg=frg, toolbox=TB, recorder=Recorder(), secrets={"mail": {"token": "tok-SECRET-42"}})
    args = shown({"to": "bob", "body": "use tok-SECRET-42 | now", "blob": "x" * 2000}, compiler._scrub)
    assert args["to"] == "'bob'" and args["body"] == "'use *** | now'"
    assert len(args["blob"]) == 500 and args["blob"].endswith("…")
    text = describe("s1 · send", args, 60)
    assert "tok-SECRET" not in text and "| `body` | `'use *** \\| now'` |" in text
