"""Asking the LLM to repair one call of a plan that failed at run time (no Prefect).

Trace-back recovery (`prefect_llmorch.flows.recovery`) finds the recovery point of a
failure; this module writes the prompt (the plan, the failed call with its arguments and
exception, the call to repair, the functions), asks the LLM, and accepts an answer only if
it is one call of the plan language that keeps the call's id and kind, type-checks and
uses only results of earlier calls (`parse_repair`). A rejected answer is fed back once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from prefect_llmorch.functions import Toolbox
from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.model import Call, Plan
from prefect_llmorch.plan.parser import check, parse

__all__ = [
    "Failure", "Repair", "RepairRejected", "REPAIR_SYSTEM",
    "call_text", "parse_repair", "plan_text", "repair_call", "repair_prompt", "short",
]

REPAIR_SYSTEM = (
    "You repair plans of function calls that failed while running. A plan is a list of calls, "
    "one per line, like `s2: search(\"query\", limit=3)`; a bare id such as `s1`, or `{s1}` inside "
    "a string, is the result of an earlier call. You are shown the failed call, its exception, and "
    "the call to repair (the recovery point). Answer with exactly one line: the repaired call, with "
    "the same id. No explanation, no code fences."
)


@dataclass
class Failure:
    """One call that finally failed, as recovery saw it."""

    call_id: str
    attempt: int
    call: str  # the call's text
    function: str
    kind: str
    arguments: str  # the arguments it was called with, as text
    error: str  # "ValueError: ..."


@dataclass
class Repair:
    """The LLM's repair of one recovery call."""

    call_id: str
    before: str
    after: str | None = None  # None: rejected
    answers: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    prompt_tokens: int = 0  # over its requests, as the endpoint reported them
    completion_tokens: int = 0

    @property
    def accepted(self) -> bool:
        return self.after is not None

    @property
    def changed(self) -> bool:
        return self.after is not None and self.after != self.before


class RepairRejected(ValueError):
    """The LLM's repaired call cannot be used; the message says why (fed back to the LLM)."""


def call_text(call: Call) -> str:
    """One call as a line of the paper dialect (the JSON form when the paper dialect cannot
    write it, e.g. a NESTFUL function name like `Sky:search`)."""
    return plan_text(Plan((call,), dialect="paper"))


def plan_text(plan: Plan, dialect: str | None = None) -> str:
    """The plan as text: in `dialect`, else its own text dialect (a JSON plan in the paper
    dialect, which repairs answer in); the JSON form when the text cannot write it."""
    dialect = dialect or (plan.dialect if plan.dialect in ("paper", "llmcompiler") else "paper")
    try:
        return plan.to_text(dialect).strip()  # type: ignore[arg-type]
    except ValueError:
        return plan.to_text("json").strip()


def short(value: Any, limit: int) -> str:
    """`repr(value)`, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_FENCE = re.compile(r"^\s*```")


def parse_repair(answer: str, original: Call, earlier: Sequence[str], toolbox: Toolbox, dialect: str = "paper") -> Call:
    """Check the LLM's answer and return the repaired call.

    The answer must be exactly one call of the plan language with the original's id; it
    must parse, type-check against the toolbox, use only results of `earlier` calls and
    call a function of the same kind as the original.

    Raises:
        RepairRejected: the answer cannot be used; the message says why.

    >>> from prefect_llmorch.functions import Toolbox, inout, compute
    >>> @inout
    ... def search(query: str) -> str: ...
    >>> @compute
    ... def count(text: str) -> int: ...
    >>> tb = Toolbox(search, count)
    >>> old = parse('s1: search("a")\\ns2: search(s1)', tb).calls[1]
    >>> parse_repair('```\\ns2: search("b {s1}")\\n```', old, ["s1"], tb).function
    'search'
    >>> parse_repair('s2: count(s1)', old, ["s1"], tb)
    Traceback (most recent call last):
    ...
    prefect_llmorch.llm.repair.RepairRejected: `count` is a compute function but `s2` calls an inout function (`search`); the repaired call must keep its kind: use an inout function
    """
    lines = [ln for ln in answer.strip().splitlines() if ln.strip() and not _FENCE.match(ln)]
    text = "\n".join(lines).strip()
    if not text:
        raise RepairRejected(f"the answer is empty; answer with one call line like `{original.id}: {original.function}(...)`")
    stub = (lambda cid: f'{cid}. self("")') if dialect == "llmcompiler" else (lambda cid: f'{cid}: self("")')
    prefix = [stub(cid) for cid in earlier]
    try:
        plan = parse("\n".join(prefix + [text]))
    except PlanError as exc:
        problems = []
        for err in exc.errors:
            line = err.line - len(prefix) if err.line else 0
            where = f"line {line}, column {err.column}: " if line > 0 else ""
            problems.append(f"{where}{err.message}")
        raise RepairRejected("the answer does not parse: " + "; ".join(problems)) from None
    calls = plan.calls[len(prefix):]
    if len(calls) != 1:
        raise RepairRejected(f"answer with exactly one call (the repaired `{original.id}`), not {len(calls)}")
    call = calls[0]
    if call.id != original.id:
        raise RepairRejected(f"the repaired call must keep the id `{original.id}`, not `{call.id}`")
    try:
        check(Plan((call,)), toolbox)
    except PlanError as exc:
        raise RepairRejected("the answer does not type-check: " + "; ".join(e.message for e in exc.errors)) from None
    old_kind, new_kind = toolbox[original.function].kind, toolbox[call.function].kind
    if old_kind != new_kind:
        raise RepairRejected(
            f"`{call.function}` is a {new_kind} function but `{original.id}` calls an {old_kind} "
            f"function (`{original.function}`); the repaired call must keep its kind: use an {old_kind} function"
        )
    return Call(call.id, call.function, call.args, original.line, original.column)


def repair_prompt(
    point: Call,
    failures: Sequence[Failure],
    plan: Plan,
    toolbox: Toolbox,
    *,
    earlier: Sequence[str],
    result: str | None = None,
) -> str:
    """The user message asking to repair `point` (the recovery call) of `plan`.

    Args:
        point: the recovery call, as in `plan`.
        failures: the failures that traced back to it.
        plan: the plan being run (with repairs of this round so far).
        toolbox: the functions available.
        earlier: ids of the calls before `point` (the results it may use).
        result: `point`'s own result as text, when it completed (and did not fail).
    """
    kind = toolbox[point.function].kind
    lines = ["The plan being run:", "```", plan_text(plan), "```", ""]
    for f in failures:
        lines += [
            f"Failed call `{f.call_id}` (function `{f.function}`, {f.kind}): {f.call}",
            f"  it was called as: {f.arguments}",
            f"  exception: {f.error}",
        ]
    lines.append("")
    lines.append(f"Recovery call to repair: {call_text(point)}")
    if result is not None:
        lines.append(f"  its result was: {result}")
    lines += [
        "  It will be re-run with every call that depends on it; other results are kept.",
        "",
        "Functions available:",
        toolbox.describe(),
        "",
        f"Answer with exactly one line: the repaired call `{point.id}` in the plan language, e.g. "
        f"`{point.id}: {point.function}(...)`. You may change its arguments, or call another "
        f"{kind} function (it must stay {kind}). "
        + (f"It may use results of {', '.join(earlier)} only." if earlier else "It may not use results of other calls."),
    ]
    return "\n".join(lines)


def repair_call(
    llm: LLMClient,
    prompt: str,
    original: Call,
    earlier: Sequence[str],
    toolbox: Toolbox,
    repair: Repair,
    *,
    dialect: str = "paper",
    temperature: float | None = None,
) -> Call | None:
    """Ask for the repair; feed a rejection back once. None when both answers were rejected.

    Every answer and rejection is appended to `repair`.

    Raises:
        LLMError: the endpoint failed.
    """
    messages: list[Mapping[str, str]] = [
        {"role": "system", "content": REPAIR_SYSTEM},
        {"role": "user", "content": prompt},
    ]
    for attempt in range(2):  # the answer, then once more with the error fed back
        completion = llm.complete(messages, temperature=temperature)
        answer = completion.text
        repair.prompt_tokens += completion.prompt_tokens
        repair.completion_tokens += completion.completion_tokens
        repair.answers.append(answer)
        try:
            return parse_repair(answer, original, earlier, toolbox, dialect)
        except RepairRejected as exc:
            repair.rejections.append(str(exc))
            if attempt == 0:
                messages += [
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": (
                        f"That answer was rejected: {exc}.\n"
                        f"Answer again with exactly one call line for `{original.id}` and nothing else."
                    )},
                ]
    return None
