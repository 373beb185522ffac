"""What the Prefect UI shows a newcomer: a wrong plan's errors alone, and parameter forms
that refuse bad values with the words of the bound (Prefect validates a deployment's
parameters against their JSON schema, as the UI's form does)."""

from __future__ import annotations

import logging
import re
from typing import Any, Iterator

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, build_error_obj, preprocess_schema, validate

from prefect_llmorch.flows.deploy import AskParameters, RunParameters, llmorch_ask, llmorch_run

# Two syntax errors: a missing argument (the grammar's LITERAL_LIST / LITERAL_DICT would be
# among what is expected) and a missing comma.
BAD_PLAN = "s1: fetch(0.1, value=)\ns2: add(s1 2)\n"


def _form_errors(flow_obj: Any, values: dict[str, Any]) -> dict[str, Any]:
    """What the UI's form says (`/ui/schemas/validate`: preprocess, validate, build_error_obj)."""
    schema = preprocess_schema(parameter_schema(flow_obj).model_dump_for_openapi())
    return build_error_obj(validate({"parameters": values}, schema, preprocess=False))


def _messages(errors: dict[str, Any], field: str) -> list[str]:
    (params,) = errors["errors"]
    return [m for e in params["errors"] if e["property"] == field for m in e["errors"]]


@pytest.mark.parametrize("flow_obj", [llmorch_run, llmorch_ask])
def test_the_form_says_processors_must_be_at_least_1_and_allows_empty(flow_obj: Any) -> None:
    base = {} if flow_obj is llmorch_run else {"query": "q"}
    assert _messages(_form_errors(flow_obj, {**base, "processors": 0}), "processors") == ["0 is less than the minimum of 1"]
    assert _form_errors(flow_obj, {**base, "processors": None})["valid"]
    assert _form_errors(flow_obj, {**base, "processors": 2})["valid"]
    with pytest.raises(ValueError, match="greater than or equal to 1"):  # and at run time
        (RunParameters if flow_obj is llmorch_run else AskParameters)(**base, processors=0)


@pytest.mark.parametrize("flow_obj", [llmorch_run, llmorch_ask])
def test_the_form_refuses_a_toolbox_without_a_colon(flow_obj: Any) -> None:
    base = {} if flow_obj is llmorch_run else {"query": "q"}
    (message,) = _messages(_form_errors(flow_obj, {**base, "toolbox": "prefect_llmorch.examples.toolbox"}), "toolbox")
    assert message.startswith("'prefect_llmorch.examples.toolbox' does not match")
    assert _form_errors(flow_obj, {**base, "toolbox": "toolboxes:toolbox"})["valid"]
    # the server refuses such a flow run too (a deployment enforces its parameter schema)
    schema = parameter_schema(flow_obj).model_dump_for_openapi()
    with pytest.raises(ValidationError, match="toolbox"):
        validate({"parameters": {**base, "toolbox": "nocolon"}}, schema, raise_on_error=True)
    with pytest.raises(ValueError, match="toolbox must be `module:attr`"):  # our words at run time
        (RunParameters if flow_obj is llmorch_run else AskParameters)(**base, toolbox="nocolon")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(logging.Formatter().format(r) for r in self.records)  # tracebacks included


@pytest.fixture
def flow_run_log() -> Iterator[_Lines]:
    logger = logging.getLogger("prefect.flow_runs")
    handler, level = _Lines(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _assert_the_errors_alone(message: str) -> None:
    lines = message.splitlines()
    assert lines[0] == "2 errors in plan:" and len(lines) == 3
    assert lines[1].startswith("  line 1, column 22: unexpected `)`; expected a value (a string, a number, a list, a dict")
    assert lines[2].startswith("  line 2, column 12: unexpected `2`; expected one of: `)`")
    assert not re.search(r"\b[A-Z]+_[A-Z_]+\b", message)  # no grammar token names (LITERAL_DICT)
    assert "Traceback" not in message and "PlanErrors" not in message


@pytest.mark.usefixtures("prefect_harness")
def test_a_plan_with_syntax_errors_fails_with_every_error_and_no_traceback(flow_run_log: _Lines) -> None:
    from prefect_llmorch.flows.run import orchestrate

    from prefect_llmorch.options import RunOptions

    state = orchestrate(plan=BAD_PLAN, toolbox="toolboxes:toolbox", options=RunOptions(processors=1), return_state=True)
    assert state.is_failed()
    _assert_the_errors_alone(state.message)
    assert "Traceback" not in flow_run_log.text()
    assert "line 2, column 12" in flow_run_log.text()  # the log has the errors with their carets
    # the deployable flow (what the UI runs) ends the same way
    state = llmorch_run(RunParameters(plan=BAD_PLAN, toolbox="toolboxes:toolbox", processors=1), return_state=True)
    assert state.is_failed()
    _assert_the_errors_alone(state.message)
    assert "Traceback" not in flow_run_log.text()
