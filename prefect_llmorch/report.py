"""What a run did: `RunReport` (the `llmorch run --json` object) and its rows, `CallRow`.

Pure (no Prefect, no I/O): `flows/report.py` builds a report from a run's records and
futures and sends its artifacts. Every call time is relative to `t0`, the moment the plan is
available; what `latency`, `time_to_first_call`, `best`, `overhead` and `makespan` measure:
CONTRIBUTING.md, "report.py".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from prefect_llmorch.graph import FRG
from prefect_llmorch.schedule.policy import POLICIES
from prefect_llmorch.schedule.simulator import simulate

__all__ = [
    "CALL_KEYS", "CallRow", "Planning", "PlanRunFailed", "RunReport",
    "best_schedule", "costs_used", "estimate", "failure_message", "jsonable", "measured_lower_bound",
]

#: Keys of one call in `--json` (in this order); `reason` only when it did not complete.
CALL_KEYS = ("id", "function", "kind", "rank", "state", "start", "end", "pid")


@dataclass
class CallRow:
    """One call of the report: what happened to it.

    Attributes:
        id, function, kind, rank: the call.
        state: `Completed`, `Failed`, `Cancelled`, `NotReady` (never ran: an input did not
            complete), `Crashed`, or `Pending`/`Running` when the run ended without it.
        start, end: seconds from the report's `t0` around the function body (None: it
            never ran, or died before its times were taken).
        pid, processor: the process that ran it; the worker index of a compute call.
        error: the exception, as `Type: message`, when it failed or was cancelled.
        attempt: 0, or the recovery round it was re-run in.
        reason: what happened, when it did not complete (None when it did).
        released: seconds from `t0` at which the call became known (0 for a whole plan;
            `llmorch-ask`: when the planner streamed its line, or the final plan came).
        cached: Completed from Prefect's cache (a `cache=True` function): it did not run.
    """

    id: str
    function: str
    kind: str
    rank: int
    state: str
    start: float | None = None
    end: float | None = None
    pid: int | None = None
    processor: int | None = None
    error: str | None = None
    attempt: int = 0
    reason: str | None = None
    released: float = 0.0
    cached: bool = False

    @property
    def duration(self) -> float:
        """Measured seconds (0 when it did not run)."""
        return max(self.end - self.start, 0.0) if self.start is not None and self.end is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in CALL_KEYS}
        if self.state != "Completed":
            out["reason"] = self.reason
        if self.cached:
            out["cached"] = True
        return out

    def __getitem__(self, key: str) -> Any:
        """`row["start"]`: for callers written against the dict rows; use attributes."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class Planning:
    """How `llmorch-ask` got its plan: the plan text, the LLM answers, the tokens."""

    plan: str
    attempts: int
    tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class RunReport:
    """What a run did: the `llmorch run --json` object (`to_json`).

    Times are seconds relative to `t0` (epoch seconds); the figures are defined in
    CONTRIBUTING.md, "report.py".
    """

    state: str
    processors: int
    calls: list[CallRow]
    result: Any
    results: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0
    latency: float = 0.0
    time_to_first_call: float | None = None
    best: float = 0.0
    makespan: float = 0.0
    lower_bound: float = 0.0  # max(critical path, compute work / P), measured durations
    sequential: float = 0.0  # sum of the call times
    failed: list[str] = field(default_factory=list)
    message: str = ""
    planning: Planning | None = None
    recovery: dict[str, Any] | None = None  # `RecoveryController.to_dict()`
    #: the plan simulated with the costs the policy used (`schedule.predict.predict`): `latency`,
    #: `critical_path`, `calls` (start, end), `costs` (`declared` or `history`: `history` only
    #: when learned costs were used; then `declared` lists functions that had none); None: not made
    predicted: dict[str, Any] | None = None
    #: the join step's rounds (ask: `flows.joiner.Rounds.to_dict`); None: no join happened
    joiner: dict[str, Any] | None = None

    @property
    def overhead(self) -> float:
        """`latency - best`: what our side added to the best schedule."""
        return round(self.latency - self.best, 6)

    @property
    def speedup(self) -> float:
        """Sum of the call times over the latency."""
        return self.sequential / self.latency if self.latency > 0 else 0.0

    @property
    def extra(self) -> dict[str, Any]:
        """The optional `--json` keys: `plan`, `attempts`, `tokens` (ask), `recovery`."""
        out: dict[str, Any] = {}
        if self.planning is not None:
            out.update(plan=self.planning.plan, attempts=self.planning.attempts, tokens=dict(self.planning.tokens))
        if self.recovery is not None:
            out["recovery"] = self.recovery
        if self.joiner is not None:
            out["joiner"] = self.joiner
        return out

    def row(self, call_id: str) -> CallRow:
        """The row of one call."""
        for c in self.calls:
            if c.id == call_id:
                return c
        raise KeyError(f"no call {call_id!r} in the report; calls: {', '.join(c.id for c in self.calls)}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "t0": self.t0,
            "latency": self.latency,
            "time_to_first_call": self.time_to_first_call,
            "best": self.best,
            "overhead": self.overhead,
            "makespan": self.makespan,
            "lower_bound": self.lower_bound,
            "processors": self.processors,
            "calls": [c.to_json() for c in self.calls],
            "result": jsonable(self.result),
        }
        if self.message:
            out["message"] = self.message
        if self.predicted is not None:
            out["predicted"] = self.predicted
        out.update(self.extra)
        return out

    def summary(self) -> str:
        """One line for people: latency and where it went."""
        first = "-" if self.time_to_first_call is None else f"{self.time_to_first_call:.3f} s"
        line = (
            f"latency {self.latency:.3f} s (first call after {first}; best schedule {self.best:.3f} s, "
            f"overhead {self.overhead:.3f} s) | makespan {self.makespan:.3f} s | P = {self.processors}"
        )
        if self.predicted is not None:  # an estimate, from costs (not the measured times)
            line += f" | predicted {estimate(self.predicted['latency'])} ({costs_used(self.predicted)})"
        return line

    def measured_line(self) -> str:
        """The second line for people: what the measured call times allow (the lower bound is
        from measured times, the prediction from costs: each says which it uses)."""
        return (
            f"lower bound {self.lower_bound:.3f} s (measured call times) | sum of call times {self.sequential:.3f} s | "
            f"speedup {self.speedup:.2f}x (call times / latency)"
        )


def estimate(seconds: float) -> str:
    """An estimate in seconds, 3 significant digits: `4.50 s`, `0.125 s`, `1.30 s`, `123 s`.

    >>> estimate(6.88496), estimate(1.30073), estimate(4.5), estimate(1234.5), estimate(0)
    ('6.88 s', '1.30 s', '4.50 s', '1234 s', '0 s')
    """
    if seconds == 0:
        return "0 s"
    if abs(seconds) >= 100:
        return f"{seconds:.0f} s"
    return f"{seconds:#.3g} s"


def costs_used(predicted: Mapping[str, Any]) -> str:
    """`declared costs`, `history costs`, or `history costs; declared: chatbot`."""
    text = f"{predicted.get('costs', 'declared')} costs"
    if predicted.get("declared"):
        text += f"; declared: {', '.join(predicted['declared'])}"
    return text


class PlanRunFailed(RuntimeError):
    """Some calls of the plan failed; `report` keeps everything that completed."""

    def __init__(self, message: str, report: RunReport) -> None:
        self.report = report
        super().__init__(message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (PlanRunFailed, (str(self), self.report))


def jsonable(value: Any) -> Any:
    """`value` if JSON can hold it, else the same with `repr` of what it cannot."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [jsonable(v) for v in value]
        return repr(value)


def measured_lower_bound(frg: FRG, durations: Mapping[str, float], processors: int) -> float:
    """max(critical path, compute work / P), with each call's *measured* duration."""
    costs = {cid: durations.get(cid, 0.0) for cid in frg.ids}
    return round(FRG.from_edges(frg.ids, frg.deps, frg.kind, costs, functions=frg.function).lower_bound(processors), 6)


def best_schedule(
    frg: FRG, durations: Mapping[str, float], processors: int, release: Mapping[str, float] | None = None
) -> float:
    """The shortest simulated schedule of `frg` with measured `durations` on P processors.

    `release[id]` is when a call became known (streamed in by the planner); it cannot
    start earlier. Modelled as an inout predecessor lasting that long, so the simulator
    (the runner's own Coordinator) needs no new notion.

    >>> frg = FRG.from_edges(["a", "b", "c"], {"c": ["a"]}, costs={})
    >>> best_schedule(frg, {"a": 1.0, "b": 1.0, "c": 1.0}, 2)
    2.0
    >>> best_schedule(frg, {"a": 1.0, "b": 1.0, "c": 1.0}, 2, release={"b": 1.5})
    2.5
    """
    ids: list[str] = []
    deps: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    costs: dict[str, float] = {}
    for cid in frg.ids:
        at = (release or {}).get(cid, 0.0)
        cdeps = list(frg.deps[cid])
        if at > 0:
            gate = f"release:{cid}"
            ids.append(gate)
            kinds[gate], costs[gate] = "inout", at
            cdeps.append(gate)
        ids.append(cid)
        deps[cid], kinds[cid], costs[cid] = cdeps, frg.kind[cid], durations.get(cid, 0.0)
    if not ids:
        return 0.0
    graph = FRG.from_edges(ids, deps, kinds, costs)
    return round(min(simulate(graph, processors, policy).makespan for policy in POLICIES), 6)


def failure_message(report: RunReport) -> str:
    """`2 of 5 calls did not complete (...)` and one line per such call, saying why."""
    lines = []
    for c in report.calls:
        if c.state == "Failed":
            lines.append(f"{c.id} · {c.function} failed: {c.reason}")
        elif c.state != "Completed":
            lines.append(f"{c.id} · {c.function} ended {c.state}: {c.reason}")
    done = sum(1 for c in report.calls if c.state == "Completed")
    return f"{len(report.failed)} of {len(report.calls)} calls did not complete ({done} completed, results kept):\n" + "\n".join(lines)
