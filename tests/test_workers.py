"""WorkerPool: one call per worker process; a dead or hung worker fails only its call."""

from __future__ import annotations

import os
import threading

import pytest

from prefect_llmorch.procs.workers import CallCancelled, CallTimeout, Cancel, RemoteTraceback, WorkerDied, WorkerPool
from toolboxes import add, crunch, die, fail


@pytest.fixture(scope="module")
def pool():  # noqa: ANN201
    with WorkerPool(2) as p:
        yield p


def test_calls_run_in_worker_processes_with_timing(pool: WorkerPool) -> None:
    outcome = pool.run("c", crunch, (0.05,))
    assert outcome.value == outcome.pid != os.getpid()
    assert outcome.end - outcome.start >= 0.05 and outcome.worker in (0, 1)


def test_a_tool_exception_keeps_its_type_and_the_worker_traceback(pool: WorkerPool) -> None:
    with pytest.raises(ValueError, match="boom") as info:
        pool.run("f", fail, ("boom",))
    assert isinstance(info.value.__cause__, RemoteTraceback) and "fail" in str(info.value.__cause__)
    assert pool.run("a", add, (1, 2)).value == 3  # the worker is still there


def test_a_dead_worker_fails_its_call_and_is_replaced(pool: WorkerPool) -> None:
    with pytest.raises(WorkerDied, match="died while running it") as info:
        pool.run("s2 · die", die, (0.01,))
    assert info.value.call == "s2 · die"
    pids = {pool.run(f"x{i}", crunch, (0.01,)).pid for i in range(6)}
    assert info.value.pid not in pids and len(pool.pids) == 2


def test_a_timeout_kills_the_worker_process(pool: WorkerPool) -> None:
    with pytest.raises(CallTimeout, match="timeout of 0.2 s") as info:
        pool.run("h", crunch, (30,), timeout=0.2)
    import psutil

    assert _gone(info.value.pid)
    assert pool.run("after", add, (2, 2)).value == 4


def test_cancel_kills_the_running_call_s_worker_which_is_replaced(pool: WorkerPool) -> None:
    import psutil

    cancel = Cancel()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            pool.run("long", crunch, (30,), cancel=cancel)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    while not pool._running:  # the call reached its worker
        t.join(0.01)
    cancel.set("not needed any more")
    t.join(10)
    assert not t.is_alive()
    (exc,) = errors
    assert isinstance(exc, CallCancelled) and "long was cancelled (not needed any more)" in str(exc)
    assert _gone(exc.pid)
    assert pool.run("after", add, (2, 3)).value == 5
    import time

    deadline = time.monotonic() + 10  # the replacement starts in the background
    while len(pool.pids) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pool.pids) == 2 and exc.pid not in pool.pids


def test_a_cancelled_call_never_starts_and_a_finished_one_is_untouched(pool: WorkerPool) -> None:
    early = Cancel()
    early.set("before it started")
    with pytest.raises(CallCancelled, match="cancelled before it started"):
        pool.run("early", add, (1, 1), cancel=early)
    late = Cancel()
    pids = set(pool.pids)
    assert pool.run("done", add, (1, 1), cancel=late).value == 2
    late.set()  # after the end: no worker is killed
    assert set(pool.pids) == pids and pool.run("next", add, (2, 2)).value == 4


def test_shutdown_wakes_callers_waiting_for_a_worker() -> None:
    p = WorkerPool(1)
    errors: list[BaseException] = []
    def call(label: str, fn, *args) -> None:  # noqa: ANN001
        try:
            p.run(label, fn, args)
        except BaseException as exc:  # noqa: BLE001 - the pool is shut down under them
            errors.append(exc)

    busy = threading.Thread(target=call, args=("long", crunch, 1.0))
    busy.start()
    import time

    time.sleep(0.2)  # "long" holds the only worker
    w = threading.Thread(target=call, args=("waiting", add, 1, 1))
    w.start()
    p.shutdown()
    w.join(timeout=10)
    busy.join(timeout=10)
    assert not w.is_alive() and not busy.is_alive()
    assert any("shut down" in str(e) for e in errors)


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WorkerPool(0)


def test_functions_from_main_and_lambdas_run_without_reimporting_main(tmp_path) -> None:
    """A flow script's own functions work in workers; the script is not re-run there."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    marker = tmp_path / "ran"
    script.write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).open('a').write('x')\n"  # top-level code: must run once only
        "from prefect_llmorch.procs.workers import WorkerPool\n"
        "def square(x):\n    return x * x\n"
        "with WorkerPool(2) as p:\n"
        "    print(p.run('a', square, (7,)).value, p.run('b', lambda y: y + 1, (1,)).value)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["49", "2"]
    assert marker.read_text() == "x"


def test_cancel_token_runs_its_callbacks_once_and_forgets_unregistered_ones() -> None:
    cancel = Cancel()
    seen: list[str] = []
    cancel.on_set(lambda: seen.append("a"))
    forget = cancel.on_set(lambda: seen.append("b"))
    forget()  # the call ended: its callback must not run (nor keep what it refers to)
    cancel.set("why")
    cancel.set("again")  # one-shot
    assert seen == ["a"] and cancel.is_set() and cancel.reason == "why"
    cancel.on_set(lambda: seen.append("late"))  # registered after the cancel: runs at once
    assert seen == ["a", "late"]


def test_cancel_all_kills_every_running_call_and_refuses_later_ones() -> None:
    import psutil

    from prefect_llmorch.procs.pool import ProcessorPool

    with WorkerPool(2) as p:
        assert isinstance(p, ProcessorPool)
        errors: list[BaseException] = []
        started = threading.Barrier(3)

        def call(i: int) -> None:
            started.wait()
            try:
                p.run(f"long{i}", crunch, (30,))  # no token of its own: cancel_all still reaches it
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        started.wait()
        busy = set(p.pids)
        # each call holds a worker once the pool marked it running; wait for both (bounded)
        for _ in range(500):
            with p._lock:
                if len(p._running) == 2:
                    break
            threading.Event().wait(0.01)
        p.cancel_all("the flow run was cancelled")
        for t in threads:
            t.join(timeout=30)
        assert len(errors) == 2 and all(isinstance(e, CallCancelled) for e in errors), errors
        assert all("the flow run was cancelled" in str(e) for e in errors)
        assert all(_gone(q) for q in busy)
        with pytest.raises(CallCancelled, match="before it started"):
            p.run("later", add, (1, 2))


def test_a_function_that_cannot_be_pickled_is_not_sent_and_says_why(pool: WorkerPool) -> None:
    from prefect_llmorch.procs.pool import CallNotSent

    lock = threading.Lock()
    with pytest.raises(CallNotSent, match="cannot be pickled") as info:
        pool.run("s1 · locked", lambda: lock.locked())
    assert info.value.call == "s1 · locked" and isinstance(info.value, TypeError)
    assert pool.run("after", add, (1, 1)).value == 2


def test_a_larger_pool_starts_its_workers_together_and_puts_the_start_hook_back() -> None:
    from multiprocessing import spawn

    from prefect_llmorch.host.process import PROCESS
    from prefect_llmorch.procs import workers

    starts = PROCESS.hold(workers._Starts)
    with WorkerPool(4) as p:
        with starts.lock:  # the hook is out once no start is under way (another pool's may be)
            assert starts.count > 0 or spawn.get_preparation_data is not workers._without_main
        assert len(set(p.pids)) == 4
        assert {p.run(f"x{i}", add, (i, 0)).worker for i in range(8)} <= {0, 1, 2, 3}


def test_a_prestarted_pool_is_taken_by_the_runner_with_the_same_settings_only() -> None:
    import psutil

    from prefect_llmorch.procs.workers import prestart_pool, take_pool

    prestart_pool(2, preload=["json"])
    first = take_pool(2, preload=["json", "toolboxes"])  # same P: the prestarted pool, toolboxes warmed too
    try:
        assert first.run("a", add, (1, 2)).value == 3 and "toolboxes" in first._preload
        pids = first.pids
    finally:
        first.shutdown()
    prestart_pool(2)
    other = take_pool(3)  # another P: a new pool; the prestarted one is shut down
    try:
        assert len(other.pids) == 3 and not set(other.pids) & set(pids)
    finally:
        other.shutdown()
    assert take_pool(1).shutdown() is None  # nothing prestarted any more: a fresh pool
    for pid in pids:
        assert _gone(pid)


# -- a runner's pool kept for the process's next runner ------------------------------------
def test_a_kept_pool_is_the_next_pool_of_the_same_settings_then_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import psutil

    from prefect_llmorch.procs.workers import keep_pool, take_pool

    monkeypatch.setenv("LLMORCH_KEEP_WORKERS_SECONDS", "30")
    first = take_pool(2)
    pids = first.pids
    keep_pool(first)
    again = take_pool(2, preload=["toolboxes"])  # the kept pool: no worker starts
    assert again is first and again.pids == pids and "toolboxes" in again._preload
    assert again.run("a", add, (1, 2)).value == 3
    keep_pool(again)
    other = take_pool(3)  # other settings: a new pool, and the kept one is shut down
    try:
        assert len(other.pids) == 3 and not set(other.pids) & set(pids)
    finally:
        other.shutdown()
    for pid in pids:
        assert _gone(pid)

    monkeypatch.setenv("LLMORCH_KEEP_WORKERS_SECONDS", "0.2")
    short = take_pool(1)
    (pid,) = short.pids
    keep_pool(short)  # nobody takes it: shut down after 0.2 s
    deadline = time.monotonic() + 30
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)
    fresh = take_pool(1)
    try:
        assert fresh.pids != [pid]
    finally:
        fresh.shutdown()


def test_a_kept_pool_with_a_dead_worker_or_a_cancel_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_llmorch.procs.workers import keep_pool, take_pool

    monkeypatch.setenv("LLMORCH_KEEP_WORKERS_SECONDS", "30")
    pool = take_pool(2)
    keep_pool(pool)
    os.kill(pool.pids[0], 9)  # dies while kept (e.g. the OOM killer)
    for w in list(pool._workers.values()):
        w.process.join(timeout=10) if w.pid == pool.pids[0] else None
    fresh = take_pool(2)
    try:
        assert fresh is not pool and not set(fresh.pids) & set(pool.pids)
        fresh.cancel_all("the flow run was cancelled")
        keep_pool(fresh)  # cancelled: shut down, not kept
        after = take_pool(2)
        assert after is not fresh
        after.shutdown()
    finally:
        fresh.shutdown()


def _gone(pid: int) -> bool:
    """The process has exited (or is a zombie), also when it exits while being looked at."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
