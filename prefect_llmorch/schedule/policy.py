"""Coordination policy: which ready calls start now. Pure; used by the runner and the simulator.

Inout calls take no processor and always start as soon as they are ready. Compute calls hold
one of `P` processors each; when more are ready than processors are free, a *policy* picks:

- `"critical-path"` (default): longest remaining path first (the call's `bottom_level`,
  own cost included; HLFET list scheduling), ties broken by more descendants, then more direct
  successors, then plan order.
- `"paper"`: the paper's Algorithm 3: rank sets first-in first-out (lowest rank first, then
  the order in which calls became ready, then plan order).

`Coordinator` drives a whole plan like `graphlib.TopologicalSorter`:

    >>> from prefect_llmorch.graph import FRG
    >>> frg = FRG.from_edges(["a", "b", "c"], {"c": ["a", "b"]}, costs={"b": 2})
    >>> co = Coordinator(frg, processors=1)
    >>> co.get_ready()          # b is on the longer path
    ('b',)
    >>> co.done("b"); co.get_ready()
    ('a',)
    >>> co.done("a"); co.get_ready()
    ('c',)
    >>> co.done("c"); co.is_active()
    False

Resources (`resources=`, `gpus=`; see `schedule.resources`): every call holds its
`FRG.demand` while it runs (a compute call one processor by default). A call is admitted
when all of its demand fits in what is free, in policy order; a call that does not fit is
passed over for later ones that do (list scheduling with resource constraints). A call
that could never fit is refused when the Coordinator is built. Calls that demand nothing
(inout calls by default) start as soon as they are ready. With only processors this is
exactly the processors-only coordinator: every compute call needs one processor, so the
first that does not fit stops the scan.

    >>> frg = FRG.from_edges(["g1", "g2", "c"], {}, resources={"g1": {"gpu_mem_gb": 60}, "g2": {"gpu_mem_gb": 40}})
    >>> co = Coordinator(frg, 2, gpus=[{"id": 0, "mem_gb": 80}])
    >>> co.get_ready(), co.device_of("g1")        # g2 would not fit beside g1 on the device
    (('g1', 'c'), 0)

No Prefect, no clock, no I/O here.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Callable, Iterable, Mapping

from prefect_llmorch.graph import FRG, PROCESSORS
from prefect_llmorch.schedule.resources import Capacities, Device, Ledger, RateGate, check_demands

__all__ = ["POLICIES", "DEFAULT_POLICY", "Coordinator", "check_policy", "priority", "select"]

POLICIES: tuple[str, ...] = ("critical-path", "paper")
DEFAULT_POLICY = "critical-path"


def check_policy(policy: str) -> None:
    """Raise ValueError naming the valid policies unless `policy` is one of them."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")


def priority(policy: str, frg: FRG) -> Callable[[str, int], tuple[Any, ...]]:
    """The sort key of a policy: `key(call_id, arrival)`; smaller keys start first.

    `arrival` is the sequence number of the moment the call became ready. Keys never change
    while a call waits, so a heap ordered by them stays valid.

    >>> frg = FRG.from_edges(["a", "b", "c"], {"c": ["b"]})
    >>> key = priority("critical-path", frg)
    >>> sorted(["a", "b"], key=lambda c: key(c, 0))
    ['b', 'a']
    """
    check_policy(policy)
    index = frg.index
    if policy == "paper":
        rank = frg.rank
        return lambda cid, arrival: (rank[cid], arrival, index(cid))
    bottom, desc, succs = frg.bottom_level, frg.n_descendants, frg.succs
    return lambda cid, arrival: (-bottom[cid], -desc[cid], -len(succs[cid]), index(cid))


def select(
    policy: str,
    frg: FRG,
    ready_compute: Iterable[str],
    free_processors: int,
    arrival: Mapping[str, int],
) -> list[str]:
    """Pick the ready compute calls that start now: at most `free_processors`, best first.

    Args:
        policy: one of `POLICIES`.
        frg: the graph (ranks, bottom levels, plan order).
        ready_compute: compute calls whose deps are all done and that are not running.
        free_processors: how many processors are idle.
        arrival: for each ready call, the sequence number of when it became ready (the
            `paper` policy's first-in first-out order within a rank); missing means 0.

    >>> frg = FRG.from_edges(["a", "b", "c", "d"], {"d": ["c"]})
    >>> select("critical-path", frg, ["a", "b", "c"], 2, {})
    ['c', 'a']
    >>> select("paper", frg, ["a", "b", "c"], 2, {"a": 2, "b": 1, "c": 3})
    ['b', 'a']
    """
    key = priority(policy, frg)
    if free_processors <= 0:
        return []
    return sorted(ready_compute, key=lambda c: key(c, arrival.get(c, 0)))[:free_processors]


class Coordinator:
    """Drives a plan on `processors` processors, like `graphlib.TopologicalSorter`.

    A call is *ready* once all of its own deps are done. `get_ready()` passes out every ready
    inout call (they take no processor) and then as many ready compute calls as there are free
    processors, chosen by the policy; everything passed out is *running* until `done()`.
    At most `processors` compute calls are ever running. With `resources`/`gpus`, a ready call
    that demands resources is passed out when its whole demand fits in what is free, in
    policy order; at no moment do the running calls' demands exceed a capacity.

    Loop::

        co = Coordinator(frg, processors=4)
        while co.is_active():
            for call_id in co.get_ready():
                start(call_id)
            co.done(*wait_for_some_to_finish())

    Recovery: `failed(*ids)` hands back running calls that did not finish (frees their
    processors; their successors stay blocked), `reset(*ids)` makes calls and all their
    descendants pending again (removed from the done set) so they run again once their deps
    are done. `Coordinator(frg, P, done=ids)` starts with some calls already done, e.g. on a
    rebuilt FRG after a repair changed a call's deps.

    Args:
        frg: the graph.
        processors: number of processors P (>= 1).
        policy: one of `POLICIES`.
        done: calls that are already done.
        resources: capacities of resources beyond processors (`{"search-api": 2,
            "gpu_mem_gb": 80}`); see `Capacities.of`.
        gpus: GPU devices (`[{"id": 0, "mem_gb": 80}]`): a call demanding `gpu_mem_gb` is
            placed on one device where it fits (`device_of`).

    Raises:
        ValueError: bad processors or policy, or `done` names unknown calls.
        ResourceError: (a ValueError) a bad capacity or device, a call demanding a resource
            without capacity (`UnknownResource`), or more than the capacity
            (`DemandExceedsCapacity`, naming the call, resource, demand and capacity).
    """

    def __init__(
        self,
        frg: FRG,
        processors: int,
        policy: str = DEFAULT_POLICY,
        done: Iterable[str] = (),
        *,
        resources: Mapping[str, float] | None = None,
        gpus: Iterable[Mapping[str, Any] | Device] | None = None,
    ) -> None:
        if not isinstance(processors, int) or processors < 1:
            raise ValueError(f"processors must be an integer >= 1, got {processors!r}")
        check_policy(policy)
        self.capacities = Capacities.of(processors, resources, gpus)
        check_demands(frg.demand, self.capacities)
        self.frg = frg
        self.processors = processors
        self.policy = policy
        self._key = priority(policy, frg)
        self._ledger = Ledger(self.capacities)
        #: resources with a rate: applied by `get_ready(now=...)` (a caller that keeps time)
        self._gates = {r: RateGate(rate) for r, rate in self.capacities.rates.items()}
        self._done: set[str] = set()
        self._running: set[str] = set()
        self._running_compute: set[str] = set()
        self._failed: set[str] = set()
        self._ready: set[str] = set()
        self._ready_free: deque[str] = deque()  # ready calls that demand nothing
        self._ready_held: list[tuple[Any, ...]] = []  # heap of (key, id): ready calls that demand something
        self._ready_no_cpu = 0  # how many of those hold no processor
        self._arrivals = 0
        self._arrival: dict[str, int] = {}  # when each ready call became ready (its key's input)
        # number of deps of each call not yet done
        self._missing: dict[str, int] = {cid: len(frg.deps[cid]) for cid in frg.ids}
        for cid in done:
            if cid not in frg:
                raise ValueError(f"done names {cid!r}, which is not a call of the graph")
            self._done.add(cid)
        for cid in self._done:
            for s in frg.succs[cid]:
                self._missing[s] -= 1
        for cid in frg.ids:
            self._maybe_ready(cid)

    def __repr__(self) -> str:
        return (
            f"Coordinator({len(self.frg)} calls, processors={self.processors}, policy={self.policy!r}, "
            f"done={len(self._done)}, running={len(self._running)}, ready={len(self._ready)})"
        )

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> frozenset[str]:
        """Calls passed out by `get_ready()` and not yet done (or failed)."""
        return frozenset(self._running)

    @property
    def running_compute(self) -> frozenset[str]:
        """The compute calls holding a processor."""
        return frozenset(self._running_compute)

    @property
    def free_processors(self) -> int:
        """Processors not held by a running call."""
        return round(self._ledger.free(PROCESSORS))

    def free(self, resource: str) -> float:
        """How much of a resource is not held by running calls (0 if it has no capacity)."""
        return self._ledger.free(resource)

    def device_of(self, call_id: str) -> int | str | None:
        """The GPU device a running call was placed on; None when it holds no device."""
        return self._ledger.device.get(call_id)

    @property
    def finished(self) -> frozenset[str]:
        """The done set."""
        return frozenset(self._done)

    @property
    def failed_calls(self) -> frozenset[str]:
        """Calls handed back with `failed()` and not reset since."""
        return frozenset(self._failed)

    @property
    def ready(self) -> frozenset[str]:
        """Calls whose deps are all done, waiting to be passed out."""
        return frozenset(self._ready)

    def is_active(self) -> bool:
        """True while some call is running or ready. False when all are done, or when the
        rest are blocked behind failed calls (check `failed_calls`)."""
        return bool(self._running or self._ready)

    def is_finished(self) -> bool:
        """True when every call is done."""
        return len(self._done) == len(self.frg)

    # ------------------------------------------------------------------ protocol

    def get_ready(self, now: float | None = None) -> tuple[str, ...]:
        """Calls to start now, marked running: every ready call that demands nothing (inout
        calls by default; in the order they became ready), then, in policy order, each ready
        call whose demand fits in what is free (compute calls: the free processors). May be
        empty.

        With `now` (seconds, any fixed origin), a call that demands a resource with a rate
        (`resources={"search-api": "10/s"}`) starts only when the rate allows at `now`
        (`next_admission` says when that is). Without it, rates are the caller's to apply
        (the runner applies them at the call, machine-wide, through Prefect's rate limits)."""
        out: list[str] = []
        while self._ready_free:
            cid = self._ready_free.popleft()
            self._ready.discard(cid)
            self._running.add(cid)
            out.append(cid)
        passed: list[tuple[Any, ...]] = []
        demand = self.frg.demand
        while self._ready_held:
            # Nothing left can start once the processors are gone and every waiting call needs one.
            if self._ready_no_cpu == 0 and self._ledger.free(PROCESSORS) < 1:
                break
            entry = heapq.heappop(self._ready_held)
            cid = entry[1]
            no_cpu = not demand[cid].get(PROCESSORS)
            gates = [self._gates[r] for r in demand[cid] if r in self._gates] if now is not None else []
            if any(not g.allows(now) for g in gates) or not self._ledger.take(cid, demand[cid]):  # type: ignore[arg-type]
                passed.append(entry)
                if no_cpu:  # it stays waiting but is behind us now
                    self._ready_no_cpu -= 1
                continue
            self._ready_no_cpu -= no_cpu
            for g in gates:
                g.record(now)  # type: ignore[arg-type]
            self._ready.discard(cid)
            self._running.add(cid)
            if self.frg.kind[cid] == "compute":
                self._running_compute.add(cid)
            out.append(cid)
        for entry in passed:
            heapq.heappush(self._ready_held, entry)
            self._ready_no_cpu += not demand[entry[1]].get(PROCESSORS)
        return tuple(out)

    def next_admission(self, now: float) -> float | None:
        """When a ready call now held back only by a rate may start (the earliest such time
        >= `now`); None when no ready call waits on a rate."""
        if not self._gates:  # no rated resource (the runner asks at every dispatch)
            return None
        times = [
            max(self._gates[r].next_start(now) for r in self.frg.demand[e[1]] if r in self._gates)
            for e in self._ready_held
            if any(r in self._gates for r in self.frg.demand[e[1]])
        ]
        later = [t for t in times if t > now]  # at `now` already: held by a capacity, not the rate
        return min(later) if later else None

    def done(self, *ids: str) -> None:
        """Mark running calls done: frees their processors and makes successors ready.

        Raises:
            ValueError: an id was not passed out by `get_ready()` (or is already done); nothing
                is changed then.
        """
        self._check_running(ids, "done")
        for cid in ids:
            self._running.discard(cid)
            self._running_compute.discard(cid)
            self._ledger.release(cid)
            self._done.add(cid)
            for s in self.frg.successors_in_order[cid]:  # a fixed order: arrivals must not follow the hash seed
                self._missing[s] -= 1
                self._maybe_ready(s)

    def failed(self, *ids: str) -> None:
        """Hand back running calls that will not finish (failed, cancelled, or dropped before
        they started). Frees their processors; they are not done, so their successors stay
        blocked until `reset()` makes them run again.

        Raises:
            ValueError: an id was not passed out by `get_ready()`; nothing is changed then.
        """
        self._check_running(ids, "failed")
        for cid in ids:
            self._running.discard(cid)
            self._running_compute.discard(cid)
            self._ledger.release(cid)
            self._failed.add(cid)

    def reset(self, *ids: str) -> frozenset[str]:
        """Make calls and all their descendants pending again (trace-back recovery).

        They leave the done set (and the failed set and the ready queues); those whose deps
        are all done become ready again. Returns every call that was reset.

        Raises:
            ValueError: an id is unknown, or a call to reset is still running (call `done()` or
                `failed()` for it first); nothing is changed then.
        """
        for cid in ids:
            if cid not in self.frg:
                raise ValueError(f"call {cid!r} is not a call of the graph")
        closure: set[str] = set(ids)
        for cid in ids:
            closure |= self.frg.descendants(cid)
        busy = self.frg.ordered(closure & self._running)
        if busy:
            raise ValueError(
                f"cannot reset running call(s) {', '.join(busy)}: call done() or failed() for them first"
            )
        for cid in closure:
            if cid in self._done:
                self._done.discard(cid)
                for s in self.frg.succs[cid]:
                    self._missing[s] += 1
            self._failed.discard(cid)
        if self._ready & closure:
            self._ready -= closure
            self._ready_free = deque(c for c in self._ready_free if c not in closure)
            self._ready_held = [e for e in self._ready_held if e[1] not in closure]
            heapq.heapify(self._ready_held)
            self._ready_no_cpu = sum(not self.frg.demand[e[1]].get(PROCESSORS) for e in self._ready_held)
        for cid in self.frg.ordered(closure):
            self._maybe_ready(cid)
        return frozenset(closure)

    forget = reset

    def grow(self, frg: FRG) -> frozenset[str]:
        """Replace the graph with a larger one, for plans whose calls arrive over time.

        `frg` must hold every call of the current graph with the same deps and kind; its other
        calls are new (they may depend on any call). New calls whose deps are all done become
        ready. Priorities of waiting calls are recomputed on the new graph (a new successor can
        lengthen a call's remaining path). Returns the new calls.

        Raises:
            ValueError: a current call is missing from `frg` or has other deps or kind there;
                nothing is changed then.

        >>> co = Coordinator(FRG.from_edges(["a"], {}), processors=1)
        >>> sorted(co.grow(FRG.from_edges(["a", "b"], {"b": ["a"]})))
        ['b']
        >>> co.get_ready(), co.done("a"), co.get_ready()
        (('a',), None, ('b',))
        """
        old = self.frg
        for cid in old.ids:
            if cid not in frg or frg.deps[cid] != old.deps[cid] or frg.kind[cid] != old.kind[cid]:
                raise ValueError(f"grow(): call {cid!r} must keep its deps and kind in the new graph")
        new = [cid for cid in frg.ids if cid not in old]
        check_demands({cid: frg.demand[cid] for cid in new}, self.capacities)
        self.frg = frg
        self._key = priority(self.policy, frg)
        for cid in new:
            self._missing[cid] = sum(1 for d in frg.deps[cid] if d not in self._done)
        self._ready_held = [(self._key(e[1], self._arrival.get(e[1], 0)), e[1]) for e in self._ready_held]
        heapq.heapify(self._ready_held)
        for cid in new:
            self._maybe_ready(cid)
        return frozenset(new)

    # ------------------------------------------------------------------ helpers

    def _check_running(self, ids: Iterable[str], verb: str) -> None:
        for cid in ids:
            if cid not in self._running:
                if cid not in self.frg:
                    raise ValueError(f"{verb}(): {cid!r} is not a call of the graph")
                if cid in self._done:
                    raise ValueError(f"{verb}(): call {cid!r} is already done")
                raise ValueError(f"{verb}(): call {cid!r} was not passed out by get_ready()")
        if len(set(ids)) != len(tuple(ids)):
            raise ValueError(f"{verb}(): the same call is given twice")

    def _maybe_ready(self, cid: str) -> None:
        if (
            self._missing[cid] == 0
            and cid not in self._done
            and cid not in self._running
            and cid not in self._ready
            and cid not in self._failed
        ):
            self._ready.add(cid)
            self._arrivals += 1
            self._arrival[cid] = self._arrivals
            demand = self.frg.demand[cid]
            if not demand:
                self._ready_free.append(cid)
            else:
                heapq.heappush(self._ready_held, (self._key(cid, self._arrivals), cid))
                self._ready_no_cpu += not demand.get(PROCESSORS)
