"""The systems LLMOrch is compared with, run for real: same toolbox, same LLM endpoint, same
Prefect flow machinery.

Each `run_*` function answers one question with one system and returns a `SystemRun`
(every call's start/end/pid, every LLM request's start/end, tokens, round trips):

- `run_react`: ReAct-style. One LLM round trip per call: the LLM answers a thought and one
  action (`Action: s3: f(...)`; `Final Action:` for the call whose result is the answer);
  the call runs; its observation is appended to the conversation, so the prompt grows with
  every step. Calls run one after another.
- `run_parallel_fc`: parallel function calling, OpenAI style. One LLM round trip per rank:
  the LLM answers a JSON list of calls (`{"tool_calls": [{"id", "call"}], "final": bool}`),
  they all run at once on threads, unbounded, their results go back into the conversation.
- `run_llmcompiler`: LLMCompiler-style. One streamed plan (our planner, streaming dispatch);
  every call starts as soon as its inputs exist, unbounded, on Prefect's
  `ThreadPoolTaskRunner`. LLMCompiler runs tools as asyncio tasks in one process (sync tools
  through a thread pool), so CPU-bound Python tools share one core under the GIL: compute
  calls run in threads of the flow process here too, which is what LLMCompiler does.
- `run_llmorch`: ours (`ask_query`), with the `paper` or `critical-path` policy on P processors.

The LLM is any OpenAI-compatible endpoint (`LLMClient`). Benchmarks and tests use
`prefect_llmorch.testing.fake_llm.FakeLLM` scripted with what each system expects to read:
`script_for(system, plan)` gives those replies for a plan, so every system runs exactly the
calls of that plan.

Tool calls are Prefect task runs compiled from the plan (`compiler.Compiler`) in every
system. The baselines' task runs carry no tags (ours carry `inout`/`compute` and `rank:N`,
whose tag-limit lookups our runner makes ahead of need), and their LLM requests are made
from the flow itself, not from a task run: both are in the baselines' favour.

`SystemRun.latency` runs from the first LLM request to the end of the last call (`makespan`,
from the first call's start, keeps its own name); for ours
the planner's request is not timed here (it runs in a Prefect task): set `run.llm` from the
endpoint's own log, as `benchmarks/paper_tables.py` does for every system.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from prefect import flow
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_llmorch.engine.compiler import Compiler, Recorder, final_state
from prefect_llmorch.functions import Toolbox
from prefect_llmorch.graph import FRG
from prefect_llmorch.llm.client import Completion, LLMClient
from prefect_llmorch.flows.run import RunReport, resolve_toolbox
from prefect_llmorch.plan.model import Call, Plan
from prefect_llmorch.plan.parser import parse

__all__ = [
    "SYSTEMS",
    "BaselineProtocolError",
    "SystemRun",
    "react_script",
    "parallel_fc_script",
    "plan_script",
    "script_for",
    "react_system_prompt",
    "parallel_fc_system_prompt",
    "run_react",
    "run_parallel_fc",
    "run_llmcompiler",
    "run_llmorch",
    "run_system",
]

#: The systems `run_system` knows, in table order.
SYSTEMS: tuple[str, ...] = ("react", "parallel-fc", "llmcompiler", "llmorch-paper", "llmorch-critical-path")

#: Threads for the unbounded baselines: more than any plan has calls.
_UNBOUNDED = 256


class BaselineProtocolError(RuntimeError):
    """The LLM's answer does not follow the baseline's protocol (no action, bad JSON, ...).

    Attributes:
        system: the baseline.
        reply: the LLM's answer.
    """

    def __init__(self, system: str, message: str, reply: str) -> None:
        self.system = system
        self.detail = message
        self.reply = reply
        super().__init__(f"{system}: {message}; the LLM answered:\n{reply}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (BaselineProtocolError, (self.system, self.detail, self.reply))


@dataclass
class SystemRun:
    """What one system did for one question.

    Times are wall-clock (`time.time()`) seconds.

    Attributes:
        system: one of `SYSTEMS`.
        processors: P given to the system (the unbounded baselines ignore it).
        calls: one dict per call: `id function kind start end pid`.
        llm: `(start, end)` of every LLM request, as the client saw it (empty for
            `run_llmorch`, whose planner runs in a task: take them from the endpoint's log).
        prompt_tokens, completion_tokens: summed over every LLM request, as the endpoint reported.
        round_trips: LLM requests made.
        result: the result of the plan's last call.
        started: when `run_*` was called.
        wall: seconds from the call of `run_*` to its return (Prefect flow set-up and
            tear-down included).
        report: ours and LLMCompiler-style: the `RunReport` of the flow.
    """

    system: str
    processors: int
    calls: list[dict[str, Any]]
    llm: list[tuple[float, float]]
    prompt_tokens: int
    completion_tokens: int
    round_trips: int
    result: Any
    started: float
    wall: float
    report: RunReport | None = field(default=None, repr=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def zero(self) -> float:
        """The first moment anything happened: the first LLM request, or the first call."""
        starts = [s for s, _ in self.llm] + [c["start"] for c in self.calls if c["start"] is not None]
        return min(starts, default=self.started)

    def end(self) -> float:
        ends = [e for _, e in self.llm] + [c["end"] for c in self.calls if c["end"] is not None]
        return max(ends, default=self.started)

    @property
    def latency(self) -> float:
        """From the first LLM request (the question is asked: `RunReport.t0` of an ask) to the
        end of the last call or request: what the user waits for."""
        return self.end() - self.zero()

    @property
    def makespan(self) -> float:
        """From the first call's start to the last call's end (hides the planning before it)."""
        starts = [c["start"] for c in self.calls if c["start"] is not None]
        ends = [c["end"] for c in self.calls if c["end"] is not None]
        return max(ends) - min(starts) if starts and ends else 0.0


# -- what the LLM says, per protocol ------------------------------------------------------


def _call_text(call: Call) -> str:
    return Plan((call,), dialect="paper").to_text().strip()


def _ranks(plan: Plan) -> list[list[Call]]:
    frg = FRG.build(plan)
    out: dict[int, list[Call]] = {}
    for call in plan.calls:
        out.setdefault(frg.rank[call.id], []).append(call)
    return [out[r] for r in sorted(out)]


def react_script(plan: Plan) -> list[str]:
    """One ReAct reply per call, in plan order: a thought and the action; the last call is
    the `Final Action` (its result is the answer)."""
    replies = []
    for i, call in enumerate(plan.calls):
        final = i == len(plan.calls) - 1
        thought = "I can answer now." if final else f"Next I need {call.function} for {call.id}."
        replies.append(f"Thought: {thought}\n{'Final Action' if final else 'Action'}: {_call_text(call)}")
    return replies


def parallel_fc_script(plan: Plan) -> list[str]:
    """One parallel-function-calling reply per rank: the calls of that rank as JSON."""
    ranks = _ranks(plan)
    return [
        json.dumps({"tool_calls": [{"id": c.id, "call": _call_text(c).split(": ", 1)[1]} for c in calls], "final": r == len(ranks) - 1})
        for r, calls in enumerate(ranks)
    ]


def plan_script(plan: Plan) -> list[str]:
    """The whole plan as one reply (LLMCompiler-style and ours)."""
    return [plan.to_text()]


def script_for(system: str, plan: Plan | str) -> list[str]:
    """The replies a scripted LLM gives `system` so that it runs exactly `plan`."""
    plan = parse(plan) if isinstance(plan, str) else plan
    if system == "react":
        return react_script(plan)
    if system == "parallel-fc":
        return parallel_fc_script(plan)
    if system in SYSTEMS:
        return plan_script(plan)
    raise ValueError(f"unknown system {system!r}; valid: {', '.join(SYSTEMS)}")


def _examples(render: Callable[[Plan], list[str]], roles: bool) -> str:
    """Our planner's few-shot examples, rewritten in a baseline's protocol (same material)."""
    from prefect_llmorch.flows.planner import EXAMPLES

    parts = ["Examples (each with its own functions):"]
    for i, (functions, question, text) in enumerate(EXAMPLES, 1):
        steps = render(parse(text))
        body = "\n".join(steps if not roles else [f"{s}\nObservation: ..." for s in steps])
        parts.append(f"Example {i}\nFunctions:\n{functions}\nQuestion: {question}\n{body}")
    return "\n\n".join(parts)


def react_system_prompt(toolbox: Toolbox) -> str:
    """ReAct's system message: the protocol, examples, the functions."""
    return "\n\n".join([
        "Answer the question by calling functions one at a time. In each turn write one line "
        "`Thought: ...` and one line `Action: sN: function(arguments)` with ids s1, s2, ... in "
        "order; use an earlier result by its id. You will get its Observation. Write "
        "`Final Action:` instead of `Action:` for the call whose result is the answer.",
        _examples(react_script, roles=True),
        "The functions you may call:\n" + toolbox.describe(),
    ])


def parallel_fc_system_prompt(toolbox: Toolbox) -> str:
    """Parallel function calling's system message: the protocol, examples, the functions."""
    return "\n\n".join([
        "Answer the question by calling functions. In each turn answer JSON: "
        '{"tool_calls": [{"id": "sN", "call": "function(arguments)"}, ...], "final": false}, '
        "listing every call you can make now (they run in parallel); use an earlier result by "
        "its id. You will get their results. Set \"final\": true on the turn whose last call "
        "gives the answer.",
        _examples(parallel_fc_script, roles=False),
        "The functions you may call:\n" + toolbox.describe(),
    ])


# -- running ------------------------------------------------------------------------------


class _Tokens:
    def __init__(self) -> None:
        self.prompt = self.completion = self.requests = 0
        self.times: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def ask(self, client: LLMClient, messages: list[dict[str, str]]) -> Completion:
        start = time.time()
        completion = client.complete(messages)
        with self._lock:
            self.times.append((start, time.time()))
            self.prompt += completion.prompt_tokens
            self.completion += completion.completion_tokens
            self.requests += 1
        return completion


class _PlainCompiler(Compiler):
    """Our compiler, minus the tags (`inout`/`compute`, `rank:N`): a thread-pool user
    would not tag tasks, and each new tag set costs a Prefect tag-limit lookup (up to ~2 s
    on a busy SQLite server) that the baselines should not pay for our bookkeeping."""

    def task_for(self, call: Call, attempt: int = 0) -> Any:
        return super().task_for(call, attempt).with_options(tags=set())


def _calls_of(recorder: Recorder) -> list[dict[str, Any]]:
    out = []
    for rec in recorder.records.values():
        out.append({
            "id": rec.id, "function": rec.function, "kind": rec.kind, "state": rec.state,
            "start": None if rec.start is None else recorder.t0 + rec.start,
            "end": None if rec.end is None else recorder.t0 + rec.end,
            "pid": rec.pid,
        })
    return out


def _failed(system: str, futures: dict[str, PrefectFuture[Any]]) -> None:
    for cid, fut in futures.items():
        state = final_state(fut)
        if not state.is_completed():
            fut.result()  # raises the call's exception
            raise RuntimeError(f"{system}: call {cid} ended {state.name}")


_ACTION = re.compile(r"^(Final Action|Action):[ \t]*", re.MULTILINE)


def _stepwise(
    system: str,
    query: str,
    toolbox: Toolbox | str,
    client: LLMClient,
    next_calls: Callable[[str, list[str]], tuple[list[str], bool]],
    system_prompt: str,
    observe: Callable[[list[tuple[str, Any]]], str],
    max_steps: int,
) -> SystemRun:
    """The loop shared by ReAct and parallel FC: ask, run what the LLM asked for, tell it."""
    tb = resolve_toolbox(toolbox)
    started = time.time()
    tokens = _Tokens()
    recorder = Recorder()
    futures: dict[str, PrefectFuture[Any]] = {}
    texts: list[str] = []  # every call so far, as `sN: f(...)` lines

    @flow(name=f"baseline-{system}", task_runner=ThreadPoolTaskRunner(max_workers=_UNBOUNDED), validate_parameters=False)
    def _run() -> Any:
        compiler = _PlainCompiler(frg=FRG.build(Plan(()), tb), toolbox=tb, recorder=recorder)
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": f"Question: {query}"}]
        for _ in range(max_steps):
            reply = tokens.ask(client, messages).text
            new, final = next_calls(reply, texts)
            plan = parse("\n".join(texts + new), tb)
            new_calls = list(plan.calls[len(texts):])
            texts.extend(new)
            compiler.frg = FRG.build(plan, tb)
            submitted = compiler.submit(new_calls, futures)
            wait(list(submitted.values()))
            _failed(system, submitted)
            observed = [(cid, fut.result()) for cid, fut in submitted.items()]
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": observe(observed)}]
            if final:
                return observed[-1][1]
        raise RuntimeError(f"{system}: no final answer after {max_steps} LLM round trips")

    state = _run(return_state=True)
    result = state.result(raise_on_failure=True)
    return SystemRun(
        system=system, processors=0, calls=_calls_of(recorder), llm=list(tokens.times),
        prompt_tokens=tokens.prompt, completion_tokens=tokens.completion, round_trips=tokens.requests,
        result=result, started=started, wall=time.time() - started,
    )


def _react_next(reply: str, texts: list[str]) -> tuple[list[str], bool]:
    found = list(_ACTION.finditer(reply))
    if len(found) != 1:
        raise BaselineProtocolError("react", f"expected exactly one Action line, found {len(found)}", reply)
    action = reply[found[0].end():].strip()
    return [action], found[0].group(1) == "Final Action"


def _fc_next(reply: str, texts: list[str]) -> tuple[list[str], bool]:
    body = reply.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        data = json.loads(body)
        calls = [f"{item['id']}: {item['call']}" for item in data["tool_calls"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise BaselineProtocolError("parallel-fc", f"expected a JSON object with tool_calls ({exc})", reply) from None
    if not calls:
        raise BaselineProtocolError("parallel-fc", "no tool calls", reply)
    return calls, bool(data.get("final"))


def run_react(query: str, toolbox: Toolbox | str, client: LLMClient, *, max_steps: int = 100) -> SystemRun:
    """ReAct-style: one LLM round trip per call, one call at a time, observations appended.

    Raises:
        BaselineProtocolError: an answer has no single `Action:` / `Final Action:` line.
        PlanError: the action does not parse or check against the toolbox.
        Exception: a call's own exception.
    """
    tb = resolve_toolbox(toolbox)
    return _stepwise(
        "react", query, toolbox, client, _react_next, react_system_prompt(tb),
        lambda observed: "\n".join(f"Observation: {value}" for _, value in observed), max_steps,
    )


def run_parallel_fc(query: str, toolbox: Toolbox | str, client: LLMClient, *, max_steps: int = 100) -> SystemRun:
    """Parallel function calling: one LLM round trip per rank; its calls run at once,
    unbounded, on threads (compute calls share the flow process's GIL).

    Raises:
        BaselineProtocolError: an answer is not the expected JSON.
        PlanError: a call does not parse or check against the toolbox.
        Exception: a call's own exception.
    """
    tb = resolve_toolbox(toolbox)
    return _stepwise(
        "parallel-fc", query, toolbox, client, _fc_next, parallel_fc_system_prompt(tb),
        lambda observed: "Results:\n" + "\n".join(f"{cid}: {value}" for cid, value in observed), max_steps,
    )


def _from_report(system: str, processors: int, report: RunReport, started: float) -> SystemRun:
    tokens = report.extra.get("tokens", {})
    calls = [
        {
            "id": c["id"], "function": c["function"], "kind": c["kind"], "state": c["state"],
            "start": None if c["start"] is None else report.t0 + c["start"],
            "end": None if c["end"] is None else report.t0 + c["end"], "pid": c["pid"],
        }
        for c in report.calls
    ]
    return SystemRun(
        system=system, processors=processors, calls=calls, llm=[],
        prompt_tokens=tokens.get("prompt", 0), completion_tokens=tokens.get("completion", 0),
        round_trips=report.extra.get("attempts", 0), result=report.result, started=started,
        wall=time.time() - started, report=report,
    )


def run_llmcompiler(query: str, toolbox: Toolbox | str, client: LLMClient) -> SystemRun:
    """LLMCompiler-style: one streamed plan (our planner's prompt, one answer, no repair);
    every call starts as soon as its line has streamed and its inputs exist, unbounded, on
    `ThreadPoolTaskRunner`; compute calls run in threads (one core under the GIL).

    Raises:
        PlanningFailed: the plan does not parse or check.
        Exception: a call's own exception.
    """
    from prefect_llmorch.flows.planner import plan_query

    tb = resolve_toolbox(toolbox)
    started = time.time()
    recorder = Recorder()
    futures: dict[str, PrefectFuture[Any]] = {}
    llm: list[tuple[float, float]] = []
    used: dict[str, int] = {}

    @flow(name="baseline-llmcompiler", task_runner=ThreadPoolTaskRunner(max_workers=_UNBOUNDED), validate_parameters=False)
    def _run() -> Any:
        compiler = _PlainCompiler(frg=FRG.build(Plan(()), tb), toolbox=tb, recorder=recorder)
        calls: list[Call] = []

        def dispatch(call: Call) -> None:  # the task fetching unit: start it now
            calls.append(call)
            compiler.frg = FRG.build(Plan(tuple(calls)), tb)
            compiler.submit([call], futures)

        t = time.time()
        result = plan_query(query, tb, client, attempts=1, replans=0, on_call=dispatch)
        llm.append((t, time.time()))
        used.update(prompt=result.prompt_tokens, completion=result.completion_tokens)
        compiler.frg = FRG.build(result.plan, tb)
        compiler.submit([c for c in result.plan.calls if c.id not in futures], futures)
        wait(list(futures.values()))
        _failed("llmcompiler", futures)
        return futures[result.plan.calls[-1].id].result()

    value = _run(return_state=True).result(raise_on_failure=True)
    return SystemRun(
        system="llmcompiler", processors=0, calls=_calls_of(recorder), llm=llm,
        prompt_tokens=used.get("prompt", 0), completion_tokens=used.get("completion", 0),
        round_trips=len(llm), result=value, started=started, wall=time.time() - started,
    )


def run_llmorch(
    query: str, toolbox: Toolbox | str, client: LLMClient, *, processors: int, policy: str = "critical-path",
    concurrency_limit: str | None = "llmorch-processors",
) -> SystemRun:
    """Ours: `ask_query` on `processors` processors with `policy` (as `llmorch ask` runs it).

    Pass the toolbox as `module:attr` so the worker processes import it while the LLM plans.
    """
    from prefect_llmorch.flows.ask import ask_query

    started = time.time()
    report = ask_query(query, toolbox, processors=processors, policy=policy, endpoint=client, concurrency_limit=concurrency_limit)
    return _from_report(f"llmorch-{policy}", processors, report, started)


def run_system(system: str, query: str, toolbox: Toolbox | str, client: LLMClient, *, processors: int = 2) -> SystemRun:
    """Run `system` (one of `SYSTEMS`); `processors` is used by ours only."""
    if system == "react":
        run = run_react(query, toolbox, client)
    elif system == "parallel-fc":
        run = run_parallel_fc(query, toolbox, client)
    elif system == "llmcompiler":
        run = run_llmcompiler(query, toolbox, client)
    elif system in ("llmorch-paper", "llmorch-critical-path"):
        run = run_llmorch(query, toolbox, client, processors=processors, policy=system.removeprefix("llmorch-"))
    else:
        raise ValueError(f"unknown system {system!r}; valid: {', '.join(SYSTEMS)}")
    run.processors = processors
    return run
