"""Policies (`select`) and the graphlib-like `Coordinator`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs import kitti
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


@st.composite
def dags(draw):
    n = draw(st.integers(1, 20))
    ids = [f"c{i}" for i in range(n)]
    deps = {c: draw(st.sets(st.sampled_from(ids[:i]), max_size=3)) if i else set() for i, c in enumerate(ids)}
    kinds = {c: draw(st.sampled_from(["inout", "compute"])) for c in ids}
    return FRG.from_edges(ids, deps, kinds)


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
