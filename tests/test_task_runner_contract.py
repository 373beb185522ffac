"""The TaskRunner contract Prefect's own runners keep (what Prefect's tests/test_task_runners.py
checks of ThreadPoolTaskRunner), checked on LLMOrchTaskRunner with plain Prefect tasks:
submit/map/wait, futures' results and states, failures, duplicate/__eq__, starting twice,
pickling, tags, async tasks. Written here for our runner, not copied."""

from __future__ import annotations

import os
import time

import cloudpickle
import pytest
from prefect import flow, tags, task
from prefect.futures import wait

from prefect_llmorch.engine.compiler import final_state
from prefect_llmorch.engine.runner import LLMOrchTaskRunner

pytestmark = pytest.mark.usefixtures("prefect_harness")


@task
def pair(a: object, b: object) -> tuple[object, object]:
    return a, b


@task
def stamped(label: str) -> tuple[str, float, float, int]:
    start = time.time()
    time.sleep(0.05)
    return label, start, time.time(), os.getpid()


@task
def explode() -> None:
    raise ValueError("exploded on purpose")


@task
async def async_pair(a: object, b: object) -> tuple[object, object]:
    return a, b


@task
def current_tags() -> set[str]:
    from prefect.context import TagsContext

    return set(TagsContext.get().current_tags)


@task
def pid() -> int:
    return os.getpid()


def runner() -> LLMOrchTaskRunner:
    return LLMOrchTaskRunner(processors=2, concurrency_limit=None)


def test_submit_returns_a_future_whose_result_and_state_are_the_task_s() -> None:
    @flow(task_runner=runner())
    def f():  # noqa: ANN202
        fut = pair.submit(1, b="x")
        fut.wait()
        return fut.result(), final_state(fut).is_completed(), fut.task_run_id

    result, completed, run_id = f()
    assert result == (1, "x") and completed and run_id is not None


def test_map_runs_one_task_run_per_item_in_order() -> None:
    @flow(task_runner=runner())
    def f() -> list[tuple[object, object]]:
        return pair.map([1, 2, 3], ["a", "b", "c"]).result()

    assert f() == [(1, "a"), (2, "b"), (3, "c")]


def test_a_future_passed_as_a_parameter_is_resolved_to_its_result_first() -> None:
    @flow(task_runner=runner())
    def f():  # noqa: ANN202
        first = stamped.submit("first")
        second = pair.submit(first, "then")
        return second.result()

    (label, _, _, _), then = f()
    assert (label, then) == ("first", "then")


def test_wait_for_starts_a_task_run_only_after_the_ones_it_waits_for_ended() -> None:
    @flow(task_runner=runner())
    def f():  # noqa: ANN202
        a = stamped.submit("a")
        b = stamped.submit("b", wait_for=[a])
        return a.result(), b.result()

    (_, _, a_end, _), (_, b_start, _, _) = f()
    assert b_start >= a_end


def test_a_failing_task_s_future_holds_a_failed_state_and_result_raises() -> None:
    @flow(task_runner=runner())
    def f():  # noqa: ANN202
        fut = explode.submit()
        wait([fut])
        state = final_state(fut)
        with pytest.raises(ValueError, match="exploded on purpose"):
            fut.result()
        return state.is_failed()

    assert f() is True


def test_a_task_using_a_failed_result_does_not_run() -> None:
    @flow(task_runner=runner())
    def f():  # noqa: ANN202
        bad = explode.submit()
        after = pair.submit(bad, 1)
        wait([after])
        return final_state(after)

    state = f(return_state=True).result(raise_on_failure=False)
    assert not state.is_completed() and not state.is_running()


def test_async_tasks_run_and_return_their_results() -> None:
    @flow(task_runner=runner())
    def f() -> list[tuple[object, object]]:
        return [fut.result() for fut in [async_pair.submit(i, i + 1) for i in range(3)]]

    assert f() == [(0, 1), (1, 2), (2, 3)]


def test_the_tags_context_reaches_the_task_and_its_kind() -> None:
    @flow(task_runner=runner())
    def f():  # noqa: ANN202
        with tags("mine"):
            tagged = current_tags.submit()
        with tags("compute"):
            where = pid.submit()
        return tagged.result(), where.result()

    seen, where = f()
    assert "mine" in seen  # an inout task runs in the flow process, inside its run context
    # tagged compute by the context: its function ran in a worker process (where no Prefect
    # run context exists: a compute task's function sees no TagsContext, no run logger)
    assert where != os.getpid()


def test_duplicate_is_an_equal_runner_that_is_not_started() -> None:
    r = LLMOrchTaskRunner(processors=3, policy="paper", concurrency_limit="x", preload=("json",))
    d = r.duplicate()
    assert d == r and d is not r and hash(d) == hash(r)
    assert not d._started and d.pool is None
    assert r != LLMOrchTaskRunner(processors=3, policy="critical-path", concurrency_limit="x", preload=("json",))
    assert r != object()


def test_a_started_runner_refuses_to_start_again_and_to_submit_once_stopped() -> None:
    r = LLMOrchTaskRunner(processors=1, concurrency_limit=None)
    with r:
        with pytest.raises(RuntimeError, match="already started"):
            r.__enter__()
    with pytest.raises(RuntimeError, match="not started"):
        r.submit(pair, {"a": 1, "b": 2})


def test_the_runner_survives_cloudpickle_as_its_settings() -> None:
    r = LLMOrchTaskRunner(processors=2, policy="paper", concurrency_limit=None, pin=True, preload=("json",))
    with r:
        copy = cloudpickle.loads(cloudpickle.dumps(r))
    assert copy == r and not copy._started and copy.pool is None


def test_cancel_all_outside_a_run_and_twice_is_harmless() -> None:
    r = LLMOrchTaskRunner(processors=1, concurrency_limit=None)
    r.cancel_all()
    r.cancel_all()
