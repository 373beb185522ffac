"""A plan over the API's 512 KB parameter limit runs (issue 13 item 6): the flow run gets a
short reference (digest, size, path), the flow reads the stored text back."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from prefect_llmorch.storage.planref import PLAN_PARAMETER_LIMIT, PlanReferenceError, plan_parameter, plan_text
from prefect_llmorch.flows.run import run_plan


def test_small_plans_pass_as_they_are_large_ones_by_reference(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_HOME, temporary_settings

    with temporary_settings({PREFECT_HOME: str(tmp_path)}):
        _check_reference(tmp_path)


def _check_reference(tmp_path: Path) -> None:
    small = 's1: fetch(0, value="x")\n'
    assert plan_parameter(small) == small and plan_text(small) == small
    big = "s1: fetch(0, value=[" + ", ".join(["1"] * PLAN_PARAMETER_LIMIT) + "])\n"
    ref = plan_parameter(big)
    digest = hashlib.sha256(big.encode()).hexdigest()
    assert ref == f"<llmorch-plan sha256={digest} bytes={len(big)} path={tmp_path / 'llmorch-plans' / (digest + '.plan')}>"
    assert plan_text(ref) == big
    assert plan_parameter(big) == ref  # stored once, by content
    assert [p.name for p in (tmp_path / "llmorch-plans").iterdir()] == [digest + ".plan"]
    (tmp_path / "llmorch-plans" / (digest + ".plan")).write_text(big.replace("1", "2"))
    with pytest.raises(PlanReferenceError, match="no longer holds the plan"):
        plan_text(ref)
    (tmp_path / "llmorch-plans" / (digest + ".plan")).unlink()
    with pytest.raises(PlanReferenceError, match="cannot be read"):
        plan_text(ref)


@pytest.mark.usefixtures("prefect_harness")
def test_run_plan_over_512_kb_keeps_the_text_out_of_flow_run_parameters() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    value = "".join(f"{i:07d}," for i in range(80_000))  # 640 KB, every part distinct
    plan = f's1: fetch(0, value="{value}")\ns2: add(1, 2)\n'
    assert len(plan.encode()) > 512 * 1024
    report = run_plan(plan, "toolboxes:toolbox", processors=1, concurrency_limit=None)
    assert report.state == "Completed"
    assert report.results["s1"] == value and report.results["s2"] == 3
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["llmorch-run"])),
                                      sort=FlowRunSort.START_TIME_DESC, limit=1)
    param = run.parameters["plan"]
    m = re.fullmatch(r"<llmorch-plan sha256=([0-9a-f]{64}) bytes=(\d+) path=(.+)>", param)
    assert m, param[:200]
    assert m.group(1) == hashlib.sha256(plan.encode()).hexdigest() and int(m.group(2)) == len(plan.encode())
    assert Path(m.group(3)).read_text() == plan
