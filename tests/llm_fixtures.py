"""Fixtures for tests that talk to the scripted OpenAI-compatible server over real HTTP.

Import the fixtures you use into a test module: `from llm_fixtures import fake_llm, llm`.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.testing import FakeLLM

#: A distinctive fake key: tests assert it never shows in errors, reprs or dumps.
KEY = "sk-llmorch-FAKE-KEY-7f3a9c2e51d0"
MODEL = "fake-model"


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A started `FakeLLM` requiring `KEY`, with an empty script (use `.add(...)`)."""
    with FakeLLM(api_key=KEY, model=MODEL) as server:
        yield server


@pytest.fixture
def llm(fake_llm: FakeLLM) -> Iterator[LLMClient]:
    """An `LLMClient` for `fake_llm` (no retries, so scripted errors are seen once)."""
    with LLMClient(fake_llm.base_url, MODEL, KEY, max_retries=0) as client:
        yield client


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
