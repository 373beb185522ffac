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

from prefect_llmorch.plan.model import Plan

__all__ = ["COST_SOURCES", "call_costs", "function_costs", "history_file", "local_costs", "remember"]

logger = logging.getLogger("prefect_llmorch.history")

#: `costs=` of run_plan/ask_query and `--costs` of the CLI.
COST_SOURCES = ("declared", "history")

#: How many recent runs of a function its learned cost is the median of.
RECENT = 20

_lock = threading.Lock()


def _name_pattern(function: str) -> re.Pattern[str]:
    return re.compile(rf"^\S+ · {re.escape(function)}( \(repair \d+\))?$")


def _api_durations(functions: Iterable[str], limit: int) -> dict[str, list[float]]:
    """Running time of the most recent Completed (not Cached) task runs of each function."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateName,
    )
    from prefect.client.schemas.sorting import TaskRunSort

    found: dict[str, list[float]] = {}
    with get_client(sync_client=True) as client:
        for fn in sorted(set(functions)):
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    name=TaskRunFilterName(like_=f" · {fn}"),
                    state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["Completed"])),
                ),
                sort=TaskRunSort.END_TIME_DESC,
                limit=limit * 3,  # `like_` also matches longer names; the pattern keeps ours
            )
            pattern = _name_pattern(fn)
            durations = [r.total_run_time.total_seconds() for r in runs if pattern.match(r.name) and r.total_run_time]
            if durations:
                found[fn] = durations[:limit]
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


def function_costs(functions: Iterable[str], *, limit: int = RECENT) -> dict[str, float]:
    """Learned cost (seconds) per function: the median of its recent Completed task runs.

    Reads Prefect's task-run history through the client (the current PREFECT_API_URL, or
    the ephemeral server); a function the API has no runs of, or every function when the
    API cannot be read, falls back to the local history file. Functions with no history at
    all are left out (the caller keeps their declared cost).
    """
    wanted = set(functions)
    learned: dict[str, float] = {}
    try:
        for fn, durations in _api_durations(wanted, limit).items():
            learned[fn] = statistics.median(durations)
    except Exception as exc:  # an unreachable or failing API must not fail the run
        logger.warning("task-run history unavailable (%s: %s); using the local cost history", type(exc).__name__, exc)
    missing = wanted - set(learned)
    if missing:
        learned.update(local_costs(missing))
    return learned


def call_costs(plan: Plan, per_function: Mapping[str, float]) -> dict[str, float]:
    """Per call id, the cost of its function (for `FRG.build(..., costs=...)`)."""
    return {call.id: float(per_function[call.function]) for call in plan.calls if call.function in per_function}


def durations_by_function(records: Iterable[Any]) -> dict[str, list[float]]:
    """Completed calls' measured durations by function, from the recorder's `CallRecord`s."""
    out: dict[str, list[float]] = {}
    for rec in records:
        if getattr(rec, "state", None) == "Completed" and rec.start is not None and rec.end is not None:
            out.setdefault(rec.function, []).append(max(0.0, rec.end - rec.start))
    return out
