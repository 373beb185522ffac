"""The machine-wide guard (`engine/guard.py`): slots always come back, a busy API is retried,
the guard is never dropped silently. Against the session's test server; the evidence is the
limit's own state (active slots, leases) and the calls' records."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import PrefectHTTPStatusError

from prefect_llmorch.engine import guard
from prefect_llmorch.engine.runner import LLMOrchTaskRunner
from prefect_llmorch.flows.run import execute
from prefect_llmorch.plan.model import Arg, Call, Literal, Plan
from prefect_llmorch.storage import leases

from toolboxes import toolbox

pytestmark = pytest.mark.usefixtures("prefect_harness")


def http_error(status: int) -> PrefectHTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/api/v2/concurrency_limits/increment-with-lease")
    response = httpx.Response(status, request=request, text="database is locked" if status == 503 else "no")
    return PrefectHTTPStatusError.from_httpx_error(httpx.HTTPStatusError("x", request=request, response=response))


def plan_of(n_compute: int, n_inout: int = 0) -> Plan:
    calls = [Call(f"c{i}", "crunch", (Arg(None, Literal(0.05)),)) for i in range(n_compute)]
    calls += [Call(f"w{i}", "fetch", (Arg(None, Literal(0.05)), Arg("value", Literal(i)))) for i in range(n_inout)]
    return Plan(tuple(calls))


def run(plan: Plan, limit: str, **runner_kwargs):  # noqa: ANN003, ANN201
    @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=limit, **runner_kwargs))
    def f():  # noqa: ANN202
        return execute(plan, toolbox, processors=2)[2]

    return f()


def make_limit(name: str, size: int) -> None:
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))


def active_slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def hold_a_slot(name: str, slots: int = 1, seconds: float = 300) -> str:
    """`slots` slots of limit `name` held by another (made-up) flow run for `seconds`; its lease id."""
    with get_client(sync_client=True) as client:
        return client.increment_concurrency_slots_with_lease(
            names=[name], slots=slots, mode="concurrency", lease_duration=seconds,
            holder=ConcurrencyLeaseHolder(type="flow_run", id=uuid.uuid4()),
        ).json()["lease_id"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- a busy API is asked again, a broken one is not -----------------------------------------


class _StubAPI:
    """An HTTP server in front of the test's Prefect API: answers the first `fail` requests
    with `status` ("database is locked" for 503, as a busy SQLite server does), then passes
    requests on to the real API (none when `forward` is false)."""

    def __init__(self, status: int, fail: int, forward: bool = True, before: Any = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from prefect.settings import PREFECT_API_URL

        real, stub = str(PREFECT_API_URL.value()).rstrip("/"), self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if before is not None:  # what the test looks at before the request is answered
                    before(self.path)
                stub.requests += 1
                if stub.requests <= fail or not forward:
                    text = b"database is locked" if status == 503 else b'{"detail": "no"}'
                    self.send_response(status)
                    self.send_header("content-length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                answer = httpx.request(self.command, real + self.path.removeprefix("/api"), content=body, headers=headers)
                self.send_response(answer.status_code)
                self.send_header("content-type", answer.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def guard_through(stub: _StubAPI, name: str, seconds: float = 60) -> tuple[str | None, int]:
    """A runner's guard of limit `name` asking `stub` for 2 slots: (why it failed, slots held)."""
    from contextlib import ExitStack

    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    # The client's own retries off: the guard's asking again is what is tested (the client
    # still sleeps 2 s after a 503 before it gives up).
    with temporary_settings(updates={PREFECT_API_URL: stub.url, PREFECT_CLIENT_MAX_RETRIES: 0}), ExitStack() as stack:
        limit = guard.GlobalLimit(name, lambda: 2, lambda: None)
        limit.start(stack)
        limit.adjust(2, 0)
        deadline = time.monotonic() + seconds
        while limit.failed is None and limit.held < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        return limit.failed, limit.held


def test_a_busy_api_is_asked_again_until_the_slots_are_held() -> None:
    name = f"llmorch-test-busy-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)
    stub = _StubAPI(503, fail=3)
    try:
        failed, held = guard_through(stub, name)
    finally:
        stub.close()
    assert (failed, held) == (None, 2)
    assert stub.requests > 3
    assert active_slots(name) == 0  # given back at the end


def test_a_client_error_is_not_asked_again(monkeypatch) -> None:  # noqa: ANN001
    name = f"llmorch-test-422-{uuid.uuid4().hex[:6]}"
    stub = _StubAPI(422, fail=1_000)
    try:
        failed, held = guard_through(stub, name)
    finally:
        stub.close()
    assert held == 0 and failed is not None and "do not run unguarded" in failed
    assert stub.requests == 1


def test_a_lasting_503_fails_the_guard_after_the_patience(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(guard, "GUARD_PATIENCE_SECONDS", 1.0)
    name = f"llmorch-test-503-{uuid.uuid4().hex[:6]}"
    stub = _StubAPI(503, fail=1_000, forward=False)
    try:
        failed, held = guard_through(stub, name)
    finally:
        stub.close()
    assert held == 0 and failed is not None and "503" in failed
    assert stub.requests >= 2  # asked again, then given up: bounded


def test_a_slot_is_in_the_ledger_before_it_is_taken() -> None:
    """A process killed between taking slots and recording them left slots no ledger entry
    named, and every later run waited on them forever (issue 27): the entry (an intent, no
    lease id yet) is written before the increment, and gets its lease id after."""
    name = f"llmorch-test-intent-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)
    at_increment: list[list[dict]] = []

    def look(path: str) -> None:
        if "increment-with-lease" in path:
            at_increment.append([e for e in leases.read() if e.get("limit") == name])

    stub = _StubAPI(503, fail=0, before=look)
    try:
        failed, held = guard_through(stub, name)
    finally:
        stub.close()
    assert failed is None and held == 2
    assert at_increment, "no slot was asked for"
    for entries in at_increment:  # each request: its intent is there already
        assert entries and entries[-1]["lease"] is None and entries[-1]["slots"] >= 1
    assert not [e for e in leases.read() if e.get("limit") == name and e.get("lease") is None]


# -- slots always come back ----------------------------------------------------------------


def test_slots_a_dead_process_left_on_a_server_that_forgot_its_lease_are_cleared_at_start() -> None:
    """What `kill -9` of `llmorch run` on the ephemeral server leaves: active slots in the
    database, a lease that died with that server, and the dead process's ledger entry."""
    name = f"llmorch-test-stale-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots(names=[name], slots=2, mode="concurrency")
    assert active_slots(name) == 2
    lease = str(uuid.uuid4())
    leases.add({"limit": name, "lease": lease, "slots": 2, "api": "http://127.0.0.1:9/api",
                 "pid": dead_pid(), "started": 0.0})

    report = run(plan_of(3), name)

    assert report.state == "Completed"
    assert active_slots(name) == 0
    assert all(e["lease"] != lease for e in leases.read())


def test_slots_of_a_dead_server_that_had_this_url_are_cleared_at_start() -> None:
    """Embedded servers of one PREFECT_HOME share its database and may reuse a port: a lease
    granted by an earlier server at this very URL died with it, and its slots did not."""
    from prefect.settings import PREFECT_API_URL

    name = f"llmorch-test-port-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots(names=[name], slots=2, mode="concurrency")
        api = str(client.api_url)
    assert str(PREFECT_API_URL.value()).rstrip("/") in api
    lease = str(uuid.uuid4())
    leases.add({"limit": name, "lease": lease, "slots": 2, "api": api, "server": f"{api}#pid={dead_pid()}",
                "pid": dead_pid(), "started": 0.0})

    report = run(plan_of(3), name)

    assert report.state == "Completed"
    assert active_slots(name) == 0
    assert all(e["lease"] != lease for e in leases.read())


def test_a_lease_of_a_dead_process_on_this_server_is_released_at_start() -> None:
    name = f"llmorch-test-dead-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)
    with get_client(sync_client=True) as client:
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=2, mode="concurrency", lease_duration=300,
            holder=ConcurrencyLeaseHolder(type="flow_run", id=uuid.uuid4()),
        )
        lease = response.json()["lease_id"]
        api = str(client.api_url)
    leases.add({"limit": name, "lease": lease, "slots": 2, "api": api, "pid": dead_pid(), "started": 0.0})

    report = run(plan_of(2), name)

    assert report.state == "Completed"
    assert active_slots(name) == 0
    with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError) as info:
        client.renew_concurrency_lease(lease, lease_duration=60)  # the dead holder's lease is gone
    assert info.value.response.status_code in (404, 410)


def test_a_run_says_once_that_it_waits_for_slots_others_hold_then_gets_them(caplog) -> None:  # noqa: ANN001
    name = f"llmorch-test-wait-{uuid.uuid4().hex[:6]}"
    make_limit(name, 1)
    lease = hold_a_slot(name)
    reports = []
    worker = threading.Thread(target=lambda: reports.append(run(plan_of(2), name)))
    with caplog.at_level("WARNING", logger="prefect_llmorch.engine.guard"):
        worker.start()
        deadline = time.monotonic() + 120
        while "waiting for a slot" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease)
        worker.join(timeout=180)
    assert caplog.text.count(f"waiting for a slot of global concurrency limit '{name}'") == 1
    assert reports and reports[0].state == "Completed"
    assert active_slots(name) == 0


def test_a_run_waiting_on_a_holder_that_dies_gets_its_slots() -> None:
    """The holder of the slots a run waits on is killed meanwhile (its lease was granted for
    5 minutes, and an embedded server never expires one): the waiting run clears them within
    `RECOVER_SECONDS`, not only the next run at its start (issue 27)."""
    import logging

    name = f"llmorch-test-dies-{uuid.uuid4().hex[:6]}"
    make_limit(name, 1)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    seen: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Seen(level=logging.WARNING)
    logging.getLogger("prefect_llmorch.engine.guard").addHandler(handler)
    try:
        lease = hold_a_slot(name)
        with get_client(sync_client=True) as client:
            api = str(client.api_url)
        leases.add({"limit": name, "lease": lease, "slots": 1, "api": api, "pid": holder.pid,
                    "started": leases.process_start(holder.pid)})
        reports: list = []
        worker = threading.Thread(target=lambda: reports.append(run(plan_of(2), name)), daemon=True)
        worker.start()
        deadline = time.monotonic() + 120
        while not any("waiting for a slot" in m for m in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(f"held by llmorch processes {holder.pid}" in m for m in seen), seen
        holder.kill()
        holder.wait()
        worker.join(timeout=120)
        assert reports and reports[0].state == "Completed", seen
        assert any(f"cleared 1 slot(s) left by process {holder.pid}, which is gone" in m for m in seen), seen
        assert active_slots(name) == 0
    finally:
        logging.getLogger("prefect_llmorch.engine.guard").removeHandler(handler)
        holder.kill()
        holder.wait()


def test_a_run_that_backed_off_asks_again_for_the_limit_that_blocked_it() -> None:
    """Hold-and-wait avoidance: a runner whose waiting call needs a limit others hold gives its
    idle slots back (`back_off`). Once the others let go, it must get that limit. It used to
    livelock: the stale `blocked` flag made it back off again as soon as its first slot came
    back, before the blocked limit was asked again (seen in CI as a run that never ended)."""
    from contextlib import ExitStack

    procs, api = (f"llmorch-test-{k}-{uuid.uuid4().hex[:6]}" for k in ("procs", "api"))
    make_limit(procs, 2)
    make_limit(api, 1)
    other = hold_a_slot(api)
    backed_off = threading.Event()
    limit: guard.GlobalLimit

    def wake() -> None:  # what the runner does when nothing of its own runs and a call waits
        if limit.held_of(api) == 0 and limit.blocked([api]):
            limit.back_off()
            backed_off.set()

    limit = guard.GlobalLimit(procs, lambda: 2, lambda: None)
    limit._wake = wake
    with ExitStack() as stack:
        limit.start(stack)
        limit.configure({api: 1})
        deadline = time.monotonic() + 60
        while limit.size_of(api) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        limit.adjust(2, 0, procs)
        limit.adjust(1, 0, api)
        assert backed_off.wait(60), "the runner never found the limit held by others"
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(other)
        deadline = time.monotonic() + 60  # a bound for a loaded machine; pauses are 0.5-2 s
        while limit.held_of(api) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert limit.held_of(api) == 1, "the slot came free but the runner never took it"
    assert active_slots(api) == 0 and active_slots(procs) == 0


# -- the guard is never dropped silently ----------------------------------------------------


def test_compute_calls_fail_saying_why_when_the_limit_cannot_be_had() -> None:
    name = f"llmorch-test-zero-{uuid.uuid4().hex[:6]}"
    make_limit(name, 0)  # no slot can ever be taken
    report = run(plan_of(1, 1), name)
    calls = {c["id"]: c for c in report.calls}
    assert report.state == "Failed"
    assert calls["w0"]["state"] == "Completed"  # inout calls need no slot
    assert calls["c0"]["state"] != "Completed"
    assert "do not run unguarded" in report.message and "guard='local'" in report.message


def test_guard_local_runs_without_the_global_limit() -> None:
    name = f"llmorch-test-zero-{uuid.uuid4().hex[:6]}"
    make_limit(name, 0)
    report = run(plan_of(2), name, guard="local")
    assert report.state == "Completed"
    with pytest.raises(ValueError, match="guard must be 'global' or 'local'"):
        LLMOrchTaskRunner(guard="none")


CRASHING_RUN = """
import sys
sys.path.insert(0, {tests!r})
from prefect import flow
from prefect_llmorch.engine.runner import LLMOrchTaskRunner
from runner_tasks import spin

@flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit={name!r}))
def f():
    return [spin.submit({marker!r} + str(i), 600) for i in range(2)]

f()
"""


@pytest.mark.slow
def test_a_killed_run_s_slots_come_back_for_the_next_run(tmp_path, caplog) -> None:  # noqa: ANN001
    """`kill -9` of a flow process holding both slots; the next run starts its compute calls."""
    import os
    import signal
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    name = f"llmorch-test-killed-{uuid.uuid4().hex[:6]}"
    marker = str(tmp_path / "started")
    script = CRASHING_RUN.format(tests=str(Path(__file__).parent), name=name, marker=marker)
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()), PREFECT_HOME=str(PREFECT_HOME.value()))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not all(Path(marker + str(i)).exists() for i in range(2)) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before its compute calls started"
            time.sleep(0.1)
        assert active_slots(name) == 2  # both held by the run about to be killed
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert active_slots(name) == 2  # nobody gave them back

    with caplog.at_level("WARNING", logger="prefect_llmorch.engine.guard"):
        report = run(plan_of(2), name)

    assert report.state == "Completed"
    assert active_slots(name) == 0
    # cleared by the start, not by the lease running out meanwhile
    assert f"cleared 2 slot(s) left by process {proc.pid}, which is gone" in caplog.text


def leases_of(name: str) -> set[str]:
    """The leases of limit `name` in the ledger of leases (PREFECT_HOME)."""
    return {e["lease"] for e in leases.read() if e.get("limit") == name}


def test_back_to_back_runs_of_one_process_pass_the_slots_on_then_give_them_back(monkeypatch) -> None:  # noqa: ANN001
    """The processors' slots a run gives back are kept a few seconds for this process's next
    run (`LLMORCH_KEEP_SLOTS_SECONDS`): its first compute call waits for no lease write. The
    evidence is the server's limit and the ledger of leases: the second run takes no new
    lease, and the slots come back once nobody takes them."""
    monkeypatch.setenv("LLMORCH_KEEP_SLOTS_SECONDS", "3")
    name = f"llmorch-test-keep-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)

    assert run(plan_of(2), name).state == "Completed"
    first = leases_of(name)
    assert first and active_slots(name) > 0  # kept, not given back yet
    assert run(plan_of(2), name).state == "Completed"
    assert leases_of(name) <= first  # the second run wrote no lease of its own
    deadline = time.monotonic() + 60
    while active_slots(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_slots(name) == 0 and not leases_of(name)


def test_a_keep_s_timer_gives_back_only_its_own_keep(monkeypatch) -> None:  # noqa: ANN001
    """Run 1 keeps its lease (timer at +6 s); run 2 adopts it and keeps it again (timer at its
    own end + 6 s); run 3 starts after run 1's timer but before run 2's: the lease is still
    kept, so run 3 writes no lease of its own. (Run 1's timer once gave back the slots run 2
    had kept, so every other run of a process paused ~1-2 s before its first compute call:
    `benchmarks/kitti.py` showed it as 1st call 2.1 s in 2 of 7 rounds.)"""
    monkeypatch.setenv("LLMORCH_KEEP_SLOTS_SECONDS", "6")
    name = f"llmorch-test-rekeep-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)

    assert run(plan_of(2), name).state == "Completed"
    first_kept = time.monotonic()
    first = leases_of(name)
    time.sleep(0.5)
    assert run(plan_of(2), name).state == "Completed"  # ends before run 1's keep does
    assert leases_of(name) <= first
    time.sleep(max(0.0, first_kept + 6.5 - time.monotonic()))  # past run 1's keep, inside run 2's
    assert guard.kept_slots(name) == 2
    assert run(plan_of(2), name).state == "Completed"
    assert leases_of(name) <= first  # run 3 wrote no lease of its own either


def test_slots_taken_ahead_are_what_the_run_uses(monkeypatch) -> None:  # noqa: ANN001
    """`take_ahead` (what `llmorch run` does while Prefect creates the flow run): the run's
    first compute call finds the slots held; it writes no lease of its own."""
    monkeypatch.setenv("LLMORCH_KEEP_SLOTS_SECONDS", "3")
    name = f"llmorch-test-ahead-{uuid.uuid4().hex[:6]}"
    guard.take_ahead_unless_kept(name, 2).join(60)
    ahead = {e["lease"] for e in leases.read() if e.get("limit") == name}
    assert ahead and active_slots(name) == 2  # the limit was created with P and both are held
    assert run(plan_of(2), name).state == "Completed"
    assert {e["lease"] for e in leases.read() if e.get("limit") == name} <= ahead
    deadline = time.monotonic() + 60
    while active_slots(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_slots(name) == 0  # and nobody took them: given back


def test_kept_slots_are_held_the_moment_a_runner_asks_without_its_api_thread() -> None:
    """A warm process's next runner holds the slots its previous runner kept as soon as it
    sizes its slots (`adjust`, at `__enter__`), in that thread: its first compute call does
    not wait for the API thread to start and answer. Here no API thread runs at all."""
    name = f"llmorch-test-adopt-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)
    lease = hold_a_slot(name, slots=2, seconds=60)
    guard._keep(name, [guard._Lease(lease, 2, None)], seconds=30)
    woken: list[int] = []
    limit = guard.GlobalLimit(name, lambda: 2, lambda: woken.append(1))  # its thread never started
    limit.adjust(2, 0)
    try:
        assert limit.held == 2 and woken == [1]
    finally:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(uuid.UUID(lease))


def test_a_run_started_while_its_slots_are_taken_ahead_waits_for_them_not_for_a_lease_of_its_own(monkeypatch, caplog) -> None:  # noqa: ANN001
    """`run_plan` takes the slots ahead (`take_ahead_unless_kept`) when the process keeps none:
    one take-ahead at a time per limit, and a runner that starts while it is under way takes
    its slots when it is done, without a lease of its own and without saying others hold them."""
    import logging

    monkeypatch.setenv("LLMORCH_KEEP_SLOTS_SECONDS", "3")
    name = f"llmorch-test-ahead2-{uuid.uuid4().hex[:6]}"
    first = guard.take_ahead_unless_kept(name, 2)
    assert first is not None and guard.take_ahead_unless_kept(name, 2) is first  # one at a time
    with caplog.at_level(logging.WARNING, logger="prefect_llmorch.engine.guard"):
        assert run(plan_of(2), name).state == "Completed"
    first.join(30)
    ledger = {e["lease"] for e in leases.read() if e.get("limit") == name}
    assert len(ledger) <= 1  # the take-ahead's lease only
    assert "waiting for a slot" not in caplog.text
    assert guard.take_ahead_unless_kept(name, 2) is None  # kept for the next run: nothing to take
    deadline = time.monotonic() + 60
    while active_slots(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_slots(name) == 0


def test_a_failed_dispatch_leaves_the_runner_consistent_and_later_calls_run(monkeypatch) -> None:  # noqa: ANN001
    """A dispatch that raises (here once, injected into the runner's `_wake_at`, the step
    between passing calls out and admitting held ones: a thread that cannot start would
    fail there) fails the calls waiting then, and only them: the compute call waiting for
    its slot leaves the held queue and the Coordinator, and the next call runs on that slot."""
    from runner_tasks import square

    monkeypatch.setenv("LLMORCH_KEEP_SLOTS_SECONDS", "0")
    name = f"llmorch-test-dispatch-{uuid.uuid4().hex[:6]}"
    make_limit(name, 1)
    lease = hold_a_slot(name)  # the only slot: the first call waits for it, held
    runner = LLMOrchTaskRunner(processors=1, concurrency_limit=name)
    with runner:
        first = runner.submit(square, {"x": 2})
        with runner._lock:
            assert [s.node for s in runner._held] == [runner._by_run[first.task_run_id]]
        armed = [RuntimeError("injected: a thread could not start")]
        real_wake_at = runner._wake_at

        def wake_at_failing_once(when):  # noqa: ANN001, ANN202
            if armed:
                raise armed.pop()
            return real_wake_at(when)

        monkeypatch.setattr(runner, "_wake_at", wake_at_failing_once)
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease)  # the guard takes it, and dispatches
        with pytest.raises(RuntimeError, match="injected"):
            first.result(timeout=60)
        assert not armed
        with runner._lock:
            co_running = set(runner._co.running) if runner._co is not None else set()
            held, unfinished = list(runner._held), runner._unfinished.get("processors")
        second = runner.submit(square, {"x": 3})
        assert second.result(timeout=60) == 9
        assert not held and not co_running and not unfinished  # nothing of the failed call was left
        with runner._lock:
            assert not runner._held and not any(runner._in_use.values()) and runner._running_compute == 0
    assert active_slots(name) == 0


def test_slots_of_finished_calls_go_back_once_no_more_calls_come(monkeypatch) -> None:  # noqa: ANN001
    """The demand of calls still to finish sizes the slots held: once every call is
    submitted (`no_more_submissions`) and has finished, the runner holds none, still entered."""
    from runner_tasks import square

    monkeypatch.setenv("LLMORCH_KEEP_SLOTS_SECONDS", "0")
    name = f"llmorch-test-unfinished-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)
    runner = LLMOrchTaskRunner(processors=2, concurrency_limit=name)
    with runner:
        assert [f.result(timeout=60) for f in [runner.submit(square, {"x": x}) for x in (2, 3)]] == [4, 9]
        runner.no_more_submissions()
        deadline = time.monotonic() + 60
        while active_slots(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert active_slots(name) == 0 and runner.slots_held == 0


def test_a_dead_process_s_lease_on_another_live_server_is_left_to_that_server(prefect_server) -> None:  # noqa: ANN001
    """Processes of one PREFECT_HOME share the ledger but may talk to different servers: the
    lease of a dead process on another server, still up, is not this server's. Clearing it
    once decremented this server's limit of the same name, freeing a slot a live holder here
    had: the holder's slot must still be held after the run, and the entry left for that server."""
    name = f"llmorch-test-other-{uuid.uuid4().hex[:6]}"
    make_limit(name, 2)
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots(names=[name], slots=1, mode="concurrency")  # a live holder here
    other = prefect_server.url.rstrip("/") + "/"
    lease = str(uuid.uuid4())
    leases.add({"limit": name, "lease": lease, "slots": 1, "api": other, "server": other,
                "pid": dead_pid(), "started": 0.0})
    try:
        report = run(plan_of(1), name)
        assert report.state == "Completed"
        assert active_slots(name) == 1  # the live holder's
        assert any(e["lease"] == lease for e in leases.read())
    finally:
        leases.remove(lease)
