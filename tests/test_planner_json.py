"""The JSON planner mode through real HTTP with the real openai client: the request carries
the plan's JSON schema as `response_format`, calls are dispatched as their objects close,
broken plans are repaired with JSON pointers, and the mode comes from the client (the
`LLMEndpoint` block's `planner`) or the caller."""

from __future__ import annotations

import json
import time
from typing import TypedDict

import pytest

from llm_fixtures import KEY, MODEL, fake_llm, llm  # noqa: F401 - fixtures
from prefect_llmorch.blocks import LLMEndpoint
from prefect_llmorch.functions import Toolbox, compute, inout
from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.llm.planning import build_system_prompt, plan_query
from prefect_llmorch.plan.model import Ref
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.plan.schema import SCHEMA_NAME, plan_schema


@inout
def search(query: str) -> dict:
    """Search the web; returns {"title", "snippet"}."""
    return {"title": query, "snippet": f"result for {query}"}


@compute
def count_words(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


TOOLBOX = Toolbox(search, count_words)
QUERY = "Which has more words in its top snippet, Apple stock or Microsoft stock?"


def call(cid: str, function: str, **kwargs: object) -> str:
    return json.dumps({"id": cid, "function": function, "kwargs": kwargs})


GOOD = ('{"calls": [\n  '
        + ",\n  ".join([
            call("s1", "search", query="Apple stock"),
            call("s2", "search", query="Microsoft stock"),
            call("s3", "count_words", text={"ref": "s1", "path": ["snippet"]}),
            call("s4", "count_words", text={"ref": "s2", "path": ["snippet"]}),
            call("s5", "self", prompt={"template": ["Apple: ", {"ref": "s3"}, ", Microsoft: ",
                                                    {"ref": "s4"}, ". Which has more?"]}),
        ]) + "\n]}")
# s3 refers to s9, which no call defines (valid under the schema, caught by the parser)
BROKEN = GOOD.replace('{"ref": "s1", "path": ["snippet"]}', '{"ref": "s9", "path": ["snippet"]}')


def test_json_mode_asks_under_the_toolbox_schema_with_the_json_form_prompt(fake_llm, llm):  # noqa: F811
    fake_llm.add(GOOD)
    result = plan_query(QUERY, TOOLBOX, llm, mode="json")
    assert result.plan == parse(GOOD, TOOLBOX) and result.plan.dialect == "json"
    request = fake_llm.chat_requests[0]
    fmt = request.response_format
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == SCHEMA_NAME
    assert fmt["json_schema"]["schema"] == plan_schema(TOOLBOX)
    system = request.messages[0]["content"]
    assert system == build_system_prompt(TOOLBOX, "json")
    assert '{"ref": "s1", "path": ["data", 0, "id"]}' in system and TOOLBOX.describe() in system


def test_text_mode_sends_no_response_format(fake_llm, llm):  # noqa: F811
    fake_llm.add('s1: search("a")\ns2: count_words(s1.snippet)')
    plan_query(QUERY, TOOLBOX, llm)
    assert fake_llm.chat_requests[0].response_format is None


def test_calls_are_dispatched_as_their_objects_close(fake_llm, llm):  # noqa: F811
    fake_llm.token_delay = 0.02
    fake_llm.add(GOOD)
    seen: list[tuple[str, float]] = []
    result = plan_query(QUERY, TOOLBOX, llm, mode="json",
                        on_call=lambda c: seen.append((c.id, time.monotonic())))
    done = fake_llm.chat_requests[0].finished_at
    assert [cid for cid, _ in seen] == ["s1", "s2", "s3", "s4", "s5"]
    times = dict(seen)
    assert times["s1"] < times["s2"] < times["s3"] < times["s4"] < done  # while still streaming
    assert result.dispatched == ("s1", "s2", "s3", "s4", "s5") and result.stale == ()


def test_a_plan_on_one_line_streams_too(fake_llm, llm):  # noqa: F811
    fake_llm.add(GOOD.replace("\n", ""))
    seen: list[str] = []
    result = plan_query(QUERY, TOOLBOX, llm, mode="json", on_call=lambda c: seen.append(c.id))
    assert seen == ["s1", "s2", "s3", "s4", "s5"] and len(result.plan) == 5


def test_a_broken_json_plan_is_repaired_with_pointers(fake_llm, llm):  # noqa: F811
    fake_llm.add(BROKEN, GOOD)
    result = plan_query(QUERY, TOOLBOX, llm, mode="json")
    first, second = result.attempts
    assert not first.ok and second.ok and second.repair
    assert first.errors[0].pointer == "/calls/2/kwargs/text"
    feedback = fake_llm.chat_requests[1].messages[-1]["content"]
    assert "(/calls/2/kwargs/text): undefined reference `s9`" in feedback
    assert "as the same JSON object" in feedback
    assert fake_llm.chat_requests[1].response_format == fake_llm.chat_requests[0].response_format


def test_the_mode_comes_from_the_client_and_the_endpoint_block(fake_llm):  # noqa: F811
    endpoint = LLMEndpoint(base_url=fake_llm.base_url, model=MODEL, api_key=KEY, planner="json")
    client = endpoint.llm_client(max_retries=0)
    assert client.planner == "json"
    fake_llm.add(GOOD)
    result = plan_query(QUERY, TOOLBOX, client)
    assert result.plan.dialect == "json" and fake_llm.chat_requests[0].response_format is not None
    with pytest.raises(ValueError, match="planner"):
        LLMClient(fake_llm.base_url, MODEL, KEY, planner="yaml")


class Route(TypedDict):
    distance: float


@inout
def route(origin: str) -> Route:
    """A route from `origin` (its result has fields: the JSON repair hint test)."""
    return {"distance": 1.0}


@inout
def shipping(distance: float) -> float:
    """Shipping cost for a distance."""
    return distance


def test_a_json_repair_prompt_gives_the_hint_in_the_json_form(fake_llm, llm):  # noqa: F811
    """Given `did you mean s1.distance` the real model wrote `{"ref": "s1.distance"}` three
    times in a row (NESTFUL glaive_3-5): in the JSON form the hint names the ref and path."""
    toolbox = Toolbox(route, shipping)
    bad = json.dumps({"calls": [{"id": "s1", "function": "route", "kwargs": {"origin": "NY"}},
                                {"id": "s2", "function": "shipping", "kwargs": {"distance": {"ref": "s1"}}}]})
    good = json.dumps({"calls": [{"id": "s1", "function": "route", "kwargs": {"origin": "NY"}},
                                 {"id": "s2", "function": "shipping",
                                  "kwargs": {"distance": {"ref": "s1", "path": ["distance"]}}}]})
    fake_llm.add(bad, good)
    result = plan_query("Ship it", toolbox, llm, mode="json")
    assert len(result.attempts) == 2
    fix = fake_llm.chat_requests[1].messages[-1]["content"]
    assert 'did you mean {"ref": "s1", "path": ["distance"]} (float)?' in fix and "s1.distance" not in fix


class Converted(TypedDict):
    converted_amount: float


@inout
def convert_currency(amount: float, to: str) -> Converted:
    """Convert an amount of USD."""
    return {"converted_amount": amount}


@compute
def calculate_squared(number: float) -> float:
    """The square of a number."""
    return number * number


def _repair_prompt(fake_llm, llm, toolbox: Toolbox, bad: dict, good: dict) -> str:  # noqa: F811
    fake_llm.add(json.dumps(bad), json.dumps(good))
    result = plan_query("Convert 100 USD to EUR and square it", toolbox, llm, mode="json")
    assert [a.ok for a in result.attempts] == [False, True]
    return fake_llm.chat_requests[1].messages[-1]["content"]


@pytest.mark.parametrize("ref, hint", [
    # the real model's NESTFUL glaive_20 (in the text form): the result type's name
    ({"ref": "convert_currency_result", "path": ["converted_amount"]},
     """not its function's name: {"ref": "s1", "path": ["converted_amount"]}"""),
    # given the text form's `s1` here, the JSON form reads "s1" as text
    ({"ref": "convert_currency"}, """not its function's name: {"ref": "s1"}"""),
])
def test_a_json_repair_prompt_names_the_call_id_for_a_function_name_in_the_json_form(fake_llm, llm, ref, hint):  # noqa: F811
    first = {"id": "s1", "function": "convert_currency", "kwargs": {"amount": 100, "to": "EUR"}}
    bad = {"calls": [first, {"id": "s2", "function": "calculate_squared", "kwargs": {"number": ref}}]}
    good = {"calls": [first, {"id": "s2", "function": "calculate_squared",
                              "kwargs": {"number": {"ref": "s1", "path": ["converted_amount"]}}}]}
    fix = _repair_prompt(fake_llm, llm, Toolbox(convert_currency, calculate_squared), bad, good)
    assert hint in fix and "`s1" not in fix
    assert "defined so far: s1;" in fix  # a bare id outside backticks stays as it is


class Profit(TypedDict):
    profit: float


@compute
def calculate_profit(revenue: float, expenses: float) -> Profit:
    """Profit from revenue and expenses."""
    return {"profit": revenue - expenses}


def test_a_json_repair_prompt_gives_the_missing_field_and_the_argument_in_the_json_form(fake_llm, llm):  # noqa: F811
    # the real model's NESTFUL glaive_9 (in the text form): `s1.expenses`, an argument of s1
    first = {"id": "s1", "function": "calculate_profit", "kwargs": {"revenue": 7000, "expenses": 5000}}
    bad = {"calls": [first, {"id": "s2", "function": "calculate_squared",
                             "kwargs": {"number": {"ref": "s1", "path": ["expenses"]}}}]}
    good = {"calls": [first, {"id": "s2", "function": "calculate_squared", "kwargs": {"number": 5000}}]}
    fix = _repair_prompt(fake_llm, llm, Toolbox(calculate_profit, calculate_squared), bad, good)
    assert ('{"ref": "s1", "path": ["expenses"]}: s1 (calculate_profit returns Profit) has no field '
            "'expenses'; it has: profit; `expenses` is an argument of s1 (5000), not a field of its "
            "result: pass that value itself") in fix
    assert "s1.expenses" not in fix


class Trip(TypedDict):
    legs: list[Route]


@inout
def trip(origin: str) -> Trip:
    """A trip with legs."""
    return {"legs": []}


def test_json_hints_cover_paths_with_indexes_and_the_wrong_reference_itself(fake_llm, llm):  # noqa: F811
    # the text-form rewrite matched only `sN.a.b`: `s1.legs[0]` stayed in the text form
    first = {"id": "s1", "function": "trip", "kwargs": {"origin": "NY"}}
    bad = {"calls": [first, {"id": "s2", "function": "shipping",
                             "kwargs": {"distance": {"ref": "s1", "path": ["legs", 0]}}}]}
    good = {"calls": [first, {"id": "s2", "function": "shipping",
                              "kwargs": {"distance": {"ref": "s1", "path": ["legs", 0, "distance"]}}}]}
    fix = _repair_prompt(fake_llm, llm, Toolbox(trip, shipping), bad, good)
    assert ('but {"ref": "s1", "path": ["legs", 0]} is a Route (trip returns Trip); '
            'did you mean {"ref": "s1", "path": ["legs", 0, "distance"]} (float)?') in fix
    assert "s1.legs" not in fix


def test_the_json_prompt_shows_field_selection_in_the_json_form():
    system = build_system_prompt(Toolbox(route, shipping), "json")
    assert 'Results with fields (select them, e.g. {"ref": "s1", "path": ["field"]};' in system
    assert "s1.field" not in system and "`s1.field`" in build_system_prompt(Toolbox(route, shipping))
