"""The join step without Prefect: answer from a plan's results, or continue the plan.

After a plan's calls end, the joiner shows the LLM the question, the plan and each call's
result (cut to `value_chars` characters, with a note saying how much was cut) and reads
one of two replies, chosen so a small model gets the form right on its first line:

    Answer: s5                      the result of s5 is the answer (a few tokens)
    Answer: It will rain; visit the Munch Museum.

    Plan:                           more calls, ids continuing the plan's (s6, s7, ...),
    s6: museums(s2.city)            free to use every earlier result and field
    s7: self("Suggest one of {s6}")

A continuation streams: each call whose line is complete (and whose inputs are known) goes
to `on_call` while the LLM is still writing, as the planner's first answer does
(`prefect_llmorch.llm.planning`). The continuation is parsed *after* the plan that ran (the
same `PlanStream`, fed that plan first), so references, fields and types are checked against
the earlier calls exactly as in one plan. A reply that is neither form, or a continuation
with errors, goes back to the LLM with the errors (up to `attempts` replies); continuation
calls are stream-dispatched only from the first reply, and `JoinResult.stale` lists the
dispatched ones a repair changed.

The joiner runs when the plan asks for it (`has_join_marker`: a `join()` line, which the
planner is told to write when what comes next depends on results; LLMCompiler plans always
end with one) or, with `joiner="always"`, after every plan; `must_answer` (rounds or tokens
used up) leaves out the `Plan:` form.

    >>> from prefect_llmorch.plan.parser import parse
    >>> next_id(parse('s1: f()\\ns2: g(s1)'))
    's3'
    >>> has_join_marker('s1: f()\\njoin()'), has_join_marker('s1: f()')
    (True, False)
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from prefect_llmorch.functions import Toolbox
from prefect_llmorch.llm.client import PLANNER_MODES, LLMClient, Message
from prefect_llmorch.llm.planning import _LANGUAGE, JOIN_HINT, _FenceFilter
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.model import Call, Plan
from prefect_llmorch.plan.parser import PlanStream, check, parse
from prefect_llmorch.plan.result_types import describe_results
from prefect_llmorch.plan.schema import JSON_FORM_HELP, plan_schema, with_keywords

__all__ = [
    "JOIN_HINT", "JOINER_MODES", "join_response_format", "JoinAttempt", "JoinFailed", "JoinResult",
    "estimate_tokens", "has_join_marker", "join_messages", "join_query", "next_id", "render_results",
]

#: When the join step runs: never, when the plan ends with `join()`, after every plan.
JOINER_MODES = ("off", "auto", "always")

_JOIN_LINE = re.compile(r"^\s*(?:[\w$]+\s*[:.]\s*)?join\(\s*\)\s*(?:<END_OF_PLAN>)?\s*$", re.M)
_ANSWER = re.compile(r"^\W*answer\W*?:\s*(.*)$", re.I | re.S)
_PLAN = re.compile(r"^\W*plan\W*?:\s*(.*)$", re.I | re.S)
_CALL_LINE = re.compile(r"^\s*[\w$]+\s*[:.]\s*[\w.:-]+\s*\(")
_THOUGHT = re.compile(r"^\W*thought\W*?:", re.I)
_LABEL = re.compile(r"^\W*reply\W*$", re.I)  # `Reply:` as in the examples, before the reply

_SYSTEM = """\
You are the joiner of a parallel function-calling system. A plan of function calls ran to \
answer a question; you see the question, the plan and each call's result, and decide what \
comes next. First write one `Thought:` line: what the results say the question needs now. \
Then reply in one of two forms:

Answer: <the answer>
  when the results answer the question. When one call's result is the whole answer, write \
only its id, e.g. `Answer: s3`.

Plan:
<new calls, one per line>
  when the results show which calls are needed next: a condition is now decided (call only \
the branch it chose), a result names what to look up next, a list says how many calls \
follow (one call per item). Ids continue from the id you are given. Use earlier results by \
their ids (`s1`, `s1.city`, `s1[0]`, "{{s1}}"); never repeat a call that already ran. The \
result of the last call is the answer: end with the call that answers, with `self` to \
combine several results (pass them: self("... {{s2}} ... {{s3}}")), or with `join()` under \
the next id to see the new results first.

Write only the reply: no explanations before or after it.

{language}

Examples (their functions are not yours):
{examples}

The functions you may call:
{functions}"""

#: Worked join replies for the text form (question, plan that ran, results, reply), with
#: functions no toolbox is likely to have. A small model (Qwen2.5-Coder-1.5B) given only
#: the rules called both branches of a decided condition and repeated calls that had run;
#: with examples but no `Thought:` line it still called both branches.
JOIN_EXAMPLES: tuple[tuple[str, str, str, str], ...] = (
    (
        "If it snows in Bergen tomorrow, list ski shops there, otherwise cafés.",
        's1: weather("Bergen")',
        's1 = {"city": "Bergen", "snow": true}',
        "Thought: s1.snow is true, so the question wants ski shops, not cafés.\nPlan:\ns2: ski_shops(s1.city)",
    ),
    (
        "What does the catalogue say about the book the librarian recommends?",
        's1: librarian("a book about fjords")',
        "s1 = Look up the catalogue entry 'fjord-atlas'.",
        "Thought: s1 names the catalogue entry to read: 'fjord-atlas'.\n"
        'Plan:\ns2: catalogue("fjord-atlas")',
    ),
    (
        "How long is the queue at each ferry port of Lofoten?",
        's1: ferry_ports("Lofoten")',
        's1 = ["Moskenes", "Svolvaer"]',
        "Thought: s1 lists two ports, so one queue call for each.\n"
        'Plan:\ns2: queue(s1[0])\ns3: queue(s1[1])\ns4: self("Queues: {s1[0]}: {s2}; {s1[1]}: {s3}")',
    ),
    (
        "How far is it from Oslo to Bergen by road?",
        's1: road_distance("Oslo", "Bergen")',
        "s1 = 463 km",
        "Thought: s1 is the distance asked for.\nAnswer: s1",
    ),
)


def _examples() -> str:
    return "\n\n".join(
        f"Question: {q}\nThe plan that ran:\n{plan}\nResults:\n{results}\nReply:\n{reply}"
        for q, plan, results, reply in JOIN_EXAMPLES
    )


_SYSTEM_ANSWER_ONLY = """\
You are the joiner of a parallel function-calling system. A plan of function calls ran to \
answer a question; you see the plan and each call's result. Answer the question from these \
results; no more calls can be made.

Reply with one line:
Answer: <the final answer>
When the result of one call already is the whole answer, write only its id, e.g. \
`Answer: s5`."""


_SYSTEM_JSON = """\
You are the joiner of a parallel function-calling system. A plan of function calls ran to \
answer a question; you see the plan and each call's result. Either answer the question from \
the results, or, when the results show that more calls are needed (a condition is now \
decided, a lookup named what to look up next, a count says how many calls follow), write \
the next calls.

Reply with one JSON object, in one of two forms:
1. The answer: {{"answer": "<the final answer>"}}; when the result of one call already is \
the whole answer, only its id: {{"answer": "s5"}}.
2. More calls: {{"calls": [call, ...]}} with ids continuing from the id you are given. Use \
earlier results by their ids. End with the call whose result answers the question.

{language}

The functions you may call:
{functions}"""

_SYSTEM_JSON_ANSWER_ONLY = """\
You are the joiner of a parallel function-calling system. A plan of function calls ran to \
answer a question; you see the plan and each call's result. Answer the question from these \
results; no more calls can be made. Reply with one JSON object: {"answer": "<the final \
answer>"}; when the result of one call already is the whole answer, only its id: \
{"answer": "s5"}."""

_ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "description": "the answer, or the id of the call whose result is it"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def join_response_format(toolbox: Toolbox, *, must_answer: bool = False) -> dict[str, Any]:
    """`response_format` of a JSON join request: `{"answer": ...}` or the plan schema's
    `{"calls": [...]}` (only the answer when `must_answer`).

    >>> join_response_format(Toolbox(), must_answer=True)["json_schema"]["schema"]["required"]
    ['answer']
    """
    if must_answer:
        schema: dict[str, Any] = dict(_ANSWER_SCHEMA)
    else:
        plan = dict(plan_schema(toolbox))
        schema = {"$defs": plan.pop("$defs", {}), "anyOf": [_ANSWER_SCHEMA, plan]}
    return {"type": "json_schema", "json_schema": {"name": "llmorch_join", "schema": schema}}


def has_join_marker(text: str) -> bool:
    """Whether a plan's text has a bare `join()` line (`s4: join()`, `4. join()<END_OF_PLAN>`)."""
    return bool(_JOIN_LINE.search(text or ""))


def next_id(plan: Plan) -> str:
    """The id a continuation starts with: the plan's ids' prefix, the largest number + 1."""
    best: tuple[int, str] = (0, "s")
    for cid in plan.ids:
        m = re.fullmatch(r"([A-Za-z_]*)(\d+)", cid)
        if m and int(m.group(2)) >= best[0]:
            best = (int(m.group(2)), m.group(1))
    return f"{best[1]}{best[0] + 1}"


def estimate_tokens(text: str) -> int:
    """A token estimate before asking (a quarter of the characters, as for English text
    with OpenAI-style tokenizers); what counts against budgets is what endpoints report."""
    return math.ceil(len(text) / 4)


def _shown(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(_plain(value), ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [... cut: {limit} of {len(text)} characters shown]"


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # a pydantic result shows its fields
    return dump(mode="json") if callable(dump) else value


def render_results(
    plan: Plan, results: Mapping[str, Any], failed: Mapping[str, str] | None = None, *, value_chars: int = 1500
) -> str:
    """One line per call of `plan`: `s1 = <result>` (cut to `value_chars` characters with a
    note), `s2 failed: <why>`, or `s3 did not run`."""
    rows = []
    for call in plan.calls:
        if call.id in results:
            rows.append(f"{call.id} = {_shown(results[call.id], value_chars)}")
        elif failed and call.id in failed:
            rows.append(f"{call.id} failed: {_shown(failed[call.id], value_chars)}")
        else:
            rows.append(f"{call.id} did not run")
    return "\n".join(rows)


def join_messages(
    query: str,
    toolbox: Toolbox,
    plan: Plan,
    results: Mapping[str, Any],
    *,
    failed: Mapping[str, str] | None = None,
    must_answer: bool = False,
    value_chars: int = 1500,
    mode: str = "text",
) -> list[dict[str, str]]:
    """The join request: the system message (the two forms, the plan language, the
    functions), then the question, the plan that ran and its results. `mode="json"`: the
    forms and the plan as JSON objects (the request carries `join_response_format`)."""
    json_mode = mode == "json"
    if must_answer:
        system = _SYSTEM_JSON_ANSWER_ONLY if json_mode else _SYSTEM_ANSWER_ONLY
        ask = 'Reply with {"answer": ...}.' if json_mode else "Reply with `Answer:` and the answer."
    else:
        functions = toolbox.describe()
        fields = describe_results(toolbox)
        if fields:
            functions += "\nResults with fields (select them, e.g. `s1.field`; only these fields exist):\n" + fields
        if json_mode:
            system = _SYSTEM_JSON.format(language=JSON_FORM_HELP, functions=functions)
            ask = f'Reply with {{"answer": ...}}, or with {{"calls": [...]}} starting at {next_id(plan)}.'
        else:
            system = _SYSTEM.format(language=_LANGUAGE, examples=_examples(), functions=functions)
            ask = (f"Reply with one `Thought:` line, then `Answer:` and the answer, or `Plan:` and calls "
                   f"starting at {next_id(plan)}.")
    shown = with_keywords(plan, toolbox).to_text("json") if json_mode else plan.to_text("paper")
    user = (
        f"Question: {query}\n\nThe plan that ran:\n{shown}\n\n"
        f"Results:\n{render_results(plan, results, failed, value_chars=value_chars)}\n\n{ask}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class JoinAttempt:
    """One reply of the LLM to a join request."""

    text: str
    errors: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    repair: bool = False


@dataclass(frozen=True)
class JoinResult:
    """What the joiner decided after one round.

    Attributes:
        round: the round whose results it saw (1: the planner's plan).
        answered: True when it answered (`answer`); False when it continued (`plan`).
        answer: the answer's text (after `Answer:`); None when it named a call.
        answer_ref: the call id when the answer was `Answer: sN`: that call's result is the
            answer (`value`).
        plan: the whole plan so far with the continuation (when it continued).
        continuation: the continuation's calls, in order.
        attempts: every reply, in order.
        dispatched: continuation calls passed to `on_call` that are in `plan` unchanged.
        stale: continuation calls passed to `on_call` that are not: ignore their results.
        forced: why it could only answer (`rounds`, `tokens`), or None.
        skipped: no LLM request was made (the token budget was spent): `answer` is the
            result of the plan's last call that completed.
        failed: the join failed (no usable reply in `attempts`, or the endpoint failed):
            `answer_ref` names the plan's last call that completed.
        text: the reply after its first line (a continuation as written, `join()` included).
    """

    round: int
    answered: bool
    answer: Any = None
    answer_ref: str | None = None
    plan: Plan | None = None
    continuation: tuple[Call, ...] = ()
    attempts: tuple[JoinAttempt, ...] = ()
    dispatched: tuple[str, ...] = ()
    stale: tuple[Call, ...] = ()
    forced: str | None = None
    skipped: bool = False
    text: str = ""  # the usable reply's text after its first line (a continuation as written)
    failed: bool = False  # no usable reply (or the endpoint failed): `answer_ref` is the last result

    def value(self, results: Mapping[str, Any]) -> Any:
        """The answer: the named call's result in `results`, else the answer's text."""
        return results.get(self.answer_ref) if self.answer_ref is not None else self.answer

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.attempts)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.attempts)

    def to_dict(self) -> dict[str, Any]:
        """The round in the report (`--json`'s `joiner.rounds`)."""
        return {
            "round": self.round,
            "decision": "failed" if self.failed else "answer" if self.answered else "continue",
            "answer_ref": self.answer_ref,
            "continuation": Plan(self.continuation).to_text("paper") if self.continuation else None,
            "replies": [a.text for a in self.attempts],
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "forced": self.forced,
            "skipped": self.skipped,
            "failed": self.failed,
        }


class JoinFailed(RuntimeError):
    """The joiner gave no usable reply within the allowed attempts.

    Attributes:
        round: the round it was joining.
        attempts: every reply with its errors.
        dispatched: continuation calls already passed to `on_call` (all stale).
    """

    def __init__(self, round: int, attempts: Sequence[JoinAttempt], dispatched: Sequence[Call] = ()) -> None:
        self.round = round
        self.attempts = tuple(attempts)
        self.dispatched = tuple(dispatched)
        body = "\n".join(
            f"reply {i}: " + "; ".join(a.errors) for i, a in enumerate(self.attempts, 1)
        )
        super().__init__(f"joiner · round {round}: no usable reply after {len(self.attempts)} attempts:\n{body}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (JoinFailed, (self.round, self.attempts, self.dispatched))


class _Reply:
    """Reads one streamed join reply: the form from its first line, then either the answer
    text or the continuation's calls (dispatched as they complete)."""

    def __init__(self, base: Plan, toolbox: Toolbox, on_call: Callable[[Call], Any] | None) -> None:
        self.base = base
        self.toolbox = toolbox
        self.on_call = on_call
        self.form: str | None = None  # "answer" | "plan" | "bad"
        self.head = ""
        self.answer_parts: list[str] = []
        self.stream: PlanStream | None = None
        self.broken: PlanError | None = None
        self.plan_parts: list[str] = []  # the continuation's text
        self.trailing = ""  # text after the continuation's last call, not read (`_ends_plan`)
        self.dispatched: list[Call] = []
        self._known = set(base.ids)
        self._line = ""  # the continuation's current line, until its newline
        self._clean = True  # the continuation so far is whole calls (no call left open)
        self._calls = 0  # continuation calls read

    def feed(self, text: str) -> None:
        if not text:
            return
        if self.form is None:
            self.head += text
            while self.form is None and "\n" in self.head:
                line, self.head = self.head.split("\n", 1)
                self._decide(line, more=True)
            return
        self._take(text)

    def close(self) -> None:
        if self.form is None:
            line, self.head = self.head, ""
            self._decide(line, more=False)

    def _decide(self, line: str, *, more: bool) -> None:
        if not line.strip() or _THOUGHT.match(line) or _LABEL.match(line):
            return
        rest, self.head = self.head, ""
        if (m := _ANSWER.match(line)) is not None:
            self.form = "answer"
            self.answer_parts.append(m.group(1) + ("\n" if more else ""))
        elif (m := _PLAN.match(line)) is not None:
            self._start_plan()
            self._take(m.group(1) + ("\n" if more else ""))
        elif _CALL_LINE.match(line):
            self._start_plan()  # `Plan:` left out: the calls themselves say which form it is
            self._take(line + ("\n" if more else ""))
        else:
            self.form = "bad"
            self.answer_parts.append(line)
        self._take(rest)

    def _start_plan(self) -> None:
        self.form = "plan"
        self.stream = PlanStream(self.toolbox)
        self.stream.feed(self.base.to_text("paper") + "\n")  # the plan that ran, not dispatched

    def _take(self, text: str) -> None:
        if not text:
            return
        if self.form != "plan":
            self.answer_parts.append(text)
            return
        if self.trailing:
            self.trailing += text
            return
        self._line += text
        while self.trailing == "" and "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            self._plan_line(line + "\n")
        if self.trailing:
            self.trailing += self._line
            self._line = ""

    def _plan_line(self, line: str) -> None:
        """One whole line of the continuation (or its unterminated last line, at `close`)."""
        assert self.stream is not None
        if self._clean and self._calls and _ends_plan(line):
            self.trailing = line  # prose after the last whole call: the continuation has ended
            return
        self.plan_parts.append(line)
        if self.broken is not None:
            return  # keep reading: the repair prompt shows the whole reply
        try:
            calls = self.stream.feed(line)
        except PlanError as exc:
            self.broken = exc
            return
        if calls:
            self._clean = True
            self._calls += len(calls)
        elif line.strip():
            self._clean = False  # a call still open (a string over lines), or one that does not parse
        for call in calls:
            self._offer(call)

    def finish(self) -> None:
        """The reply has ended: read its last line if it had no newline."""
        self.close()
        if self.form == "plan" and self._line:
            line, self._line = self._line, ""
            if self.trailing:
                self.trailing += line
            else:
                self._plan_line(line)

    def _offer(self, call: Call) -> None:
        if self.on_call is None or call.id in self._known:
            return
        fits = call.function in self.toolbox and call.deps <= self._known
        if fits:
            try:
                check(Plan((call,)), self.toolbox)
            except PlanError as exc:
                fits = {e.kind for e in exc.errors} <= {"reference"}  # its inputs ran before
        if not fits:
            self.on_call = None  # what follows a call that does not fit is suspect: stop
            return
        self._known.add(call.id)
        self.dispatched.append(call)
        self.on_call(call)

    @property
    def text(self) -> str:
        """The reply as read: the continuation's calls (without trailing prose), or the answer."""
        if self.form == "plan":
            return "".join(self.plan_parts) + self._line
        return "".join(self.answer_parts) + self.head

    @property
    def whole(self) -> str:
        """The reply as written, trailing prose included (for the record and the repair)."""
        return self.text + self.trailing


#: A line that may start a call: `s4: f(`, `s4 = f(`, `4. f(`, `f(` (anything else after a
#: whole call is prose: the model explaining, or echoing the prompt).
_CALL_START = re.compile(r"^\s*(?:[\w$]+\s*[:.=]\s*)?[\w.:-]+\s*\(")


def _ends_plan(line: str) -> bool:
    """Whether `line`, coming after a continuation's last whole call, ends the continuation.

    A small model writes prose after its calls (Qwen2.5-Coder-1.5B echoed a line of the
    prompt, then `Answer: s2`). Where the calls before it are whole, such a line cannot be
    part of a call, so reading stops there. A line that could start a call (`s4: f(`,
    `s4 = f(`) is read as one, so a malformed call is still reported, never dropped.

        >>> _ends_plan("When the result of one call is the answer, write its id"), _ends_plan("Answer: s2")
        (True, True)
        >>> _ends_plan('s4: museums("Oslo")'), _ends_plan("s4 = museums(s1.city)"), _ends_plan("  ")
        (False, False, False)
    """
    if not line.strip():
        return False
    return bool(_ANSWER.match(line) or _THOUGHT.match(line)) or _CALL_START.match(line) is None


def _reconcile(dispatched: Sequence[Call], plan: Plan, base: Plan) -> tuple[tuple[str, ...], tuple[Call, ...]]:
    """(ids kept, calls stale) of the dispatched continuation calls against the final plan."""
    final = {c.id: c for c in plan.calls}
    kept: list[str] = []
    stale: list[Call] = []
    ok = set(base.ids)
    for call in dispatched:
        if final.get(call.id) == call and call.deps <= ok | set(kept):
            kept.append(call.id)
        else:
            stale.append(call)
    return tuple(kept), tuple(stale)


def _fix_message(errors: Sequence[str], must_answer: bool, start: str, mode: str = "text", *,
                 base: Plan | None = None, continuation: str = "") -> str:
    """The repair request: the errors, the plan numbered as the errors count its lines (the
    plan that ran, then the reply's calls), a hint, and the forms again."""
    listing = "\n".join(f"- {e}" for e in errors)
    if mode == "json":
        form = ('Reply with {"answer": ...}.' if must_answer else
                f'Reply again with one JSON object: {{"answer": ...}}, or {{"calls": [...]}} starting at {start}.')
        return f"Your reply cannot be used:\n{listing}\n\n{form}"
    form = ("Reply with `Answer:` and the answer." if must_answer else
            f"Reply again in one of the two forms: `Answer: ...`, or `Plan:` then calls starting at {start}.")
    shown = ""
    if base is not None and continuation.strip():
        # the text the errors were found in (`_close`, `_Reply._start_plan`)
        lines = (base.to_text("paper") + "\n" + continuation).splitlines()
        numbered = "\n".join(f"{i:>3} | {line}" for i, line in enumerate(lines, 1))
        ran = len(base.to_text("paper").splitlines())
        shown = (f"\n\nThe plan with your calls, numbered as the errors count (lines 1-{ran} ran already):\n"
                 f"{numbered}\n\nAfter `Plan:` write only calls, one per line: `sN: function(arguments)`, "
                 "text arguments in double quotes; nothing else.")
    return f"Your reply cannot be used:\n{listing}{shown}\n\n{form}"


def join_query(
    query: str,
    toolbox: Toolbox,
    client: LLMClient,
    plan: Plan,
    results: Mapping[str, Any],
    *,
    round: int = 1,
    failed: Mapping[str, str] | None = None,
    must_answer: bool = False,
    forced: str | None = None,
    attempts: int = 2,
    temperature: float = 0.0,
    value_chars: int = 1500,
    on_call: Callable[[Call], Any] | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,  # type: ignore[type-arg]
    mode: str = "text",
) -> JoinResult:
    """Ask the LLM to answer from `plan`'s `results` or to continue the plan.

    Args:
        query: the user's question.
        toolbox: the functions a continuation may call.
        client: the LLM.
        plan: every call that ran so far (all rounds), in order.
        results: results by call id (calls that completed).
        round: the round being joined (for names and messages).
        failed: why calls failed, by id (shown instead of a result).
        must_answer: leave out the `Plan:` form (rounds or tokens are used up).
        forced: why `must_answer` (`rounds`, `tokens`), kept in the result.
        attempts: replies in all: the first plus repairs fed the errors.
        temperature: sampling temperature.
        value_chars: longest text of one result shown; longer ones are cut with a note.
        on_call: called with each continuation call of the first reply as soon as its line
            is complete and its inputs are known (as `plan_query`'s).
        mode: "text" (`Answer:` / `Plan:` replies, streamed) or "json" (`{"answer": ...}` /
            `{"calls": [...]}` under `join_response_format`, for the JSON planner's
            endpoints; its calls are read once the reply is complete).

    Raises:
        JoinFailed: no usable reply after `attempts` replies.
        LLMError: the endpoint failed.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    log = log if log is not None else logging.getLogger(__name__)
    if mode not in PLANNER_MODES:
        raise ValueError(f"mode must be one of {', '.join(PLANNER_MODES)}, got {mode!r}")
    messages: list[Message] = list(join_messages(
        query, toolbox, plan, results, failed=failed, must_answer=must_answer, value_chars=value_chars, mode=mode,
    ))
    start = next_id(plan)
    json_mode = mode == "json"
    history: list[JoinAttempt] = []
    dispatched: list[Call] = []
    for i in range(attempts):
        began = time.monotonic()
        if json_mode:  # answered whole, under the schema: its calls start once it is read
            completion = client.complete(
                messages, temperature=temperature, response_format=join_response_format(toolbox, must_answer=must_answer),
            )
            text = read = completion.text
            written = ""
            outcome, errors = _json_reply(text, plan, toolbox, results, round, must_answer)
        else:
            reply = _Reply(plan, toolbox, on_call if i == 0 and not must_answer else None)
            lines = _FenceFilter()
            with client.stream(messages, temperature=temperature) as chunks:
                for chunk in chunks:
                    reply.feed(lines.feed(chunk))
                completion = chunks.completion
            reply.feed(lines.flush())
            reply.finish()
            dispatched += reply.dispatched
            text, read = reply.whole, reply.text
            written = read if reply.form == "plan" else ""
            if reply.trailing.strip():
                log.info("joiner · round %d: the reply's text after its last call is not read: %r",
                         round, reply.trailing.strip()[:300])
            outcome, errors = _text_reply(reply, plan, results, round, must_answer)
            if outcome is not None and not outcome.answered:
                kept, stale = _reconcile(dispatched, outcome.plan, plan)  # type: ignore[arg-type]
                outcome = replace(outcome, dispatched=kept, stale=stale)
        attempt = JoinAttempt(
            text=text, errors=tuple(errors), prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens, seconds=time.monotonic() - began, repair=i > 0,
        )
        history.append(attempt)
        tokens = f"{attempt.prompt_tokens}+{attempt.completion_tokens} tokens, {attempt.seconds:.2f} s"
        if outcome is not None:
            how = (f"answered{' with ' + outcome.answer_ref if outcome.answer_ref else ''}" if outcome.answered
                   else f"continued with {len(outcome.continuation)} calls")
            log.info("joiner · round %d: %s (%s)", round, how, tokens)
            if outcome.stale:
                log.warning("joiner · round %d: streamed calls %s are not in the repaired continuation: "
                            "their results are ignored", round, ", ".join(c.id for c in outcome.stale))
            return replace(outcome, attempts=tuple(history), forced=forced, text=read)
        log.warning("joiner · round %d: reply %d cannot be used (%s): %s\n--- reply ---\n%s",
                    round, i + 1, tokens, "; ".join(errors), text)
        messages = [*messages[:2], {"role": "assistant", "content": completion.text},
                    {"role": "user", "content": _fix_message(
                        errors, must_answer, start, mode, base=plan, continuation=written)}]
    failure = JoinFailed(round, history, dispatched)
    log.error("%s", failure)
    raise failure


def _answered(text: str, plan: Plan, results: Mapping[str, Any], round: int) -> tuple[JoinResult | None, list[str]]:
    """The answer `text`, or the result of the call it names (`s5`, `s5.`, `` `s5` ``)."""
    text = text.strip()
    ref = text.strip("`'\" .")
    if not text:
        return None, ["the answer is empty"]
    if ref in plan.ids:
        if ref not in results:
            return None, [f"the answer names {ref}, which has no result"]
        # by reference: the result itself stays out of the (persisted) decision
        return JoinResult(round, True, None, answer_ref=ref), []
    return JoinResult(round, True, text), []


def _continued(whole: Plan, plan: Plan, round: int) -> tuple[JoinResult | None, list[str]]:
    new = tuple(c for c in whole.calls if c.id not in set(plan.ids))
    if not new:
        return None, ["a plan with no new calls"]
    return JoinResult(round, False, plan=whole, continuation=new), []


def _text_reply(
    reply: _Reply, plan: Plan, results: Mapping[str, Any], round: int, must_answer: bool
) -> tuple[JoinResult | None, list[str]]:
    if reply.form == "answer":
        if any(_PLAN.match(line) for line in reply.text.splitlines()[1:]):
            # Qwen2.5-Coder-1.5B wrote `Answer: s1`, then `Plan:` and calls: which did it mean?
            return None, ["the reply has both forms, `Answer:` and then `Plan:`: write one of them only"]
        return _answered(reply.text, plan, results, round)
    if reply.form == "plan" and must_answer:
        return None, ["no more calls can be made: answer from the results"]
    if reply.form == "plan":
        try:
            whole = _close(reply)
        except PlanError as exc:
            return None, [str(e) for e in exc.errors]
        return _continued(whole, plan, round)
    if reply.text.strip():
        first = reply.text.strip().splitlines()[0][:80]
        forms = "`Answer:`" if must_answer else "`Answer:` or `Plan:`"
        return None, [f"the reply must start with {forms}; it starts with {first!r}"]
    return None, ["the reply is empty"]


def _json_reply(
    text: str, plan: Plan, toolbox: Toolbox, results: Mapping[str, Any], round: int, must_answer: bool
) -> tuple[JoinResult | None, list[str]]:
    """A JSON join reply: `{"answer": ...}`, or `{"calls": [...]}` read after the plan that
    ran (one JSON plan, so references, fields and types are checked as in one plan)."""
    body = "\n".join(line for line in text.splitlines() if not line.strip().startswith("```"))
    try:
        obj = json.loads(body)
    except ValueError as exc:
        return None, [f"the reply is not a JSON object: {exc}"]
    if not isinstance(obj, dict) or not ({"answer", "calls"} & set(obj)):
        return None, ['the reply must be {"answer": ...} or {"calls": [...]}']
    if "calls" not in obj:
        return _answered(str(obj["answer"]), plan, results, round)
    if must_answer:
        return None, ["no more calls can be made: answer from the results"]
    if not isinstance(obj["calls"], list):
        return None, ['"calls" must be a list of calls']
    ran = json.loads(with_keywords(plan, toolbox).to_text("json"))["calls"]
    try:
        whole = parse(json.dumps({"calls": ran + obj["calls"]}, ensure_ascii=False), toolbox)
    except PlanError as exc:
        return None, [str(e) for e in exc.errors]
    return _continued(whole, plan, round)


def _close(reply: _Reply) -> Plan:
    """The whole plan (the one that ran, then the continuation), or the reply's errors."""
    assert reply.stream is not None
    if reply.broken is not None:
        # raises with every error (lines counted from the plan that ran, shown first)
        return parse(reply.base.to_text("paper") + "\n" + reply.text, reply.toolbox)
    return reply.stream.close()
