"""host/process.py: one owner of what outlives a run, ended at exit in one order."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from prefect_llmorch.host.process import Process, Stage


class _Thing:
    made = 0

    def __init__(self) -> None:
        _Thing.made += 1


def test_hold_makes_one_object_of_a_kind_on_first_use() -> None:
    owner = Process(hook=False)
    before = _Thing.made
    first = owner.hold(_Thing)
    assert owner.hold(_Thing) is first
    assert _Thing.made == before + 1
    assert owner.held() == [first]


def test_close_runs_the_stages_in_order_whatever_the_order_they_were_registered() -> None:
    owner = Process(hook=False)
    ended: list[str] = []
    for stage in (Stage.SERVER, Stage.WORKERS, Stage.LEASES, Stage.SESSIONS, Stage.RECORDS):
        owner.at_exit(stage, lambda name=stage.name: ended.append(name))
    owner.close()
    assert ended == ["RECORDS", "LEASES", "SESSIONS", "WORKERS", "SERVER"]


def test_a_closer_runs_once_and_a_failing_one_does_not_stop_the_later_stages() -> None:
    owner = Process(hook=False)
    ended: list[str] = []

    def broken() -> None:
        raise RuntimeError("no")

    def records() -> None:
        ended.append("records")

    owner.at_exit(Stage.LEASES, broken)
    owner.at_exit(Stage.RECORDS, records)
    owner.at_exit(Stage.RECORDS, records)  # the same closer again: still once
    owner.at_exit(Stage.SERVER, lambda: ended.append("server"))
    owner.close(through=Stage.RECORDS)
    assert ended == ["records"]
    owner.close()
    owner.close()
    assert ended == ["records", "server"]


def test_a_forked_child_holds_nothing_of_its_parent() -> None:
    owner = Process(hook=False)
    parent = owner.hold(_Thing)
    owner.at_exit(Stage.SERVER, lambda: None)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer whether it got a new object and no closers
        try:
            fresh = owner.hold(_Thing) is not parent and owner.held() == [owner.hold(_Thing)] and not owner._closers
            os.write(write, b"1" if fresh else b"0")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert owner.hold(_Thing) is parent


def test_at_exit_the_stages_end_in_order_records_before_threads_are_joined() -> None:
    # a real exit: RECORDS from threading's exit callbacks (while a non-daemon thread still
    # runs), the others from one atexit callback, in stage order
    script = textwrap.dedent("""
        import threading, time
        from prefect_llmorch.host.process import PROCESS, Stage

        worker = threading.Thread(target=time.sleep, args=(0.5,), name="late")
        worker.start()
        say = lambda text: print(text, flush=True)
        PROCESS.at_exit(Stage.SERVER, lambda: say("server"))
        PROCESS.at_exit(Stage.WORKERS, lambda: say("workers"))
        PROCESS.at_exit(Stage.LEASES, lambda: say("leases"))
        PROCESS.at_exit(Stage.RECORDS, lambda: say("records, thread alive: %s" % worker.is_alive()))
        PROCESS.at_exit(Stage.SESSIONS, lambda: say("sessions, thread alive: %s" % worker.is_alive()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "records, thread alive: True", "leases", "sessions, thread alive: False", "workers", "server",
    ]
