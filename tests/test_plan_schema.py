"""The JSON schema of a plan built from a toolbox: valid JSON Schema, one branch per
function, arguments from signatures, references and templates wherever a value goes; and
`with_keywords`, which names positional arguments for the JSON and NESTFUL forms."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from prefect_llmorch.functions import Toolbox, compute, inout
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.plan.schema import plan_schema, response_format, with_keywords


class Airport(BaseModel):
    skyId: str
    entityId: str


@inout
def search_airport(query: str, near: Airport | None = None) -> Airport:
    """Find an airport."""
    raise NotImplementedError


@compute
def total(values: list[float], scale: float = 1.0) -> float:
    raise NotImplementedError


@compute
def concat(*parts: str) -> str:
    raise NotImplementedError


@inout
def tag(name: str, **labels: str) -> dict:
    raise NotImplementedError


TOOLS = Toolbox(search_airport, total, concat, tag)
SCHEMA = plan_schema(TOOLS)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def branches() -> dict[str, dict]:
    return {b["properties"]["function"]["enum"][0]: b for b in SCHEMA["properties"]["calls"]["items"]["anyOf"]}


def test_the_schema_is_valid_json_schema_and_serializable() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert json.loads(json.dumps(response_format(TOOLS)))["json_schema"]["schema"] == SCHEMA


def test_one_branch_per_function_with_required_parameters_from_the_signature() -> None:
    b = branches()
    assert sorted(b) == ["concat", "search_airport", "self", "tag", "total"]
    kwargs = b["search_airport"]["properties"]["kwargs"]
    assert kwargs["required"] == ["query"] and sorted(kwargs["properties"]) == ["near", "query"]
    assert kwargs["additionalProperties"] is False
    assert b["tag"]["properties"]["kwargs"]["additionalProperties"] is True  # **labels
    assert "args" in b["concat"]["properties"] and "args" not in b["total"]["properties"]
    assert "Airport" in SCHEMA["$defs"]  # pydantic's model schema, merged


@pytest.mark.parametrize("text", [
    's1: search_airport(query="Oslo")\ns2: total(values=[1, 2.5], scale=2)',
    's1: search_airport(query="Oslo")\ns2: search_airport(query="{s1.skyId} area", near=s1)',
    's1: total(values=[1])\ns2: total(values=[s1, 3, s1])\ns3: tag(name="x", color="{s2} units")',  # a template: text (a bare "{s2}" is the float)
    's1: search_airport(query="a")\ns2: self(prompt="Summarize {s1.entityId}")',
])
def test_plans_written_by_name_fit_the_schema(text: str) -> None:
    doc = json.loads(parse(text, TOOLS).to_text("json"))
    VALIDATOR.validate(doc)


@pytest.mark.parametrize("doc", [
    {"calls": [{"id": "s1", "function": "serch_airport", "kwargs": {"query": "a"}}]},
    {"calls": [{"id": "s1", "function": "search_airport", "kwargs": {}}]},
    {"calls": [{"id": "s1", "function": "search_airport", "kwargs": {"query": "a", "extra": 1}}]},
    {"calls": [{"id": "s1", "function": "total", "kwargs": {"values": ["x"]}}]},
    {"calls": [{"id": "s1", "function": "total", "kwargs": {"values": [{"ref": "s0", "field": 1}]}}]},
    {"calls": []},
    {"plan": []},
])
def test_what_the_schema_rules_out(doc: dict) -> None:
    assert not VALIDATOR.is_valid(doc)


def test_with_keywords_names_positional_arguments_and_keeps_the_graph() -> None:
    plan = parse('s1: search_airport("Oslo")\ns2: total([s1.skyId], 3)\ns3: concat("a", "b")', TOOLS)
    named = with_keywords(plan, TOOLS)
    assert named.to_text() == ('s1: search_airport(query="Oslo")\ns2: total(values=[s1.skyId], scale=3)\n'
                               's3: concat("a", "b")')
    assert [c.deps for c in named] == [c.deps for c in plan]
    from prefect_llmorch.plan.model import Plan

    two = Plan(named.calls[:2])
    assert parse(two.to_text("nestful")) == two  # keywords only: the NESTFUL form can write it


names = st.sampled_from(["Oslo", "Paris", "x y", ""])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queries=st.lists(names, min_size=1, max_size=4), data=st.data())
def test_generated_plans_in_the_json_form_fit_the_schema(queries: list[str], data: st.DataObject) -> None:
    lines = [f's{i}: search_airport(query="{q}")' for i, q in enumerate(queries, 1)]
    picks = data.draw(st.lists(st.sampled_from(range(1, len(queries) + 1)), min_size=1, max_size=3))
    lines.append(f"s{len(queries) + 1}: total(values=[{', '.join(f's{p}.skyId' for p in picks)}])")
    VALIDATOR.validate(json.loads(parse("\n".join(lines), TOOLS).to_text("json")))
