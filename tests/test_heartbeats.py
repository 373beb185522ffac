"""Flow-run heartbeats of the runs a process calls and waits for (`flows/run.py:
_own_heartbeats`, `flows/execute.py: heartbeats`): Prefect's thread is off (it sleeps in 1 s
steps and the engine waits for it at the end of every answer), the run sends the same events
itself, so a server still marks the runs of a dead process Crashed. The events are recorded
on their way into Prefect's `emit_event` (which still sends them: the events worker is left
as it is, so later tests' task-run events are not disturbed)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prefect import flow

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
def beats(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, str], list[Any]]]:
    """Every heartbeat sent while the test runs: (resource, related), as Prefect's engine
    (`prefect.flow_engine.emit_event`) and ours (`prefect.events.emit_event`) send them."""
    import prefect.events
    import prefect.flow_engine

    seen: list[tuple[dict[str, str], list[Any]]] = []

    def recording(original: Any) -> Any:
        def emit(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("event") == "prefect.flow-run.heartbeat":
                seen.append((dict(kwargs["resource"]), list(kwargs.get("related") or [])))
            return original(*args, **kwargs)

        return emit

    monkeypatch.setattr(prefect.events, "emit_event", recording(prefect.events.emit_event))
    monkeypatch.setattr(prefect.flow_engine, "emit_event", recording(prefect.flow_engine.emit_event))
    return seen


def test_a_run_s_heartbeats_are_its_own_and_look_like_prefect_s(beats: list[tuple[dict[str, str], list[Any]]]) -> None:
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
    assert records_sent(60)
    by_run: dict[str, list[tuple[dict[str, str], list[Any]]]] = {}
    for resource, related in beats:
        by_run.setdefault(resource["prefect.resource.id"], []).append((resource, related))
    (ours_id,) = [rid for rid in by_run if rid != prefects]
    (theirs_resource, theirs_related), (ours_resource, ours_related) = by_run[prefects][0], by_run[ours_id][0]
    assert len(by_run[ours_id]) == 1  # ours only: Prefect's were off for this run
    assert set(ours_resource) == set(theirs_resource)
    assert ours_resource["prefect.version"] == theirs_resource["prefect.version"]
    assert [r.role for r in ours_related] == [r.role for r in theirs_related] == ["flow"]
    assert ours_related[0].id.startswith("prefect.flow.") and ours_related[0].name == "llmorch-run"


def test_the_settings_without_heartbeats_equal_prefect_s_copy_with_the_setting_changed() -> None:
    # a copy not validated again (every run makes one): the same settings, the same
    # environment for child processes, as Prefect's validated copy
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings

    from prefect_llmorch.flows.run import _without_heartbeats

    settings = get_current_settings().copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30})
    quiet = _without_heartbeats(settings)
    validated = settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    assert quiet.flows.heartbeat_frequency is None and settings.flows.heartbeat_frequency == 30
    assert quiet == validated
    assert quiet.to_environment_variables(exclude_unset=True) == validated.to_environment_variables(exclude_unset=True)
