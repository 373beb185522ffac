"""Graphs shared by the policy and simulator tests."""

from __future__ import annotations

from prefect_llmorch.graph import FRG


def kitti() -> FRG:
    """The paper's Fig. 3 plan: 8 independent 1 s compute calls, two 0.5 s averages, a 0.5 s LLM call."""
    ids = [f"s{i}" for i in range(1, 12)]
    deps = {"s9": ["s1", "s2", "s3", "s4"], "s10": ["s5", "s6", "s7", "s8"], "s11": ["s9", "s10"]}
    kinds = {c: "compute" for c in ids[:8]} | {"s9": "inout", "s10": "inout", "s11": "inout"}
    costs = {c: 1.0 for c in ids[:8]} | {"s9": 0.5, "s10": 0.5, "s11": 0.5}
    return FRG.from_edges(ids, deps, kinds, costs)
