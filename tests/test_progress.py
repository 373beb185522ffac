"""The `llmorch-progress` artifact (`flows/progress.py`): created off the calls' way, updated
while a long run goes, and once, with the final count, for a run shorter than its interval.
The evidence is the artifact as the API has it."""

from __future__ import annotations

import time

import pytest
from prefect import flow

from prefect_llmorch.engine.compiler import CallRecord, Recorder
from prefect_llmorch.flows.progress import ARTIFACT_KEY, RunProgress

pytestmark = pytest.mark.usefixtures("prefect_harness")


def progress_of_flow_run(flow_run_id: object) -> list[object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[ARTIFACT_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            ),
        )


def _records(recorder: Recorder, n: int) -> None:
    for i in range(n):
        recorder.add(CallRecord(id=f"s{i}", function="f", kind="inout", rank=1))


def test_a_run_shorter_than_the_interval_writes_its_progress_once_at_the_end() -> None:
    @flow
    def short() -> tuple[object, int, int]:
        from prefect.runtime import flow_run

        recorder = Recorder()
        _records(recorder, 2)
        progress = RunProgress.start(recorder, interval=30.0)
        recorder.update("s0", state="Completed")
        recorder.update("s1", state="Completed")
        before = len(progress_of_flow_run(flow_run.id))
        progress.close()
        return flow_run.id, before, len(progress_of_flow_run(flow_run.id))

    run_id, before, after = short()
    assert (before, after) == (0, 1)  # nothing written while the calls ran
    (art,) = progress_of_flow_run(run_id)
    assert float(art.data) == 100.0 and art.description == "2 of 2 calls finished"


def test_a_long_run_s_progress_shows_while_it_goes() -> None:
    @flow
    def long() -> tuple[list[float], float]:
        from prefect.runtime import flow_run

        recorder = Recorder()
        _records(recorder, 2)
        progress = RunProgress.start(recorder, interval=0.2)
        recorder.update("s0", state="Completed")
        seen: list[float] = []
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            seen = [float(a.data) for a in progress_of_flow_run(flow_run.id)]
            time.sleep(0.05)
        recorder.update("s1", state="Completed")
        progress.close()
        return seen, float(progress_of_flow_run(flow_run.id)[0].data)

    seen, final = long()
    assert seen == [50.0]  # created mid-run with the count so far
    assert final == 100.0
