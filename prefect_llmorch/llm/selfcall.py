"""The built-in `self(prompt)` function: ask the LLM one step of the plan (no Prefect).

    >>> tokens = TokenCounter()
    >>> tokens.add(3, 4); tokens.to_dict()
    {'prompt': 3, 'completion': 4}
"""

from __future__ import annotations

import threading
from typing import Callable

from prefect_llmorch.llm.client import Completion, LLMClient

__all__ = ["TokenCounter", "ask_self", "make_self_fn"]

_SELF_SYSTEM = (
    "You answer one step of a larger plan. Use the information given in the request; "
    "answer concisely with just the result, no preamble."
)


def ask_self(client: LLMClient, prompt: str, *, temperature: float | None = None) -> Completion:
    """The body of the built-in `self(prompt)` function: ask the LLM, return its answer.

    Raises:
        LLMError: the endpoint failed.
    """
    messages = [{"role": "system", "content": _SELF_SYSTEM}, {"role": "user", "content": prompt}]
    return client.complete(messages, temperature=temperature)


class TokenCounter:
    """Prompt/completion tokens summed over every LLM call of a run (thread-safe)."""

    def __init__(self) -> None:
        self.prompt = 0
        self.completion = 0
        self._lock = threading.Lock()

    def add(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt += prompt
            self.completion += completion

    def to_dict(self) -> dict[str, int]:
        return {"prompt": self.prompt, "completion": self.completion}


def make_self_fn(client: LLMClient, tokens: TokenCounter) -> Callable[[str], str]:
    """The body of `self(prompt)` for a run: ask the LLM, count its tokens in `tokens`."""

    def self_fn(prompt: str) -> str:
        completion = ask_self(client, prompt)
        tokens.add(completion.prompt_tokens, completion.completion_tokens)
        return completion.text

    return self_fn
