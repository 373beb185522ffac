"""`self(prompt)` keeps the facts (issue 28): the step sees the question it serves, and an
answer stating a number that is neither in its prompt nor in the question is asked again
once. The LLM is the scripted HTTP server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefect_llmorch.llm.selfcall import TokenCounter, make_self_fn, unsupported_numbers

from fake_llm import count_tokens
from llm_fixtures import fake_llm, llm  # noqa: F401 - fixtures

QUESTION = "Is Oslo or Bergen larger, and by how many people?"
PROMPT = "Oslo: 709,037 people. Bergen: 291,189 people. Which is larger, and by how many?"


def test_the_step_sees_the_question_it_serves(fake_llm, llm):
    fake_llm.add("Oslo is larger than Bergen.")
    make_self_fn(llm, TokenCounter(), question=QUESTION)(PROMPT)
    system = fake_llm.chat_requests[0].messages[0]
    assert system["role"] == "system" and QUESTION in system["content"]
    assert fake_llm.chat_requests[0].messages[-1] == {"role": "user", "content": PROMPT}


def test_an_answer_with_a_number_not_given_is_asked_again_naming_it(fake_llm, llm):
    first_answer, second_answer = ("Oslo is larger, with 709,037 people, 2.4 times Bergen.",
                                   "Oslo is larger: 709,037 against 291,189.")
    fake_llm.add(first_answer, second_answer)
    tokens = TokenCounter()
    answer = make_self_fn(llm, tokens, question=QUESTION)(PROMPT)
    assert answer == "Oslo is larger: 709,037 against 291,189."
    first, second = fake_llm.chat_requests
    assert second.messages[:2] == first.messages
    assert second.messages[2] == {"role": "assistant", "content": "Oslo is larger, with 709,037 people, 2.4 times Bergen."}
    assert "states 2.4, which is not among the values given" in second.messages[3]["content"]
    assert tokens.completion == count_tokens(first_answer) + count_tokens(second_answer)  # both were spent


def test_an_answer_that_keeps_to_the_values_is_taken_at_once(fake_llm, llm):
    fake_llm.add("Oslo (709,037) is larger than Bergen (291,189).")
    assert make_self_fn(llm, TokenCounter())(PROMPT) == "Oslo (709,037) is larger than Bergen (291,189)."
    assert len(fake_llm.chat_requests) == 1
    assert fake_llm.chat_requests[0].messages[0]["content"].count("question") == 0  # no question: none shown


@pytest.mark.parametrize("answer, sources, missing", [
    ("Apple did better: up 1.2% against down 0.4%.", ["AAPL change_pct 1.2; MSFT change_pct -0.4"], []),
    ("Apple closed at 231.4 USD and Microsoft at 452.", ["231.40", "452.10"], []),
    ("Frames 1-4 average 5.3 objects, frames 5-8 6.", ["average 5.25", "6.0"], []),
    ("1. Falcon: 390 km/h\n2. Cheetah: 120 km/h", ["falcon 390, cheetah 120"], []),
    ("The falcon is 3.25 times faster: 390 vs 120.", ["falcon 390, cheetah 120"], ["3.25"]),
    ("Both 2 stocks rose, by 1.5% in all.", ["1.2 and 0.3"], ["1.5"]),
    ("It took 12 s.", ["waited 2, 3 and 1 seconds"], ["12"]),
])
def test_numbers_are_supported_by_the_values_given_also_when_rounded(answer, sources, missing):
    assert unsupported_numbers(answer, *sources) == missing


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(min_value=0, max_value=3))
def test_a_value_written_rounded_is_supported_by_itself(value, decimals):
    assert unsupported_numbers(f"about {value:.{decimals}f} here", f"value: {value!r}") == []
