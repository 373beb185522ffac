"""Discrete-event simulation, baselines, and the STG reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SHARED_DATA
from graphs import dags, kitti, resource_dags
from prefect_llmorch.graph import FRG
from prefect_llmorch.schedule.policy import POLICIES
from prefect_llmorch.schedule.resources import Capacities, UnknownResource
from prefect_llmorch.schedule.simulator import (
    BASELINES,
    Entry,
    Schedule,
    read_stg,
    simulate,
    simulate_baseline,
    simulate_file,
)

STG = SHARED_DATA / "stg"
needs_stg = pytest.mark.skipif(not STG.is_dir(), reason=f"needs the STG files of the shared data at {STG} (absent in a plain clone)")

# file: (tasks, edges, total work, critical path), from the data README
STG_STATS = {
    "rand0000.stg": (1000, 77703, 5695, 1401),
    "rand0001.stg": (1000, 55989, 5441, 1079),
    "rand0002.stg": (1000, 33962, 5360, 762),
    "rand0003.stg": (1000, 86373, 5560, 1563),
    "rand0004.stg": (1000, 64910, 5559, 1352),
    "rand0005.stg": (1000, 43107, 10350, 1677),
    "rand0006.stg": (1000, 96179, 10153, 3312),
    "rand0007.stg": (1000, 74306, 10576, 2631),
    "rand0008.stg": (1000, 52277, 10485, 2077),
    "rand0009.stg": (1000, 30625, 10405, 1286),
    "robot.stg": (88, 131, 2483, 569),
    "sparse.stg": (96, 67, 1936, 122),
    "fpppp.stg": (334, 1145, 7129, 1062),
}


# ---------------------------------------------------------------- exact schedules


def test_kitti_on_two_processors_takes_five(policy):
    frg = kitti()
    s = simulate(frg, 2, policy)
    assert s.makespan == 5.0
    assert s["s9"] == Entry("s9", 2.0, 2.5, None, "inout")
    assert s["s11"] == Entry("s11", 4.5, 5.0, None, "inout")
    assert s.max_concurrent_compute() == 2
    assert s.problems(frg) == []


def test_kitti_on_four_and_eight_processors(policy):
    assert simulate(kitti(), 4, policy).makespan == 3.0
    assert simulate(kitti(), 8, policy).makespan == 2.0


def test_kitti_baselines():
    frg = kitti()
    assert simulate_baseline(frg, 2, "sequential").makespan == 9.5
    # eager: 8 compute calls share 2 cores at rate 1/4, all end at 4.0
    eager = simulate_baseline(frg, 2, "eager")
    assert eager.makespan == 5.0 and eager.max_concurrent_compute() == 8
    assert eager["s1"] == Entry("s1", 0.0, 4.0, None, "compute")
    # rank-barrier: rank 1 takes 4, then s9 and s10 (0.5), then s11
    assert simulate_baseline(frg, 2, "rank-barrier").makespan == 5.0
    assert simulate_baseline(frg, 3, "rank-barrier").makespan == 4.0


def test_critical_path_beats_fifo_when_a_long_chain_waits():
    # a, b, c are short; x starts a long chain x -> y
    frg = FRG.from_edges(["a", "b", "c", "x", "y"], {"y": ["x"]}, costs={"a": 1, "b": 1, "c": 1, "x": 1, "y": 4})
    assert simulate(frg, 1, "critical-path").makespan == 8.0
    assert simulate(frg, 2, "critical-path").makespan == 5.0
    assert simulate(frg, 2, "paper").makespan == 6.0
    assert frg.lower_bound(2) == 5.0


def test_inout_calls_overlap_without_processors():
    frg = FRG.from_edges(["a", "b", "c"], {}, kinds={"a": "inout", "b": "inout", "c": "inout"}, costs={"a": 2, "b": 2, "c": 2})
    s = simulate(frg, 1)
    assert s.makespan == 2.0 and s.max_concurrent_compute() == 0
    assert all(e.processor is None for e in s.entries)


def test_eager_time_slicing_with_mixed_lengths():
    frg = FRG.from_edges(["a", "b", "c"], {}, costs={"a": 1, "b": 2, "c": 3})
    s = simulate_baseline(frg, 1, "eager")
    # 3 share one core: a ends at 3; then 2 share: b ends at 3 + 2*1 = 5; c alone ends at 6
    assert [(e.id, e.end) for e in s.entries] == [("a", 3.0), ("b", 5.0), ("c", 6.0)]


def test_zero_cost_calls_take_no_time(policy):
    frg = FRG.from_edges(["a", "b", "c"], {"b": ["a"], "c": ["b"]}, costs={"a": 0, "b": 0, "c": 1})
    assert simulate(frg, 1, policy).makespan == 1.0


def test_empty_graph_has_zero_makespan(policy):
    assert simulate(FRG.from_edges([], {}), 2, policy).makespan == 0.0


def test_unknown_baseline_and_bad_processors_are_rejected():
    with pytest.raises(ValueError, match="unknown baseline 'lazy'; valid: sequential, eager, rank-barrier, processors-only"):
        simulate_baseline(kitti(), 2, "lazy")
    with pytest.raises(ValueError, match="processors must be an integer >= 1"):
        simulate(kitti(), 0)
    with pytest.raises(ValueError, match="unknown policy 'x'"):
        simulate_file(kitti(), 2, "x")


def test_problems_reports_an_invalid_schedule():
    frg = FRG.from_edges(["a", "b"], {"b": ["a"]})
    bad = Schedule((Entry("a", 0, 1, 0), Entry("b", 0.5, 1.5, 0)), 1)
    problems = bad.problems(frg)
    assert any("b starts at 0.5 before its dep a ends at 1" in p for p in problems)
    assert any("overlap on processor 0" in p for p in problems)
    assert any("2 compute calls at once" in p for p in problems)


# ---------------------------------------------------------------- STG


@needs_stg
@pytest.mark.parametrize("name", sorted(STG_STATS))
def test_read_stg_matches_the_readme_statistics(name):
    frg = read_stg(STG / name)
    tasks, edges, work, cp = STG_STATS[name]
    assert len(frg) == tasks
    assert frg.n_edges == edges
    assert frg.work == work == frg.compute_work
    assert frg.critical_path == cp
    assert set(frg.kind.values()) == {"compute"}
    # the file's own trailer agrees
    trailer = (STG / name).read_text()
    assert re.search(rf"CP Length\s*:\s*{cp}\b", trailer, re.I)


@needs_stg
def test_simulate_file_on_an_stg_graph():
    out = simulate_file(STG / "robot.stg", 4)
    assert set(out) == {"makespan", "lower_bound", "work", "critical_path"}
    assert out["work"] == 2483 and out["critical_path"] == 569
    assert out["lower_bound"] == max(569, 2483 / 4)
    assert out["lower_bound"] <= out["makespan"] <= 1.1 * out["lower_bound"]
    assert simulate_file(STG / "robot.stg", 4, "sequential")["makespan"] == 2483


def test_read_stg_rejects_a_non_stg_file(tmp_path):
    bad = tmp_path / "bad.stg"
    bad.write_text("3\n0 0 0\n1 5 1 0\n")
    with pytest.raises(ValueError, match="expected 5 node rows"):
        read_stg(bad)
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match="line 1: expected integers"):
        read_stg(bad)


@needs_stg
@pytest.mark.parametrize("name", ["rand0000.stg", "fpppp.stg"])
def test_stg_schedules_are_valid_and_near_the_lower_bound(name, policy):
    frg = read_stg(STG / name)
    for processors in (2, 8):
        s = simulate(frg, processors, policy)
        assert s.problems(frg) == []
        assert frg.lower_bound(processors) <= s.makespan <= 1.5 * frg.lower_bound(processors)


# ---------------------------------------------------------------- properties


TOL = 1e-9


@settings(max_examples=150, deadline=None)
@given(dags(kinds=("compute",)), st.integers(1, 6), st.sampled_from(POLICIES))
def test_graham_bound_and_lower_bound_hold_for_all_compute_graphs(frg, processors, policy):
    s = simulate(frg, processors, policy)
    W, L, P = frg.work, frg.critical_path, processors
    assert s.makespan <= W / P + (1 - 1 / P) * L + TOL
    assert s.makespan >= frg.lower_bound(P) - TOL
    assert frg.lower_bound(P) == max(L, W / P)


@settings(max_examples=150, deadline=None)
@given(dags(), st.integers(1, 6), st.sampled_from(POLICIES))
def test_schedules_respect_deps_costs_and_processors(frg, processors, policy):
    s = simulate(frg, processors, policy)
    assert s.problems(frg) == []
    assert s.max_concurrent_compute() <= processors
    assert s.makespan >= frg.lower_bound(processors) - TOL
    for e in s.entries:
        assert (e.processor is None) == (frg.kind[e.id] == "inout")
        assert e.end - e.start == pytest.approx(frg.cost[e.id])
        for d in frg.deps[e.id]:
            assert e.start >= s[d].end - TOL


@settings(max_examples=100, deadline=None)
@given(dags(), st.integers(1, 6), st.sampled_from(BASELINES))
def test_baselines_respect_deps_and_bounds(frg, processors, name):
    s = simulate_baseline(frg, processors, name)
    assert s.problems(frg) == []
    assert s.makespan >= frg.critical_path - TOL
    assert s.makespan <= frg.work + TOL
    if name != "eager":
        assert s.max_concurrent_compute() <= processors
    if name == "sequential":
        assert s.makespan == pytest.approx(frg.work)


# ---------------------------------------------------------------- resources

GPU80 = [{"id": 0, "mem_gb": 80}]


def two_big_gpu_calls_and_two_cpu_calls() -> FRG:
    ids = ["g1", "g2", "c1", "c2"]
    return FRG.from_edges(ids, {}, costs={c: 2 for c in ids}, resources={"g1": {"gpu_mem_gb": 60}, "g2": {"gpu_mem_gb": 60}})


def test_resource_aware_admission_beats_holding_a_processor_while_waiting():
    frg = two_big_gpu_calls_and_two_cpu_calls()
    ours = simulate(frg, 2, gpus=GPU80)
    # g2 cannot share the device with g1, so c1 takes the second processor at once
    assert [(e.id, e.start, e.end, e.processor, e.device) for e in ours.entries] == [
        ("g1", 0.0, 2.0, 0, 0), ("c1", 0.0, 2.0, 1, None), ("g2", 2.0, 4.0, 0, 0), ("c2", 2.0, 4.0, 1, None),
    ]
    blind = simulate_baseline(frg, 2, "processors-only", gpus=GPU80)
    # g2 holds a processor from 0 while it waits for the device until 2
    assert blind["g2"].start == 2.0 and blind["g2"].waited == 2.0 and blind["g2"].processor == 1
    assert blind.makespan == 6.0
    assert frg.lower_bound(2, gpus=GPU80) == 4.0 == ours.makespan
    assert ours.problems(frg) == [] and blind.problems(frg) == []


def test_eager_with_resources_waits_at_the_device_and_time_slices_the_rest():
    frg = two_big_gpu_calls_and_two_cpu_calls()
    eager = simulate_baseline(frg, 2, "eager", gpus=GPU80)
    # g1, c1, c2 share 2 cores (rate 2/3) until they end at 3; g2 then runs alone at rate 1
    assert eager["g1"].end == pytest.approx(3.0) and eager["g2"].start == pytest.approx(3.0)
    assert eager.makespan == pytest.approx(5.0) and eager.problems(frg) == []


def test_a_multi_core_call_holds_consecutive_free_processors():
    frg = FRG.from_edges(["w", "a"], {}, costs={"w": 2, "a": 1}, resources={"w": {"processors": 2}})
    s = simulate(frg, 3)
    assert (s["w"].processor, s["w"].more_processors, s["a"].processor) == (0, (1,), 2)
    assert s.peak(frg, "processors") == 3.0 and s.problems(frg) == []


def test_problems_reports_a_capacity_exceeded():
    frg = FRG.from_edges(["a", "b"], {}, resources={"a": {"gpu_mem_gb": 50}, "b": {"gpu_mem_gb": 50}})
    caps = Capacities.of(2, gpus=GPU80)
    bad = Schedule((Entry("a", 0, 1, 0, device=0), Entry("b", 0, 1, 1, device=0)), 2, capacities=caps)
    problems = bad.problems(frg)
    assert "100 gpu_mem_gb held at once, capacity 80" in problems
    assert "100 gpu_mem_gb held at once on device 0, which has 80" in problems
    lost = Schedule((Entry("a", 0, 1, 0, device=None), Entry("b", 1, 2, 1, device=0)), 2, capacities=caps)
    assert lost.problems(frg) == ["a needs gpu_mem_gb but was placed on device None"]


def test_rank_barrier_does_not_model_resources():
    with pytest.raises(ValueError, match="rank-barrier baseline does not model resources"):
        simulate_baseline(two_big_gpu_calls_and_two_cpu_calls(), 2, "rank-barrier", gpus=GPU80)


def test_simulating_with_an_unknown_resource_fails_before_it_starts():
    with pytest.raises(UnknownResource, match="call g1 needs 'gpu_mem_gb'"):
        simulate(two_big_gpu_calls_and_two_cpu_calls(), 2)
    with pytest.raises(UnknownResource):
        simulate_baseline(two_big_gpu_calls_and_two_cpu_calls(), 2, "eager")


CAPACITY_SETS = [
    ({"api": 2}, [{"id": 0, "mem_gb": 80}, {"id": 1, "mem_gb": 80}]),
    ({"api": 2, "gpu_mem_gb": 80}, None),
    ({"api": 3}, [{"id": 0, "mem_gb": 80}]),
]


@settings(max_examples=150, deadline=None)
@given(resource_dags(), st.integers(2, 5), st.sampled_from(POLICIES), st.sampled_from(CAPACITY_SETS))
def test_no_capacity_is_ever_exceeded_and_every_call_runs_once(frg, processors, policy, caps):
    resources, gpus = caps
    ours = simulate(frg, processors, policy, resources=resources, gpus=gpus)
    blind = simulate_baseline(frg, processors, "processors-only", resources=resources, gpus=gpus, policy=policy)
    eager = simulate_baseline(frg, processors, "eager", resources=resources, gpus=gpus)
    seq = simulate_baseline(frg, processors, "sequential", resources=resources, gpus=gpus)
    bound = frg.lower_bound(processors, resources, gpus)
    for s in (ours, blind, eager, seq):
        # problems() checks: one entry per call, deps, durations, each capacity and device at every instant
        assert s.problems(frg) == [], s.name
        assert sorted(e.id for e in s.entries) == sorted(frg.ids)
        assert s.makespan >= bound - TOL
    assert all(e.waited == 0 for e in ours.entries)
    assert seq.makespan == pytest.approx(frg.work)


@settings(max_examples=100, deadline=None)
@given(dags(), st.integers(1, 5), st.sampled_from(POLICIES))
def test_with_only_processors_simulation_is_exactly_as_before(frg, processors, policy):
    plain = simulate(frg, processors, policy)
    unused = simulate(frg, processors, policy, resources={"api": 2}, gpus=GPU80)
    assert plain.entries == unused.entries and plain.capacities is None
    assert simulate_baseline(frg, processors, "processors-only", policy=policy).entries == plain.entries
    eager = simulate_baseline(frg, processors, "eager")
    assert simulate_baseline(frg, processors, "eager", resources={"api": 2}).entries == eager.entries
    assert frg.lower_bound(processors, {"api": 2}) == frg.lower_bound(processors)


def test_simulate_file_takes_capacities():
    frg = two_big_gpu_calls_and_two_cpu_calls()
    out = simulate_file(frg, 2, resources={"gpu_mem_gb": 80})
    assert out == {"makespan": 4.0, "lower_bound": 4.0, "work": 8.0, "critical_path": 2.0}
    assert simulate_file(frg, 2, "processors-only", gpus=GPU80)["makespan"] == 6.0
