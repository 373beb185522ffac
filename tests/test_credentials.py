"""Tool credentials from Prefect blocks: loaded by the flow, handed to the function at call
time (also in a compute worker process), never stored on the server.

The end-to-end version of the leak check, on `prefect server start` with a process worker,
is `tests/test_deploy.py::test_secret_is_not_stored_on_the_server`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import pytest

from prefect_llmorch.examples import open_plan_path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
E2E_PLAN = open_plan_path("example:e2e").read_text()


def _everything_stored(run_id: uuid.UUID) -> dict[str, str]:
    """Flow run (parameters, state), task runs (inputs, states), logs and artifacts, as JSON."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    from prefect_llmorch.flows.report import records_sent

    assert records_sent(60)  # a run's artifacts are sent after its answer
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {
        "flow run": run.model_dump_json(),
        "task runs": json.dumps([t.model_dump(mode="json") for t in tasks], ensure_ascii=False),
        "logs": json.dumps([log.model_dump(mode="json") for log in logs], ensure_ascii=False),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in arts], ensure_ascii=False),
    }


def _latest_run_id(flow_name: str) -> uuid.UUID:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), sort=FlowRunSort.START_TIME_DESC, limit=1)
    return runs[0].id


def test_block_secret_reaches_compute_worker_and_is_not_stored(prefect_harness: None) -> None:
    from prefect_llmorch.examples.e2e import fingerprint
    from prefect_llmorch import run_plan
    from prefect_llmorch.blocks import ToolCredentials

    secret = f"passphrase-{uuid.uuid4().hex}"
    ToolCredentials(secrets={"passphrase": secret}).save("e2e-master", overwrite=True)
    report = run_plan(E2E_PLAN, "prefect_llmorch.examples.e2e:toolbox", processors=2, concurrency_limit=None)

    assert report.state == "Completed"
    calls = {c["id"]: c for c in report.calls}
    # seal ran in a compute worker process, not in this (the flow's) process ...
    for cid in ("s3", "s4"):
        assert calls[cid]["kind"] == "compute" and calls[cid]["pid"] != os.getpid()
        assert calls[cid]["processor"] in (0, 1)
    # ... with the block's passphrase: the key id is the secret's fingerprint
    assert report.results["s3"]["sender_key_id"] == fingerprint(secret)
    assert all(f"from-key-{fingerprint(secret)}" in r for r in report.result["receipts"])

    stored = _everything_stored(_latest_run_id("llmorch-run"))
    assert "s3 · seal" in stored["task runs"] and "llmorch-schedule" in stored["artifacts"]  # we read the right run
    assert "Quarterly numbers" in stored["flow run"]  # the plan is a parameter: the grep sees parameters
    for what, blob in stored.items():
        assert secret not in blob, f"the tool secret leaked into the {what}"


def test_missing_block_fails_before_anything_runs_and_says_how_to_create_it(prefect_harness: None) -> None:
    from prefect_llmorch import run_plan
    from prefect_llmorch.credentials import MissingCredentials

    name = f"nope-{uuid.uuid4().hex[:8]}"
    plan = 's1: fetch_public_key("alice")\ns2: seal("hi", s1)'

    # The e2e toolbox's `seal` declares e2e-master; a toolbox whose seal needs a block that
    # does not exist shows the failure.
    import prefect_llmorch.examples.e2e as e2e
    from prefect_llmorch import Toolbox

    missing = Toolbox(e2e.fetch_public_key, dataclasses.replace(e2e.toolbox["seal"], credentials=name))
    with pytest.raises(MissingCredentials) as info:
        run_plan(plan, missing, processors=1, concurrency_limit=None)
    message = str(info.value)
    assert repr(name) in message and "needed by seal" in message
    assert f"ToolCredentials(secrets={{'api_key': '...'}}).save({name!r})" in message
    assert "blocks/register.py" in message
    # Nothing ran: the failure came before any task run.
    stored = _everything_stored(_latest_run_id("llmorch-run"))
    assert json.loads(stored["task runs"]) == []
    assert name in stored["flow run"]  # the failed state's message names the block


def test_inout_function_gets_its_block_and_store_loads_each_block_once(prefect_harness: None) -> None:
    from prefect_llmorch import run_plan
    from prefect_llmorch.blocks import ToolCredentials
    from prefect_llmorch.credentials import CredentialStore
    from prefect_llmorch.plan.parser import parse

    import prefect_llmorch.examples.seo as seo

    ToolCredentials(secrets={"api_key": "k-" + uuid.uuid4().hex}, values={"region": "eu"}).save("search-api", overwrite=True)
    store = CredentialStore(seo.toolbox)
    plan = parse('s1: search("a")\ns2: search("b")', seo.toolbox)
    store.require(plan.calls)
    assert list(store) == ["search-api"] and store["search-api"]["region"] == "eu"
    assert "k-" not in repr(store)

    report = run_plan('s1: search("prefect flows")\ns2: search("dask")', "prefect_llmorch.examples.seo:toolbox", processors=1, concurrency_limit=None)
    assert report.state == "Completed"
    assert report.result == {
        "s1": [f"https://example.org/prefect-flows/{i}" for i in range(1, 6)],
        "s2": [f"https://example.org/dask/{i}" for i in range(1, 6)],
    }


def test_deployable_ask_flow_answers_with_a_scripted_llm(prefect_harness: None) -> None:
    """prefect_llmorch/flows/deploy.py's `llmorch-ask` (pydantic parameters) end to end with a local
    OpenAI-compatible server and an LLMEndpoint block."""
    from prefect_llmorch.flows.deploy import AskParameters, llmorch_ask
    from prefect_llmorch.blocks import LLMEndpoint
    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.testing.fake_llm import FakeLLM

    plan = 's1: search("Apple stock")\ns2: search("Microsoft stock")\ns3: compare(s1, s2)\ns4: self("Answer: {s3}")\n'
    with FakeLLM([plan], default="Apple did better.", token_delay=0.0, model="m") as server:
        LLMEndpoint(base_url=server.base_url, model="m", api_key="k").save("llm-test", overwrite=True)
        flow = llmorch_ask.with_options(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
        out = flow(AskParameters(query="Which stock did better?", endpoint="llm-test", processors=1))
    assert out["state"] == "Completed" and out["result"] == "Apple did better."
    assert out["tokens"]["prompt"] > 0 and out["processors"] == 1
