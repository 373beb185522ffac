"""FRG: edges, ranks (Algorithm 1), mutual exclusion, critical path, lower bound, rendering."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_llmorch.functions import Toolbox, compute, inout
from prefect_llmorch.graph import FRG, CycleError
from prefect_llmorch.plan.model import Arg, Call, ListExpr, Literal, Plan, Ref, Template


def fig2_plan() -> Plan:
    """The paper's Fig. 2: two searches, a python comparison, a chatbot summary."""
    return Plan((
        Call("s1", "search", (Arg(None, Literal("Apple stock")),)),
        Call("s2", "search", (Arg(None, Literal("Microsoft stock")),)),
        Call("s3", "python", (Arg(None, Literal("cmp.py")), Arg("args", ListExpr((Ref("s1"), Ref("s2")))))),
        Call("s4", "chatbot", (Arg(None, Template(("Summarize ", Ref("s3")))),)),
    ))


def kitti_plan() -> Plan:
    """8 independent compute calls, two averages of four, and a final inout call."""
    calls = [Call(f"s{i}", "detect", (Arg(None, Literal(f"img{i}.png")),)) for i in range(1, 9)]
    calls.append(Call("s9", "avg", (Arg(None, ListExpr(tuple(Ref(f"s{i}") for i in range(1, 5)))),)))
    calls.append(Call("s10", "avg", (Arg(None, ListExpr(tuple(Ref(f"s{i}") for i in range(5, 9)))),)))
    calls.append(Call("s11", "self", (Arg(None, Template(("{", Ref("s9"), "} {", Ref("s10"), "}"))),)))
    return Plan(tuple(calls))


KITTI_KINDS = {**{f"s{i}": "compute" for i in range(1, 9)}, "s9": "inout", "s10": "inout", "s11": "inout"}
KITTI_COSTS = {**{f"s{i}": 1.0 for i in range(1, 9)}, "s9": 0.5, "s10": 0.5, "s11": 0.5}


def kitti() -> FRG:
    return FRG.build(kitti_plan(), kinds=KITTI_KINDS, costs=KITTI_COSTS)


@inout
def search(query: str) -> str:
    return query


@compute(cost=3.0)
def python(script: str, args: list = []) -> str:  # noqa: B006
    return script


@inout(cost=2.0)
def chatbot(prompt: str) -> str:
    return prompt


# ---------------------------------------------------------------- exact examples


def test_fig2_ranks_edges_and_kinds_from_toolbox():
    frg = FRG.build(fig2_plan(), Toolbox(search, python, chatbot))
    assert frg.ids == ("s1", "s2", "s3", "s4")
    assert frg.rank == {"s1": 1, "s2": 1, "s3": 2, "s4": 3}
    assert frg.deps["s3"] == {"s1", "s2"} and frg.deps["s1"] == frozenset()
    assert frg.succs["s1"] == {"s3"} and frg.succs["s4"] == frozenset()
    assert frg.kind == {"s1": "inout", "s2": "inout", "s3": "compute", "s4": "inout"}
    assert frg.cost == {"s1": 1.0, "s2": 1.0, "s3": 3.0, "s4": 2.0}
    assert frg.mutex == []
    assert frg.work == 7.0 and frg.compute_work == 3.0
    assert frg.critical_path == 6.0
    assert frg.bottom_level == {"s1": 6.0, "s2": 6.0, "s3": 5.0, "s4": 2.0}
    assert frg.lower_bound(1) == 6.0
    assert frg.sinks == ("s4",)


def test_without_toolbox_every_call_is_inout_with_cost_one():
    frg = FRG.build(fig2_plan())
    assert set(frg.kind.values()) == {"inout"}
    assert set(frg.cost.values()) == {1.0}
    assert frg.compute_work == 0.0 and frg.lower_bound(4) == 3.0


def test_costs_and_kinds_override_the_toolbox():
    frg = FRG.build(fig2_plan(), Toolbox(search, python, chatbot), costs={"s3": 0.5}, kinds={"s1": "compute"})
    assert frg.cost["s3"] == 0.5 and frg.kind["s1"] == "compute"


def test_unknown_function_with_toolbox_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"s4 uses unknown function 'chatbot'"):
        FRG.build(fig2_plan(), Toolbox(search, python))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"costs": {"s9": 1.0}}, "costs names calls that are not in the plan: s9"),
        ({"kinds": {"s1": "cpu"}}, "kind must be 'inout' or 'compute'"),
        ({"costs": {"s1": -1}}, "cost must be finite and >= 0"),
        ({"costs": {"s1": float("nan")}}, "cost must be finite and >= 0"),
    ],
)
def test_bad_costs_and_kinds_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FRG.build(fig2_plan(), **kwargs)


def test_reference_to_a_missing_call_is_rejected():
    plan = Plan((Call("s1", "search", (Arg(None, Ref("s7")),)),))
    with pytest.raises(ValueError, match="s1 uses 's7'"):
        FRG.build(plan)


def test_kitti_mutex_is_every_pair_of_the_eight_compute_calls():
    frg = kitti()
    assert frg.mutex == list(itertools.combinations([f"s{i}" for i in range(1, 9)], 2))
    assert len(frg.mutex) == 28
    assert frg.rank["s9"] == frg.rank["s10"] == 2 and frg.rank["s11"] == 3
    assert frg.critical_path == 2.0
    assert frg.work == 9.5 and frg.compute_work == 8.0
    assert frg.lower_bound(2) == 4.0 and frg.lower_bound(8) == 2.0


def test_to_json_is_the_documented_object():
    frg = FRG.build(fig2_plan(), Toolbox(search, python, chatbot))
    out = frg.to_json()
    assert out == {
        "calls": [
            {"id": "s1", "function": "search", "kind": "inout", "rank": 1, "deps": []},
            {"id": "s2", "function": "search", "kind": "inout", "rank": 1, "deps": []},
            {"id": "s3", "function": "python", "kind": "compute", "rank": 2, "deps": ["s1", "s2"]},
            {"id": "s4", "function": "chatbot", "kind": "inout", "rank": 3, "deps": ["s3"]},
        ],
        "mutex": [],
        "work": 7.0,
        "critical_path": 6.0,
    }
    json.dumps(out)
    assert kitti().to_json()["mutex"][0] == ["s1", "s2"]


def test_mermaid_has_labels_classes_edges_and_dashed_mutex_links():
    text = kitti().to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    assert '    s9["s9 · avg<br/>rank 2"]:::inout' in lines
    assert '    s1["s1 · detect<br/>rank 1"]:::compute' in lines
    assert "    s1 --> s9" in lines and "    s9 --> s11" in lines
    assert "    s1 -.- s2" in lines
    assert sum(" -.- " in line for line in lines) == 28
    assert any(line.startswith("    classDef inout") for line in lines)
    assert any(line.startswith("    classDef compute") for line in lines)
    assert " -.- " not in kitti().to_mermaid(mutex=False)


def test_mermaid_renames_ids_that_are_keywords():
    frg = FRG.from_edges(["end", "x"], {"x": ["end"]})
    assert "    n0 --> x" in frg.to_mermaid().splitlines()


def test_dot_has_nodes_edges_and_dashed_mutex():
    text = kitti().to_dot()
    assert text.startswith("digraph FRG {") and text.endswith("}")
    assert '"s1" -> "s9";' in text
    assert '"s1" -> "s2" [dir=none, style=dashed' in text


def test_ancestors_descendants_and_topological_order():
    frg = kitti()
    assert frg.ancestors("s11") == {f"s{i}" for i in range(1, 11)}
    assert frg.descendants("s1") == {"s9", "s11"}
    assert frg.ancestors("s1") == frozenset()
    assert frg.topological_order() == frg.ids
    assert frg.n_descendants["s1"] == 2 and frg.n_descendants["s11"] == 0


def test_from_edges_orders_out_of_order_input_topologically():
    frg = FRG.from_edges(["c", "a", "b"], {"c": ["b"], "b": ["a"]})
    assert frg.topological_order() == ("a", "b", "c")
    assert frg.ids == ("c", "a", "b")
    assert frg.rank == {"a": 1, "b": 2, "c": 3}


def test_cycle_is_reported_with_its_nodes():
    with pytest.raises(CycleError) as info:
        FRG.from_edges(["a", "b", "c"], {"a": ["b"], "b": ["a"]})
    assert info.value.nodes == ["a", "b"]


def test_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match="duplicate call id 'a'"):
        FRG.from_edges(["a", "b", "a"], {})


def test_lower_bound_needs_a_processor():
    with pytest.raises(ValueError, match="processors must be >= 1"):
        kitti().lower_bound(0)


def test_empty_graph():
    frg = FRG.from_edges([], {})
    assert frg.work == 0 and frg.critical_path == 0 and frg.mutex == [] and frg.lower_bound(3) == 0


def test_a_thousand_call_plan_builds():
    """A long chain (1,000 ranks) builds without recursion; its speed is `benchmarks/graph_scale.py`'s."""
    calls = [Call(f"s{i}", "f", tuple(Arg(None, Ref(f"s{j}")) for j in (i - 1, i // 2) if 0 < j < i)) for i in range(1, 1001)]
    plan = Plan(tuple(calls))
    frg = FRG.build(plan, kinds={c.id: "compute" for c in calls})
    assert frg.mutex == [] and len(frg.to_json()["calls"]) == 1000 and frg.to_mermaid().count("-->") == sum(len(c.deps) for c in calls)
    assert frg.rank["s1000"] == 1000


# ---------------------------------------------------------------- properties


@st.composite
def dags(draw, max_calls: int = 25):
    n = draw(st.integers(0, max_calls))
    ids = [f"s{i}" for i in range(1, n + 1)]
    deps = {}
    for i, cid in enumerate(ids):
        deps[cid] = draw(st.sets(st.sampled_from(ids[:i]), max_size=4)) if i else set()
    kinds = {cid: draw(st.sampled_from(["inout", "compute"])) for cid in ids}
    costs = {cid: draw(st.integers(0, 9)) / 2 for cid in ids}
    return ids, deps, kinds, costs


def longest_path_edges(ids, deps):
    memo: dict[str, int] = {}

    def go(c):
        if c not in memo:
            memo[c] = max((go(d) + 1 for d in deps[c]), default=0)
        return memo[c]

    return {c: go(c) for c in ids}


@settings(max_examples=150, deadline=None)
@given(dags())
def test_rank_is_one_plus_longest_path_and_respects_every_edge(dag):
    ids, deps, kinds, costs = dag
    frg = FRG.from_edges(ids, deps, kinds, costs)
    longest = longest_path_edges(ids, deps)
    assert frg.rank == {c: longest[c] + 1 for c in ids}
    for c in ids:
        for d in deps[c]:
            assert frg.rank[d] < frg.rank[c]


@settings(max_examples=150, deadline=None)
@given(dags())
def test_mutex_is_exactly_the_equal_rank_compute_pairs(dag):
    ids, deps, kinds, costs = dag
    frg = FRG.from_edges(ids, deps, kinds, costs)
    expected = {
        (a, b)
        for a, b in itertools.combinations(ids, 2)
        if kinds[a] == kinds[b] == "compute" and frg.rank[a] == frg.rank[b]
    }
    assert set(frg.mutex) == expected and len(frg.mutex) == len(expected)


@settings(max_examples=150, deadline=None)
@given(dags())
def test_critical_path_bottom_level_and_work(dag):
    ids, deps, kinds, costs = dag
    frg = FRG.from_edges(ids, deps, kinds, costs)
    succs = {c: [s for s in ids if c in deps[s]] for c in ids}

    memo: dict[str, float] = {}

    def longest(c):  # the longest summed cost of a path from c to a sink
        if c not in memo:
            memo[c] = costs[c] + max((longest(s) for s in succs[c]), default=0.0)
        return memo[c]

    for c in ids:
        assert frg.bottom_level[c] == longest(c)
    assert frg.critical_path == max((frg.bottom_level[c] for c in ids), default=0.0)
    assert frg.work == sum(costs.values())
    assert frg.compute_work == sum(costs[c] for c in ids if kinds[c] == "compute")
    for c in ids:
        assert frg.descendants(c) == {s for s in ids if c in frg.ancestors(s)}
        assert frg.n_descendants[c] == len(frg.descendants(c))


# ---------------------------------------------------------------- resources

GPU80 = [{"id": 0, "mem_gb": 80}]


def gpu_frg() -> FRG:
    """Rank 1: two 50 GB GPU calls, a 20 GB one, two searches on one API slot, a CPU call."""
    ids = ["g1", "g2", "g3", "q1", "q2", "c"]
    kinds = {"q1": "inout", "q2": "inout"}
    resources = {
        "g1": {"gpu_mem_gb": 50}, "g2": {"gpu_mem_gb": 50}, "g3": {"gpu_mem_gb": 20},
        "q1": {"search-api": 1}, "q2": {"search-api": 1},
    }
    return FRG.from_edges(ids, {}, kinds, resources=resources)


def test_conflicts_name_the_resource_their_demands_exceed():
    frg = gpu_frg()
    found = [(c.a, c.b, c.resource, c.demand, c.capacity) for c in frg.conflicts({"search-api": 1}, GPU80)]
    cpu = [(a, b, "processors", 2.0, 1.0) for a, b in itertools.combinations(["g1", "g2", "g3", "c"], 2)]
    assert found == sorted(
        cpu + [("g1", "g2", "gpu_mem_gb", 100.0, 80.0), ("q1", "q2", "search-api", 2.0, 1.0)],
        key=lambda t: (frg.index(t[0]), frg.index(t[1]), t[2]),
    )
    # two slots: the searches may run together; without capacities only processors are known
    assert not any(c.resource == "search-api" for c in frg.conflicts({"search-api": 2}, GPU80))
    assert [c.resource for c in frg.conflicts()] == ["processors"] * 6


def test_without_declared_resources_the_json_is_unchanged():
    doc = kitti().to_json()
    assert set(doc) == {"calls", "mutex", "work", "critical_path"} and "resources" not in doc["calls"][0]


def test_json_shows_demands_and_conflicts_by_resource():
    doc = gpu_frg().to_json({"search-api": 1}, GPU80)
    assert doc["calls"][0]["resources"] == {"processors": 1.0, "gpu_mem_gb": 50.0}
    assert doc["calls"][3]["resources"] == {"search-api": 1.0}
    assert ["q1", "q2"] in doc["mutex"] and ["g1", "q1"] not in doc["mutex"]
    assert {"calls": ["g1", "g2"], "resource": "gpu_mem_gb", "demand": 100.0, "capacity": 80.0} in doc["conflicts"]
    json.dumps(doc)


def test_mermaid_and_dot_label_resource_links_and_demands():
    frg = gpu_frg()
    lines = frg.to_mermaid(resources={"search-api": 1}, gpus=GPU80).splitlines()
    assert '    g1["g1 · task<br/>rank 1<br/>processors 1, gpu_mem_gb 50"]:::compute' in lines
    assert '    g1 -.-|"gpu_mem_gb, processors"| g2' in lines
    assert '    q1 -.-|"search-api"| q2' in lines
    assert "    g1 -.- g3" in lines  # processors only: the paper's unlabelled link
    dot = frg.to_dot(resources={"search-api": 1}, gpus=GPU80)
    assert '"q1" -> "q2" [dir=none, style=dashed, color=gray, constraint=false, label="search-api"];' in dot
    assert "\\nsearch-api 1" in dot


def test_lower_bound_counts_each_resource_demand_time_over_its_capacity():
    frg = FRG.from_edges(
        ["a", "b", "c"], {}, kinds={"c": "inout"}, costs={"a": 3, "b": 1, "c": 4},
        resources={"a": {"gpu_mem_gb": 60}, "b": {"gpu_mem_gb": 60}, "c": {"api": 1}},
    )
    assert frg.demand_time == {"processors": 4.0, "gpu_mem_gb": 240.0, "api": 4.0}
    assert frg.lower_bound(4, gpus=GPU80) == 4.0  # L = 4 (c); gpu 240 / 80 = 3
    assert frg.lower_bound(4, {"api": 1, "gpu_mem_gb": 40}) == 6.0  # gpu 240 / 40
    assert frg.lower_bound(1, gpus=GPU80) == 4.0


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_mutex_is_exactly_the_equal_rank_pairs_whose_demands_exceed_a_unit(dag, data):
    ids, deps, kinds, costs = dag
    resources = {c: {"gpu_mem_gb": data.draw(st.sampled_from([10, 40, 50, 80]))} for c in ids if data.draw(st.booleans())}
    frg = FRG.from_edges(ids, deps, kinds, costs, resources=resources)
    gpu = {c: resources.get(c, {}).get("gpu_mem_gb", 0) for c in ids}
    expected = {
        (a, b)
        for a, b in itertools.combinations(ids, 2)
        if frg.rank[a] == frg.rank[b]
        and ((kinds[a] == kinds[b] == "compute") or (gpu[a] and gpu[b] and gpu[a] + gpu[b] > 80))
    }
    pairs = [tuple(p) for p in frg.to_json(gpus=GPU80)["mutex"]]
    assert set(pairs) == expected and len(pairs) == len(expected)
    assert pairs == sorted(pairs, key=lambda p: (frg.index(p[0]), frg.index(p[1])))


def test_the_markdown_table_has_a_row_per_call_and_the_mutex_groups_not_the_pairs() -> None:
    frg = kitti()
    text = frg.to_markdown()
    lines = text.splitlines()
    assert lines[0] == "| call | function | kind | rank | deps | mutex group |"
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == len(frg) == 11  # one row per call, not one line per mutex pair (28)
    assert rows[0] == "| s1 | detect | compute | 1 |  | rank 1 |"
    assert rows[8] == "| s9 | avg | inout | 2 | s1, s2, s3, s4 |  |"
    assert lines[-1] == f"11 calls, {frg.n_edges} def-use edges, {len(frg.mutex)} mutually exclusive pairs."
    assert [r["mutex group"] for r in frg.rows()] == ["rank 1"] * 8 + [""] * 3


def test_a_lone_compute_call_of_its_rank_has_no_mutex_group() -> None:
    frg = FRG.from_edges(["a", "b", "c"], {"c": ["a"]})  # c is the only compute call of rank 2
    assert [r["mutex group"] for r in frg.rows()] == ["rank 1", "rank 1", ""]
