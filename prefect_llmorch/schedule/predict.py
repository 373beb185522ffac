"""A plan's predicted schedule: the simulator run with the costs a run chose (pure).

`llmorch plan` / `llmorch graph` print it, and the report sets it beside the measured latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from prefect_llmorch.graph import FRG
from prefect_llmorch.schedule.simulator import simulate


@dataclass
class Prediction:
    """A plan's simulated schedule with the costs it was given.

    Attributes:
        latency: simulated makespan on `processors` with `policy`.
        critical_path: the calls of the longest path by cost, in order.
        length: that path's summed cost (`FRG.critical_path`).
        calls: simulated (start, end) of each call.
    """

    latency: float
    critical_path: list[str]
    length: float
    processors: int
    policy: str
    calls: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "latency": round(self.latency, 6), "critical_path": list(self.critical_path),
            "critical_path_length": round(self.length, 6), "processors": self.processors, "policy": self.policy,
            "calls": {cid: [round(a, 6), round(b, 6)] for cid, (a, b) in self.calls.items()},
        }


def critical_path_calls(frg: FRG) -> list[str]:
    """The calls of a longest path by cost (plan order breaks ties), first to last.

    >>> critical_path_calls(FRG.from_edges(["a", "b", "c"], {"c": ["a"]}, costs={"a": 2, "b": 2.5, "c": 1}))
    ['a', 'c']
    """
    if not frg.ids:
        return []
    bl = frg.bottom_level
    sources = [cid for cid in frg.ids if not frg.deps[cid]]
    cur = max(sources, key=lambda c: (bl[c], -frg.index(c)))
    path = [cur]
    while frg.succs[cur]:
        cur = max(frg.succs[cur], key=lambda c: (bl[c], -frg.index(c)))
        path.append(cur)
    return path


def predict(
    frg: FRG, processors: int, policy: str = "critical-path", *,
    resources: Mapping[str, float] | None = None, gpus: Any = None,
) -> Prediction:
    """Simulate `frg` (its costs: learned or declared) on `processors` with `policy`."""
    schedule = simulate(frg, processors, policy, resources=resources, gpus=gpus)
    return Prediction(
        latency=schedule.makespan, critical_path=critical_path_calls(frg), length=frg.critical_path,
        processors=processors, policy=policy, calls={e.id: (e.start, e.end) for e in schedule.entries},
    )
