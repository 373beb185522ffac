"""`Coordinator.grow`: the runner's graph of submissions, grown as they arrive, keeps every
invariant of the Coordinator, and a graph grown whole before the first `get_ready` is
coordinated exactly like one built whole (what makes the runner's start order the
simulator's). Pure; hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_llmorch.graph import FRG
from prefect_llmorch.schedule.policy import POLICIES, Coordinator


@st.composite
def plans(draw):  # noqa: ANN001, ANN201
    """A random DAG in plan order (deps on earlier calls only), kinds and costs."""
    n = draw(st.integers(1, 14))
    ids = [f"s{i}" for i in range(n)]
    deps = {cid: draw(st.sets(st.sampled_from(ids[:i]), max_size=3)) if i else set() for i, cid in enumerate(ids)}
    kinds = {cid: draw(st.sampled_from(["inout", "compute"])) for cid in ids}
    costs = {cid: float(draw(st.integers(0, 4))) for cid in ids}
    return ids, deps, kinds, costs


def prefix(ids, deps, kinds, costs, k):  # noqa: ANN001, ANN201
    part = ids[:k]
    return FRG.from_edges(part, {c: deps[c] for c in part}, {c: kinds[c] for c in part}, {c: costs[c] for c in part})


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=60, deadline=None)
@given(plan=plans(), processors=st.integers(1, 3), data=st.data())
def test_growing_while_running_keeps_the_coordinator_s_invariants(plan, processors, policy, data) -> None:  # noqa: ANN001
    ids, deps, kinds, costs = plan
    co = Coordinator(prefix(ids, deps, kinds, costs, 1), processors, policy)
    known, passed, done = 1, [], set()
    while len(done) < len(ids):
        if known < len(ids) and data.draw(st.booleans()):
            known = data.draw(st.integers(known + 1, len(ids)))
            co.grow(prefix(ids, deps, kinds, costs, known))
        for cid in co.get_ready():
            assert deps[cid] <= done, cid  # only once its inputs are done
            passed.append(cid)
        running = [c for c in passed if c not in done]
        assert sum(kinds[c] == "compute" for c in running) <= processors
        if running:
            finished = data.draw(st.sampled_from(running))
            co.done(finished)
            done.add(finished)
        elif known < len(ids):
            known += 1
            co.grow(prefix(ids, deps, kinds, costs, known))
    assert sorted(passed) == sorted(ids) and co.is_finished()


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=60, deadline=None)
@given(plan=plans(), processors=st.integers(1, 3), data=st.data())
def test_a_graph_grown_whole_before_it_runs_is_coordinated_like_one_built_whole(plan, processors, policy, data) -> None:  # noqa: ANN001
    ids, deps, kinds, costs = plan
    grown = Coordinator(prefix(ids, deps, kinds, costs, 1), processors, policy)
    grown.grow(prefix(ids, deps, kinds, costs, len(ids)))
    whole = Coordinator(prefix(ids, deps, kinds, costs, len(ids)), processors, policy)
    running: list[str] = []
    while whole.is_active():
        started = whole.get_ready()
        assert grown.get_ready() == started
        running.extend(started)
        finished = data.draw(st.sampled_from(running))
        running.remove(finished)
        whole.done(finished)
        grown.done(finished)
    assert grown.is_finished() and whole.is_finished()


def test_grow_refuses_a_graph_that_changes_a_known_call() -> None:
    co = Coordinator(FRG.from_edges(["a", "b"], {"b": ["a"]}, {"a": "compute", "b": "compute"}), 1)
    with pytest.raises(ValueError, match="'b' must keep its deps and kind"):
        co.grow(FRG.from_edges(["a", "b", "c"], {}, {"a": "compute", "b": "compute", "c": "inout"}))
