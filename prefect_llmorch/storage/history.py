"""Learned costs: how long each function's calls took, read from Prefect's own task-run history.

The critical-path policy orders ready compute calls by their remaining path, and a path's
length is a sum of costs. Declared costs (`@compute(cost=...)`, default 1) are guesses;
Prefect already records how long every task run was Running. `function_costs` reads the
Completed runs of our compiled tasks (task-run name `s3 · detect`, `s3 · detect (repair 1)`)
through the Prefect client and takes, per function, the median of the most recent ones.

When the API has no history for a function (a fresh server, a test harness, the API
unreachable), a small local file is the fallback: `remember(...)` appends a run's measured
durations to `$PREFECT_HOME/llmorch/costs.json` after each run.

    costs = function_costs(["detect", "average"])      # {"detect": 1.02, "average": 0.51}
    frg = FRG.build(plan, toolbox, costs=call_costs(plan, costs))

Which costs a run uses (`choose_costs`): `costs="declared"` or `"history"` when given; when
not (`costs=None`, the default of `run_plan`, `ask_query`, the flows and the CLI), the
environment variable `LLMORCH_COSTS` if set, else `history` once this machine has a history
(the local file exists: one `stat`, no API query) and `declared` before the first run.

`schedule.predict.predict(frg, P)` simulates the plan with those costs (the runner's own Coordinator, through
`schedule.simulator`): the predicted latency and the critical path that `llmorch plan` /
`llmorch graph` print and the report sets beside the measured latency.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from dataclasses import dataclass, field

from prefect_llmorch.host.process import PROCESS
from prefect_llmorch.host.server import server_key
from prefect_llmorch.plan.model import Plan

__all__ = [
    "COSTS_ENV", "COST_SOURCES", "CostChoice", "call_costs", "check_costs", "choose_costs",
    "durations_by_function", "function_costs", "has_history", "history_file", "local_costs", "remember",
    "remember_records",
]

logger = logging.getLogger("prefect_llmorch.history")

#: `costs=` of run_plan/ask_query and `--costs` of the CLI.
COST_SOURCES = ("declared", "history")

#: Environment variable: the cost source when none is given (`declared` or `history`).
COSTS_ENV = "LLMORCH_COSTS"

#: How many recent runs of a function its learned cost is the median of.
RECENT = 20

_lock = threading.Lock()


#: Our task-run names: `s3 · detect`, `s3 · detect (repair 1)`; group 1 is the function.
_TASK_NAME = re.compile(r"^\S+ · (\S+?)(?: \(repair \d+\))?$")

#: At most this many task runs are read in the one history query.
MAX_READ = 400


#: How long this process trusts the task-run history it read (other processes' runs show
#: after this); its own runs are added as they finish (`remember`).
API_TTL_SECONDS = 60.0


@dataclass
class _ApiHistory:
    """The task-run history this process read from each API (held by `PROCESS`, changed
    under `_lock`): a warm process's next run does not wait for the query."""

    #: API server -> function -> (monotonic time of the read, durations, most recent first)
    read: dict[str, dict[str, tuple[float, list[float]]]] = field(default_factory=dict)
    #: servers whose history is being re-read in the background (`_cached_durations`)
    refreshing: set[str] = field(default_factory=set)


def _api_history() -> _ApiHistory:
    return PROCESS.hold(_ApiHistory)


def _cached_durations(functions: Iterable[str], limit: int) -> dict[str, list[float]]:
    """`_api_durations`, read once per `API_TTL_SECONDS` per server: a warm process's next run
    does not wait for the query before its first call (it was most of the time to first call).
    Past the TTL, what this process read (kept current by its own runs) is used at once and
    the query runs again on a thread, for the runs after; only functions never read wait."""
    import time

    wanted, now, server = set(functions), time.monotonic(), server_key()
    history = _api_history()
    with _lock:
        known = history.read.setdefault(server, {})
        have = {fn: known[fn] for fn in wanted if fn in known}
        stale = any(now - at >= API_TTL_SECONDS for at, _ in have.values())
        refresh = stale and len(have) == len(wanted) and server not in history.refreshing
        if refresh:
            history.refreshing.add(server)
    if len(have) == len(wanted):
        if refresh:
            _refresh_later(server, wanted, limit)
        return {fn: ds[:limit] for fn, (_, ds) in have.items() if ds}
    found = _api_durations(wanted, limit)
    with _lock:
        known.update((fn, (now, list(found.get(fn, [])))) for fn in wanted)
    return found


def _refresh_later(server: str, functions: set[str], limit: int) -> None:
    """Re-read the history of `functions` on a thread (in the caller's context: its settings
    and API), off the run's way to its first call."""
    import contextvars
    import time

    history = _api_history()

    def work() -> None:
        try:
            now = time.monotonic()
            found = _api_durations(functions, limit)
            with _lock:
                history.read.setdefault(server, {}).update((fn, (now, list(found.get(fn, [])))) for fn in functions)
        except Exception as exc:  # the old read stays; the next run tries again
            logger.debug("re-reading the task-run history: %s", exc)
        finally:
            with _lock:
                history.refreshing.discard(server)

    ctx = contextvars.copy_context()
    threading.Thread(target=ctx.run, args=(work,), daemon=True, name="llmorch-history").start()


def _api_durations(functions: Iterable[str], limit: int) -> dict[str, list[float]]:
    """Running time of the most recent Completed (not Cached) task runs of each function.

    One query (a query per function cost 15-30 ms each on a quiet server, paid before the
    first call starts): our most recent Completed task runs, `limit` per wanted function,
    grouped by function. A function with no run in that window gets none here (the local
    history has it if this machine ran it)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateName,
    )
    from prefect.client.schemas.sorting import TaskRunSort

    wanted = set(functions)
    found: dict[str, list[float]] = {}
    if not wanted:
        return found
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_=" · "),
                state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["Completed"])),
            ),
            sort=TaskRunSort.END_TIME_DESC,
            limit=min(MAX_READ, limit * len(wanted)),
        )
    for run in runs:
        m = _TASK_NAME.match(run.name or "")
        if m is None or m.group(1) not in wanted or not run.total_run_time:
            continue
        durations = found.setdefault(m.group(1), [])
        if len(durations) < limit:
            durations.append(run.total_run_time.total_seconds())
    return found


def history_file() -> Path:
    """`$PREFECT_HOME/llmorch/costs.json` (PREFECT_HOME defaults to ~/.prefect)."""
    home = os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    return Path(home).expanduser() / "llmorch" / "costs.json"


def _read_local() -> dict[str, list[float]]:
    path = history_file()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring the local cost history %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(fn): [float(d) for d in ds if isinstance(d, (int, float)) and d >= 0]
        for fn, ds in data.items()
        if isinstance(ds, list)
    }


def remember(durations: Mapping[str, Iterable[float]]) -> None:
    """Append measured call durations (seconds, by function) to the local history file."""
    new = {fn: [float(d) for d in ds] for fn, ds in durations.items()}
    new = {fn: ds for fn, ds in new.items() if ds}
    if not new:
        return
    path = history_file()
    with _lock:
        known = _api_history().read.get(server_key(), {})  # what this process read stays current with its own runs
        for fn, ds in new.items():
            if fn in known:
                known[fn] = (known[fn][0], (ds[::-1] + known[fn][1])[:RECENT])
        data = _read_local()
        for fn, ds in new.items():
            data[fn] = (ds[::-1] + data.get(fn, []))[:RECENT]  # most recent first
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".costs-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)


def local_costs(functions: Iterable[str]) -> dict[str, float]:
    """Median of the local history's recent durations, for the functions it has."""
    data = _read_local()
    return {fn: statistics.median(data[fn][:RECENT]) for fn in set(functions) if data.get(fn)}


def function_costs(
    functions: Iterable[str], *, limit: int = RECENT, api: bool = True, sources: dict[str, str] | None = None
) -> dict[str, float]:
    """Learned cost (seconds) per function: the median of its recent Completed task runs.

    Reads Prefect's task-run history through the client (the current PREFECT_API_URL, or
    the ephemeral server); a function the API has no runs of, or every function when the
    API cannot be read (or `api=False`), falls back to the local history file. Functions
    with no history at all are left out (the caller keeps their declared cost). `sources`,
    when given, is filled with where each cost came from (`api` or `local`).
    """
    wanted = set(functions)
    learned: dict[str, float] = {}
    if api and wanted:
        try:
            for fn, durations in _cached_durations(wanted, limit).items():
                learned[fn] = statistics.median(durations)
        except Exception as exc:  # an unreachable or failing API must not fail the run
            logger.warning("task-run history unavailable (%s: %s); using the local cost history", type(exc).__name__, exc)
    if sources is not None:
        sources.update((fn, "api") for fn in learned)
    missing = wanted - set(learned)
    if missing:
        local = local_costs(missing)
        learned.update(local)
        if sources is not None:
            sources.update((fn, "local") for fn in local)
    return learned


def has_history() -> bool:
    """Whether this machine has a cost history: the local file exists (one `stat`; no API
    query, so a first run pays nothing for looking)."""
    try:
        return history_file().stat().st_size > 2
    except OSError:
        return False


def check_costs(costs: str | None) -> None:
    """Raise ValueError unless `costs` is None or one of `COST_SOURCES`."""
    if costs is not None and costs not in COST_SOURCES:
        raise ValueError(f"costs must be one of {', '.join(COST_SOURCES)} (or None: history once there is one), got {costs!r}")


@dataclass
class CostChoice:
    """The costs a run (or a prediction) uses.

    Attributes:
        source: `declared` or `history`.
        costs: learned seconds per function (empty for `declared`; functions with no
            history keep their declared cost).
        origin: where each learned cost came from, by function: `api` or `local`.
        why: how the source was chosen (`given`, `LLMORCH_COSTS`, `history exists`, `no history yet`).
        seconds: how long choosing took (the history lookup), for the log.
    """

    source: str
    costs: dict[str, float] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    why: str = "given"
    seconds: float = 0.0

    def used(self) -> str:
        """The costs the policy really got: `history` when at least one function has a learned
        cost, else `declared` (a history of other functions only changes nothing)."""
        return "history" if self.source == "history" and self.costs else "declared"

    def describe(self, functions: Iterable[str] = ()) -> str:
        """`history costs (detect 1.02 s, average 0.51 s; declared: chatbot)`, or `declared costs (...)`
        (also when the history has none of these functions: then that is what was used)."""
        if self.source == "declared":
            return f"declared costs ({self.why})"
        if not self.costs:
            return "declared costs (no history of these functions yet)"
        learned = ", ".join(f"{fn} {c:.3g} s" for fn, c in sorted(self.costs.items())) or "none of these functions yet"
        rest = sorted(set(functions) - set(self.costs))
        return f"history costs ({learned}" + (f"; declared: {', '.join(rest)}" if rest else "") + ")"


def choose_costs(functions: Iterable[str], costs: str | None = None, *, api: bool = True) -> CostChoice:
    """The costs to use for `functions`: `costs` when given, else `$LLMORCH_COSTS`, else
    `history` once there is a history (`has_history`) and `declared` before."""
    import time

    started = time.perf_counter()
    check_costs(costs)
    why = "given"
    if costs is None:
        env = os.environ.get(COSTS_ENV, "").strip()
        if env:
            check_costs(env)
            costs, why = env, COSTS_ENV
        elif has_history():
            costs, why = "history", "history exists"
        else:
            costs, why = "declared", "no history yet"
    if costs == "declared":
        return CostChoice("declared", why=why, seconds=time.perf_counter() - started)
    origin: dict[str, str] = {}
    learned = function_costs(functions, api=api, sources=origin)
    return CostChoice("history", learned, origin, why, time.perf_counter() - started)


def call_costs(plan: Plan, per_function: Mapping[str, float]) -> dict[str, float]:
    """Per call id, the cost of its function (for `FRG.build(..., costs=...)`)."""
    return {call.id: float(per_function[call.function]) for call in plan.calls if call.function in per_function}


def durations_by_function(records: Iterable[Any]) -> dict[str, list[float]]:
    """Completed calls' measured durations by function, from the recorder's `CallRecord`s
    (or the report's rows); calls answered from the cache did not run and are left out."""
    out: dict[str, list[float]] = {}
    for rec in records:
        if getattr(rec, "cached", False):
            continue
        if getattr(rec, "state", None) == "Completed" and rec.start is not None and rec.end is not None:
            out.setdefault(rec.function, []).append(max(0.0, rec.end - rec.start))
    return out


def remember_records(records: Iterable[Any]) -> None:
    """`remember` a run's measured durations (its report rows or records); never fails the run."""
    try:
        remember(durations_by_function(records))
    except OSError as exc:  # a read-only home must not fail a run that completed
        logger.warning("could not write the local cost history %s: %s", history_file(), exc)
