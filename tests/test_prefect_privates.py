"""Every Prefect (and prefect-dask) private name or internal behaviour the engine relies on,
one test each, so an upgrade that changes one fails here, loudly and by name, instead of
somewhere deep in a run. The list, with why and what breaks, is in CONTRIBUTING.md
("Prefect private names"); keep the two in step."""

from __future__ import annotations

import inspect
import threading
import uuid

import pytest


def test_uuid7_makes_time_ordered_task_run_ids() -> None:
    from prefect._internal.uuid7 import uuid7

    first, second = uuid7(), uuid7()
    assert isinstance(first, uuid.UUID) and first.version == 7
    assert first.bytes[:6] <= second.bytes[:6]  # the millisecond timestamp leads


def test_an_untagged_task_run_makes_no_tag_slot_request() -> None:
    """The design of engine/compiler.py: our task runs carry no tags because Prefect's task
    engine asks for `tag:<name>` slots (a write) only for the tags a task run has, and its
    `concurrency` returns at once for no names. If either changes, calls pay that write again."""
    from prefect import task_engine
    from prefect.concurrency import _sync

    assert 'names=[f"tag:{tag}" for tag in self.task_run.tags]' in inspect.getsource(task_engine)
    source = inspect.getsource(_sync.concurrency)
    assert "if not names:" in source and source.index("if not names:") < source.index("acquire_concurrency_slots_with_lease(")


def test_run_task_sync_and_async_take_what_the_runner_passes() -> None:
    from prefect.task_engine import run_task_async, run_task_sync

    wanted = {"task", "task_run_id", "parameters", "wait_for", "return_type", "dependencies"}
    for fn in (run_task_sync, run_task_async):
        assert wanted <= set(inspect.signature(fn).parameters), fn.__name__


def test_the_engine_calls_the_task_s_fn_attribute_with_bound_parameters() -> None:
    """A plain compute task runs through a copy whose `fn` ships the call to a worker."""
    from prefect import task_engine

    assert "call_with_parameters(self.task.fn" in inspect.getsource(task_engine)


def test_task_runner_keeps_started_in_a_protected_attribute() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    runner = ThreadPoolTaskRunner(max_workers=1)
    assert runner._started is False
    with runner:
        assert runner._started is True
    assert runner._started is False


def test_prefect_concurrent_future_wraps_a_concurrent_future_by_task_run_id() -> None:
    import concurrent.futures

    from prefect.futures import PrefectConcurrentFuture
    from prefect.states import Completed

    inner: concurrent.futures.Future = concurrent.futures.Future()
    fut = PrefectConcurrentFuture(task_run_id=uuid.uuid4(), wrapped_future=inner)
    inner.set_result(Completed(data=1))
    fut.wait(timeout=0)
    assert fut.state.is_completed()  # final_state() relies on wait() keeping the final state


def test_the_flow_engine_calls_cancel_all_on_the_task_runner_when_a_run_is_cancelled() -> None:
    from prefect import flow_engine

    assert "task_runner.cancel_all()" in inspect.getsource(flow_engine)


def test_submitting_outside_a_flow_run_raises_the_message_the_runner_translates() -> None:
    from prefect import task

    from prefect_llmorch.engine.runner import _PREFECT_NO_RUNNER

    @task
    def t() -> None:
        return None

    with pytest.raises(RuntimeError, match=_PREFECT_NO_RUNNER):
        t.submit()


def test_dask_annotations_stay_in_their_context_and_client_submit_applies_them() -> None:
    """`dask.py` gives a compute-tagged plain task its `processor` with `dask.annotate(resources=)`
    around `DaskTaskRunner.submit`: the annotation must be this context's alone (a context
    variable since dask 2023.7, not the process-wide config other threads read) and
    `Client.submit` must apply it. It also reads `DaskTaskRunner.resolved_cluster_class`
    (public, undocumented) to give a `LocalCluster` its `processor` resource by default."""
    pytest.importorskip("prefect_dask")
    import dask
    import distributed
    from prefect_dask.task_runners import DaskTaskRunner

    seen: dict[str, object] = {}
    with dask.annotate(resources={"processor": 1}):
        other = threading.Thread(target=lambda: seen.setdefault("other thread", dask.get_annotations()))
        other.start()
        other.join()
        seen["here"] = dask.get_annotations()
    assert seen == {"other thread": {}, "here": {"resources": {"processor": 1}}}
    assert "dask.get_annotations()" in inspect.getsource(distributed.Client._graph_to_futures)
    assert DaskTaskRunner(cluster_class="distributed.LocalCluster").resolved_cluster_class is distributed.LocalCluster
    assert DaskTaskRunner().resolved_cluster_class is None


def test_the_server_app_reads_the_ephemeral_and_final_flags_from_the_environment() -> None:
    """`host/server.py` starts `create_app` as Prefect's own temporary server does, with
    `PREFECT__SERVER_EPHEMERAL=1` (no background services) and `PREFECT__SERVER_FINAL=1`."""
    from prefect.server.api import server

    source = inspect.getsource(server.create_app)
    assert 'os.getenv("PREFECT__SERVER_EPHEMERAL")' in source
    assert 'os.getenv("PREFECT__SERVER_FINAL")' in source
    assert "prefect.server.api.server:create_app" in inspect.getsource(server.SubprocessASGIServer)


def test_the_server_takes_its_database_configuration_from_models_dependencies() -> None:
    """`host/app.create_app` gives the embedded server its SQLite configuration (a retried
    request's transactions begin IMMEDIATE: `tests/test_server_app.py`) by setting
    `MODELS_DEPENDENCIES["database_config"]`, which `provide_database_interface` uses, as
    `temporary_database_config` sets it; the configuration subclasses `AioSqliteConfiguration`
    and passes `with_for_update` to its `begin_transaction`, which begins IMMEDIATE for it."""
    from prefect.server.database import configurations
    from prefect.server.database.dependencies import (
        MODELS_DEPENDENCIES,
        provide_database_interface,
        temporary_database_config,
    )

    from prefect_llmorch.host.app import sqlite_configuration

    ours = sqlite_configuration("sqlite+aiosqlite:///unused.db")
    assert isinstance(ours, configurations.AioSqliteConfiguration)
    assert "database_config" in MODELS_DEPENDENCIES
    with temporary_database_config(ours):
        assert MODELS_DEPENDENCIES["database_config"] is ours
        assert provide_database_interface().database_config is ours
    source = inspect.getsource(configurations.AioSqliteConfiguration.begin_transaction)
    assert '"IMMEDIATE" if with_for_update else "DEFERRED"' in source


def test_prefect_services_stop_from_threading_s_at_exit_callbacks() -> None:
    """`host/process.py` runs its RECORDS stage (the wait for the records, `flows/report.py`)
    from a `threading._register_atexit` callback, registered after Prefect's events worker
    registered its own, so it runs before that worker stops."""
    from prefect._internal.concurrency import services

    assert callable(getattr(threading, "_register_atexit", None)), "threading._register_atexit is gone"
    assert "threading._register_atexit(" in inspect.getsource(services), (
        "Prefect no longer stops its services from threading._register_atexit callbacks"
    )


def test_a_compiled_call_s_task_copied_from_a_template_equals_one_built_whole() -> None:
    """`Compiler._copy_of_template`: a compiled call's `Task` is a shallow copy of one built per
    function, given the call's `fn`, `name`, `task_run_name` and fresh lists and sets. If Prefect's
    `Task.__init__` starts deriving another attribute from those, this fails naming it."""
    from prefect import Task

    from prefect_llmorch.engine.caching import task_cache_options
    from prefect_llmorch.engine.compiler import CALL_ATTR, Compiler, Recorder
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.plan.parser import parse

    from toolboxes import toolbox

    plan = parse('s1: add(1, 2)\ns2: add(s1, 3)', toolbox)
    compiler = Compiler(frg=FRG.build(plan, toolbox), toolbox=toolbox, recorder=Recorder())
    compiler.on_failure.append(lambda task, task_run, state: None)
    first, second = (compiler.task_for(call, attempt) for call, attempt in zip(plan.calls, (0, 1)))
    assert first.fn is not second.fn and first.on_failure_hooks is not second.on_failure_hooks
    for call, attempt, copied in ((plan.calls[0], 0, first), (plan.calls[1], 1, second)):
        spec = toolbox[call.function]
        options = compiler._task_options(spec, call, attempt, task_cache_options(spec, call, enabled=False))
        whole = Task(fn=copied.fn, **options)
        mine = {k: v for k, v in vars(copied).items() if k != CALL_ATTR}
        assert set(mine) == set(vars(whole)), set(mine) ^ set(vars(whole))
        for key, value in vars(whole).items():
            assert mine[key] == value, f"Task.{key}: {mine[key]!r} copied, {value!r} built"
        assert copied.name == copied.task_run_name == f"{call.id} · add" + (" (repair 1)" if attempt else "")


def test_the_in_memory_broker_counts_messages_delivered_and_handled_per_topic() -> None:
    """`host/app.drained` holds the embedded server's shutdown until, per topic, the messages
    delivered to subscriptions (`published`) all were handled by consumers (`consumed`)."""
    from prefect.server.utilities.messaging import memory

    assert isinstance(memory.METRICS, dict), "prefect.server.utilities.messaging.memory.METRICS is gone"
    assert 'update_metric(self.topic.name, "published")' in inspect.getsource(memory.Subscription.deliver)
    assert 'update_metric(self.topic.name, "consumed")' in inspect.getsource(memory.Consumer._consume_loop)
