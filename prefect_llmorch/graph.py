"""The Function-call Relation Graph (FRG) of a plan.

The FRG holds what the coordinator needs to know about a plan and nothing else:

- **data relations (R1)**: def-use edges; `s3` uses the result of `s1` => `s1 -> s3`.
- **rank** (the paper's Algorithm 1): a call with no deps has rank 1, otherwise
  1 + the largest rank of its deps.
- **control relations (R2)**: two calls of the same rank are mutually exclusive when their
  demands together exceed a capacity: two compute calls never share a processor (a processor
  is one unit, capacity 1); with capacities given, two calls whose GPU memory does not fit on
  one device, or whose demands of a class exceed its limit, never run together either.
- **demands**: what each call holds while it runs (`demand[id]`): a compute call
  `{"processors": 1}`, an inout call nothing, plus what its function declares
  (`@compute(resources={"gpu_mem_gb": 30})`), unless the declaration names `processors`.
- **costs** (estimated seconds, default 1) give the work `W`, the critical path `L`, each
  call's bottom level (longest remaining path, used by the critical-path policy) and the
  lower bound `max(L, W_compute / P)` on any makespan with `P` processors.

    >>> from prefect_llmorch.plan.model import Arg, Call, Plan, Ref, Literal
    >>> plan = Plan((
    ...     Call("s1", "search", (Arg(None, Literal("Apple stock")),)),
    ...     Call("s2", "search", (Arg(None, Literal("Microsoft stock")),)),
    ...     Call("s3", "python", (Arg(None, Ref("s1")), Arg(None, Ref("s2")))),
    ...     Call("s4", "chatbot", (Arg(None, Ref("s3")),)),
    ... ))
    >>> frg = FRG.build(plan, kinds={"s3": "compute"})
    >>> [frg.rank[i] for i in frg.ids]
    [1, 1, 2, 3]
    >>> frg.critical_path, frg.lower_bound(2)
    (3.0, 3.0)

No Prefect, no LLM, no I/O here.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

from prefect_llmorch.functions import PROCESSORS, check_resources

if TYPE_CHECKING:  # pragma: no cover
    from prefect_llmorch.functions import Toolbox
    from prefect_llmorch.plan.model import Plan

__all__ = ["FRG", "Conflict", "CycleError", "Kind", "GPU_MEM", "PROCESSORS", "demand_of"]

Kind = Literal["inout", "compute"]
_KINDS = ("inout", "compute")
#: The resource placed per GPU device (a call's memory must fit on one device).
GPU_MEM = "gpu_mem_gb"
# Relative tolerance when comparing summed amounts (floats).
_EPS = 1e-9


def demand_of(kind: str, declared: Mapping[str, float] | None = None) -> dict[str, float]:
    """What one call holds while it runs: the default of its kind plus what is declared.

    A compute call holds one processor unless the declaration names `processors`; an inout
    call holds only what it declares.

    >>> demand_of("compute", {"gpu_mem_gb": 30})
    {'processors': 1.0, 'gpu_mem_gb': 30.0}
    >>> demand_of("compute", {"processors": 2}), demand_of("inout")
    ({'processors': 2.0}, {})
    """
    out: dict[str, float] = {PROCESSORS: 1.0} if kind == "compute" else {}
    out.update({k: float(v) for k, v in (declared or {}).items()})
    return out


@dataclass(frozen=True)
class Conflict:
    """Two calls of the same rank that cannot hold a resource together.

    Attributes:
        a: the first call (plan order).
        b: the second call.
        resource: the resource their demands together exceed.
        demand: the two demands summed.
        capacity: the capacity they exceed: 1 for `processors` (a processor is one unit),
            the largest device's memory for `gpu_mem_gb` with devices, else the resource's capacity.
    """

    a: str
    b: str
    resource: str
    demand: float
    capacity: float


class CycleError(ValueError):
    """The edges given to `FRG.from_edges` form a cycle.

    Attributes:
        nodes: the ids that could not be ordered (every cycle lies among them), in input order.
    """

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        shown = ", ".join(nodes[:10]) + (", ..." if len(nodes) > 10 else "")
        super().__init__(f"calls are in a cycle (among {len(nodes)} calls: {shown})")


@dataclass(frozen=True, eq=False)
class FRG:
    """The Function-call Relation Graph. Build it with `FRG.build` or `FRG.from_edges`.

    All mappings are keyed by call id and must be treated as read-only.

    Attributes:
        ids: call ids in plan order.
        deps: the calls each call uses (its def-use predecessors).
        succs: the calls that use each call.
        kind: `"inout"` (takes no processor) or `"compute"` (holds one processor).
        cost: estimated cost (seconds) of each call.
        demand: what each call holds while it runs, by resource (see `demand_of`).
        function: the function each call calls (for display).
        rank: Algorithm 1 rank (1 for calls without deps).
        bottom_level: longest path from a call to a sink, the call's own cost included.
        work: total cost of all calls.
        compute_work: total cost of the compute calls.
        critical_path: largest summed cost along any path (0 for an empty graph).
    """

    ids: tuple[str, ...]
    deps: Mapping[str, frozenset[str]]
    succs: Mapping[str, frozenset[str]]
    kind: Mapping[str, Kind]
    cost: Mapping[str, float]
    function: Mapping[str, str]
    demand: Mapping[str, Mapping[str, float]]
    rank: Mapping[str, int]
    bottom_level: Mapping[str, float]
    work: float
    compute_work: float
    critical_path: float
    _order: tuple[str, ...] = field(repr=False)
    _index: Mapping[str, int] = field(repr=False)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        plan: "Plan",
        toolbox: "Toolbox | Mapping[str, Any] | None" = None,
        costs: Mapping[str, float] | None = None,
        kinds: Mapping[str, str] | None = None,
        resources: Mapping[str, Mapping[str, float]] | None = None,
    ) -> "FRG":
        """Build the FRG of a parsed plan.

        Args:
            plan: the plan; its references must point to calls of the plan.
            toolbox: gives each call's kind and default cost (`toolbox[call.function]`).
                Without a toolbox every call is `inout` with cost 1, unless `kinds`/`costs` say otherwise.
            costs: cost per call id (overrides the toolbox's declared cost).
            kinds: kind per call id (overrides the toolbox's kind).
            resources: declared resources per call id (replace the function's declaration;
                the kind's default is added as `demand_of` says).

        Raises:
            ValueError: a call names a function the toolbox does not have, a reference or a
                `costs`/`kinds`/`resources` key names no call, a kind is not inout/compute, a
                cost is negative or not finite, or a resource amount is not > 0.

        >>> from prefect_llmorch.plan.model import Arg, Call, Plan, Ref
        >>> p = Plan((Call("s1", "a"), Call("s2", "b", (Arg(None, Ref("s1")),))))
        >>> frg = FRG.build(p, costs={"s1": 2})
        >>> frg.kind["s1"], frg.cost["s1"], frg.cost["s2"], frg.deps["s2"]
        ('inout', 2.0, 1.0, frozenset({'s1'}))
        """
        ids = [c.id for c in plan.calls]
        known = set(ids)
        for name, table in (("costs", costs), ("kinds", kinds), ("resources", resources)):
            extra = sorted(set(table or ()) - known)
            if extra:
                raise ValueError(f"{name} names calls that are not in the plan: {', '.join(extra)}")
        kind: dict[str, str] = {}
        cost: dict[str, float] = {}
        declared: dict[str, Mapping[str, float]] = {}
        for call in plan.calls:
            k, c, r = "inout", 1.0, {}
            if toolbox is not None:
                if call.function not in toolbox:
                    raise ValueError(
                        f"call {call.id} uses unknown function {call.function!r}; "
                        f"known: {', '.join(sorted(toolbox))}"
                    )
                spec = toolbox[call.function]
                k, c, r = spec.kind, spec.cost, getattr(spec, "resources", {})
            if kinds and call.id in kinds:
                k = kinds[call.id]
            if costs and call.id in costs:
                c = costs[call.id]
            if resources and call.id in resources:
                r = resources[call.id]
            kind[call.id] = k  # type: ignore[assignment]
            cost[call.id] = c
            if r:
                declared[call.id] = r
        return cls.from_edges(
            ids,
            {c.id: c.deps for c in plan.calls},
            kind,
            cost,
            functions={c.id: c.function for c in plan.calls},
            resources=declared,
        )

    @classmethod
    def from_edges(
        cls,
        ids: Iterable[str],
        deps: Mapping[str, Iterable[str]],
        kinds: Mapping[str, str] | None = None,
        costs: Mapping[str, float] | None = None,
        functions: Mapping[str, str] | None = None,
        resources: Mapping[str, Mapping[str, float]] | None = None,
    ) -> "FRG":
        """Build an FRG from ids and dependency lists (used for STG task graphs).

        Args:
            ids: call ids; their order is the "plan order" used for display and tie-breaks.
            deps: the deps of each id (missing ids have none).
            kinds: kind per id; default `"compute"` (an abstract task graph holds CPUs).
            costs: cost per id; default 1.
            functions: function name per id, for display; default `"task"`.
            resources: declared resources per id (`{"gpu_mem_gb": 30}`); each call's
                `demand` is `demand_of(kind, declared)`.

        Raises:
            ValueError: duplicate id, unknown dep, bad kind, cost or resource amount.
            CycleError: the edges form a cycle.

        >>> frg = FRG.from_edges(["a", "b", "c"], {"c": ["a", "b"]}, costs={"a": 3})
        >>> frg.rank["c"], frg.bottom_level["a"], frg.critical_path, frg.mutex
        (2, 4.0, 4.0, [('a', 'b')])
        """
        ids_t = tuple(ids)
        index = {cid: i for i, cid in enumerate(ids_t)}
        if len(index) != len(ids_t):
            dup = next(cid for cid, i in index.items() if ids_t[i] != cid or ids_t.index(cid) != i)
            raise ValueError(f"duplicate call id {dup!r}")
        for name, table in (("deps", deps), ("resources", resources or {})):
            extra = sorted(set(table) - index.keys())
            if extra:
                raise ValueError(f"{name} names calls that are not in the graph: {', '.join(extra)}")
        dep_map: dict[str, frozenset[str]] = {}
        succ_sets: dict[str, set[str]] = {cid: set() for cid in ids_t}
        for cid in ids_t:
            ds = frozenset(deps.get(cid, ()))
            for d in ds:
                if d not in index:
                    raise ValueError(f"call {cid} uses {d!r}, which is not a call of the graph")
                if d == cid:
                    raise CycleError([cid])
                succ_sets[d].add(cid)
            dep_map[cid] = ds
        kind: dict[str, Kind] = {}
        cost: dict[str, float] = {}
        for cid in ids_t:
            k = (kinds or {}).get(cid, "compute")
            if k not in _KINDS:
                raise ValueError(f"call {cid}: kind must be 'inout' or 'compute', got {k!r}")
            c = float((costs or {}).get(cid, 1.0))
            if not (c >= 0 and math.isfinite(c)):
                raise ValueError(f"call {cid}: cost must be finite and >= 0, got {c!r}")
            kind[cid] = k  # type: ignore[assignment]
            cost[cid] = c
        demand = {
            cid: demand_of(kind[cid], check_resources((resources or {}).get(cid, {}), f"call {cid}"))
            for cid in ids_t
        }
        order = _topological_order(ids_t, index, dep_map, succ_sets)

        rank: dict[str, int] = {}
        for cid in order:  # Algorithm 1, one pass in topological order
            rank[cid] = 1 + max((rank[d] for d in dep_map[cid]), default=0)
        bottom: dict[str, float] = {}
        for cid in reversed(order):
            bottom[cid] = cost[cid] + max((bottom[s] for s in succ_sets[cid]), default=0.0)
        fn = functions or {}
        return cls(
            ids=ids_t,
            deps=dep_map,
            succs={cid: frozenset(s) for cid, s in succ_sets.items()},
            kind=kind,
            cost=cost,
            function={cid: fn.get(cid, "task") for cid in ids_t},
            demand=demand,
            rank=rank,
            bottom_level=bottom,
            work=float(sum(cost.values())),
            compute_work=float(sum(c for cid, c in cost.items() if kind[cid] == "compute")),
            critical_path=max(bottom.values(), default=0.0),
            _order=order,
            _index=index,
        )

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._index

    def __repr__(self) -> str:
        return (
            f"FRG({len(self.ids)} calls, {self.n_edges} edges, work={self.work:g}, "
            f"critical_path={self.critical_path:g})"
        )

    def index(self, call_id: str) -> int:
        """Position of a call in plan order."""
        return self._index[call_id]

    @cached_property
    def successors_in_order(self) -> Mapping[str, tuple[str, ...]]:
        """`succs` in plan order: iterating a frozenset of strings follows the hash seed,
        which would make whatever depends on the order differ from run to run."""
        return {cid: tuple(self.ordered(s)) for cid, s in self.succs.items()}

    @cached_property
    def n_edges(self) -> int:
        """Number of def-use edges."""
        return sum(len(d) for d in self.deps.values())

    @cached_property
    def sinks(self) -> tuple[str, ...]:
        """Calls nobody uses, in plan order (their results are the plan's results)."""
        return tuple(cid for cid in self.ids if not self.succs[cid])

    @cached_property
    def mutex(self) -> list[tuple[str, str]]:
        """Mutually exclusive pairs (R2) known without capacities: every two calls of equal
        rank that both hold processors (by default: every two compute calls of equal rank).

        Pairs and the list are ordered by plan order (which for ids `s1, s2, ...` written in
        order is the natural order). The list is quadratic in the width of a rank.
        `conflicts(resources, gpus)` adds the pairs that other resources keep apart.
        """
        by_rank: dict[int, list[str]] = {}
        for cid in self.ids:
            if self.demand[cid].get(PROCESSORS, 0) > 0:
                by_rank.setdefault(self.rank[cid], []).append(cid)
        # Walking the calls in plan order gives the pairs already sorted.
        pairs: list[tuple[str, str]] = []
        seen_in_rank: dict[int, int] = {}
        for cid in self.ids:
            if self.demand[cid].get(PROCESSORS, 0) > 0:
                r = self.rank[cid]
                pos = seen_in_rank[r] = seen_in_rank.get(r, 0) + 1
                pairs.extend(zip(itertools.repeat(cid), by_rank[r][pos:]))
        return pairs

    @cached_property
    def resource_names(self) -> tuple[str, ...]:
        """Every resource some call demands, sorted (`processors` among them if any call holds one)."""
        return tuple(sorted({r for d in self.demand.values() for r in d}))

    @cached_property
    def demand_time(self) -> Mapping[str, float]:
        """Per resource, the sum over calls of demand times cost (resource-seconds)."""
        out: dict[str, float] = {}
        for cid in self.ids:
            for r, amount in self.demand[cid].items():
                out[r] = out.get(r, 0.0) + amount * self.cost[cid]
        return out

    def has_default_demands(self) -> bool:
        """True when every call holds just its kind's default (compute: one processor)."""
        return all(self.demand[cid] == demand_of(self.kind[cid]) for cid in self.ids)

    def conflicts(
        self,
        resources: Mapping[str, float] | None = None,
        gpus: Iterable[Any] | None = None,
    ) -> list[Conflict]:
        """Pairs of equal-rank calls whose demands together exceed a capacity, one entry per
        pair and resource, in plan order of the pair, then by resource name.

        Processors are units of capacity 1 (two calls never share a processor), so these
        conflicts need no capacities and are `mutex`. A resource in `resources` conflicts
        when two demands sum past its capacity; `gpu_mem_gb` with `gpus` (mappings or objects
        with `mem_gb`) when they sum past the largest device's memory (they never share a
        device). Resources without a capacity are not checked here (`Coordinator` rejects them).

        >>> frg = FRG.from_edges(["a", "b", "c"], {}, kinds={"c": "inout"},
        ...                      resources={"a": {"gpu_mem_gb": 50}, "c": {"gpu_mem_gb": 40}})
        >>> [(c.a, c.b, c.resource, c.demand, c.capacity) for c in frg.conflicts(gpus=[{"id": 0, "mem_gb": 80}])]
        [('a', 'b', 'processors', 2.0, 1.0), ('a', 'c', 'gpu_mem_gb', 90.0, 80.0)]
        """
        unit = {r: float(c) for r, c in (resources or {}).items() if r != PROCESSORS}
        devices = list(gpus or ())
        if devices:
            unit[GPU_MEM] = max(float(g["mem_gb"] if isinstance(g, Mapping) else g.mem_gb) for g in devices)
        out: list[Conflict] = [Conflict(a, b, PROCESSORS, self.demand[a][PROCESSORS] + self.demand[b][PROCESSORS], 1.0) for a, b in self.mutex]
        by_rank: dict[int, list[str]] = {}
        for cid in self.ids:
            if any(r in unit for r in self.demand[cid]):
                by_rank.setdefault(self.rank[cid], []).append(cid)
        for members in by_rank.values():
            for i, a in enumerate(members):
                for b in members[i + 1:]:
                    for r in sorted(unit.keys() & self.demand[a].keys() & self.demand[b].keys()):
                        total = self.demand[a][r] + self.demand[b][r]
                        if total > unit[r] * (1 + _EPS):
                            out.append(Conflict(a, b, r, total, unit[r]))
        out.sort(key=lambda c: (self._index[c.a], self._index[c.b], c.resource))
        return out

    def _mutex_labels(
        self, resources: Mapping[str, float] | None, gpus: Iterable[Any] | None
    ) -> list[tuple[str, str, str]]:
        """Mutex pairs in plan order with the resources that keep them apart (without
        capacities or declared resources: the paper's pairs, unlabelled)."""
        if resources is None and gpus is None:
            return [(a, b, "") for a, b in self.mutex]
        names: dict[tuple[str, str], list[str]] = {}
        for c in self.conflicts(resources, gpus):
            names.setdefault((c.a, c.b), []).append(c.resource)
        return [(a, b, "" if rs == [PROCESSORS] else ", ".join(rs)) for (a, b), rs in names.items()]

    @cached_property
    def n_descendants(self) -> Mapping[str, int]:
        """Number of calls that (transitively) use each call."""
        bits: dict[str, int] = {}
        for cid in reversed(self._order):
            b = 0
            for s in self.succs[cid]:
                b |= bits[s] | (1 << self._index[s])
            bits[cid] = b
        return {cid: b.bit_count() for cid, b in bits.items()}

    def lower_bound(
        self,
        processors: int,
        resources: Mapping[str, float] | None = None,
        gpus: Iterable[Any] | None = None,
    ) -> float:
        """A lower bound on the makespan of any schedule on `processors` processors.

        `max(L, W_compute / P)`: no schedule beats its critical path, and the compute calls
        need `W_compute` processor-seconds. Inout calls take no processor, so they only count
        through `L`. For an all-compute graph this is the classic `max(L, W / P)`.

        With capacities (`resources`, `gpus`: their memory summed as `gpu_mem_gb`), each
        resource adds its demand-time over its capacity; processors count as each call's
        processors times its cost.

        >>> FRG.from_edges(["a", "b", "c"], {}).lower_bound(2)
        1.5
        >>> FRG.from_edges(["a", "b"], {}, resources={"a": {"api": 1}, "b": {"api": 1}}).lower_bound(2, {"api": 1})
        2.0
        """
        if processors < 1:
            raise ValueError(f"processors must be >= 1, got {processors}")
        if resources is None and gpus is None and self.has_default_demands():
            return max(self.critical_path, self.compute_work / processors)
        caps = {r: float(c) for r, c in (resources or {}).items()}
        caps[PROCESSORS] = float(processors)
        devices = list(gpus or ())
        if devices:
            caps[GPU_MEM] = sum(float(g["mem_gb"] if isinstance(g, Mapping) else g.mem_gb) for g in devices)
        bound = self.critical_path
        for r, total in self.demand_time.items():
            if r in caps:
                bound = max(bound, total / caps[r])
        return bound

    def topological_order(self) -> tuple[str, ...]:
        """Every call after all its deps: plan order when that is one, else the
        topological order that keeps plan order wherever it can."""
        return self._order

    def ancestors(self, call_id: str) -> frozenset[str]:
        """Every call that `call_id` (transitively) uses."""
        return self._reach(call_id, self.deps)

    def descendants(self, call_id: str) -> frozenset[str]:
        """Every call that (transitively) uses `call_id`."""
        return self._reach(call_id, self.succs)

    def _reach(self, call_id: str, edges: Mapping[str, frozenset[str]]) -> frozenset[str]:
        if call_id not in self._index:
            raise KeyError(call_id)
        seen: set[str] = set()
        todo = list(edges[call_id])
        while todo:
            cid = todo.pop()
            if cid not in seen:
                seen.add(cid)
                todo.extend(edges[cid] - seen)
        return frozenset(seen)

    def ordered(self, call_ids: Iterable[str]) -> list[str]:
        """The given ids in plan order."""
        return sorted(call_ids, key=self._index.__getitem__)

    # ------------------------------------------------------------------ rendering

    def to_json(
        self,
        resources: Mapping[str, float] | None = None,
        gpus: Iterable[Any] | None = None,
    ) -> dict[str, Any]:
        """The `llmorch graph --json` object (deps and mutex in plan order).

        When some call declares resources, or capacities are given, each call also has its
        `resources` (its demand) and the object has `conflicts`: one entry per mutex pair and
        resource, `{"calls": [a, b], "resource", "demand", "capacity"}` (see `conflicts`);
        `mutex` then lists every pair kept apart by any resource.

        >>> FRG.from_edges(["a", "b"], {"b": ["a"]}).to_json()["calls"][1]
        {'id': 'b', 'function': 'task', 'kind': 'compute', 'rank': 2, 'deps': ['a']}
        >>> FRG.from_edges(["a"], {}, resources={"a": {"gpu_mem_gb": 30}}).to_json()["calls"][0]["resources"]
        {'processors': 1.0, 'gpu_mem_gb': 30.0}
        """
        detailed = resources is not None or gpus is not None or not self.has_default_demands()
        calls = []
        for cid in self.ids:
            row: dict[str, Any] = {
                "id": cid,
                "function": self.function[cid],
                "kind": self.kind[cid],
                "rank": self.rank[cid],
                "deps": self.ordered(self.deps[cid]),
            }
            if detailed:
                row["resources"] = dict(self.demand[cid])
            calls.append(row)
        out: dict[str, Any] = {
            "calls": calls,
            "mutex": [[a, b] for a, b, _ in self._mutex_labels(resources, gpus)],
            "work": self.work,
            "critical_path": self.critical_path,
        }
        if detailed:
            out["conflicts"] = [
                {"calls": [c.a, c.b], "resource": c.resource, "demand": c.demand, "capacity": c.capacity}
                for c in self.conflicts(resources, gpus)
            ]
        return out

    #: Columns of `rows` / `to_markdown` (and of `llmorch graph`'s table).
    COLUMNS = ("call", "function", "kind", "rank", "deps", "mutex group")

    def rows(self) -> list[dict[str, str]]:
        """One row per call, in plan order, for people: the `COLUMNS`, as text.

        `mutex group` names the calls a call is mutually exclusive with: compute calls of one
        rank (`rank 2`) compete for the processors, so the pairs `mutex` lists are the pairs
        of each group (a table row per call, not a line per pair); "" when it has no partner.

        >>> FRG.from_edges(["a", "b", "c"], {"c": ["a"]}).rows()[0]
        {'call': 'a', 'function': 'task', 'kind': 'compute', 'rank': '1', 'deps': '', 'mutex group': 'rank 1'}
        """
        paired = {cid for pair in self.mutex for cid in pair}
        return [
            {
                "call": cid, "function": self.function[cid], "kind": self.kind[cid], "rank": str(self.rank[cid]),
                "deps": ", ".join(self.ordered(self.deps[cid])),
                "mutex group": f"rank {self.rank[cid]}" if cid in paired else "",
            }
            for cid in self.ids
        ]

    def to_markdown(self) -> str:
        """The calls as a markdown table (`rows`), then one line of totals: what Prefect's UI
        shows for the FRG (it renders markdown, not mermaid: `to_mermaid` is for `llmorch
        graph --mermaid`).

        >>> print(FRG.from_edges(["s1", "s2"], {"s2": ["s1"]}).to_markdown())
        | call | function | kind | rank | deps | mutex group |
        |---|---|---|---|---|---|
        | s1 | task | compute | 1 |  |  |
        | s2 | task | compute | 2 | s1 |  |
        <BLANKLINE>
        2 calls, 1 def-use edge, 0 mutually exclusive pairs.
        """
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(cell(row[c]) for c in self.COLUMNS) + " |" for row in self.rows()]
        edges, pairs = self.n_edges, len(self.mutex)
        lines += ["", f"{len(self)} call{'s' * (len(self) != 1)}, {edges} def-use edge{'s' * (edges != 1)}, "
                      f"{pairs} mutually exclusive pair{'s' * (pairs != 1)}."]
        return "\n".join(lines)

    def _demand_text(self, cid: str) -> str:
        """A call's demand beyond its kind's default, for node labels ("" when default)."""
        d = self.demand[cid]
        if d == demand_of(self.kind[cid]):
            return ""
        return ", ".join(f"{r} {v:g}" for r, v in d.items())

    def to_mermaid(
        self,
        mutex: bool = True,
        resources: Mapping[str, float] | None = None,
        gpus: Iterable[Any] | None = None,
    ) -> str:
        """A mermaid `flowchart TD`: def-use edges `-->`, mutex pairs as dashed `-.-` links.

        A call that declares resources shows its demand under its rank; a pair kept apart
        by a resource other than processors has the resource on its link (`-.-|gpu_mem_gb|`).

        >>> print(FRG.from_edges(["s1", "s2"], {"s2": ["s1"]}).to_mermaid())  # doctest: +ELLIPSIS
        flowchart TD
            s1["s1 · task<br/>rank 1"]:::compute
            s2["s2 · task<br/>rank 2"]:::compute
            s1 --> s2
            classDef inout ...
        """
        key = self._node_keys
        lines = ["flowchart TD"]
        for cid in self.ids:
            label = _mermaid_text(f"{cid} · {self.function[cid]}") + f"<br/>rank {self.rank[cid]}"
            extra = self._demand_text(cid)
            if extra:
                label += "<br/>" + _mermaid_text(extra)
            lines.append(f'    {key[cid]}["{label}"]:::{self.kind[cid]}')
        for cid in self.ids:
            for d in self.ordered(self.deps[cid]):
                lines.append(f"    {key[d]} --> {key[cid]}")
        if mutex:
            for a, b, why in self._mutex_labels(resources, gpus):
                link = f'-.-|"{_mermaid_text(why)}"|' if why else "-.-"
                lines.append(f"    {key[a]} {link} {key[b]}")
        lines.append("    classDef inout fill:#e7f0fd,stroke:#1f6feb,color:#0b1f44")
        lines.append("    classDef compute fill:#fdebd9,stroke:#d9480f,color:#3d1400")
        return "\n".join(lines)

    def to_dot(
        self,
        mutex: bool = True,
        resources: Mapping[str, float] | None = None,
        gpus: Iterable[Any] | None = None,
    ) -> str:
        """Graphviz DOT: inout calls as blue ellipses, compute calls as orange boxes,
        mutex pairs as dashed undirected edges that do not affect the layout (labelled with
        the resource when it is not processors).

        >>> print(FRG.from_edges(["a", "b"], {"b": ["a"]}).to_dot())  # doctest: +ELLIPSIS
        digraph FRG {
        ...
            "a" -> "b";
        }
        """
        lines = [
            "digraph FRG {",
            "    rankdir=TB;",
            '    node [style="filled,rounded", fontname="Helvetica"];',
        ]
        for cid in self.ids:
            shape, color = ("box", "#fdebd9") if self.kind[cid] == "compute" else ("ellipse", "#e7f0fd")
            label = _dot_text(f"{cid} · {self.function[cid]}") + f"\\nrank {self.rank[cid]}"
            extra = self._demand_text(cid)
            if extra:
                label += "\\n" + _dot_text(extra)
            lines.append(f'    "{_dot_text(cid)}" [label="{label}", shape={shape}, fillcolor="{color}"];')
        for cid in self.ids:
            for d in self.ordered(self.deps[cid]):
                lines.append(f'    "{_dot_text(d)}" -> "{_dot_text(cid)}";')
        if mutex:
            for a, b, why in self._mutex_labels(resources, gpus):
                label = f', label="{_dot_text(why)}"' if why else ""
                lines.append(
                    f'    "{_dot_text(a)}" -> "{_dot_text(b)}" '
                    f"[dir=none, style=dashed, color=gray, constraint=false{label}];"
                )
        lines.append("}")
        return "\n".join(lines)

    @cached_property
    def _node_keys(self) -> dict[str, str]:
        # Mermaid node ids must be plain words and not keywords (`end` breaks a flowchart).
        out = {}
        for i, cid in enumerate(self.ids):
            ok = _MERMAID_ID.fullmatch(cid) and cid.lower() not in _MERMAID_RESERVED
            out[cid] = cid if ok else f"n{i}"
        return out


_MERMAID_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*|[0-9]+")
_MERMAID_RESERVED = {"end", "graph", "subgraph", "flowchart", "style", "class", "classdef", "click", "linkstyle", "direction"}


def _mermaid_text(text: str) -> str:
    return text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _topological_order(
    ids: tuple[str, ...],
    index: Mapping[str, int],
    deps: Mapping[str, frozenset[str]],
    succs: Mapping[str, set[str]],
) -> tuple[str, ...]:
    # Plans only reference earlier calls, so plan order is almost always topological already.
    if all(index[d] < i for i, cid in enumerate(ids) for d in deps[cid]):
        return ids
    missing = {cid: len(deps[cid]) for cid in ids}
    heap = [index[cid] for cid in ids if not missing[cid]]
    heapq.heapify(heap)
    out: list[str] = []
    while heap:
        cid = ids[heapq.heappop(heap)]
        out.append(cid)
        for s in succs[cid]:
            missing[s] -= 1
            if not missing[s]:
                heapq.heappush(heap, index[s])
    if len(out) != len(ids):
        raise CycleError([cid for cid in ids if missing[cid]])
    return tuple(out)

