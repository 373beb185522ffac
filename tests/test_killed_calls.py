"""A compute call whose worker is killed mid-call still says when it ran (issue 13 item 7):
start when its worker got it, end when the death was seen; the tool's own record lies between."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_llmorch.report import PlanRunFailed
from prefect_llmorch.flows.run import run_plan

pytestmark = pytest.mark.usefixtures("prefect_api")  # on SQLite and on PostgreSQL

ROUNDING = 1e-6  # report times are rounded to microseconds


def test_a_call_whose_worker_was_killed_has_its_start_and_end(tmp_path: Path) -> None:
    log = tmp_path / "die.log"
    with pytest.raises(PlanRunFailed) as info:
        run_plan(f's1: die_cpu("{log}")\ns2: square(3)\n', "toolboxes_exits:toolbox", processors=1, concurrency_limit=None)
    report = info.value.report
    s1 = report.row("s1")
    [(event, pid, at)] = [line.split() for line in log.read_text().splitlines()]
    assert s1.state == "Failed" and s1.reason is not None and s1.reason.startswith("WorkerDied")
    assert s1.start is not None and s1.end is not None
    assert report.t0 + s1.start - ROUNDING <= float(at) <= report.t0 + s1.end + ROUNDING
    assert s1.pid == int(pid)
    row = next(c for c in report.to_json()["calls"] if c["id"] == "s1")
    assert (row["start"], row["end"], row["pid"]) == (s1.start, s1.end, int(pid))
    assert report.row("s2").state == "Completed"
