"""OpenAI tool calls from the scripted server, checked with the real openai client and raw HTTP.

A `ToolCalls` reply is what a parallel-function-calling model sends: several calls in one turn,
`finish_reason: "tool_calls"`, streamed the way OpenAI streams them.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from llm_fixtures import KEY, MODEL, fake_llm  # noqa: F401 - fixture
from prefect_llmorch.testing.fake_llm import FakeLLM, ToolCall, ToolCalls, tool_results

USER = [{"role": "user", "content": "frames please"}]
TOOLS = [
    {"type": "function", "function": {"name": name, "description": f"the {name} tool",
                                      "parameters": {"type": "object", "properties": {}}}}
    for name in ("frame", "mean")
]
FRAMES = ToolCalls([ToolCall("frame", {"name": f"frame_00{i}", "seconds": 1.0}) for i in range(1, 4)])


def client_for(server: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)


def test_one_turn_with_several_calls_is_answered_as_openai_tool_calls(fake_llm):
    fake_llm.add(FRAMES)
    reply = client_for(fake_llm).chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["frame"] * 3
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"name": f"frame_00{i}", "seconds": 1.0} for i in range(1, 4)
    ]
    assert len({c.id for c in calls}) == 3 and all(c.type == "function" for c in calls)
    # tokens: per call its name and the words of its arguments JSON ({"name": "frame_001", "seconds": 1.0})
    assert reply.usage.completion_tokens == 3 * (1 + 4)
    rec = fake_llm.chat_requests[-1]
    assert rec.tools == ["frame", "mean"]
    assert [c["id"] for c in rec.tool_calls] == [c.id for c in calls]
    assert rec.reply == ""


def test_streamed_tool_calls_arrive_as_openai_sends_them(fake_llm):
    fake_llm.add(FRAMES)
    stream = client_for(fake_llm).chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, stream=True, stream_options={"include_usage": True}
    )
    heads: dict[int, tuple[str, str]] = {}
    pieces: dict[int, list[str]] = {}
    finish, usage, content = None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            content.append(choice.delta.content or "")
            for d in choice.delta.tool_calls or []:
                if d.id is not None:  # the first delta of a call: id, type and name
                    assert d.index not in heads and d.type == "function"
                    heads[d.index] = (d.id, d.function.name)
                else:
                    assert d.function.name is None
                pieces.setdefault(d.index, []).append(d.function.arguments or "")
    assert finish == "tool_calls" and "".join(content) == ""
    assert [heads[i][1] for i in sorted(heads)] == ["frame"] * 3
    assert [json.loads("".join(pieces[i])) for i in sorted(pieces)] == [c.arguments for c in FRAMES.calls]
    assert all(len([p for p in pieces[i] if p]) == 4 for i in pieces)  # token by token, not at once
    assert usage.completion_tokens == 15
    assert [c["id"] for c in fake_llm.chat_requests[-1].tool_calls] == [heads[i][0] for i in sorted(heads)]


def test_openai_stream_helper_accumulates_the_calls(fake_llm):
    fake_llm.add(ToolCalls([ToolCall("mean", {"values": [1.0, 2.0]}), ToolCall("frame", {"name": "x y"})]))
    with client_for(fake_llm).chat.completions.stream(model=MODEL, messages=USER, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("mean", {"values": [1.0, 2.0]}), ("frame", {"name": "x y"})
    ]
    assert final.choices[0].finish_reason == "tool_calls"


def test_content_with_calls_streams_the_content_first():
    with FakeLLM([ToolCalls([ToolCall("frame", {})], content="Let me look.")]) as server:
        body = {"model": MODEL, "messages": USER, "tools": TOOLS, "stream": True}
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as r:
            events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    first_call = next(i for i, d in enumerate(deltas) if d.get("tool_calls"))
    assert "".join(d.get("content") or "" for d in deltas[:first_call]) == "Let me look."
    assert not any(d.get("content") for d in deltas[first_call:])
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "tool_calls"


def test_a_conversation_reads_tool_results_and_ids_stay_unique(fake_llm):
    """The second turn is built from the results the client sent back, as a model would."""

    def means(body: dict) -> ToolCalls:
        got = tool_results(body)
        return ToolCalls([ToolCall("mean", {"values": sorted(float(v) for v in got.values())})])

    fake_llm.add(FRAMES, means, "the answer")
    client = client_for(fake_llm)
    messages: list = list(USER)
    for _ in range(2):
        message = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS).choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        for k, call in enumerate(message.tool_calls):
            messages.append({"role": "tool", "tool_call_id": call.id, "content": str(10.0 - k)})
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS).choices[0].message
    assert answer.content == "the answer" and answer.tool_calls is None
    first, second, third = fake_llm.chat_requests
    assert json.loads(second.tool_calls[0]["function"]["arguments"]) == {"values": [8.0, 9.0, 10.0]}
    assert list(second.tool_results) == [c["id"] for c in first.tool_calls]
    ids = [c["id"] for r in (first, second) for c in r.tool_calls]
    assert len(set(ids)) == len(ids) == 4
    assert third.tool_results[second.tool_calls[0]["id"]] == "10.0"


def test_scripted_ids_and_raw_argument_strings_are_sent_as_given(fake_llm):
    fake_llm.add(ToolCalls([ToolCall("frame", '{"name": broken', id="call_s1")]))
    call = client_for(fake_llm).chat.completions.create(model=MODEL, messages=USER, tools=TOOLS).choices[0].message.tool_calls[0]
    assert (call.id, call.function.arguments) == ("call_s1", '{"name": broken')


def test_the_same_turn_scripted_twice_gets_new_ids(fake_llm):
    fake_llm.add(FRAMES, FRAMES)
    client = client_for(fake_llm)
    ids = [c.id for _ in range(2) for c in client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS).choices[0].message.tool_calls]
    assert len(set(ids)) == 6


def test_response_format_does_not_judge_a_tool_call_turn(fake_llm):
    fake_llm.add(FRAMES)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    reply = client_for(fake_llm).chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, response_format=fmt)
    assert reply.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: ToolCalls([]), ValueError),
        (lambda: ToolCalls(["frame"]), ValueError),
        (lambda: ToolCall(""), ValueError),
        (lambda: ToolCall("two words"), ValueError),
        (lambda: ToolCall("frame", arguments=[1, 2]), TypeError),
    ],
)
def test_bad_scripted_turns_fail_when_written(make, error):
    with pytest.raises(error):
        make()


# -- the scripted model of benchmarks/peers.py, and the peers' own clients ---------------------


def _drive(server: FakeLLM, execute) -> tuple[list[list[str]], str]:
    """A minimal parallel-function-calling client: run every call of a turn, send results back."""
    client = client_for(server)
    messages: list = list(USER)
    turns: list[list[str]] = []
    while True:
        message = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS).choices[0].message
        if not message.tool_calls:
            return turns, message.content
        turns.append([c.function.name for c in message.tool_calls])
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            value = execute(call.function.name, json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(value) if not isinstance(value, str) else value})


@pytest.mark.parametrize("workload, turns", [
    ("kitti", [["frame"] * 8, ["mean"] * 2, ["report"]]),
    ("prices", [["price"] * 6, ["mean"]]),
])
def test_peers_script_is_one_turn_per_rank_and_answers_the_plans_result(workload, turns):
    import peers

    wl = peers.WORKLOADS[workload]
    with FakeLLM(peers.tool_script(wl.plan), api_key=KEY) as server:
        got, answer = _drive(server, lambda name, args: peers.toolbox[name].fn(**{**args, "seconds": 0.0}))
    assert got == turns
    assert answer == peers.expected_answer(wl)


def test_pydantic_ai_runs_a_parallel_turn_against_the_server():
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    import peers

    wl = peers.WORKLOADS["prices"]
    records = peers.Records()
    with FakeLLM(peers.tool_script(wl.plan), api_key=KEY) as server:
        model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=server.base_url, api_key=KEY))
        result = Agent(model, tools=records.tools()).run_sync(wl.question)
        assert [len(r.tool_calls) for r in server.chat_requests] == [6, 1, 0]
    assert result.output == peers.expected_answer(wl)
    prices = [r for r in records.rows if r["function"] == "price"]
    assert len(prices) == 6 and len(records.rows) == 7
    # one turn's calls ran at once: every lookup started before any of them ended
    assert max(r["start"] for r in prices) < min(r["end"] for r in prices)


def test_langchain_openai_streams_tool_calls_from_the_server():
    pytest.importorskip("langchain_openai")
    from langchain_openai import ChatOpenAI

    with FakeLLM([FRAMES], api_key=KEY) as server:
        model = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key=KEY, max_retries=0, streaming=True)
        bound = model.bind_tools([{"type": "function", "function": t["function"]} for t in TOOLS])
        message = None
        for chunk in bound.stream(USER):
            message = chunk if message is None else message + chunk
        assert server.chat_requests[0].stream
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("frame", c.arguments) for c in FRAMES.calls]
