"""The join step of `llmorch-ask` as Prefect task runs: answer from the results, or plan again.

After the planner's plan has run, `join_rounds` asks the joiner (`prefect_llmorch.llm.joining`)
in a task run of its own, `joiner · round N`; a continuation's calls stream into the same
`Execution` (the FRG grows). When the step runs, what it costs, its bounds and its failures:
docs/joiner.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from prefect import Task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy

from prefect_llmorch.functions import Toolbox
from prefect_llmorch.llm.client import LLMClient, LLMError
from prefect_llmorch.llm.joining import (
    JOINER_MODES,
    JoinFailed,
    JoinResult,
    estimate_tokens,
    has_join_marker,
    join_messages,
    join_query,
)
from prefect_llmorch.flows.planner import Inbox, run_logger
from prefect_llmorch.llm.selfcall import TokenCounter
from prefect_llmorch.plan.model import Call, Plan

if TYPE_CHECKING:
    from prefect_llmorch.flows.execute import Execution

__all__ = ["JoinSettings", "Rounds", "check_joiner", "join_rounds", "joiner_task", "replay_key"]

#: Where the join step logs outside a flow or task run.
_LOG = "prefect_llmorch.llm.joining"


def check_joiner(joiner: str, max_rounds: int, max_tokens: int | None) -> None:
    """Refuse bad settings before anything runs."""
    if joiner not in JOINER_MODES:
        raise ValueError(f"joiner must be one of {', '.join(JOINER_MODES)}, got {joiner!r}")
    if max_rounds < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0 (or None: no budget), got {max_tokens}")


@dataclass(frozen=True)
class JoinSettings:
    """How an ask joins: `joiner` (off, auto, always), `max_rounds` continuations, the
    ask's `max_tokens` budget (None: none), `attempts` replies per join, `value_chars`
    (longest result text shown)."""

    joiner: str = "auto"
    max_rounds: int = 2
    max_tokens: int | None = None
    attempts: int = 2
    value_chars: int = 1500

    def __post_init__(self) -> None:
        check_joiner(self.joiner, self.max_rounds, self.max_tokens)

    @classmethod
    def resolve(cls, endpoint: Any, joiner: str | None, max_rounds: int | None, max_tokens: int | None) -> "JoinSettings":
        """The run's settings over the `LLMEndpoint` block's (`joiner`, `joiner_rounds`,
        `ask_max_tokens`), over the defaults."""
        def pick(value: Any, attr: str, default: Any) -> Any:
            return value if value is not None else getattr(endpoint, attr, default)

        return cls(
            joiner=pick(joiner, "joiner", "auto"),
            max_rounds=pick(max_rounds, "joiner_rounds", 2),
            max_tokens=pick(max_tokens, "ask_max_tokens", None),
        )


@dataclass
class Rounds:
    """What the join step did over an ask, for the report and the artifact."""

    settings: JoinSettings
    plans: list[str] = field(default_factory=list)  # each round's calls, as text
    joins: list[JoinResult] = field(default_factory=list)
    answered: JoinResult | None = None
    stopped: str | None = None  # why the rounds ended without the joiner's answer
    #: why the join step failed (no usable reply, or the endpoint failed); the ask then
    #: answers with the last result it has (`answered.answer_ref`). None: it did not fail.
    failed: str | None = None

    @property
    def continued(self) -> bool:
        return len(self.plans) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.settings.joiner, "max_rounds": self.settings.max_rounds,
            "max_tokens": self.settings.max_tokens, "plans": list(self.plans),
            "joins": [j.to_dict() for j in self.joins], "stopped": self.stopped, "failed": self.failed,
        }

    def to_markdown(self, tokens: TokenCounter) -> str:
        out = ["", "## Rounds", ""]
        for i, text in enumerate(self.plans, 1):
            who = "planner" if i == 1 else f"joiner · round {i - 1}"
            out += [f"### Round {i} (written by {who})", "", "```text", text.strip(), "```", ""]
            if i <= len(self.joins):
                j = self.joins[i - 1]
                what = "failed: no usable reply" if j.failed else "skipped (token budget spent)" if j.skipped else (
                    f"answered{' with ' + j.answer_ref if j.answer_ref else ''}" if j.answered else "continued")
                forced = f", could only answer ({j.forced})" if j.forced else ""
                out += [f"**joiner · round {i}:** {what}{forced}; tokens {j.prompt_tokens} prompt + "
                        f"{j.completion_tokens} completion", ""]
        if self.stopped:
            out += [f"Stopped: {self.stopped}", ""]
        out.append(f"Tokens of the whole ask: {tokens.prompt} prompt + {tokens.completion} completion")
        return "\n".join(out) + "\n"


def _joiner(
    query: str,
    toolbox: Toolbox,
    llm: LLMClient,
    plan: Plan,
    results: dict[str, Any],
    *,
    round: int = 1,
    failed: dict[str, str] | None = None,
    must_answer: bool = False,
    forced: str | None = None,
    attempts: int = 2,
    value_chars: int = 1500,
    on_call: Callable[[Call], Any] | None = None,
    mode: str = "text",
) -> JoinResult:
    """Prefect task (`joiner`, run as `joiner · round N`; untagged) around `join_query`."""
    return join_query(
        query, toolbox, llm, plan, results, round=round, failed=failed, must_answer=must_answer,
        forced=forced, attempts=attempts, value_chars=value_chars, on_call=on_call, log=run_logger(_LOG), mode=mode,
    )


def replay_key(kind: str, *names: str) -> Callable[[Any, dict[str, Any]], str | None]:
    """A Prefect `cache_key_fn` for an LLM decision (`planner`, `joiner`) that holds within
    one flow run: its key is the flow run's id and a digest of the named parameters (objects
    by their text: a `Plan` by its plan text, a `Toolbox` by its description, a client by its
    endpoint and model). A retried flow run (the UI's Retry, a flow's `retries=`) keeps its
    id, so it replays each round's plan and join decision instead of asking the LLM again,
    and its calls get the same arguments (so `cache=True` calls are answered from the
    cache); a new run of the same question asks again."""

    def text(value: Any) -> str:
        if isinstance(value, Plan):
            return value.to_text("paper")
        if isinstance(value, Toolbox):
            return value.describe()
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k!r}: {text(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "}"
        return repr(value)

    def key(context: Any, parameters: dict[str, Any]) -> str | None:
        run = getattr(getattr(context, "task_run", None), "flow_run_id", None)
        if run is None:
            return None  # outside a flow run: nothing to replay
        digest = hashlib.sha256("\x00".join(text(parameters.get(n)) for n in names).encode()).hexdigest()[:32]
        return f"llmorch-{kind}-{run}-{digest}"

    return key


joiner_task = Task(fn=_joiner, name="joiner", task_run_name="joiner", cache_policy=NO_CACHE, persist_result=False)
#: The joiner as `join_rounds` runs it: its decision replayed by a retry of the same flow run.
replayed_joiner = joiner_task.with_options(
    cache_policy=CacheKeyFnPolicy(cache_key_fn=replay_key(
        "joiner", "query", "toolbox", "llm", "plan", "results", "round", "failed", "must_answer", "mode")),
    persist_result=True,
)


def _failed(ex: "Execution", plan: Plan) -> dict[str, str]:
    out = {}
    for cid in plan.ids:
        rec = ex.recorder.records.get(cid)
        if rec is not None and cid not in ex.recorder.results and rec.state not in (None, "Completed"):
            out[cid] = rec.error or str(rec.state)
    return out


def _last_result(plan: Plan, results: dict[str, Any]) -> str | None:
    """The last call of `plan` that has a result: "what it has"."""
    return next((c.id for c in reversed(plan.calls) if c.id in results), None)


def join_rounds(
    ex: "Execution", query: str, toolbox: Toolbox, client: LLMClient, first_text: str,
    settings: JoinSettings, tokens: TokenCounter, mode: str = "text",
) -> Rounds:
    """Join after the plan `ex` has started (`first_text` is its text), continue while the
    joiner continues, and return the rounds; `ex` is settled, ready to `finish`.

    A join that fails (`JoinFailed`: no usable reply; `LLMError`: the endpoint failed) ends
    the rounds without losing anything: `Rounds.failed` says why, and the answer is the
    result of the last call that completed (`Rounds.answered.answer_ref`); calls a broken
    reply streamed are stale (their results ignored)."""
    rounds = Rounds(settings, plans=[first_text])
    needs = settings.joiner == "always" or (settings.joiner == "auto" and has_join_marker(first_text))
    log = run_logger(_LOG)
    while needs:
        ex.settle()
        plan = ex.plan
        assert plan is not None
        number = len(rounds.plans)
        results = {cid: ex.recorder.results[cid] for cid in plan.ids if cid in ex.recorder.results}
        failed = _failed(ex, plan)
        forced = "rounds" if number > settings.max_rounds else None
        if settings.max_tokens is not None:
            used = tokens.prompt + tokens.completion
            need = sum(estimate_tokens(m["content"]) for m in join_messages(
                query, toolbox, plan, results, failed=failed, must_answer=forced is not None,
                value_chars=settings.value_chars, mode=mode))
            if used + need > settings.max_tokens:
                ref = _last_result(plan, results)
                rounds.joins.append(JoinResult(number, True, None, answer_ref=ref, forced="tokens", skipped=True))
                rounds.answered = rounds.joins[-1]
                rounds.stopped = (f"token budget: {used} of {settings.max_tokens} tokens used, a join needs about "
                                  f"{need}: answered with the result of {ref}")
                log.warning("joiner · round %d: %s", number, rounds.stopped)
                break
            if forced is None and used + 2 * need > settings.max_tokens:
                forced = "tokens"  # no budget for a continuation and its join: answer now
        try:
            jr = _one_join(ex, query, toolbox, client, plan, results, failed, number, forced, settings, mode)
        except (JoinFailed, LLMError) as exc:
            # what the plan computed is kept: the ask answers with its last result and says why
            attempts = exc.attempts if isinstance(exc, JoinFailed) else ()
            ref = _last_result(plan, results)
            jr = JoinResult(number, True, None, answer_ref=ref, attempts=attempts, forced=forced, failed=True)
            rounds.joins.append(jr)
            tokens.add(jr.prompt_tokens, jr.completion_tokens)
            rounds.answered = jr
            rounds.failed = str(exc)
            rounds.stopped = (f"the join step failed: {exc}\nThe answer is the result of {ref}, "
                              "the last call that completed." if ref else
                              f"the join step failed: {exc}\nNo call completed: there is no answer.")
            log.error("joiner · round %d: %s", number, rounds.stopped)
            break
        rounds.joins.append(jr)
        tokens.add(jr.prompt_tokens, jr.completion_tokens)
        if jr.answered:
            rounds.answered = jr
            if forced:
                rounds.stopped = f"{'max_rounds' if forced == 'rounds' else 'token budget'} reached: the joiner answered"
            break
        assert jr.plan is not None
        rounds.plans.append(jr.text.strip())
        needs = settings.joiner == "always" or has_join_marker(jr.text)
    ex.settle()
    return rounds


def _one_join(
    ex: "Execution", query: str, toolbox: Toolbox, client: LLMClient, plan: Plan, results: dict[str, Any],
    failed: dict[str, str], number: int, forced: str | None, settings: JoinSettings, mode: str = "text",
) -> JoinResult:
    """One join task run; continuation calls are adopted as they stream, then started."""
    inbox = Inbox()
    future = replayed_joiner.with_options(task_run_name=f"joiner · round {number}").submit(
        query, toolbox, client, plan, results, round=number, failed=failed,
        must_answer=forced is not None, forced=forced, attempts=settings.attempts,
        value_chars=settings.value_chars, on_call=inbox.put, mode=mode,
    )
    continuing = False
    for call, at in inbox.until(future):
        if not continuing:
            ex.continue_plan()
            continuing = True
        ex.adopt(call, at=at)  # streaming dispatch of the continuation
    future.wait()
    if not future.state.is_completed():
        if continuing:
            ex.start(plan)  # the plan that ran stays the plan; streamed calls are stale
        future.result()  # raises JoinFailed or LLMError, with its message
    jr: JoinResult = future.result()
    if jr.answered:
        if continuing:  # a repair turned the streamed continuation into an answer
            ex.start(plan)
        return jr
    if not continuing:
        ex.continue_plan()
    assert jr.plan is not None
    ex.start(jr.plan, kept=jr.dispatched, planned_at=inbox.done_at)
    return jr
