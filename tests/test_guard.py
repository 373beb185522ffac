"""The machine-wide guard holds under contention (issue 14 item 4): three flow runs of P = 2
compute-heavy plans at once against one server never run more than 2 compute calls together.

The evidence is what the tools wrote themselves (pid, start, end of each call, in worker
processes of three different runners), not our bookkeeping; the limit's own state says every
slot came back; on Prefect's test server (SQLite) and on `prefect server start` on PostgreSQL.
benchmarks/guard.py repeats this 10 times.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from toolboxes_guard import peak, three_runs_at_once


def test_peak_counts_overlaps_not_touching_ends() -> None:
    rows = [{"start": 0.0, "end": 1.0}, {"start": 1.0, "end": 2.0}, {"start": 0.5, "end": 1.5}]
    assert peak(rows) == 2 and peak(rows[:2]) == 1 and peak([]) == 0


@pytest.mark.slow
def test_three_flow_runs_at_once_never_run_more_than_two_compute_calls_machine_wide(tmp_path, caplog, prefect_api) -> None:  # noqa: ANN001
    limit = f"llmorch-test-guard-{uuid.uuid4().hex[:6]}"
    since = datetime.now(timezone.utc)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=2))
    log = tmp_path / "calls.jsonl"
    reports, rows = three_runs_at_once(str(log), limit, calls=2, seconds=0.1)  # 2 each: 6 could run at once
    assert [r.state for r in reports] == ["Completed"] * 3, [r.message for r in reports]
    assert sorted(r["i"] for r in rows) == sorted(list(range(2)) * 3)  # every call ran once, and wrote its record
    assert len({r["pid"] for r in rows}) >= 3  # three runners' own workers
    assert peak(rows) <= 2
    assert "cannot be used" not in caplog.text and "unguarded" not in caplog.text
    # Read from the server under test by its URL: the limit and the three runs lived there.
    with SyncPrefectClient(api=prefect_api) as client:
        state = client.read_global_concurrency_limit_by_name(limit)
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["guard-three-runs"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
        )
    assert state.limit == 2 and state.active_slots == 0  # never resized, every slot came back
    assert sorted(r.state_name for r in runs) == ["Completed"] * 3


def test_the_guard_s_thread_does_not_wake_for_a_lease_it_cannot_give_back() -> None:
    """A run's one lease of 2 slots, 1 still in use near the run's end: the lease goes back
    whole, so nothing is idle until that call ends, and the thread sleeps until then (it
    woke at once, over and over: thousands of rounds per run, fighting the calls for the GIL)."""
    from prefect_llmorch.engine.guard import GlobalLimit, _Lease

    limit = GlobalLimit("llmorch-test-idle", lambda: 2, lambda: None)
    held = limit._limits["llmorch-test-idle"]
    held.size, held.leases = 2, [_Lease("a", 2, "http://api")]
    limit.adjust(1, 1)
    assert held.idle(1) == [] and not held.has_work(paused=False) and limit._next_wake() > 0.5
    limit.adjust(0, 0)  # the last call ended: the lease can go
    assert held.idle(0) == held.leases and held.has_work(paused=False) and limit._next_wake() == 0
    held.leases = [_Lease("b", 1, "http://api"), _Lease("c", 1, "http://api")]
    assert [lease.id for lease in held.idle(1)] == ["c"]  # one of two 1-slot leases
