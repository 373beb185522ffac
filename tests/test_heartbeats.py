"""Flow-run heartbeats of the runs a process calls and waits for (`flows/run.py:
_own_heartbeats`, `flows/execute.py: heartbeats`): Prefect's thread is off (it sleeps in 1 s
steps and the engine waits for it at the end of every answer), the run sends the same events
itself, so a server still marks the runs of a dead process Crashed. The events are read as
Prefect's own test client records them (`AssertingEventsClient`)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prefect import flow

from prefect.testing.fixtures import asserting_and_emitting_events_worker  # noqa: F401 - a fixture

from prefect_llmorch import Toolbox, inout
from prefect_llmorch.flows.report import records_sent
from prefect_llmorch.flows.run import run_plan

pytestmark = pytest.mark.usefixtures("prefect_harness")

#: Names of the threads alive while the call ran.
SEEN: list[set[str]] = []


@inout
def look() -> int:
    """Note the threads alive in the flow's process while the run goes."""
    SEEN.append({t.name for t in threading.enumerate()})
    return 1


TOOLBOX = Toolbox(look)


@pytest.fixture()
def events(asserting_and_emitting_events_worker: Any) -> Any:  # noqa: F811 - Prefect's own fixture
    """Prefect's test fixture: the events worker records what it sends (and still sends it)."""
    from prefect.events.clients import AssertingPassthroughEventsClient

    return AssertingPassthroughEventsClient


def _heartbeats(client: Any) -> dict[str, list[Any]]:
    from prefect.events.worker import EventsWorker

    EventsWorker.instance().wait_until_empty()
    by_run: dict[str, list[Any]] = {}
    for event in client.all:
        for e in getattr(event, "events", [event]):
            if e.event == "prefect.flow-run.heartbeat":
                by_run.setdefault(e.resource.id, []).append(e)
    return by_run


def test_a_run_s_heartbeats_are_its_own_and_look_like_prefect_s(events: Any) -> None:
    from prefect.context import FlowRunContext

    @flow(name="plain-heartbeats")
    def plain() -> str:
        time.sleep(0.2)
        run = FlowRunContext.get()
        assert run is not None and run.flow_run is not None
        return f"prefect.flow-run.{run.flow_run.id}"

    prefects = plain()  # Prefect's heartbeat thread: one event as the run starts
    SEEN.clear()
    report = run_plan("s1: look()\n", TOOLBOX, processors=1, concurrency_limit=None)
    assert report.result == 1
    assert "llmorch-heartbeat" in SEEN[0]  # ours sent them, not Prefect's thread
    beats = _heartbeats(events)
    (ours_id,) = [rid for rid in beats if rid != prefects]
    theirs, ours = beats[prefects][0], beats[ours_id][0]
    assert len(beats[ours_id]) == 1  # ours only: Prefect's were off for this run
    assert set(ours.resource.root) == set(theirs.resource.root)
    assert ours.resource["prefect.version"] == theirs.resource["prefect.version"]
    assert [r.role for r in ours.related] == [r.role for r in theirs.related] == ["flow"]
    assert ours.related[0].id.startswith("prefect.flow.") and ours.related[0].name == "llmorch-run"
    assert records_sent(60)  # the run's artifacts' events, before the fixture stops its worker
