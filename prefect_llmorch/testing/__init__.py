"""Test helpers shipped with the package (used by the tests and by `llmorch demo`).

Nothing here imports pytest or Prefect.
"""

from prefect_llmorch.testing.fake_llm import FakeLLM, FakeError, RecordedRequest

__all__ = ["FakeLLM", "FakeError", "RecordedRequest"]
