"""The fake OpenAI-compatible server honours `response_format` (checked with the real
openai client over HTTP): replies must fit the schema, and JSON streams in pieces."""

from __future__ import annotations

import json

import openai
import pytest

from llm_fixtures import KEY, MODEL
from prefect_llmorch.functions import Toolbox, inout
from prefect_llmorch.plan.parser import PlanStream, parse
from prefect_llmorch.plan.schema import response_format
from prefect_llmorch.testing import FakeLLM

USER = [{"role": "user", "content": "plan please"}]


@inout
def search(query: str) -> dict:
    """Search."""
    return {}


TOOLS = Toolbox(search)
FORMAT = response_format(TOOLS)
PLAN = ('{"calls": [\n  {"id": "s1", "function": "search", "kwargs": {"query": "a"}},\n'
        '  {"id": "s2", "function": "self", "kwargs": {"prompt": {"template": ["Sum ", {"ref": "s1", "path": ["x"]}]}}}\n]}')


def client(server: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)


def test_a_reply_that_fits_the_schema_streams_as_partial_json() -> None:
    with FakeLLM([PLAN], api_key=KEY, model=MODEL) as server:
        stream = client(server).chat.completions.create(
            model=MODEL, messages=USER, stream=True, response_format=FORMAT)  # type: ignore[arg-type]
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        assert server.chat_requests[0].response_format == FORMAT
    assert "".join(pieces) == PLAN and len(pieces) > 5
    plans = PlanStream(TOOLS)
    ready = [[c.id for c in plans.feed(p)] for p in pieces]
    assert [r for r in ready if r] == [["s1"], ["s2"]]
    assert plans.close() == parse(PLAN, TOOLS)


@pytest.mark.parametrize("reply, why", [
    ("s1: search('a')", "it is not JSON"),
    ('{"calls": [{"id": "s1", "function": "serch", "kwargs": {"query": "a"}}]}', "at /calls/0"),
    ('{"calls": []}', "at /calls"),
])
def test_a_scripted_reply_that_breaks_the_schema_is_a_loud_script_error(reply: str, why: str) -> None:
    with FakeLLM([reply], api_key=KEY, model=MODEL) as server:
        with pytest.raises(openai.InternalServerError) as info:
            client(server).chat.completions.create(
                model=MODEL, messages=USER, response_format=FORMAT)  # type: ignore[arg-type]
    assert why in str(info.value) and "response_format" in str(info.value)


def test_json_object_mode_needs_an_object() -> None:
    fmt = {"type": "json_object"}
    with FakeLLM(['{"a": 1}', "[1]"], api_key=KEY, model=MODEL) as server:
        c = client(server)
        reply = c.chat.completions.create(model=MODEL, messages=USER, response_format=fmt)  # type: ignore[arg-type]
        assert json.loads(reply.choices[0].message.content or "") == {"a": 1}
        with pytest.raises(openai.InternalServerError, match="not a JSON object"):
            c.chat.completions.create(model=MODEL, messages=USER, response_format=fmt)  # type: ignore[arg-type]


def test_text_requests_are_unchanged() -> None:
    with FakeLLM(["not json at all"], api_key=KEY, model=MODEL) as server:
        reply = client(server).chat.completions.create(model=MODEL, messages=USER)
    assert reply.choices[0].message.content == "not json at all"
