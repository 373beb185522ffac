"""The built-in `self(prompt)` function: ask the LLM one step of the plan (no Prefect).

Two things keep a small model's answers to the facts (issue 28):

- the step sees the question it serves (`question=`): given only a filled template, a 1.5B
  model named the wrong one of two places it was handed numbers for;
- an answer that states a number found neither in the step's prompt (where the results
  are) nor in the question is asked once more, naming that number and the values given
  (`unsupported_numbers`); a plan does its arithmetic in arguments or functions, and `self`
  is for language.

    >>> tokens = TokenCounter()
    >>> tokens.add(3, 4); tokens.to_dict()
    {'prompt': 3, 'completion': 4}
    >>> unsupported_numbers("Oslo has 709,037 people, 2.4 times Bergen.", "Oslo: 709037. Bergen: 291189.")
    ['2.4']
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Callable

from prefect_llmorch.llm.client import Completion, LLMClient

__all__ = ["TokenCounter", "ask_self", "make_self_fn", "unsupported_numbers"]

_log = logging.getLogger(__name__)

_SELF_SYSTEM = (
    "You answer one step of a larger plan. Use the information given in the request; "
    "answer concisely with just the result, no preamble."
)
_QUESTION = "The plan answers the user's question: {question}\nThis step is part of that answer."
_RECHECK = (
    "Your answer states {numbers}, which {verb} not among the values given. Answer again, "
    "using only the values given in the request (copy numbers as written; do not compute new ones)."
)

# A number as written in text: 709,037 / -0.4 / 1.2e3 (a list marker "1." at a line's start is not one).
_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_MARKER = re.compile(r"^\s*\d+[.)]\s", re.M)


def _numbers(text: str) -> list[tuple[str, float]]:
    """(as written, value) of every number in `text`."""
    text = _MARKER.sub(" ", text)
    out = []
    for m in _NUMBER.finditer(text):
        written = m.group(0)
        try:
            out.append((written, float(written.replace(",", ""))))
        except ValueError:
            continue
    return out


def unsupported_numbers(answer: str, *sources: str) -> list[str]:
    """Numbers in `answer` (as written) that are in none of `sources`, also when rounded:
    `231.4` is supported by `231.40`, `5.3` by `5.25`, `-0.4` by `0.4` ("down 0.4%").
    Whole numbers up to 10 pass (counts and ordinals of the answer's own wording: "both
    2 stocks", "the 3 animals")."""
    given = [abs(v) for source in sources for _, v in _numbers(source)]
    missing = []
    for written, value in _numbers(answer):
        if value.is_integer() and 0 <= value <= 10 and "." not in written:
            continue
        decimals = len(written.split(".")[1]) if "." in written and "e" not in written.lower() else 0
        slack = 0.5 * 10 ** -decimals + 1e-9  # what rounding to the answer's decimals can move
        if not any(abs(abs(value) - g) <= slack for g in given):
            missing.append(written)
    return list(dict.fromkeys(missing))


def ask_self(client: LLMClient, prompt: str, *, temperature: float | None = None,
             question: str | None = None) -> Completion:
    """The body of the built-in `self(prompt)` function: ask the LLM, return its answer.

    Args:
        question: the user's question the plan answers, shown to the model with the step.

    Raises:
        LLMError: the endpoint failed.
    """
    system = _SELF_SYSTEM + ("\n" + _QUESTION.format(question=question) if question else "")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    first = client.complete(messages, temperature=temperature)
    missing = unsupported_numbers(first.text, prompt, question or "")
    if not missing:
        return first
    _log.warning("self: the answer states %s, found neither in its prompt nor in the question; asking again",
                 ", ".join(missing))
    recheck = _RECHECK.format(numbers=", ".join(missing), verb="is" if len(missing) == 1 else "are")
    second = client.complete([*messages, {"role": "assistant", "content": first.text},
                              {"role": "user", "content": recheck}], temperature=temperature)
    # both answers' tokens were spent; the second answer stands (a step cannot fail over a number)
    return Completion(second.text, first.prompt_tokens + second.prompt_tokens,
                      first.completion_tokens + second.completion_tokens)


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


def make_self_fn(client: LLMClient, tokens: TokenCounter, question: str | None = None) -> Callable[[str], str]:
    """The body of `self(prompt)` for a run: ask the LLM (showing it `question`, the user's
    question the plan answers, when there is one), count its tokens in `tokens`."""

    def self_fn(prompt: str) -> str:
        completion = ask_self(client, prompt, question=question)
        tokens.add(completion.prompt_tokens, completion.completion_tokens)
        return completion.text

    return self_fn
