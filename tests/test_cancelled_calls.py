"""A call stopped by Ctrl-C is Cancelled, with the cancel's message and no traceback: a terminal
sends SIGINT to the whole process group, so the worker running the call gets it too, and its
`KeyboardInterrupt` can come back before the run has cancelled its calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.mark.slow
def test_a_compute_call_stopped_by_ctrl_c_to_the_process_group_is_cancelled(tmp_path: Path, prefect_server) -> None:  # noqa: ANN001
    plan = tmp_path / "ctrl_c.plan"
    plan.write_text("s1: echo(1)\ns2: press_ctrl_c(60.0)\ns3: echo(s2)\n")
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(  # its own process group: the tool's SIGINT reaches it and its workers only
        [sys.executable, "-m", "prefect_llmorch.cli", "run", str(plan), "-t", "toolboxes_ctrl_c:toolbox", "-P", "1", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, start_new_session=True,
    )
    assert proc.returncode == 130, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    rows = {c["id"]: c for c in report["calls"]}
    assert report["state"] == "Cancelled" and rows["s1"]["state"] == "Completed"
    assert rows["s2"]["state"] == "Cancelled", rows["s2"]
    assert rows["s2"]["reason"].startswith("CallCancelled: s2 · press_ctrl_c was cancelled (")
    assert rows["s3"]["state"] != "Completed"
    for text in (rows["s2"]["reason"], proc.stderr):
        assert "Traceback" not in text and "ToolExit" not in text and "KeyboardInterrupt" not in text
