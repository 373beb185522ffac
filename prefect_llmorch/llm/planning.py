"""Planning without Prefect: ask the LLM for a function-call plan, stream it, repair it.

The Prefect task around it is `prefect_llmorch.flows.planner.planner_task`; it runs each
attempt as a task run of its own through `plan_query(..., run_attempt=...)`.

`plan_query` builds the prompt (the toolbox, the plan language, examples written for this
project, the query), streams the LLM's answer through `PlanStream`, and hands each call to
`on_call` as soon as its line is complete, so the orchestrator can start calls while the
LLM is still writing (streaming dispatch).

Compile-time recovery (LLMOrch): a plan that fails to parse or check goes back to the LLM
with every error (line, column, message, context), the plan numbered by line, and the
examples, up to `attempts` answers in all; then the planner plans again from scratch at
`replan_temperature` (`replans` times, each again with up to `attempts` answers); then
it raises `PlanningFailed`, whose message lists every attempt's errors.

Streaming dispatch semantics (what the orchestrator relies on):

- `on_call(call)` is called only while the FIRST answer streams (round 0, attempt 1), in
  plan order, once per call, for a call whose line is complete, whose function is in the
  toolbox with fitting arguments, and whose references all point to calls already passed
  to `on_call`. At the first call that fails these checks, dispatch stops for good.
- If that first answer is a valid plan, the calls that only completed at the end of the
  stream (e.g. the last line) are passed to `on_call` after validation, so every call of
  the plan has been dispatched when `plan_query` returns.
- Repairs and re-plans are never stream-dispatched. `PlannerResult.dispatched` lists the
  ids of dispatched calls that are in the final plan unchanged (same id, function and
  arguments, and the same holds for every call they depend on): do not start them again.
  `PlannerResult.stale` lists the dispatched calls that are not: cancel them and ignore
  their results. `PlanningFailed.dispatched` lists every dispatched call (all stale).
  If `plan_query` raises anything else (`LLMError`, or an exception from `on_call`), every
  call it had passed to `on_call` is stale too.

    >>> from prefect_llmorch.functions import Toolbox
    >>> "s1:" in build_system_prompt(Toolbox())
    True
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from prefect_llmorch.functions import Toolbox
from prefect_llmorch.llm.client import PLANNER_MODES, Completion, LLMClient, Message
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.model import Arg, Call, Plan, describe_path
from prefect_llmorch.plan.parser import PlanStream, check, parse
from prefect_llmorch.plan.result_types import describe_results
from prefect_llmorch.plan.schema import JSON_FORM_HELP
from prefect_llmorch.plan.schema import response_format as plan_response_format

__all__ = [
    "Attempt",
    "PlannerResult",
    "PlanningFailed",
    "AttemptOutcome",
    "AttemptRunner",
    "plan_query",
    "build_system_prompt",
    "plan_messages",
    "repair_messages",
    "EXAMPLES",
]

OnCall = Callable[[Call], Any]

# -- the prompt ------------------------------------------------------------------------

_INTRO = """\
You are the planner of a parallel function-calling system. Given a question and a list of \
functions, write a plan: a sequence of function calls whose results answer the question. \
Calls that do not depend on each other run in parallel, so do not chain calls that need \
not wait for each other."""

_LANGUAGE = """\
The plan language:
- One call per line: `sN: function(arguments)`, with ids s1, s2, s3, ... in order.
- Arguments are positional or `name=value`. Values are strings in double quotes (they may \
span lines), numbers, true, false, null, [lists] and {"key": value} dicts.
- To use the result of an earlier call, write its id: `s1` passes the result itself \
(any type); "... {s1} ..." inside a string inserts it into the text. Select a part of a \
result with fields and indexes: `s1.skyId`, `s1.data[0].name`, `s1["Exchange Rate"]`, \
"{s1.name}".
- Refer only to calls defined on earlier lines. Call only the functions listed below, \
with the parameters they take.
- An argument may compute with numbers and results (+ - * /): `f(s1.total * 2)`, \
`f(s1.km - s2.km)`. Do arithmetic and comparisons of numbers there or with the functions \
listed, not in `self`.
- `self(prompt)` asks a language model: use it to word the answer from the results (give it \
the computed values), or for what no function does. The result of the last call is the \
answer, so end with the call that produces the answer (usually `self`).
- Functions marked [inout] wait on I/O (web, APIs, models); [compute] ones hold a CPU. \
Both are called the same way.
- Output only the plan: no explanations, no numbering, no code fences."""

#: Added to the planner's plan language when the joiner is on (`plan_query(join=True)`): the joiner
#: (`prefect_llmorch.llm.joining`) follows the plan.
JOIN_HINT = (
    "- If which calls come next depends on a result you cannot know yet (a condition such as "
    "the weather, a name that a lookup returns, a count that decides how many calls follow), "
    "write only the calls you can make now and end the plan with `join()` under the next id "
    "(e.g. `s3: join()` after s2): you will see their results and write the next calls then. "
    "Never guess such a result: no call after `join()`, and no call or `self` that needs it. "
    "There is no `if`: for \"if it snows in Bergen list ski shops, else cafés\" the plan is "
    "`s1: weather(\"Bergen\")` and `s2: join()`; for \"the opening hours of each library of "
    "Tromsø\": `s1: libraries(\"Tromsø\")` and `s2: join()`."
)

#: Few-shot examples: (functions, question, plan), written for this project, paper dialect.
EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "search(query: str) -> str  [inout]\n"
        "self(prompt: str) -> str  [inout]",
        "Which was founded first, the University of Oslo or the University of Helsinki?",
        's1: search("University of Oslo founding year")\n'
        's2: search("University of Helsinki founding year")\n'
        's3: self("Oslo: {s1}\\nHelsinki: {s2}\\nWhich university was founded first? '
        'Answer with its name and year.")',
    ),
    (
        "load_frame(path: str) -> list  [inout]\n"
        "detect_objects(frame: list) -> list  [compute]\n"
        "estimate_depth(frame: list) -> list  [compute]\n"
        "fuse(objects: list, depth: list) -> dict  [compute]\n"
        "self(prompt: str) -> str  [inout]",
        "How far away is the nearest car in frames/0042.png?",
        's1: load_frame("frames/0042.png")\n'
        "s2: detect_objects(s1)\n"
        "s3: estimate_depth(s1)\n"
        "s4: fuse(objects=s2, depth=s3)\n"
        's5: self("Objects with distances: {s4}. How far away is the nearest car, in metres?")',
    ),
    (
        "similar_movies(title: str, n: int = 5) -> list[str]  [inout]\n"
        "movie_info(title: str) -> dict  [inout]\n"
        "self(prompt: str) -> str  [inout]",
        "I liked Alien and Arrival. Recommend one movie and give its director.",
        's1: similar_movies("Alien", n=5)\n'
        's2: similar_movies("Arrival", n=5)\n'
        's3: self("Similar to Alien: {s1}. Similar to Arrival: {s2}. Name the one title '
        'that best fits both; answer with the title only.")\n'
        "s4: movie_info(s3)\n"
        's5: self("Recommend {s3} in one sentence, naming its director from: {s4}")',
    ),
    (
        "search_airport(query: str) -> Airport(skyId: str, entityId: str)  [inout]\n"
        "search_flights(origin: str, destination: str, date: str) -> list[Flight]  [inout]\n"
        "self(prompt: str) -> str  [inout]",
        "What is the cheapest flight from New York to London on 2024-08-15?",
        's1: search_airport(query="New York")\n'
        's2: search_airport(query="London")\n'
        's3: search_flights(origin=s1.skyId, destination=s2.skyId, date="2024-08-15")\n'
        's4: self("Flights: {s3}. Which one is cheapest? Answer with its airline and price.")',
    ),
)

_JSON_LANGUAGE = JSON_FORM_HELP + """
- Call only the functions listed below, with the argument names they take.
- Do arithmetic and comparisons of numbers with the functions listed, not in `self`.
- `self` (kwargs {"prompt": ...}) asks a language model: use it to word the answer from the \
results (give it the computed values), or for what no function does. The result of the \
last call is the answer, so end with the call that produces it.
- Functions marked [inout] wait on I/O (web, APIs, models); [compute] ones hold a CPU.
- Output only the JSON object."""


def _json_example(functions: str, plan: str) -> str:
    """An example plan in the JSON form, positional arguments named from `functions`."""
    params = {m.group(1): [p.split(":")[0].strip() for p in m.group(2).split(",") if p.strip()]
              for m in re.finditer(r"^(\w+)\((.*?)\)", functions, re.M)}
    calls = []
    for call in parse(plan).calls:
        names = params.get(call.function, [])
        args = tuple(Arg(a.name or names[i], a.value) for i, a in enumerate(call.args))
        calls.append(Call(call.id, call.function, args))
    return Plan(tuple(calls)).to_text("json")


def _clashes(functions: str, toolbox: Toolbox) -> bool:
    """Whether an example has a function shaped unlike the toolbox's one of its kind: the
    same name taking parameters the toolbox's does not have, or a name extending the
    toolbox's (`detect_objects`, `detect`) whose first parameter has another type. Given
    `detect(image: str)`, a 1.5B model copied the KITTI example's `load_frame` +
    `detect_objects(frame: list)` into its plan, `load_frame` and all."""
    for m in re.finditer(r"^(\w+)\((.*?)\)", functions, re.M):
        name = m.group(1)
        params = [(p.split(":")[0].strip(), p.split(":")[1].split("=")[0].strip() if ":" in p else "")
                  for p in m.group(2).split(",") if p.strip()]
        for other, spec in toolbox.items():
            if "self" in (name, other):
                continue
            theirs = list(spec.signature.parameters.values())
            if name == other:
                if not {p for p, _ in params} <= {p.name for p in theirs}:
                    return True
            elif (name.startswith(other + "_") or other.startswith(name + "_")) and params and theirs:
                annotation = theirs[0].annotation
                their_type = getattr(annotation, "__name__", str(annotation))
                if params[0][1] and params[0][1] != their_type:
                    return True
    return False


def _examples_text(mode: str = "text", toolbox: Toolbox | None = None) -> str:
    """The examples, leaving out those that clash with `toolbox` (see `_clashes`)."""
    parts = ["Examples (each with its own functions):"]
    chosen = [e for e in EXAMPLES if toolbox is None or not _clashes(e[0], toolbox)]
    for i, (functions, question, plan) in enumerate(chosen, 1):
        if mode == "json":
            plan = _json_example(functions, plan)
        parts.append(f"Example {i}\nFunctions:\n{functions}\nQuestion: {question}\nPlan:\n{plan}")
    return "\n\n".join(parts)


def build_system_prompt(toolbox: Toolbox, mode: str = "text", *, join: bool = False) -> str:
    """The system message: role, plan language (or, for `mode="json"`, the JSON plan
    form), examples (but those calling a function of the toolbox's name with parameters it
    does not take), the toolbox's functions. `join`: the joiner follows the plan, so the
    planner may end a plan with `join()` (`JOIN_HINT`; the joiner: `llm/joining.py`)."""
    language = _JSON_LANGUAGE if mode == "json" else _LANGUAGE
    if join and mode != "json":
        language += "\n" + JOIN_HINT
    parts = [_INTRO, language, _examples_text(mode, toolbox), "The functions you may call:\n" + toolbox.describe()]
    results = describe_results(toolbox)
    if results:
        select = '{"ref": "s1", "path": ["field"]}' if mode == "json" else "`s1.field`"
        parts.append(f"Results with fields (select them, e.g. {select}; only these fields exist):\n" + results)
    return "\n\n".join(parts)


def plan_messages(query: str, toolbox: Toolbox, *, system: str | None = None,
                  mode: str = "text") -> list[dict[str, str]]:
    """Messages asking for a fresh plan for `query`."""
    return [
        {"role": "system", "content": system or build_system_prompt(toolbox, mode)},
        {"role": "user", "content": f"Question: {query}\nPlan:"},
    ]


def _json_hints(err: PlanError) -> str:
    """`err`'s message with the references it names written in the JSON form: `s1.distance`
    -> `{"ref": "s1", "path": ["distance"]}`, a call's id in backticks -> `{"ref": "s1"}`
    (given the text form, the real model wrote `{"ref": "s1.distance"}`, or `"s1"`, which the
    JSON form reads as text). A bare id outside backticks is left alone (`defined so far: s1`)."""
    forms: dict[str, str] = {}
    alternatives: list[tuple[int, str]] = []
    for cid, path in getattr(err, "refs", ()):
        text = describe_path(cid, path)
        if text in forms:
            continue
        forms[text] = json.dumps({"ref": cid, "path": list(path)} if path else {"ref": cid})
        quoted = f"`{re.escape(text)}`"
        # a path also where it stands alone (`did you mean s1.a (float)`), not inside `s1.a.b`
        alone = rf"|(?<![\w.$`]){re.escape(text)}(?![\w\[`]|\.\w)" if path else ""
        alternatives.append((len(text), quoted + alone))
    if not forms:
        return str(err)
    pattern = "|".join(a for _, a in sorted(alternatives, reverse=True))  # longest first
    return re.sub(pattern, lambda m: forms[m.group(0).strip("`")], str(err))


def _format_error(err: PlanError, mode: str = "text") -> str:
    line = f"- {_json_hints(err) if mode == 'json' else err}"
    if err.expected:
        line += f" (expected one of: {', '.join(err.expected)})"
    if err.context:
        context = "\n".join("    " + row for row in err.context.rstrip("\n").splitlines())
        line += "\n" + context
    return line


def _numbered(text: str) -> str:
    rows = text.splitlines() or [""]
    width = len(str(len(rows)))
    return "\n".join(f"{i:>{width}} | {row}" for i, row in enumerate(rows, 1))


def repair_messages(
    query: str,
    toolbox: Toolbox,
    text: str,
    errors: Sequence[PlanError],
    *,
    system: str | None = None,
    mode: str = "text",
) -> list[dict[str, str]]:
    """Messages asking the LLM to repair its broken plan `text`.

    The last message lists every error with its line, column and context, then the plan
    numbered by line; the system message keeps the language and examples.
    """
    listing = "\n".join(_format_error(e, mode) for e in errors)
    fix = (
        f"Your plan cannot run. {len(errors)} error{'s' if len(errors) != 1 else ''}:\n"
        f"{listing}\n\n"
        f"Your plan, numbered by line:\n{_numbered(text)}\n\n"
        + ("Write the whole plan again with these errors fixed, as the same JSON object "
           "({\"calls\": [...]}). Output only the JSON." if mode == "json" else
           "Write the whole plan again with these errors fixed, in the same format "
           "(`sN: function(arguments)`, one call per line). Output only the plan.")
    )
    return [
        *plan_messages(query, toolbox, system=system, mode=mode),
        {"role": "assistant", "content": text},
        {"role": "user", "content": fix},
    ]


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One answer of the LLM during planning.

    Attributes:
        text: the plan text as parsed (markdown code-fence lines removed).
        errors: every error found in it; empty when it is a valid plan.
        prompt_tokens, completion_tokens: as reported by the endpoint.
        temperature: the sampling temperature asked for.
        round: 0 for the first plan, 1.. for re-plans from scratch.
        repair: whether the LLM was asked to repair the previous answer.
        seconds: how long the answer took.
    """

    text: str
    errors: tuple[PlanError, ...]
    prompt_tokens: int
    completion_tokens: int
    temperature: float
    round: int = 0
    repair: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def describe(self, number: int) -> str:
        """`attempt 2 (repair, temperature 0): 1 error` and one line per error."""
        how = "repair" if self.repair else ("re-plan" if self.round else "plan")
        head = f"attempt {number} ({how}, temperature {self.temperature:g}): "
        if self.ok:
            return head + "valid plan"
        rows = [f"{head}{len(self.errors)} error{'s' if len(self.errors) != 1 else ''}"]
        rows += [f"  {err}" for err in self.errors]
        return "\n".join(rows)


@dataclass(frozen=True)
class PlannerResult:
    """A valid plan and how it was obtained.

    Attributes:
        plan: the plan.
        text: its text.
        attempts: every LLM answer, in order (the last one is valid).
        dispatched: ids of calls passed to `on_call` that are in `plan` unchanged.
        stale: calls passed to `on_call` that are not in `plan`: cancel them.
    """

    plan: Plan
    text: str
    attempts: tuple[Attempt, ...]
    dispatched: tuple[str, ...] = ()
    stale: tuple[Call, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.attempts)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.attempts)

    @property
    def tokens(self) -> int:
        """All tokens spent on planning (prompt + completion, every attempt)."""
        return self.prompt_tokens + self.completion_tokens


class PlanningFailed(RuntimeError):
    """The LLM gave no valid plan within the allowed attempts and re-plans.

    Attributes:
        query: the question.
        attempts: every answer with its errors.
        dispatched: calls already passed to `on_call` (all stale: cancel them).
    """

    def __init__(self, query: str, attempts: Sequence[Attempt], dispatched: Sequence[Call] = ()) -> None:
        self.query = query
        self.attempts = tuple(attempts)
        self.dispatched = tuple(dispatched)
        body = "\n".join(a.describe(i) for i, a in enumerate(self.attempts, 1))
        super().__init__(f"no valid plan after {len(self.attempts)} attempts:\n{body}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlanningFailed, (self.query, self.attempts, self.dispatched))


# -- planning --------------------------------------------------------------------------


def _is_fence(line: str) -> bool:
    return line.strip().startswith("```")


class _FenceFilter:
    """Passes text on by whole lines, dropping markdown code-fence lines (```...).

    Lines are where calls complete anyway, so this costs streaming dispatch nothing.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, chunk: str) -> str:
        head, sep, self._pending = (self._pending + chunk).rpartition("\n")
        if not sep:
            return ""
        lines = (head + sep).splitlines(keepends=True)
        return "".join(line for line in lines if not _is_fence(line))

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return "" if _is_fence(rest) else rest


class _JsonFilter:
    """Passes a JSON answer on as it arrives (a constrained model may write it on one
    line); an answer that opens with a code fence anyway is filtered by lines."""

    def __init__(self) -> None:
        self._head = ""
        self._lines: _FenceFilter | None = None
        self._decided = False

    def feed(self, chunk: str) -> str:
        if self._decided:
            return self._lines.feed(chunk) if self._lines else chunk
        self._head += chunk
        start = self._head.lstrip()
        if not start or (len(start) < 3 and "```".startswith(start)):
            return ""  # not enough to tell yet
        self._decided = True
        head, self._head = self._head, ""
        if start.startswith("```"):
            self._lines = _FenceFilter()
            return self._lines.feed(head)
        return head

    def flush(self) -> str:
        if self._lines:
            return self._lines.flush()
        rest, self._head = self._head, ""
        return rest


class _Dispatcher:
    """Hands complete calls of the streamed first answer to `on_call` (see module doc)."""

    def __init__(self, toolbox: Toolbox, on_call: OnCall | None) -> None:
        self.toolbox = toolbox
        self.on_call = on_call
        self.calls: list[Call] = []
        self._ids: set[str] = set()

    @property
    def active(self) -> bool:
        return self.on_call is not None

    def offer(self, calls: Sequence[Call]) -> None:
        for call in calls:
            if self.on_call is None:
                return
            if call.id in self._ids:
                continue  # already passed on (after validation of a good plan)
            if not self._fits(call):
                self.on_call = None  # what follows a bad call is suspect: stop for good
                return
            self._ids.add(call.id)
            self.calls.append(call)
            self.on_call(call)

    def _fits(self, call: Call) -> bool:
        if call.function not in self.toolbox or not call.deps <= self._ids:
            return False
        try:
            check(Plan((call,)), self.toolbox)
        except PlanError as exc:
            # A one-call plan may only lack its (already dispatched) references.
            kinds = {e.kind for e in exc.errors}
            return kinds <= {"reference"}
        return True

    def reconcile(self, plan: Plan) -> tuple[tuple[str, ...], tuple[Call, ...]]:
        """(ids kept, calls stale) of the dispatched calls against the final plan."""
        final = {c.id: c for c in plan.calls}
        kept: list[str] = []
        stale: list[Call] = []
        for call in self.calls:  # dispatch order: dependencies come first
            if final.get(call.id) == call and call.deps <= set(kept):
                kept.append(call.id)
            else:
                stale.append(call)
        return tuple(kept), tuple(stale)


def _one_attempt(
    client: LLMClient,
    messages: Sequence[Message],
    toolbox: Toolbox,
    temperature: float,
    dispatcher: _Dispatcher | None,
    mode: str = "text",
) -> tuple[str, Plan | None, tuple[PlanError, ...], Completion]:
    """Stream one answer; returns (text, plan or None, errors, completion). In "json"
    mode the request carries the plan's JSON schema as `response_format`."""
    stream = PlanStream(toolbox)
    lines: _FenceFilter | _JsonFilter = _JsonFilter() if mode == "json" else _FenceFilter()
    response_format = plan_response_format(toolbox) if mode == "json" else None
    parts: list[str] = []
    stream_broken = False

    def take(text: str) -> None:
        nonlocal stream_broken
        if not text:
            return
        parts.append(text)
        if stream_broken:
            return
        try:
            calls = stream.feed(text)
        except PlanError:
            stream_broken = True  # keep reading: the repair prompt needs the whole text
            return
        if dispatcher is not None:
            dispatcher.offer(calls)

    extra = {"response_format": response_format} if response_format else {}
    with client.stream(messages, temperature=temperature, **extra) as chunks:
        for chunk in chunks:
            take(lines.feed(chunk))
        completion = chunks.completion
    take(lines.flush())

    text = "".join(parts)
    try:
        plan = parse(text, toolbox) if stream_broken else stream.close()
    except PlanError as exc:
        return text, None, tuple(exc.errors), completion
    if dispatcher is not None:
        dispatcher.offer(plan.calls)  # calls that completed only with the stream
    return text, plan, (), completion


#: What one attempt produced: (text, plan or None, errors, completion).
AttemptOutcome = tuple[str, Plan | None, tuple[PlanError, ...], Completion]
#: `run_attempt(name, attempt)`: run one attempt (e.g. as a Prefect task run), return its outcome.
AttemptRunner = Callable[[str, Callable[[], AttemptOutcome]], AttemptOutcome]


def plan_query(
    query: str,
    toolbox: Toolbox,
    client: LLMClient,
    *,
    attempts: int = 3,
    replans: int = 1,
    temperature: float = 0.0,
    replan_temperature: float = 0.7,
    on_call: OnCall | None = None,
    run_attempt: AttemptRunner | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,  # type: ignore[type-arg]
    mode: str | None = None,
    join: bool = False,
) -> PlannerResult:
    """Ask the LLM for a plan that answers `query` with the functions of `toolbox`.

    Args:
        query: the user's question.
        toolbox: the functions the plan may call.
        client: the LLM.
        attempts: answers per round: the first plan plus up to `attempts - 1` repairs.
        replans: rounds of planning from scratch at `replan_temperature` after the first.
        temperature: temperature of the first round.
        replan_temperature: temperature of the re-plan rounds (and their repairs), and of
            the repairs after one that gave back the very plan it was to repair (at the
            same temperature the same prompt would get the same answer again).
        on_call: called with each call of the first answer as soon as its line is
            complete (see the module docstring for the exact rule). Its exceptions
            propagate and stop planning.
        run_attempt: runs one attempt, given its name (`planner · attempt 2 (repair)`)
            and a function doing it; None runs it here. The Prefect task uses it to make
            each attempt a task run of its own.
        log: where attempts are logged (default: this module's logger).
        mode: "text" asks for the plan language; "json" asks for the JSON plan form
            under a JSON schema built from the toolbox (`response_format`), streams
            calls as their objects close, and repairs the same way. None: the client's
            `planner` setting (from the `LLMEndpoint` block), else "text".
        join: a join step follows the plan: the prompt lets the planner end it with
            `join()` when what comes next depends on results (text mode).

    Returns:
        The plan, its text, every attempt, and which dispatched calls are kept or stale.

    Raises:
        PlanningFailed: no valid plan; lists every attempt's errors.
        LLMError: the endpoint failed (not retried here; the client retries transport errors).
        ValueError: `attempts < 1` or `replans < 0`.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if replans < 0:
        raise ValueError(f"replans must be >= 0, got {replans}")
    mode = mode or getattr(client, "planner", None) or "text"
    if mode not in PLANNER_MODES:
        raise ValueError(f"mode must be one of {', '.join(PLANNER_MODES)}, got {mode!r}")
    log = log if log is not None else logging.getLogger(__name__)
    run = run_attempt or (lambda _name, attempt: attempt())
    system = build_system_prompt(toolbox, mode, join=join)
    dispatcher = _Dispatcher(toolbox, on_call)
    history: list[Attempt] = []
    total = attempts * (replans + 1)

    for round_ in range(replans + 1):
        temp = temperature if round_ == 0 else replan_temperature
        messages = plan_messages(query, toolbox, system=system, mode=mode)
        afresh = False  # this attempt asks the plan request again (the last answer was cut off)
        for i in range(attempts):
            started = time.monotonic()
            how = "re-plan" if afresh or (round_ and not i) else ("repair" if i else "plan")
            text, plan, errors, completion = run(
                f"planner · attempt {len(history) + 1} ({how})",
                lambda: _one_attempt(
                    client, messages, toolbox, temp,
                    dispatcher if (round_ == 0 and i == 0 and dispatcher.active) else None,
                    mode,
                ),
            )
            attempt = Attempt(
                text=text,
                errors=errors,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                temperature=temp,
                round=round_,
                repair=i > 0 and not afresh,
                seconds=time.monotonic() - started,
            )
            history.append(attempt)
            tokens = f"{attempt.prompt_tokens}+{attempt.completion_tokens} tokens, {attempt.seconds:.2f} s"
            if plan is not None:
                log.info(
                    "planner %s: %d calls (%s)", attempt.describe(len(history)), len(plan), tokens
                )
                kept, stale = dispatcher.reconcile(plan)
                if stale:
                    log.warning(
                        "planner: %d streamed calls are not in the final plan and must be "
                        "cancelled: %s", len(stale), ", ".join(c.id for c in stale),
                    )
                return PlannerResult(plan, text, tuple(history), kept, stale)
            log.warning(
                "planner %s\n(%s; %d of at most %d attempts)\n--- plan ---\n%s",
                attempt.describe(len(history)), tokens, len(history), total, text,
            )
            if i and temp < replan_temperature and text.strip() == history[-2].text.strip():
                # The repair gave back the plan it was asked to repair: the next repair prompt
                # is that same prompt, and at this temperature it gets that same answer.
                log.warning("planner: the repair repeated the plan; the next repairs use temperature %g",
                            replan_temperature)
                temp = replan_temperature
            if completion.finish_reason == "length":
                # Cut off (a model repeating itself until the context was full): quoting it in
                # a repair prompt would not fit either (the endpoint refused one with 400).
                # The same request at the same low temperature would loop the same way.
                log.warning("planner: the answer was cut off at the length limit; planning afresh at temperature %g",
                            max(temp, replan_temperature))
                temp = max(temp, replan_temperature)
                messages, afresh = plan_messages(query, toolbox, system=system, mode=mode), True
                continue
            afresh = False
            messages = repair_messages(query, toolbox, text, errors, system=system, mode=mode)

    failure = PlanningFailed(query, history, dispatcher.calls)
    log.error("%s", failure)
    raise failure
