"""`compiler.wait_all`: waiting for a flow's calls never leaves a lock broken.

`prefect.futures.wait(futures, timeout=...)` times out with an alarm signal in the main
thread; when the alarm lands while that thread re-takes a `threading.Condition`'s lock, the
lock is released by the wrong thread, and the thread finishing the next call blocks on it
forever (seen: `benchmarks/overhead.py` logged "release unlocked lock" from a call's done
callback; the loop below hung within 80 rounds with Prefect's `wait`, its callback thread
stuck in `Event.set`). The flow waits in short slices, so it did this about five times a second.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
from prefect.futures import PrefectConcurrentFuture

from prefect_llmorch.engine.compiler import wait_all


def _future() -> tuple[concurrent.futures.Future, PrefectConcurrentFuture]:
    cf: concurrent.futures.Future = concurrent.futures.Future()
    return cf, PrefectConcurrentFuture(task_run_id=uuid.uuid4(), wrapped_future=cf)


def test_true_once_every_future_is_done_false_at_the_timeout() -> None:
    assert wait_all([]) is True
    (a, fa), (b, fb) = _future(), _future()
    a.set_result(None)  # done before the wait: counted at once
    assert wait_all([fa, fb], timeout=0.05) is False
    threading.Timer(0.05, b.set_result, args=(None,)).start()
    assert wait_all([fa, fb]) is True


STRESS = textwrap.dedent("""
    import concurrent.futures, logging, threading, time, uuid
    from prefect.futures import PrefectConcurrentFuture
    from prefect_llmorch.engine.compiler import wait_all

    errors = []
    class Keep(logging.Handler):
        def emit(self, record):
            errors.append(record.getMessage())
    logging.getLogger("concurrent.futures").addHandler(Keep())
    polls = 0
    for _ in range(30):
        cfs = [concurrent.futures.Future() for _ in range(400)]
        fs = [PrefectConcurrentFuture(task_run_id=uuid.uuid4(), wrapped_future=cf) for cf in cfs]
        def finish(cfs=cfs):
            for cf in cfs:
                time.sleep(0.0005)
                cf.set_result(None)  # its done callbacks run on this thread
        thread = threading.Thread(target=finish)
        thread.start()
        while not wait_all(fs, timeout=0.003):  # the main thread, polling as a flow does
            polls += 1
        thread.join()
    print("polls", polls, "errors", len(errors))
""")


@pytest.mark.slow
def test_polling_waits_in_the_main_thread_never_break_a_callback_thread() -> None:
    """Thousands of short timed waits in a main thread while another thread finishes the
    futures: every wait returns, every callback returns, none logs an error."""
    out = subprocess.run([sys.executable, "-c", STRESS], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    words = out.stdout.split()
    assert words[0] == "polls" and int(words[1]) > 1000 and words[2:] == ["errors", "0"], out.stdout
