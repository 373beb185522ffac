"""Field access at run time on a real (test) Prefect server: selected fields flow into
calls (through worker processes too), a missing field fails the call that asked for it with
a precise message, that failure feeds trace-back recovery (the repair prompt shows it), and
JSON plans run like text plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_fixtures import fake_llm, llm  # noqa: F401
from prefect_llmorch.flows.run import PlanRunFailed, run_plan
from prefect_llmorch.plan.errors import FieldError

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOOLBOX = "toolboxes_fields:toolbox"


def test_fields_of_models_and_dataclasses_flow_into_later_calls() -> None:
    plan = ('s1: find_airport("London")\n'
            "s2: plan_leg(s1.id, minutes=45)\n"
            "s3: double(s2.minutes)\n"
            's4: echo("{s1.name} ({s2.origin}) in {s3} min")')
    report = run_plan(plan, TOOLBOX, processors=1)
    assert report.state == "Completed", report.message
    assert report.results["s3"] == 90
    assert report.result == "London International (LON) in 90 min"


def test_a_missing_field_fails_the_calling_call_with_what_is_there() -> None:
    plan = 's1: lookup("x", value={"id": 1, "name": "JFK", "entityId": 2})\ns2: echo(text=s1.skyId)\n'
    with pytest.raises(PlanRunFailed) as info:
        run_plan(plan, TOOLBOX, processors=1)
    report = info.value.report
    rows = {c.id: c for c in report.calls}
    assert rows["s1"].state == "Completed" and rows["s2"].state == "Failed"
    assert "s2 argument 'text': s1 has no field 'skyId'; it has: id, name, entityId" in rows["s2"].error


def test_a_wrong_field_of_a_declared_result_type_fails_before_anything_runs() -> None:
    with pytest.raises(FieldError, match=r"line 2, column 15: `s1.skyId`"):
        run_plan('s1: find_airport("London")\ns2: echo(text=s1.skyId)\n', TOOLBOX, processors=1)


def test_a_missing_field_feeds_trace_back_recovery_which_repairs_the_asking_call(fake_llm, llm) -> None:  # noqa: F811
    # s2 asks s1 for `skyId`, which s1's result lacks: s2 itself is the recovery point (its
    # own argument is wrong), repaired to select a field that exists; s1 is not re-run.
    fake_llm.add("s2: echo(text=s1.code)")
    plan = 's1: lookup("x", value={"code": "JFK"})\ns2: echo(text=s1.skyId)\ns3: double(21)\n'
    report = run_plan(plan, TOOLBOX, processors=1, endpoint=llm, recovery_rounds=1)
    assert report.state == "Completed", report.message
    assert report.results["s2"] == "JFK" and report.results["s3"] == 42
    (rnd,) = report.recovery["rounds"]
    assert rnd["recovery_points"] == ["s2"] and rnd["rerun"] == ["s2"]
    prompt = fake_llm.chat_requests[0].messages[-1]["content"]
    assert "s2 argument 'text': s1 has no field 'skyId'; it has: code" in prompt
    assert "Recovery call to repair: s2: echo(text=s1.skyId)" in prompt


def test_a_nestful_plan_runs_like_a_text_plan() -> None:
    plan = ('[{"name": "find_airport", "arguments": {"query": "Paris"}, "label": "var1"},\n'
            ' {"name": "echo", "arguments": {"text": "$var1.name$ is $var1.id$"}, "label": "var2"},\n'
            ' {"name": "var_result", "arguments": {"answer": "$var2$"}}]')
    report = run_plan(plan, TOOLBOX, processors=1)
    assert report.state == "Completed", report.message
    assert report.results["var2"] == "Paris International is PAR"
    assert report.result == {"answer": "Paris International is PAR"}  # var_result names it


def test_the_json_form_answer_selects_a_field() -> None:
    plan = ('{"calls": [{"id": "s1", "function": "find_airport", "kwargs": {"query": "Oslo"}},\n'
            '  {"id": "s2", "function": "double", "args": [7]}],\n'
            ' "answer": {"ref": "s1", "path": ["name"]}}')
    report = run_plan(plan, TOOLBOX, processors=1)
    assert report.state == "Completed" and report.result == "Oslo International"
