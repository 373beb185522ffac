"""A secret hidden in an exception chain never leaves the call (issue 13, item 5).

The tools in `toolboxes_exits` raise `RuntimeError(...) from ValueError(secret)`, itself raised
while handling `KeyError(secret)`, with the secret in a note too: only the top message is clean.
Read back from the API (task-run states, the flow run's logs, artifacts), the report's JSON
and stderr: no secret anywhere, and the failure still says what went wrong.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid

import pytest

import toolboxes_exits
from prefect_llmorch.engine.compiler import Compiler, Recorder, ToolError
from prefect_llmorch.graph import FRG
from prefect_llmorch.plan.parser import parse

PLAN = "s1: leak_io(1)\ns2: leak_cpu(2)\ns3: echo(3)\ns4: square(4)\n"


def _compiler(secret: str) -> Compiler:
    plan = parse(PLAN, toolboxes_exits.toolbox)
    frg = FRG.build(plan, toolboxes_exits.toolbox)
    return Compiler(frg, toolboxes_exits.toolbox, Recorder(), secrets={toolboxes_exits.BLOCK: {"token": secret}})


def _raised(fn, *args) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def test_a_secret_anywhere_in_the_chain_replaces_the_exception_by_a_scrubbed_summary() -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    exc = _raised(toolboxes_exits.leak_io, 1, {"token": secret})
    assert secret not in str(exc) and secret in "".join(traceback.format_exception(exc))  # the leak to fix
    hidden = _compiler(secret)._hide_secrets(exc)
    assert isinstance(hidden, ToolError)
    assert str(hidden) == (
        "RuntimeError: the service refused the request [sent with token=***] <- ValueError: rejected *** "
        "<- KeyError: 'token ***'"
    )
    assert hidden.__cause__ is None and hidden.__context__ is None and not getattr(hidden, "__notes__", None)


def test_a_worker_s_chain_is_scrubbed_from_its_traceback_text() -> None:
    from prefect_llmorch.procs.workers import WorkerPool

    secret = f"tok-{uuid.uuid4().hex}"
    with WorkerPool(1) as pool:
        exc = _raised(pool.run, "s2 · leak_cpu", toolboxes_exits.leak_cpu, (2,), {"credentials": {"token": secret}})
    hidden = _compiler(secret)._hide_secrets(exc)
    assert hidden is not None and secret not in str(hidden)
    assert str(hidden) == (
        "RuntimeError: the service refused the request [sent with token=***] <- ValueError: rejected *** "
        "<- KeyError: 'token ***'"
    )


def test_an_exception_without_a_secret_is_left_as_it_is() -> None:
    exc = _raised(toolboxes_exits.leak_io, 1, {"token": "harmless-but-not-loaded"})
    assert _compiler(f"tok-{uuid.uuid4().hex}")._hide_secrets(exc) is None


def _stored_after_it_settles(run_id: uuid.UUID) -> dict[str, str]:
    """Everything the API holds for the run, once both failed calls' logs and states are in."""
    from test_credentials import _everything_stored

    deadline = time.monotonic() + 60  # states arrive by events and logs in batches, a little later
    while True:
        stored = _everything_stored(run_id)
        tasks = json.loads(stored["task runs"])
        failed = {t["name"] for t in tasks if (t.get("state") or {}).get("type") == "FAILED"}
        logged = all(name in stored["logs"] for name in ("s1 · leak_io", "s2 · leak_cpu"))
        if ({"s1 · leak_io", "s2 · leak_cpu"} <= failed and logged) or time.monotonic() > deadline:
            return stored
        time.sleep(0.5)


def test_chained_secrets_reach_no_state_log_artifact_report_or_stderr(
    prefect_harness: None, capfd: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from prefect_llmorch.blocks import ToolCredentials
    from prefect_llmorch.flows.run import PlanRunFailed, run_plan

    secret = f"tok-{uuid.uuid4().hex}"
    ToolCredentials(secrets={"token": secret}).save(toolboxes_exits.BLOCK, overwrite=True)
    with pytest.raises(PlanRunFailed) as info:
        run_plan(PLAN, "toolboxes_exits:toolbox", processors=2, concurrency_limit=None)
    report = info.value.report
    rows = {c.id: c for c in report.calls}
    assert (rows["s1"].state, rows["s2"].state, rows["s3"].state, rows["s4"].state) == ("Failed", "Failed", "Completed", "Completed")
    for cid in ("s1", "s2"):
        assert rows[cid].reason is not None and "the service refused the request" in rows[cid].reason
        assert "rejected ***" in rows[cid].reason  # the cause is still told, scrubbed
    report_json = json.dumps(report.to_json(), default=str)
    assert secret not in report_json and secret not in str(info.value)

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["llmorch-run"])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
    stored = _stored_after_it_settles(run.id)
    tasks = {t["name"]: t for t in json.loads(stored["task runs"])}
    assert "rejected ***" in tasks["s1 · leak_io"]["state"]["message"]  # we read the failed state
    assert "rejected ***" in tasks["s2 · leak_cpu"]["state"]["message"]
    assert "Task run failed with exception" in stored["logs"]  # and the engine's failure records, tracebacks included
    for what, blob in stored.items():
        assert secret not in blob, f"the chained secret leaked into the {what}"
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
