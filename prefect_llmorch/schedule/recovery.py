"""The pure part of trace-back recovery: where to trace back to, and what must run again.

When calls of a running plan have finally failed, LLMOrch repairs the failed calls'
*recovery points* (their closest ancestors of the smallest rank) and re-runs those and
everything that descends from them; every other result is kept. These two functions say
which calls those are. Values in, values out: the Prefect side is
`prefect_llmorch.flows.recovery`, the LLM side `prefect_llmorch.llm.repair`.

    >>> deps = {"s1": [], "s2": ["s1"], "s3": []}
    >>> points = recovery_points(deps, {"s1": 1, "s2": 2, "s3": 1}, ["s2"])
    >>> points, sorted(rerun_set({"s1": ["s2"], "s2": [], "s3": []}, points))
    (['s1'], ['s1', 's2'])
"""

from __future__ import annotations

from typing import Iterable, Mapping

__all__ = ["recovery_points", "rerun_set"]


def recovery_points(
    deps: Mapping[str, Iterable[str]], rank: Mapping[str, int], failed: Iterable[str],
    own: Iterable[str] = (),
) -> list[str]:
    """The calls to repair and re-run from, in plan order (the order of `deps`' keys).

    For each failed call: its closest ancestors (the calls it uses directly) that share
    the smallest rank among them; a failed call with no ancestors is its own recovery
    point, and so is one in `own`: it failed on its own arguments (it selected a field or
    index its input does not have), which only a repair of the call itself can fix. The
    result is the union over the failed calls.

    Args:
        deps: each call's direct inputs, in plan order (`FRG.deps`).
        rank: each call's rank (`FRG.rank`).
        failed: the ids of the calls that finally failed.
        own: the failed calls that are their own recovery point.

    Raises:
        KeyError: a failed id (or one of its inputs) is not in `deps` / `rank`.

    >>> deps = {"s1": [], "s2": [], "s3": ["s1"], "s4": ["s2", "s3"], "s5": ["s4"]}
    >>> rank = {"s1": 1, "s2": 1, "s3": 2, "s4": 3, "s5": 4}
    >>> recovery_points(deps, rank, ["s3"])          # a bad argument produced by s1
    ['s1']
    >>> recovery_points(deps, rank, ["s1"])          # no ancestors: its own recovery point
    ['s1']
    >>> recovery_points(deps, rank, ["s4"])          # parents s2 (rank 1), s3 (rank 2)
    ['s2']
    >>> recovery_points(deps, rank, ["s5", "s3"])    # two failures, in plan order
    ['s1', 's4']
    >>> recovery_points(deps, rank, [])
    []
    >>> recovery_points(deps, rank, ["s3"], own=["s3"])  # s3 asked s1 for a field it lacks
    ['s3']
    """
    order = {cid: i for i, cid in enumerate(deps)}
    own = set(own)
    points: set[str] = set()
    for f in failed:
        parents = list(deps[f])
        if not parents or f in own:
            points.add(f)
            continue
        low = min(rank[p] for p in parents)
        points.update(p for p in parents if rank[p] == low)
    return sorted(points, key=order.__getitem__)


def rerun_set(succs: Mapping[str, Iterable[str]], points: Iterable[str]) -> set[str]:
    """The recovery points and all their descendants: what leaves the done set.

    >>> succs = {"s1": ["s3"], "s2": ["s4"], "s3": ["s4"], "s4": []}
    >>> sorted(rerun_set(succs, ["s1"]))
    ['s1', 's3', 's4']
    >>> sorted(rerun_set(succs, ["s4"]))
    ['s4']
    """
    seen: set[str] = set()
    todo = list(points)
    while todo:
        cid = todo.pop()
        if cid not in seen:
            seen.add(cid)
            todo.extend(succs[cid])
    return seen
