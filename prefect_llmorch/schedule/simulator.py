"""Discrete-event simulation of a plan with given costs on P processors.

`simulate` drives the same `Coordinator` the runner uses: inout calls run for their cost
without a processor, compute calls run one per processor. `simulate_baseline` gives the
schedules we compare against (`sequential`, `eager`, `rank-barrier`, `processors-only`).
`read_stg` loads a Standard Task Graph file as an all-compute FRG.

With resources (`resources=`, `gpus=`), `simulate` admits calls by their whole demand, as
the Coordinator does. The baselines that do not know resources (`eager`, `processors-only`)
start calls as they would without them; a started call then waits, first come first
served, until its other resources are free (as a semaphore or a Prefect concurrency limit
would make it wait), holding its processor meanwhile under `processors-only`.

    >>> from prefect_llmorch.graph import FRG
    >>> frg = FRG.from_edges(["a", "b", "c"], {"c": ["a", "b"]}, costs={"a": 2, "b": 1, "c": 1})
    >>> s = simulate(frg, processors=1)
    >>> [(e.id, e.start, e.end) for e in s.entries]
    [('a', 0.0, 2.0), ('b', 2.0, 3.0), ('c', 3.0, 4.0)]
    >>> s.makespan, simulate(frg, 2).makespan, simulate_baseline(frg, 2, "sequential").makespan
    (4.0, 3.0, 4.0)

Pure: no clock, no randomness; the only I/O is `read_stg(path)`.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Iterable, Mapping

from prefect_llmorch.graph import FRG, GPU_MEM, PROCESSORS, demand_of
from prefect_llmorch.schedule.policy import DEFAULT_POLICY, POLICIES, Coordinator, check_policy
from prefect_llmorch.schedule.resources import Capacities, Device, Ledger, check_demands, place

__all__ = [
    "BASELINES",
    "Entry",
    "Schedule",
    "read_stg",
    "simulate",
    "simulate_baseline",
    "simulate_file",
]

BASELINES: tuple[str, ...] = ("sequential", "eager", "rank-barrier", "processors-only")

# Relative tolerance when comparing simulated times (float sums of costs).
_EPS = 1e-9


@dataclass(frozen=True)
class Entry:
    """One call in a schedule.

    Attributes:
        id: the call.
        start: start time.
        end: end time.
        processor: the processor index (0..P-1) a compute call held (the lowest, if several);
            None for inout calls and for compute calls of the time-sliced `eager` baseline.
        kind: the call's kind.
        device: the GPU device the call's memory was placed on, if any.
        more_processors: the other processor indices held by a call that needs several.
        waited: time between being started by the scheduler and holding its resources
            (baselines that do not know resources; 0 otherwise). `start` is when it holds them.
    """

    id: str
    start: float
    end: float
    processor: int | None
    kind: str = "compute"
    device: int | str | None = None
    more_processors: tuple[int, ...] = ()
    waited: float = 0.0


@dataclass(frozen=True)
class Schedule:
    """A simulated run: entries in start order.

    Attributes:
        entries: one per call, sorted by (start, plan order).
        processors: P.
        name: the policy or baseline that produced it.
        capacities: the resources it was made for (None: processors only).
    """

    entries: tuple[Entry, ...]
    processors: int
    name: str = DEFAULT_POLICY
    capacities: Capacities | None = None

    @property
    def makespan(self) -> float:
        """Time from the first start (0) to the last end."""
        return max((e.end for e in self.entries), default=0.0)

    @cached_property
    def by_id(self) -> dict[str, Entry]:
        """The entries keyed by call id."""
        return {e.id: e for e in self.entries}

    def renamed(self, name: str) -> "Schedule":
        """The same schedule under another name."""
        return replace(self, name=name)

    def __getitem__(self, call_id: str) -> Entry:
        """The entry of one call; KeyError if it is not in the schedule."""
        return self.by_id[call_id]

    def max_concurrent_compute(self) -> int:
        """The largest number of compute calls running at the same instant (a call ending at
        t does not overlap one starting at t; zero-length calls count for nothing).

        >>> Schedule((Entry("a", 0, 2, 0), Entry("b", 1, 3, 1), Entry("c", 2, 4, 0)), 2).max_concurrent_compute()
        2
        """
        events: list[tuple[float, int]] = []
        for e in self.entries:
            if e.kind == "compute" and e.end > e.start:
                events.append((e.start, 1))
                events.append((e.end, -1))
        events.sort()  # at equal times -1 sorts before +1
        best = cur = 0
        for _, step in events:
            cur += step
            best = max(best, cur)
        return best

    def peak(self, frg: FRG, resource: str, device: int | str | None = None) -> float:
        """The most of `resource` held at any instant by the calls of this schedule (their
        `frg.demand`; only those placed on `device` when one is named). A call ending at t
        does not overlap one starting at t; zero-length calls count for nothing.

        >>> frg = FRG.from_edges(["a", "b"], {}, resources={"a": {"api": 1}, "b": {"api": 1}})
        >>> Schedule((Entry("a", 0, 1, 0), Entry("b", 1, 2, 0)), 1).peak(frg, "api")
        1.0
        """
        events: list[tuple[float, float]] = []
        for e in self.entries:
            amount = frg.demand[e.id].get(resource, 0.0)
            if amount and e.end > e.start and (device is None or e.device == device):
                events.append((e.start, amount))
                events.append((e.end, -amount))
        events.sort()  # at equal times releases sort before takes
        best = cur = 0.0
        for _, step in events:
            cur += step
            best = max(best, cur)
        return best

    def problems(self, frg: FRG) -> list[str]:
        """Everything wrong with this schedule for `frg` (empty when it is valid): missing or
        extra calls, a call starting before one of its deps ended, a wrong duration, more than
        P compute calls at once, two calls on one processor at once; with capacities, more of
        a resource held at once than its capacity (processors: the processors the calls
        hold), GPU memory on no device or past a device's memory."""
        out: list[str] = []
        by_id = {e.id: e for e in self.entries}
        if set(by_id) != set(frg.ids) or len(by_id) != len(self.entries):
            out.append("schedule does not have exactly one entry per call")
            return out
        for cid in frg.ids:
            e = by_id[cid]
            tol = _EPS * max(1.0, e.end)
            for d in frg.deps[cid]:
                if e.start < by_id[d].end - tol:
                    out.append(f"{cid} starts at {e.start} before its dep {d} ends at {by_id[d].end}")
            if e.processor is not None and abs((e.end - e.start) - frg.cost[cid]) > tol:
                out.append(f"{cid} runs {e.end - e.start}, its cost is {frg.cost[cid]}")
        if self.name != "eager" and self.max_concurrent_compute() > self.processors:
            out.append(f"{self.max_concurrent_compute()} compute calls at once on {self.processors} processors")
        if self.capacities is not None:
            out.extend(self._capacity_problems(frg, self.capacities))
        per_proc: dict[int, list[Entry]] = {}
        for e in self.entries:
            for p in (e.processor, *e.more_processors) if e.processor is not None else ():
                per_proc.setdefault(p, []).append(e)
        for p, es in per_proc.items():
            es.sort(key=lambda e: (e.start, e.end))
            for a, b in zip(es, es[1:]):
                if b.start < a.end - _EPS * max(1.0, a.end):
                    out.append(f"{a.id} and {b.id} overlap on processor {p}")
        return out

    def _capacity_problems(self, frg: FRG, caps: Capacities) -> list[str]:
        out: list[str] = []
        for r, cap in caps.amounts.items():
            if r == PROCESSORS and self.name == "eager":
                continue  # eager time-slices the processors instead of holding them
            peak = self.peak(frg, r)
            if peak > cap * (1 + _EPS):
                out.append(f"{peak:g} {r} held at once, capacity {cap:g}")
        if caps.devices:
            ids = {d.id for d in caps.devices}
            for e in self.entries:
                if frg.demand[e.id].get(GPU_MEM) and e.device not in ids:
                    out.append(f"{e.id} needs {GPU_MEM} but was placed on device {e.device!r}")
            for d in caps.devices:
                peak = self.peak(frg, GPU_MEM, d.id)
                if peak > d.mem_gb * (1 + _EPS):
                    out.append(f"{peak:g} {GPU_MEM} held at once on device {d.id}, which has {d.mem_gb:g}")
        return out


def _check_processors(processors: int) -> None:
    if not isinstance(processors, int) or processors < 1:
        raise ValueError(f"processors must be an integer >= 1, got {processors!r}")


def _finish(
    frg: FRG, entries: list[Entry], processors: int, name: str, capacities: Capacities | None = None
) -> Schedule:
    entries.sort(key=lambda e: (e.start, frg.index(e.id)))
    return Schedule(tuple(entries), processors, name, capacities)


def _capacities(
    frg: FRG, processors: int, resources: Mapping[str, float] | None, gpus: Iterable[Any] | None
) -> Capacities | None:
    """The checked capacities, or None for processors only (no resources, default demands)."""
    if resources is None and gpus is None and frg.has_default_demands():
        return None
    caps = Capacities.of(processors, resources, gpus)
    check_demands(frg.demand, caps)
    return caps


def simulate(
    frg: FRG,
    processors: int,
    policy: str = DEFAULT_POLICY,
    *,
    resources: Mapping[str, float] | None = None,
    gpus: Iterable[Mapping[str, Any] | Device] | None = None,
) -> Schedule:
    """Simulate the coordinator on `processors` processors with the calls' costs.

    Completions at the same instant are handed to the coordinator together, then it is asked
    what to start. A call holding processors takes the lowest-numbered free ones; one
    holding GPU memory is on the device the coordinator placed it on.

    >>> frg = FRG.from_edges(["a", "b"], {}, resources={"a": {"gpu_mem_gb": 50}, "b": {"gpu_mem_gb": 50}})
    >>> simulate(frg, 2, gpus=[{"id": 0, "mem_gb": 80}]).makespan    # they never share the device
    2.0

    Raises:
        ValueError: bad processors or policy; `ResourceError` for bad capacities or demands.
    """
    _check_processors(processors)
    caps = _capacities(frg, processors, resources, gpus)
    co = Coordinator(frg, processors, policy, resources=resources, gpus=gpus)
    free = list(range(processors))  # heap of free processor indices
    held: dict[str, list[int]] = {}
    device: dict[str, int | str | None] = {}
    starts: dict[str, float] = {}
    events: list[tuple[float, int, str]] = []
    entries: list[Entry] = []
    t, seq = 0.0, 0
    while True:
        for cid in co.get_ready(now=t):  # with the simulated time: rates apply
            starts[cid] = t
            n = int(frg.demand[cid].get(PROCESSORS, 0))
            if n:
                held[cid] = [heapq.heappop(free) for _ in range(n)]
            device[cid] = co.device_of(cid)
            heapq.heappush(events, (t + frg.cost[cid], seq, cid))
            seq += 1
        waiting = co.next_admission(t)  # a ready call held back by a rate until then
        if not events and waiting is None:
            break
        if waiting is not None and (not events or waiting < events[0][0]):
            t = waiting
            continue
        t = events[0][0]
        finished = []
        while events and events[0][0] == t:
            finished.append(heapq.heappop(events)[2])
        for cid in finished:
            procs = held.pop(cid, [])
            for p in procs:
                heapq.heappush(free, p)
            first = procs[0] if procs else None
            entries.append(Entry(cid, starts[cid], t, first, frg.kind[cid], device[cid], tuple(procs[1:])))
        co.done(*finished)
    return _finish(frg, entries, processors, policy, caps)


def simulate_baseline(
    frg: FRG,
    processors: int,
    name: str,
    *,
    resources: Mapping[str, float] | None = None,
    gpus: Iterable[Mapping[str, Any] | Device] | None = None,
    policy: str = DEFAULT_POLICY,
) -> Schedule:
    """Simulate a baseline we compare against.

    - `sequential`: one call at a time in plan order (ReAct-style); makespan = total work.
    - `eager`: every call starts as soon as its deps are done, with no bound (LLMCompiler-style).
      Inout calls run for their cost; the n compute calls running at once share the P cores by
      time-slicing, each progressing at rate min(1, P/n) (n counts processors held). Entries
      have processor None.
    - `rank-barrier`: rank k+1 starts when all of rank k is done; within a rank, inout calls
      start at once and compute calls are list-scheduled on P processors in plan order.
    - `processors-only`: the coordinator (`policy`) seeing only processors.

    With resources, a call started by `eager` or `processors-only` waits for its other
    resources first come first served (`Entry.waited`), holding its processors meanwhile
    under `processors-only`. `sequential` needs no waiting; `rank-barrier` does not model
    resources.

    Raises:
        ValueError: bad processors, an unknown baseline name, or `rank-barrier` with
            resources; `ResourceError` for bad capacities or demands.
    """
    _check_processors(processors)
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    caps = _capacities(frg, processors, resources, gpus)
    if name == "sequential":
        return _sequential(frg, processors, caps)
    if name == "rank-barrier":
        if caps is not None:
            raise ValueError("the rank-barrier baseline does not model resources; use eager or processors-only")
        return _rank_barrier(frg, processors)
    if caps is None and name == "processors-only":
        return simulate(frg, processors, policy).renamed(name)
    check_policy(policy)
    return _waiting(frg, processors, caps, name, policy)


def _sequential(frg: FRG, processors: int, caps: Capacities | None = None) -> Schedule:
    t = 0.0
    entries = []
    mems = [d.mem_gb for d in caps.devices] if caps else []
    for cid in frg.topological_order():
        compute = frg.kind[cid] == "compute"
        n = int(frg.demand[cid].get(PROCESSORS, 0))
        gpu = frg.demand[cid].get(GPU_MEM, 0.0)
        index = place(gpu, mems) if gpu and mems else None
        device = caps.devices[index].id if caps and index is not None else None
        entries.append(
            Entry(cid, t, t + frg.cost[cid], 0 if compute or n else None, frg.kind[cid], device, tuple(range(1, n)))
        )
        t += frg.cost[cid]
    return _finish(frg, entries, processors, "sequential", caps)


def _processors_view(frg: FRG) -> FRG:
    """The same graph with each call demanding only its processors (what a scheduler that
    knows no other resource sees)."""
    declared = {}
    for cid in frg.ids:
        n = frg.demand[cid].get(PROCESSORS, 0.0)
        if n != demand_of(frg.kind[cid]).get(PROCESSORS, 0.0):
            declared[cid] = {PROCESSORS: n}
    return FRG.from_edges(frg.ids, frg.deps, frg.kind, frg.cost, frg.function, declared)


def _waiting(frg: FRG, processors: int, caps: Capacities | None, name: str, policy: str) -> Schedule:
    """`eager`, or `processors-only` with resources: calls start as the baseline would start
    them, then wait first come first served until their other resources are free (with
    `caps` None, processors only, nothing waits).

    Time-slicing (`eager`) uses one service level for all running calls that hold
    processors: each progresses at rate min(1, P / processors held by running calls); a call
    started at service S0 ends when the service reaches S0 + cost. Under `processors-only`
    the coordinator never passes out more processors than P, so that rate is 1.
    """
    eager = name == "eager"
    co = None if eager else Coordinator(_processors_view(frg), processors, policy)
    missing = {cid: len(frg.deps[cid]) for cid in frg.ids}
    ready = [cid for cid in frg.ids if not missing[cid]]
    other = {cid: {r: a for r, a in frg.demand[cid].items() if r != PROCESSORS} for cid in frg.ids}
    cpu = {cid: frg.demand[cid].get(PROCESSORS, 0.0) for cid in frg.ids}
    ledger = Ledger(caps or Capacities.of(processors))
    free = list(range(processors))
    procs: dict[str, list[int]] = {}
    admitted: dict[str, float] = {}
    starts: dict[str, float] = {}
    device: dict[str, int | str | None] = {}
    waiting: list[str] = []  # first come first served
    wall_events: list[tuple[float, int, str]] = []  # (end time, seq, id): calls holding no processor
    cpu_events: list[tuple[float, int, str]] = []  # (service level at end, seq, id)
    entries: list[Entry] = []
    t, service, seq, cpu_running = 0.0, 0.0, 0, 0.0
    while True:
        started = co.get_ready() if co is not None else tuple(ready)
        ready = []
        for cid in started:
            admitted[cid] = t
            if not eager and cpu[cid]:
                procs[cid] = [heapq.heappop(free) for _ in range(int(cpu[cid]))]
            waiting.append(cid)
        still: list[str] = []
        for cid in waiting:  # every waiter that fits starts, in arrival order
            if not ledger.take(cid, other[cid]):
                still.append(cid)
                continue
            starts[cid] = t
            device[cid] = ledger.device.get(cid)
            if cpu[cid]:
                heapq.heappush(cpu_events, (service + frg.cost[cid], seq, cid))
                cpu_running += cpu[cid]
            else:
                heapq.heappush(wall_events, (t + frg.cost[cid], seq, cid))
            seq += 1
        waiting = still
        if not wall_events and not cpu_events:
            break
        rate = min(1.0, processors / cpu_running) if cpu_running else 1.0
        t_cpu = t + (cpu_events[0][0] - service) / rate if cpu_events else float("inf")
        t_wall = wall_events[0][0] if wall_events else float("inf")
        t_next = min(t_cpu, t_wall)
        service += (t_next - t) * rate
        t = t_next
        finished = []
        while wall_events and wall_events[0][0] <= t:
            finished.append(heapq.heappop(wall_events)[2])
        tol = _EPS * max(1.0, service)
        while cpu_events and cpu_events[0][0] <= service + tol:
            cid = heapq.heappop(cpu_events)[2]
            cpu_running -= cpu[cid]
            finished.append(cid)
        for cid in finished:
            ledger.release(cid)
            held = procs.pop(cid, [])
            for p in held:
                heapq.heappush(free, p)
            entries.append(
                Entry(
                    cid, starts[cid], t, held[0] if held else None, frg.kind[cid], device[cid],
                    tuple(held[1:]), starts[cid] - admitted[cid],
                )
            )
            for s_ in frg.succs[cid]:
                missing[s_] -= 1
                if not missing[s_]:
                    ready.append(s_)
        ready.sort(key=frg.index)
        if co is not None:
            co.done(*finished)
    return _finish(frg, entries, processors, name, caps)


def _rank_barrier(frg: FRG, processors: int) -> Schedule:
    by_rank: dict[int, list[str]] = {}
    for cid in frg.ids:
        by_rank.setdefault(frg.rank[cid], []).append(cid)
    entries: list[Entry] = []
    t = 0.0
    for r in sorted(by_rank):
        end = t
        free = [(t, p) for p in range(processors)]  # (time the processor is free, index)
        for cid in by_rank[r]:
            cost = frg.cost[cid]
            if frg.kind[cid] == "inout":
                entries.append(Entry(cid, t, t + cost, None, "inout"))
                end = max(end, t + cost)
            else:
                at, p = heapq.heappop(free)
                entries.append(Entry(cid, at, at + cost, p, "compute"))
                heapq.heappush(free, (at + cost, p))
                end = max(end, at + cost)
        t = end
    return _finish(frg, entries, processors, "rank-barrier")


def read_stg(path: str | os.PathLike[str]) -> FRG:
    """Read a Standard Task Graph (STG) file as an all-compute FRG.

    The dummy entry node 0 and exit node n+1 (cost 0) are dropped with their edges; real
    tasks keep their ids as strings (`"1"` .. `"n"`) and their costs.

    Raises:
        ValueError: the file is not an STG file (with the line at fault).
    """
    with open(path, encoding="ascii") as fh:
        lines = fh.read().splitlines()
    rows: list[list[int]] = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            break
        try:
            rows.append([int(x) for x in text.split()])
        except ValueError:
            raise ValueError(f"{path}: line {lineno}: expected integers, got {text[:60]!r}") from None
    if not rows or len(rows[0]) != 1:
        raise ValueError(f"{path}: line 1: expected the number of tasks")
    n = rows[0][0]
    nodes = rows[1:]
    if len(nodes) != n + 2:
        raise ValueError(f"{path}: expected {n + 2} node rows (n + 2 dummies), found {len(nodes)}")
    ids: list[str] = []
    deps: dict[str, list[str]] = {}
    costs: dict[str, float] = {}
    for k, row in enumerate(nodes):
        if len(row) < 3 or row[0] != k or len(row) != 3 + row[2]:
            raise ValueError(f"{path}: node row {k} is malformed: {row[:6]}")
        if k == 0 or k == n + 1:
            continue
        cid = str(k)
        ids.append(cid)
        costs[cid] = float(row[1])
        deps[cid] = [str(p) for p in row[3:] if p != 0]
    return FRG.from_edges(ids, deps, costs=costs)


def simulate_file(
    source: str | os.PathLike[str] | FRG,
    processors: int,
    policy: str = DEFAULT_POLICY,
    *,
    resources: Mapping[str, float] | None = None,
    gpus: Iterable[Mapping[str, Any] | Device] | None = None,
) -> dict[str, float]:
    """Simulate an STG file (or an FRG) with a policy or baseline; the numbers the CLI prints.

    `resources`/`gpus` are the capacities (see `simulate`); the lower bound then counts each
    resource's demand-time over its capacity.

    Returns:
        `{"makespan", "lower_bound", "work", "critical_path"}`.
    """
    frg = source if isinstance(source, FRG) else read_stg(source)
    if policy in POLICIES:
        schedule = simulate(frg, processors, policy, resources=resources, gpus=gpus)
    elif policy in BASELINES:
        schedule = simulate_baseline(frg, processors, policy, resources=resources, gpus=gpus)
    else:
        raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICIES + BASELINES)}")
    return {
        "makespan": schedule.makespan,
        "lower_bound": frg.lower_bound(processors, resources, gpus),
        "work": frg.work,
        "critical_path": frg.critical_path,
    }
