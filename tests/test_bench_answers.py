"""benchmarks/answers.py: its scoring (pure), its facts (computed from the toolbox), one
question end to end against the scripted server; and the planner prompt's rule that keeps
arithmetic and comparisons out of `self`."""

from __future__ import annotations


import pytest

from prefect_llmorch.functions import load_toolbox
from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.llm.planning import build_system_prompt
from prefect_llmorch.plan.parser import parse

import answers  # benchmarks/ is on sys.path (conftest)
import answers_toolbox
from answers import Name, Number
from llm_fixtures import KEY, MODEL, fake_llm  # noqa: F401 - fixtures


@pytest.mark.parametrize("answer, value, stated", [
    ("Together 1,009,650 people.", 1009650, True),
    ("1009650.0", 1009650, True),
    ("0.50 euros", 0.5, True),
    ("0.5 euros", 0.50, True),
    ("Rome, by -52 km", 52, True),             # sign aside: subtract(b, a) is the same fact
    ("about 1.1 km", 1.06, True),              # within the rounding of one decimal
    ("about 1.0 km", 1.06, False),
    ("53 km", 52, False),
    ("about 1.01 million", 1009650, False),    # words for magnitudes are not read
])
def test_a_number_is_stated_within_the_rounding_it_is_written_with(answer: str, value: float, stated: bool) -> None:
    assert answers.states_number(answer, value) is stated


@pytest.mark.parametrize("answer, stated", [
    ("Rome is farther than Madrid, by 52 km.", True),
    ("rome", True),
    ("Madrid is farther.", False),
    ("Romeo is farther.", False),             # a whole word
    ("Madrid is closer, so Rome is farther.", False),  # the rule is coarse: the first named choice
])
def test_a_choice_is_the_right_name_named_before_the_wrong_ones(answer: str, stated: bool) -> None:
    assert answers.states_name(answer, Name("Rome", ("Madrid",))) is stated


def test_a_score_names_the_missing_facts_and_the_numbers_nothing_supports() -> None:
    results = [answers_toolbox.city("Oslo"), answers_toolbox.city("Bergen")]
    q = "How many people live in Oslo and Bergen together?"
    good = answers.score("Oslo (717,710) and Bergen (291,940): 1,009,650 people, 2 cities.", [Number(1009650)], q, results)
    assert good == {"facts_ok": True, "missing": [], "unsupported": []}
    made_up = answers.score("About 2.46 times Bergen; 1,000,000 in all.", [Number(1009650)], q, results)
    assert made_up == {"facts_ok": False, "missing": ["1009650"], "unsupported": ["2.46", "1,000,000"]}


def test_the_expected_facts_come_from_the_toolbox_functions() -> None:
    facts = {q.text: q.facts() for q in answers.QUESTIONS}
    assert len(facts) == len(answers.QUESTIONS) == 10
    assert facts["Which is farther from Paris, Rome or Madrid, and by how many km?"] == [Name("Rome", ("Madrid",)), Number(52.0)]
    assert facts["How many people live in Oslo and Bergen together?"] == [Number(717_710 + 291_940)]
    assert facts["Is coffee cheaper at Rema or at Kiwi, and by how many euros?"] == [Name("Kiwi", ("Rema",)), Number(0.5)]
    # every question needs a computed number or a comparison: no fact is a looked-up value
    looked_up = {float(v) for t in (answers_toolbox._PEOPLE, answers_toolbox._KM, answers_toolbox._PRICES, answers_toolbox._STOCK)
                 for v in (x[1] if isinstance(x, tuple) else x for x in t.values())}
    assert not [f for fs in facts.values() for f in fs if isinstance(f, Number) and f.value in looked_up]


@pytest.mark.parametrize("mode", ["text", "json"])
def test_the_planner_prompt_keeps_arithmetic_out_of_self(mode: str) -> None:
    prompt = build_system_prompt(load_toolbox("prefect_llmorch.examples.toolbox:toolbox"), mode)
    assert "Do arithmetic and comparisons of numbers" in prompt and "not in `self`" in prompt
    assert "to word the answer from the results" in prompt and "reason over or combine" not in prompt
    # the text form shows arithmetic in an argument, and that example is a valid plan line
    if mode == "text":
        assert "`f(s1.km - s2.km)`" in prompt
        assert parse("s1: f()\ns2: f()\ns3: f(s1.km - s2.km)").calls[2].function == "f"


PLAN = ('s1: distance("Paris", "Rome")\ns2: distance("Paris", "Madrid")\ns3: largest({"Rome": s1.km, "Madrid": s2.km})\n'
        's4: subtract(s1.km, s2.km)\ns5: self("{s3.name} is farther, by {s4} km")\n')


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_one_question_end_to_end_is_scored_from_the_runs_results(fake_llm) -> None:  # noqa: F811
    recorder = answers.Recorder()
    proxy = answers.proxy(fake_llm.base_url, recorder)
    question = answers.QUESTIONS[1]
    try:
        with LLMClient(f"http://127.0.0.1:{proxy.server_address[1]}/v1", MODEL, KEY, max_retries=0) as client:
            fake_llm.add(PLAN, "Rome is farther from Paris, by 52 km.")
            right = answers.one(1, question, client, recorder, "text")
            # a made-up number: `self` is asked again (one more LLM call) and still wrong
            fake_llm.add(PLAN, "Rome, by 60 km.", "Rome, by 61 km.")
            wrong = answers.one(1, question, client, recorder, "text")
    finally:
        proxy.shutdown()
    assert (right["valid"], right["first_valid"], right["facts_ok"], right["unsupported"]) == (True, True, True, [])
    assert right["llm_calls"] == 2 and right["self_calls"] == 1 and right["tokens"] > 0
    assert right["results"]["s3"] == {"name": "Rome", "value": 1106.0} and right["results"]["s4"] == 52.0
    assert (wrong["answer"], wrong["facts_ok"], wrong["missing"], wrong["unsupported"]) == ("Rome, by 61 km.", False, ["52"], ["61"])
    assert wrong["llm_calls"] == 3
    table = answers.summary([right, wrong])
    assert "| 1 | text | yes / yes | yes | - | 2 |" in table and "| text | 2 | 2/2 | 2/2 | 2/2 | 1/2 | 1/2 | 2.5 |" in table
