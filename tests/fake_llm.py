"""Re-export of the scripted OpenAI-compatible server (see `prefect_llmorch.testing.fake_llm`)."""

from prefect_llmorch.testing.fake_llm import (  # noqa: F401
    FakeError,
    FakeLLM,
    RecordedRequest,
    Reply,
    count_tokens,
    tokens_of,
)

__all__ = ["FakeError", "FakeLLM", "RecordedRequest", "Reply", "count_tokens", "tokens_of"]
