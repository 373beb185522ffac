"""Graphs shared by the policy and simulator tests."""

from __future__ import annotations

from hypothesis import strategies as st

from prefect_llmorch.graph import FRG


def kitti() -> FRG:
    """The paper's Fig. 3 plan: 8 independent 1 s compute calls, two 0.5 s averages, a 0.5 s LLM call."""
    ids = [f"s{i}" for i in range(1, 12)]
    deps = {"s9": ["s1", "s2", "s3", "s4"], "s10": ["s5", "s6", "s7", "s8"], "s11": ["s9", "s10"]}
    kinds = {c: "compute" for c in ids[:8]} | {"s9": "inout", "s10": "inout", "s11": "inout"}
    costs = {c: 1.0 for c in ids[:8]} | {"s9": 0.5, "s10": 0.5, "s11": 0.5}
    return FRG.from_edges(ids, deps, kinds, costs)


@st.composite
def dags(draw: st.DrawFn, kinds: tuple[str, ...] = ("inout", "compute")) -> FRG:
    """Random DAGs of 1-25 calls in plan order, with costs from a small set (0 included)."""
    n = draw(st.integers(1, 25))
    ids = [f"s{i}" for i in range(1, n + 1)]
    deps = {c: draw(st.sets(st.sampled_from(ids[:i]), max_size=4)) if i else set() for i, c in enumerate(ids)}
    kind = {c: draw(st.sampled_from(kinds)) for c in ids}
    costs = {c: draw(st.sampled_from([0, 0.5, 1, 1.5, 2, 3, 7.25])) for c in ids}
    return FRG.from_edges(ids, deps, kind, costs)


@st.composite
def resource_dags(draw: st.DrawFn) -> FRG:
    """`dags()` whose calls also declare GPU memory, an `api` class, or two processors."""
    frg = draw(dags())
    resources = {}
    for c in frg.ids:
        d: dict[str, float] = {}
        if draw(st.booleans()):
            d["gpu_mem_gb"] = draw(st.sampled_from([10, 20, 30, 40, 45, 60, 80]))
        if draw(st.integers(0, 2)) == 0:
            d["api"] = draw(st.integers(1, 2))
        if frg.kind[c] == "compute" and draw(st.integers(0, 4)) == 0:
            d["processors"] = draw(st.integers(1, 2))
        if d:
            resources[c] = d
    return FRG.from_edges(frg.ids, frg.deps, frg.kind, frg.cost, resources=resources)
