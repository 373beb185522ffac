"""Policies (`select`) and the graphlib-like `Coordinator`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs import dags, kitti, resource_dags
from prefect_llmorch.graph import FRG
from prefect_llmorch.schedule.policy import POLICIES, Coordinator, priority, select


def test_policies_are_named():
    assert POLICIES == ("critical-path", "paper")


def test_unknown_policy_is_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown policy 'fifo'; valid: critical-path, paper"):
        select("fifo", kitti(), [], 1, {})
    with pytest.raises(ValueError, match="unknown policy"):
        Coordinator(kitti(), 2, "fifo")


@pytest.mark.parametrize("processors", [0, -1, 1.5])
def test_bad_processor_count_fails_at_construction(processors):
    with pytest.raises(ValueError, match="processors must be an integer >= 1"):
        Coordinator(kitti(), processors)


def test_critical_path_prefers_the_longest_remaining_path():
    # a(1) -> d(5); b(3); c(2): bottom levels a=6, b=3, c=2
    frg = FRG.from_edges(["a", "b", "c", "d"], {"d": ["a"]}, costs={"a": 1, "b": 3, "c": 2, "d": 5})
    assert select("critical-path", frg, ["c", "b", "a"], 2, {}) == ["a", "b"]
    assert select("critical-path", frg, ["c", "b", "a"], 5, {}) == ["a", "b", "c"]
    assert select("critical-path", frg, ["c", "b", "a"], 0, {}) == []


def test_critical_path_ties_go_to_more_descendants_then_plan_order():
    frg = FRG.from_edges(["a", "b", "c", "x", "y"], {"x": ["b"], "y": ["x"]}, costs={"a": 3, "b": 1, "x": 1, "y": 1, "c": 3})
    # a, b, c all have bottom level 3; b has 2 descendants
    assert select("critical-path", frg, ["c", "a", "b"], 3, {}) == ["b", "a", "c"]


def test_paper_policy_is_rank_fifo():
    frg = FRG.from_edges(["a", "b", "c", "d"], {"c": ["a"], "d": ["c"]})
    # rank: a=1, b=1, c=2, d=3; lowest rank first, then arrival
    assert select("paper", frg, ["c", "b"], 1, {"b": 5, "c": 1}) == ["b"]
    assert select("paper", frg, ["a", "b"], 2, {"a": 2, "b": 1}) == ["b", "a"]
    key = priority("paper", frg)
    assert key("a", 7) == (1, 7, 0)


def test_get_ready_passes_out_inout_first_then_compute_up_to_processors(policy):
    co = Coordinator(kitti(), 2, policy)
    assert co.get_ready() == ("s1", "s2")
    assert co.running_compute == {"s1", "s2"} and co.free_processors == 0
    assert co.get_ready() == ()
    co.done("s1")
    assert co.free_processors == 1
    assert co.get_ready() == ("s3",)


def test_inout_calls_take_no_processor():
    frg = FRG.from_edges(["a", "b", "c"], {}, kinds={"a": "inout", "b": "inout", "c": "compute"})
    co = Coordinator(frg, 1)
    assert co.get_ready() == ("a", "b", "c")
    assert co.running_compute == {"c"} and co.running == {"a", "b", "c"}


def test_a_call_is_ready_when_its_own_deps_are_done():
    co = Coordinator(kitti(), 8)
    assert set(co.get_ready()) == {f"s{i}" for i in range(1, 9)}
    co.done("s1", "s2", "s3", "s4")
    assert co.get_ready() == ("s9",)  # s10 still waits for s5..s8; rank 2 is not a barrier
    co.done("s9")
    assert co.get_ready() == ()
    co.done("s5", "s6", "s7", "s8")
    assert co.get_ready() == ("s10",)
    co.done("s10")
    assert co.get_ready() == ("s11",)
    assert co.is_active()
    co.done("s11")
    assert not co.is_active() and co.is_finished()


def test_done_names_the_call_that_was_not_passed_out():
    co = Coordinator(kitti(), 2)
    co.get_ready()
    with pytest.raises(ValueError, match=r"done\(\): call 's3' was not passed out by get_ready\(\)"):
        co.done("s3")
    with pytest.raises(ValueError, match="'nope' is not a call of the graph"):
        co.done("nope")
    co.done("s1")
    with pytest.raises(ValueError, match="call 's1' is already done"):
        co.done("s1")


def test_done_changes_nothing_when_one_id_is_bad():
    co = Coordinator(kitti(), 2)
    co.get_ready()
    with pytest.raises(ValueError):
        co.done("s1", "s5")
    assert co.running == {"s1", "s2"} and co.finished == frozenset()


def test_failed_frees_the_processor_and_blocks_successors():
    co = Coordinator(kitti(), 4)
    co.get_ready()
    co.failed("s1")
    assert co.failed_calls == {"s1"} and co.free_processors == 1
    assert co.get_ready() == ("s5",)
    co.done("s2", "s3", "s4", "s5")
    assert co.get_ready() == ("s6", "s7", "s8")
    co.done("s6", "s7", "s8")
    assert co.get_ready() == ("s10",)
    co.done("s10")
    assert not co.is_active() and not co.is_finished()  # s9, s11 are blocked behind s1


def test_reset_reruns_calls_and_their_descendants():
    co = Coordinator(kitti(), 8)
    co.get_ready()
    co.done(*(f"s{i}" for i in range(1, 9)))
    assert co.get_ready() == ("s9", "s10")
    co.done("s9", "s10")
    assert co.get_ready() == ("s11",)
    co.failed("s11")
    assert co.reset("s2") == {"s2", "s9", "s11"}
    assert co.finished == {f"s{i}" for i in range(1, 11)} - {"s2", "s9"}
    assert co.failed_calls == frozenset()
    assert co.get_ready() == ("s2",)
    co.done("s2")
    assert co.get_ready() == ("s9",)
    co.done("s9")
    assert co.get_ready() == ("s11",)
    co.done("s11")
    assert co.is_finished()


def test_reset_refuses_running_calls():
    co = Coordinator(kitti(), 8)
    co.get_ready()
    with pytest.raises(ValueError, match="cannot reset running call"):
        co.reset("s1")


def test_reset_of_a_ready_call_keeps_it_ready_once():
    co = Coordinator(kitti(), 1)
    assert co.get_ready() == ("s1",)
    co.reset("s2")
    assert co.ready == {f"s{i}" for i in range(2, 9)}
    co.done("s1")
    assert co.get_ready() == ("s2",)


def test_coordinator_can_start_with_calls_done():
    co = Coordinator(kitti(), 2, done=[f"s{i}" for i in range(1, 9)])
    assert co.get_ready() == ("s9", "s10")
    with pytest.raises(ValueError, match="done names 'zz'"):
        Coordinator(kitti(), 2, done=["zz"])


def test_forget_is_reset():
    assert Coordinator.forget is Coordinator.reset


@settings(max_examples=100, deadline=None)
@given(dags(), st.integers(1, 4), st.sampled_from(POLICIES), st.randoms(use_true_random=False))
def test_any_completion_order_runs_every_call_once_within_the_processor_bound(frg, processors, policy, rnd):
    co = Coordinator(frg, processors, policy)
    started: list[str] = []
    done: set[str] = set()
    while co.is_active():
        batch = co.get_ready()
        for c in batch:
            assert frg.deps[c] <= done
        started.extend(batch)
        assert len(co.running_compute) <= processors
        running = sorted(co.running)
        assert running, "active but nothing running after get_ready()"
        finished = rnd.sample(running, rnd.randint(1, len(running)))
        co.done(*finished)
        done.update(finished)
    assert sorted(started) == sorted(frg.ids) and co.is_finished()


# ---------------------------------------------------------------- resources


def reference_batches(frg, processors, policy, rnd):
    """Today's processors-only coordinator, written out with the pure `select`: every ready
    inout call in the order they became ready, then `select` on the free processors."""
    missing = {c: len(frg.deps[c]) for c in frg.ids}
    arrival: dict[str, int] = {}
    order = 0
    ready_inout: list[str] = []
    ready_compute: set[str] = set()
    running: set[str] = set()

    def arrive(c):
        nonlocal order
        order += 1
        arrival[c] = order
        (ready_inout.append if frg.kind[c] == "inout" else ready_compute.add)(c)

    for c in frg.ids:
        if not missing[c]:
            arrive(c)
    while ready_inout or ready_compute or running:
        free = processors - sum(frg.kind[c] == "compute" for c in running)
        batch = list(ready_inout) + select(policy, frg, ready_compute, free, arrival)
        ready_inout.clear()
        ready_compute.difference_update(batch)
        running.update(batch)
        finished = rnd.sample(sorted(running), rnd.randint(1, len(running)))
        yield tuple(batch), finished
        running.difference_update(finished)
        for f in finished:
            for s in sorted(frg.succs[f], key=frg.index):
                missing[s] -= 1
                if not missing[s]:
                    arrive(s)


@settings(max_examples=150, deadline=None)
@given(dags(), st.integers(1, 4), st.sampled_from(POLICIES), st.integers(0, 2**32 - 1))
def test_with_only_processors_the_coordinator_is_exactly_todays(frg, processors, policy, seed):
    import random

    plain = Coordinator(frg, processors, policy)
    unused = Coordinator(frg, processors, policy, resources={"search-api": 2}, gpus=[{"id": 0, "mem_gb": 80}])
    for batch, finished in reference_batches(frg, processors, policy, random.Random(seed)):
        assert plain.get_ready() == batch
        assert unused.get_ready() == batch
        plain.done(*finished)
        unused.done(*finished)
    assert plain.is_finished() and unused.is_finished()


def test_two_gpu_calls_share_a_device_when_their_memory_fits():
    frg = FRG.from_edges(
        ["g1", "g2", "g3"], {}, costs={"g1": 3, "g2": 2, "g3": 1},
        resources={"g1": {"gpu_mem_gb": 50}, "g2": {"gpu_mem_gb": 30}, "g3": {"gpu_mem_gb": 40}},
    )
    co = Coordinator(frg, 4, gpus=[{"id": 0, "mem_gb": 80}])
    assert co.get_ready() == ("g1", "g2")  # g3 (40) does not fit beside 50 + 30
    assert co.device_of("g1") == co.device_of("g2") == 0 and co.free("gpu_mem_gb") == 0
    co.done("g2")
    assert co.get_ready() == ()  # 30 free: still not 40
    co.done("g1")
    assert co.get_ready() == ("g3",) and co.device_of("g1") is None


def test_a_call_that_does_not_fit_is_passed_over_for_one_that_does():
    # critical path order: big (cost 5) first, then mid (3), then small (1)
    frg = FRG.from_edges(
        ["small", "mid", "big"], {}, costs={"small": 1, "mid": 3, "big": 5},
        resources={"small": {"gpu_mem_gb": 10}, "mid": {"gpu_mem_gb": 40}, "big": {"gpu_mem_gb": 60}},
    )
    co = Coordinator(frg, 3, gpus=[{"id": 0, "mem_gb": 80}])
    assert co.get_ready() == ("big", "small")


def test_an_api_class_bounds_inout_calls_and_they_start_in_policy_order():
    frg = FRG.from_edges(
        ["q1", "q2", "q3", "x"], {"x": ["q3"]}, kinds={c: "inout" for c in ["q1", "q2", "q3", "x"]},
        resources={c: {"search-api": 1} for c in ["q1", "q2", "q3"]},
    )
    co = Coordinator(frg, 1, resources={"search-api": 2})
    assert co.get_ready() == ("q3", "q1")  # q3 leads to x: longer path
    assert co.free("search-api") == 0 and co.running_compute == frozenset()
    co.done("q1")
    assert co.get_ready() == ("q2",)


def test_a_multi_core_call_holds_several_processors():
    frg = FRG.from_edges(["wide", "a", "b"], {}, costs={"wide": 2}, resources={"wide": {"processors": 2}})
    co = Coordinator(frg, 3)
    assert co.get_ready() == ("wide", "a") and co.free_processors == 0
    co.done("a")
    assert co.get_ready() == ("b",)
    co.done("wide")
    assert co.free_processors == 2


def test_failed_gives_back_what_a_call_held():
    frg = FRG.from_edges(["g1", "g2"], {}, resources={"g1": {"gpu_mem_gb": 60}, "g2": {"gpu_mem_gb": 60}})
    co = Coordinator(frg, 2, gpus=[{"id": 0, "mem_gb": 80}])
    (first,) = co.get_ready()
    co.failed(first)
    assert co.free("gpu_mem_gb") == 80 and co.get_ready() == tuple(c for c in ("g1", "g2") if c != first)


CAPS = {"api": 2}
DEVICES = [{"id": 0, "mem_gb": 80}, {"id": 1, "mem_gb": 80}]


@settings(max_examples=150, deadline=None)
@given(resource_dags(), st.integers(2, 4), st.sampled_from(POLICIES), st.randoms(use_true_random=False), st.booleans())
def test_running_calls_never_exceed_a_capacity_and_nothing_that_fits_is_left_waiting(frg, processors, policy, rnd, devices):
    gpus = DEVICES if devices else None
    resources = CAPS if devices else {**CAPS, "gpu_mem_gb": 80}
    co = Coordinator(frg, processors, policy, resources=resources, gpus=gpus)
    caps = co.capacities.amounts
    key = priority(policy, frg)
    started: list[str] = []
    while co.is_active():
        batch = co.get_ready()
        started.extend(batch)
        held = [c for c in batch if frg.demand[c]]
        running = sorted(co.running)
        for r, cap in caps.items():
            assert sum(frg.demand[c].get(r, 0) for c in running) <= cap
        if gpus:
            for d in gpus:
                on = [c for c in running if co.device_of(c) == d["id"]]
                assert sum(frg.demand[c]["gpu_mem_gb"] for c in on) <= d["mem_gb"]
            assert all(co.device_of(c) is not None for c in running if frg.demand[c].get("gpu_mem_gb"))
        device_free = {
            d["id"]: d["mem_gb"] - sum(frg.demand[c]["gpu_mem_gb"] for c in running if co.device_of(c) == d["id"])
            for d in gpus or ()
        }
        for c in co.ready:  # list scheduling: whatever still waits does not fit now
            need = frg.demand[c]
            short = any(need[r] > co.free(r) for r in need)
            no_device = bool(gpus) and need.get("gpu_mem_gb", 0) > max(device_free.values())
            assert short or no_device, (c, need)
        if policy == "critical-path":  # admitted in policy order (arrival does not enter this key)
            keys = [key(c, 0) for c in held]
            assert keys == sorted(keys)
        finished = rnd.sample(running, rnd.randint(1, len(running)))
        co.done(*finished)
    assert sorted(started) == sorted(frg.ids) and co.is_finished()
