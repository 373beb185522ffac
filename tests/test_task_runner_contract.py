"""The TaskRunner contract Prefect's own runners keep (what Prefect's tests/test_task_runners.py
checks of ThreadPoolTaskRunner), checked on LLMOrchTaskRunner with plain Prefect tasks:
submit/map/wait, futures' results and states, failures, duplicate/__eq__, starting twice,
pickling, tags, async tasks. Written here for our runner, not copied."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import Future
from typing import Any
from uuid import UUID

import cloudpickle
import pytest
from prefect import flow, tags, task
from prefect.futures import PrefectFuture, PrefectWrappedFuture, wait
from prefect.states import Completed, Running

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
    assert where != os.getpid()  # tagged compute by the context: its function ran in a worker process


@task(tags={"compute"})
def pid_and_tags() -> tuple[int, set[str]]:
    from prefect.context import TagsContext

    return os.getpid(), set(TagsContext.get().current_tags)


def test_a_compute_task_run_and_its_function_see_the_submitting_context_s_tags() -> None:
    """As with Prefect's runners: the task run's tags are its own and the context's, and its
    function sees the context's (here in a worker process, outside the flow run)."""
    from prefect.client.orchestration import get_client

    @flow(task_runner=runner())
    def f():  # noqa: ANN202
        with tags("tag1", "tag2"):
            fut = pid_and_tags.submit()
        return fut.result(), fut.task_run_id

    (where, seen), task_run_id = f()
    assert where != os.getpid()
    assert seen == {"tag1", "tag2"}
    with get_client(sync_client=True) as client:
        assert set(client.read_task_run(task_run_id).tags) == {"compute", "tag1", "tag2"}


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


# -- ported from Prefect's own tests ------------------------------------------------------
# Prefect's tests/test_task_runners.py (PrefectHQ/prefect, `TestThreadPoolTaskRunner` and
# `TestProcessPoolTaskRunner`), run on LLMOrchTaskRunner for both kinds of task run: `inout`
# (a plain task: its engine and function run on a thread of this process, as under
# ThreadPoolTaskRunner) and `compute` (its function runs in a worker process, as under
# ProcessPoolTaskRunner). Same names, same assertions, except where a comment says why not.

KINDS = ("inout", "compute")


def _param1_param2(param1: Any, param2: Any) -> tuple[Any, Any]:
    return param1, param2


async def _param1_param2_async(param1: Any, param2: Any) -> tuple[Any, Any]:
    return param1, param2


def _context_matters(param1: Any = None, param2: Any = None) -> set[str]:
    from prefect.context import TagsContext

    return set(TagsContext.get().current_tags)


async def _context_matters_async(param1: Any = None, param2: Any = None) -> set[str]:
    from prefect.context import TagsContext

    return set(TagsContext.get().current_tags)


def _raises() -> None:
    raise ValueError("Test exception from subprocess")


async def _raises_async() -> None:
    raise RuntimeError("Test async exception from subprocess")


def _large(data: list[int]) -> tuple[int, int]:
    return len(data), sum(data)


def _slow(duration: float = 0.1) -> str:
    time.sleep(duration)
    return "completed"


def _add_one(x: int) -> int:
    return x + 1


def _add(x: int, y: int) -> int:
    return x + y


def _fail() -> None:
    raise RuntimeError("I failed!")


def _downstream() -> str:
    return "downstream completed"


def _of_kind(fn: Any, kind: str) -> Any:
    """A task of `fn`, tagged `compute` for the compute kind (its function then runs in a
    worker process, which imports it by name: hence module-level functions)."""
    return task(fn, tags={"compute"}) if kind == "compute" else task(fn)


class _MockFuture(PrefectWrappedFuture[Any, Future]):
    """Prefect's `MockFuture`: a future of somewhere else whose result is `data`."""

    def __init__(self, data: Any = 42) -> None:
        super().__init__(uuid.uuid4(), Future())
        self._data = data
        self._state = Running()

    def wait(self, timeout: float | None = None) -> None:
        self._state = Completed(data=self._data)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        self.wait()
        return self._state.result()

    @property
    def state(self) -> Any:
        return self._state


def _one() -> LLMOrchTaskRunner:
    return LLMOrchTaskRunner(processors=1, concurrency_limit=None)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each kind of task run in turn: `inout` (threads) and `compute` (worker processes)."""
    return request.param


class TestPrefectsTaskRunnerTests:
    def test_duplicate(self) -> None:
        runner = LLMOrchTaskRunner(processors=3)
        duplicate_runner = runner.duplicate()
        assert isinstance(duplicate_runner, LLMOrchTaskRunner)
        assert duplicate_runner is not runner
        assert duplicate_runner == runner

    def test_equality(self) -> None:
        assert LLMOrchTaskRunner(processors=4) == LLMOrchTaskRunner(processors=4)
        assert LLMOrchTaskRunner(processors=4) != LLMOrchTaskRunner(processors=2)
        assert LLMOrchTaskRunner(processors=4) != "not a runner"

    def test_runner_must_be_started(self) -> None:
        with pytest.raises(RuntimeError, match="Task runner is not started"):
            _one().submit(task(_param1_param2), {})

    def test_map_needs_a_started_runner_too(self) -> None:
        # Prefect's base `TaskRunner.map` text, which our runner inherits.
        with pytest.raises(RuntimeError, match="The task runner must be started before submitting work."):
            _one().map(task(_param1_param2), {"param1": [1], "param2": [2]})

    def test_submit_sync_task(self, kind: str) -> None:
        with _one() as runner:
            future = runner.submit(_of_kind(_param1_param2, kind), {"param1": 1, "param2": 2})
            assert isinstance(future, PrefectFuture)
            assert isinstance(future.task_run_id, UUID)
            assert isinstance(future.wrapped_future, Future)
            assert future.result() == (1, 2)

    def test_submit_async_task(self, kind: str) -> None:
        with _one() as runner:
            future = runner.submit(_of_kind(_param1_param2_async, kind), {"param1": 1, "param2": 2})
            assert isinstance(future, PrefectFuture)
            assert future.result() == (1, 2)

    def test_submit_sync_task_receives_context(self, kind: str) -> None:
        with tags("tag1", "tag2"):
            with _one() as runner:
                future = runner.submit(_of_kind(_context_matters, kind), {})
                assert isinstance(future, PrefectFuture)
                assert future.result() == {"tag1", "tag2"}

    def test_submit_async_task_receives_context(self, kind: str) -> None:
        with tags("tag1", "tag2"):
            with _one() as runner:
                future = runner.submit(_of_kind(_context_matters_async, kind), {})
                assert future.result() == {"tag1", "tag2"}

    def test_map_sync_task(self, kind: str) -> None:
        with _one() as runner:
            futures = runner.map(_of_kind(_param1_param2, kind), {"param1": [1, 2, 3], "param2": [4, 5, 6]})
            assert all(isinstance(future, PrefectFuture) for future in futures)
            assert [future.result() for future in futures] == [(1, 4), (2, 5), (3, 6)]

    def test_map_async_task(self, kind: str) -> None:
        with _one() as runner:
            futures = runner.map(_of_kind(_param1_param2_async, kind), {"param1": [1, 2, 3], "param2": [4, 5, 6]})
            assert [future.result() for future in futures] == [(1, 4), (2, 5), (3, 6)]

    def test_map_sync_task_with_context(self, kind: str) -> None:
        with tags("tag1", "tag2"):
            with _one() as runner:
                futures = runner.map(_of_kind(_context_matters, kind), {"param1": [1, 2, 3], "param2": [4, 5, 6]})
                assert [future.result() for future in futures] == [{"tag1", "tag2"}] * 3

    def test_map_async_task_with_context(self, kind: str) -> None:
        with tags("tag1", "tag2"):
            with _one() as runner:
                futures = runner.map(_of_kind(_context_matters_async, kind), {"param1": [1, 2, 3], "param2": [4, 5, 6]})
                assert [future.result() for future in futures] == [{"tag1", "tag2"}] * 3

    def test_map_with_future_resolved_to_list(self, kind: str) -> None:
        with _one() as runner:
            future = _MockFuture(data=[1, 2, 3])
            futures = runner.map(_of_kind(_param1_param2, kind), {"param1": future, "param2": future})
            assert [future.result() for future in futures] == [(1, 1), (2, 2), (3, 3)]

    def test_task_raises_exception(self, kind: str) -> None:
        with _one() as runner:
            future = runner.submit(_of_kind(_raises, kind), {})
            with pytest.raises(ValueError, match="Test exception from subprocess"):
                future.result()

    def test_async_task_raises_exception(self, kind: str) -> None:
        with _one() as runner:
            future = runner.submit(_of_kind(_raises_async, kind), {})
            with pytest.raises(RuntimeError, match="Test async exception from subprocess"):
                future.result()

    def test_submit_task_with_large_parameters(self, kind: str) -> None:
        with _one() as runner:
            future = runner.submit(_of_kind(_large, kind), {"data": list(range(10000))})
            assert future.result() == (10000, sum(range(10000)))

    def test_cancel_all(self, kind: str) -> None:
        # Prefect asserts `runner._executor is None`: the executor is shut down, so the
        # runner takes no more work. Here the same through the public surface.
        runner = _one()
        with runner:
            running = runner.submit(_of_kind(_slow, kind), {"duration": 1.0})
            queued = runner.submit(_of_kind(_slow, kind), {"duration": 1.0})
            runner.cancel_all()
            with pytest.raises(RuntimeError, match="Task runner is not started"):
                runner.submit(_of_kind(_slow, kind), {"duration": 0.0})
            wait([running, queued], timeout=60)
            assert final_state(queued).is_cancelled()
            if kind == "compute":  # its worker process was killed; an inout thread runs on
                assert final_state(running).is_cancelled()
        with runner:  # entered again, it has a new executor (as Prefect's runners)
            assert runner.submit(_of_kind(_add_one, kind), {"x": 1}).result() == 2

    def test_executor_shutdown_on_exit(self) -> None:
        runner = _one()
        with runner:
            runner.submit(task(_slow), {"duration": 0.0}).wait()
        with pytest.raises(RuntimeError, match="Task runner is not started"):
            runner.submit(task(_slow), {"duration": 0.0})

    def test_submit_with_wait_for(self, kind: str) -> None:
        add_one = _of_kind(_add_one, kind)

        @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
        def test_flow():  # noqa: ANN202
            future_a = add_one.submit(1)
            future_b = add_one.submit(2, wait_for=[future_a])
            future_c = add_one.submit(3, wait_for=[future_b])
            return future_a.result(), future_b.result(), future_c.result()

        assert test_flow() == (2, 3, 4)

    def test_submit_with_wait_for_upstream_failure(self, kind: str) -> None:
        failing_task, downstream_task = _of_kind(_fail, kind), _of_kind(_downstream, kind)

        @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
        def test_flow():  # noqa: ANN202
            upstream = failing_task.submit()
            downstream = downstream_task.submit(wait_for=[upstream])
            upstream.wait()
            downstream.wait()
            return upstream.state, downstream.state

        upstream_state, downstream_state = test_flow()
        assert upstream_state.is_failed()
        assert downstream_state.is_pending()
        assert downstream_state.name == "NotReady"

    def test_submit_with_multiple_futures_as_parameters(self, kind: str) -> None:
        add = _of_kind(_add, kind)

        @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
        def test_flow():  # noqa: ANN202
            future_a = add.submit(1, 2)
            future_b = add.submit(3, 4)
            future_c = add.submit(future_a, future_b)
            return future_a.result(), future_b.result(), future_c.result()

        assert test_flow() == (3, 7, 10)

    def test_handles_recursively_submitted_tasks(self) -> None:
        # Prefect's submits 33 levels (ThreadPoolTaskRunner) or 5 (ProcessPoolTaskRunner); an
        # inout task holds no processor while it waits, so nesting depth is not bounded by P.
        @task
        def recursive_task(n: int) -> int:
            if n == 0:
                return n
            return recursive_task.submit(n - 1).result()

        @flow(task_runner=_one())
        def test_flow():  # noqa: ANN202
            return recursive_task.submit(5)

        assert test_flow().result() == 0


def _submits_a_child() -> int:
    return task(_add_one).submit(1).result()


def test_a_task_submitted_inside_a_compute_call_fails_saying_why_and_what_to_do() -> None:
    """A compute task's function runs in a worker process, outside the flow run: Prefect
    finds no task runner there. The error says so and what to do instead (README, "Your own
    functions"); Prefect's `Unable to determine task runner` stays its cause."""
    from prefect_llmorch.engine.runner import NestedComputeSubmit

    parent = task(_submits_a_child, tags={"compute"})

    @flow(task_runner=runner())
    def f():  # noqa: ANN202
        fut = parent.submit()
        wait([fut])
        try:
            fut.result()
        except NestedComputeSubmit as exc:
            return final_state(fut).is_failed(), str(exc), str(exc.__cause__)
        return "ran", "", ""

    failed, message, cause = f()
    assert failed is True
    assert "'_submits_a_child' is tagged compute" in message and "worker process" in message
    assert "tag this task inout" in message and "from the flow" in message
    assert "Unable to determine task runner" in cause
