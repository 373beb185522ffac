"""The scripted OpenAI-compatible server, checked with the real openai client and raw HTTP."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from fake_llm import FakeError, FakeLLM, count_tokens, tokens_of
from llm_fixtures import KEY, MODEL, fake_llm  # noqa: F401 - fixture

USER = [{"role": "user", "content": "plan three calls please"}]


def client_for(server: FakeLLM, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def sse_events(server: FakeLLM, body: dict) -> list[str]:
    """The raw `data:` payloads of a streamed answer."""
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize(
    "text",
    ["s1: f(1)\ns2: g(s1)\n", "  lead and trail  \n", "one", "", 's3: self("a\n  b {s1}")'],
)
def test_tokens_join_back_to_the_text(text):
    assert "".join(tokens_of(text)) == text
    assert len(tokens_of(text)) == count_tokens(text) or not text.strip()


def test_plain_completion_returns_scripted_text_and_word_counts(fake_llm):
    fake_llm.add("s1: search(\"x\")\ns2: self(\"{s1}\")")
    reply = client_for(fake_llm).chat.completions.create(model=MODEL, messages=USER, temperature=0.3)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == 's1: search("x")\ns2: self("{s1}")'
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 4)
    assert reply.usage.total_tokens == 8


def test_stream_sends_chunks_then_usage_then_done(fake_llm):
    fake_llm.add("alpha beta\ngamma")
    events = sse_events(
        fake_llm,
        {"model": MODEL, "messages": USER, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "alpha beta\ngamma"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_stream_without_include_usage_has_no_usage_chunk(fake_llm):
    fake_llm.add("a b c")
    events = sse_events(fake_llm, {"model": MODEL, "messages": USER, "stream": True})
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)


def test_openai_client_streams_the_reply_token_by_token(fake_llm):
    fake_llm.add("s1: a()\ns2: b(s1)")
    stream = client_for(fake_llm).chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    pieces, usage = [], None
    for chunk in stream:
        pieces.extend(c.delta.content for c in chunk.choices if c.delta.content)
        usage = chunk.usage or usage
    assert pieces == ["s1:", " a()", "\ns2:", " b(s1)"]
    assert usage.completion_tokens == 4


def test_token_delay_spaces_out_streamed_tokens(fake_llm):
    fake_llm.token_delay = 0.05
    fake_llm.add("one two three four five six")
    stream = client_for(fake_llm).chat.completions.create(model=MODEL, messages=USER, stream=True)
    arrivals = [time.monotonic() for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] >= 5 * 0.05 * 0.8


def test_token_delay_also_delays_a_plain_answer(fake_llm):
    fake_llm.token_delay = 0.05
    fake_llm.add("one two three four")
    started = time.monotonic()
    client_for(fake_llm).chat.completions.create(model=MODEL, messages=USER)
    assert time.monotonic() - started >= 4 * 0.05 * 0.8


def test_script_is_consumed_in_order_and_callables_see_the_request(fake_llm):
    fake_llm.add("first", lambda req: f"echo {req['messages'][-1]['content']}", "third")
    client = client_for(fake_llm)
    answers = [
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}])
        .choices[0].message.content
        for q in ("a", "b", "c")
    ]
    assert answers == ["first", "echo b", "third"]
    assert fake_llm.remaining == 0


def test_exhausted_script_answers_500_unless_a_default_is_set(fake_llm):
    with pytest.raises(openai.InternalServerError, match="script exhausted"):
        client_for(fake_llm).chat.completions.create(model=MODEL, messages=USER)
    fake_llm.default = "fallback"
    reply = client_for(fake_llm).chat.completions.create(model=MODEL, messages=USER)
    assert reply.choices[0].message.content == "fallback"


@pytest.mark.parametrize(
    "error, exc_type",
    [
        (FakeError(500), openai.InternalServerError),
        (FakeError(429, "slow down", "rate_limit_error", "rate_limit_exceeded"), openai.RateLimitError),
        (FakeError(400, "bad request", "invalid_request_error"), openai.BadRequestError),
    ],
)
def test_scripted_errors_come_with_openai_error_bodies(fake_llm, error, exc_type):
    fake_llm.add(error, "after the error")
    client = client_for(fake_llm)
    with pytest.raises(exc_type) as info:
        client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == error.status
    assert info.value.body["message"] == error.message
    reply = client.chat.completions.create(model=MODEL, messages=USER)
    assert reply.choices[0].message.content == "after the error"


def test_wrong_key_gets_401_and_consumes_nothing(fake_llm):
    fake_llm.add("kept for the right key")
    with pytest.raises(openai.AuthenticationError) as info:
        client_for(fake_llm, key="sk-wrong").chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"
    assert "sk-wrong" not in str(info.value)
    assert fake_llm.remaining == 1
    assert [r.authorized for r in fake_llm.requests] == [False]
    assert fake_llm.chat_requests == []


def test_without_required_key_any_key_is_accepted():
    with FakeLLM(["ok"]) as server:
        reply = client_for(server, key="anything").chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].message.content == "ok"


def test_models_endpoint_lists_the_model(fake_llm):
    models = client_for(fake_llm).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_requests_are_recorded_with_messages_temperature_and_model(fake_llm):
    fake_llm.add("a", "b")
    client = client_for(fake_llm)
    client.chat.completions.create(model="m1", messages=USER, temperature=0.7, max_tokens=50)
    client.chat.completions.create(model="m2", messages=USER, stream=True).close()
    first, second = fake_llm.chat_requests
    assert (first.model, first.temperature, first.max_tokens, first.stream) == ("m1", 0.7, 50, False)
    assert first.messages == USER
    assert "plan three calls" in first.text
    assert (second.model, second.stream) == ("m2", True)
    assert first.received_at <= first.finished_at <= second.received_at


def test_stop_frees_the_port_and_is_idempotent():
    server = FakeLLM(["x"]).start()
    url = server.base_url
    server.stop()
    server.stop()
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=url, api_key="k", max_retries=0).models.list()


def test_repr_never_shows_the_key(fake_llm):
    assert KEY not in repr(fake_llm)
    assert "127.0.0.1" in repr(fake_llm)
