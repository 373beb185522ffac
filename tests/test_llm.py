"""LLMClient through real HTTP against the scripted server: answers, counts, clear errors."""

from __future__ import annotations

import pickle
import threading
import time
import traceback

import pytest
from pydantic import SecretStr

from fake_llm import FakeError, FakeLLM, count_tokens
from llm_fixtures import KEY, MODEL, fake_llm, free_port, llm  # noqa: F401 - fixtures
from prefect_llmorch.llm.client import Completion, LLMClient, LLMConfigError, LLMError, read_env

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is two plus two?"},
]
PROMPT_WORDS = sum(count_tokens(m["content"]) for m in MESSAGES)


def assert_no_key(exc: BaseException) -> None:
    """The key is nowhere in what a person or a log could see of the error."""
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(exc.__dict__)]
    for text in shown:
        assert KEY not in text
    assert KEY.encode() not in pickle.dumps(exc)
    assert exc.__cause__ is None and exc.__context__ is None


def test_complete_returns_text_and_the_server_token_counts(fake_llm, llm):
    fake_llm.add("It is four.")
    result = llm.complete(MESSAGES)
    assert result == Completion("It is four.", PROMPT_WORDS, 3, finish_reason="stop")
    assert result.total_tokens == PROMPT_WORDS + 3


def test_stream_yields_chunks_then_the_completion_with_reported_counts(fake_llm, llm):
    fake_llm.add("s1: search(\"a\")\ns2: self(\"{s1}\")\n")
    with llm.stream(MESSAGES) as chunks:
        pieces = list(chunks)
    assert "".join(pieces) == 's1: search("a")\ns2: self("{s1}")\n'
    assert len(pieces) == 4
    assert chunks.completion == Completion("".join(pieces), PROMPT_WORDS, 4, finish_reason="stop")


def test_stream_completion_is_refused_before_the_end(fake_llm, llm):
    fake_llm.add("a b c")
    chunks = llm.stream(MESSAGES)
    with pytest.raises(RuntimeError, match="not been read to the end"):
        chunks.completion
    chunks.close()


def test_stream_delivers_chunks_as_they_are_generated(fake_llm, llm):
    fake_llm.token_delay = 0.1
    fake_llm.add("one two three four five six seven eight")
    server_busy_at_first_chunk = None
    chunks = 0
    for _ in llm.stream(MESSAGES):
        chunks += 1
        if server_busy_at_first_chunk is None:  # the server has 7 tokens (0.7 s of sleeps) still to write
            server_busy_at_first_chunk = fake_llm.chat_requests[0].finished_at == 0.0
    assert server_busy_at_first_chunk is True and chunks >= 8


def test_default_and_per_call_temperature_and_max_tokens_are_sent(fake_llm):
    fake_llm.add("a", "b", "c")
    client = LLMClient(fake_llm.base_url, MODEL, KEY, temperature=0.2, max_tokens=64, max_retries=0)
    client.complete(MESSAGES)
    client.complete(MESSAGES, temperature=0.9)
    list(client.stream(MESSAGES, temperature=0))
    temps = [r.temperature for r in fake_llm.chat_requests]
    assert temps == [0.2, 0.9, 0.0]
    assert {r.max_tokens for r in fake_llm.chat_requests} == {64}
    assert {r.model for r in fake_llm.chat_requests} == {MODEL}
    assert fake_llm.chat_requests[0].messages == MESSAGES


def test_unreachable_endpoint_fails_fast_with_a_clear_error():
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    client = LLMClient(base_url, MODEL, KEY)  # default retries: still fast
    started = time.monotonic()
    with pytest.raises(LLMError) as info:
        client.complete(MESSAGES)
    assert time.monotonic() - started < 10
    assert str(info.value) == f"cannot reach the LLM endpoint at {base_url}: connection refused"
    assert info.value.kind == "unreachable"
    assert info.value.base_url == base_url
    assert_no_key(info.value)


def test_unreachable_endpoint_fails_the_same_way_when_streaming():
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMError, match="^cannot reach the LLM endpoint at .*: connection refused$") as info:
        LLMClient(base_url, MODEL, KEY, max_retries=0).stream(MESSAGES)
    assert_no_key(info.value)


@pytest.mark.parametrize("streaming", [False, True])
def test_rejected_key_is_a_clear_401_error_without_the_key(fake_llm, streaming):
    fake_llm.add("never answered")
    wrong = "sk-llmorch-WRONG-KEY-00d1e5"
    client = LLMClient(fake_llm.base_url, MODEL, wrong, max_retries=0)
    with pytest.raises(LLMError) as info:
        list(client.stream(MESSAGES)) if streaming else client.complete(MESSAGES)
    exc = info.value
    assert str(exc).startswith("the LLM endpoint rejected the API key (401)")
    assert (exc.kind, exc.status_code) == ("auth", 401)
    for text in (str(exc), repr(exc), "".join(traceback.format_exception(exc))):
        assert wrong not in text
    assert exc.__cause__ is None and exc.__context__ is None
    assert fake_llm.remaining == 1


def test_server_error_names_status_and_message(fake_llm, llm):
    fake_llm.add(FakeError(500, "model overloaded"))
    with pytest.raises(LLMError) as info:
        llm.complete(MESSAGES)
    assert str(info.value) == (
        f"the LLM endpoint at {fake_llm.base_url} answered HTTP 500: model overloaded"
    )
    assert info.value.status_code == 500
    assert_no_key(info.value)


def test_server_message_echoing_the_key_is_scrubbed(fake_llm, llm):
    fake_llm.add(FakeError(400, f"bad key format: {KEY}", "invalid_request_error"))
    with pytest.raises(LLMError) as info:
        llm.complete(MESSAGES)
    assert "bad key format: **********" in str(info.value)
    assert_no_key(info.value)


def test_one_retry_absorbs_a_transient_server_error(fake_llm):
    fake_llm.add(FakeError(503, "busy"), "fine")
    client = LLMClient(fake_llm.base_url, MODEL, KEY, max_retries=1)
    assert client.complete(MESSAGES).text == "fine"
    assert len(fake_llm.chat_requests) == 2


def test_slow_endpoint_times_out_with_a_clear_error():
    with FakeLLM(["late"], latency=2.0) as server:
        base_url = server.base_url
        client = LLMClient(base_url, MODEL, KEY, timeout=0.3, max_retries=0)
        with pytest.raises(LLMError) as info:
            client.complete(MESSAGES)
    assert str(info.value) == f"the LLM endpoint at {base_url} did not answer within 0.3 s"
    assert info.value.kind == "timeout"


def test_client_is_safe_to_share_between_threads(fake_llm, llm):
    fake_llm.token_delay = 0.01
    fake_llm.default = lambda req: f"answer to {req['messages'][-1]['content']}"
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = llm.complete([{"role": "user", "content": f"q{i}"}]).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"answer to q{i}" for i in range(8)}


def test_repr_and_pickle_do_not_show_the_key(fake_llm):
    client = LLMClient(fake_llm.base_url, MODEL, SecretStr(KEY))
    assert KEY not in repr(client)
    clone = pickle.loads(pickle.dumps(client))
    fake_llm.add("still works")
    assert clone.complete(MESSAGES).text == "still works"


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError, match="base_url"):
        LLMClient("", MODEL, KEY)
    with pytest.raises(ValueError, match="timeout"):
        LLMClient("http://x/v1", MODEL, KEY, timeout=0)


def test_from_env_names_every_missing_variable(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "LLMORCH_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(LLMConfigError) as info:
        LLMClient.from_env()
    assert info.value.missing == ["OPENAI_BASE_URL", "LLMORCH_MODEL"]
    assert "set OPENAI_BASE_URL, LLMORCH_MODEL" in str(info.value)
    assert KEY not in str(info.value)


def test_from_env_builds_a_working_client(monkeypatch, fake_llm):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLMORCH_MODEL", MODEL)
    fake_llm.add("from env")
    assert LLMClient.from_env().complete(MESSAGES).text == "from env"
    base_url, key, model = read_env()
    assert (base_url, model) == (fake_llm.base_url, MODEL)
    assert isinstance(key, SecretStr) and KEY not in repr(key)


def test_from_env_reads_the_timeout(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLMORCH_MODEL", MODEL)
    monkeypatch.delenv("LLMORCH_LLM_TIMEOUT", raising=False)
    assert LLMClient.from_env().timeout == 60.0
    monkeypatch.setenv("LLMORCH_LLM_TIMEOUT", "300")
    assert LLMClient.from_env().timeout == 300.0
    assert LLMClient.from_env(timeout=5).timeout == 5.0
    monkeypatch.setenv("LLMORCH_LLM_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="LLMORCH_LLM_TIMEOUT"):
        LLMClient.from_env()
