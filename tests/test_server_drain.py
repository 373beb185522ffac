"""What a run sent to the embedded server is in its database once the process has exited:
the server's shutdown lets Prefect's task-run recorder write what it was sent (`host/app.py`,
`drained`) instead of cancelling it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from homes import migrated_home

pytestmark = pytest.mark.slow

CALLS = 60  # enough that the recorder still has queued events when the run's process exits

SCRIPT = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from prefect_llmorch.flows.run import run_plan
    plan = "\\n".join(f"s{{i}}: search('q{{i}}')" for i in range(1, {CALLS} + 1))
    report = run_plan(plan, "cli_toolbox:toolbox", processors=2)
    print(report.state)
    """
)


def test_every_task_run_of_a_finished_run_is_in_the_database_with_its_final_state(tmp_path) -> None:
    home = migrated_home(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("Completed"), done.stdout

    with sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True) as db:
        flows = db.execute("select id, state_type from flow_run").fetchall()
        assert [state for _, state in flows] == ["COMPLETED"]
        flow_run_id = flows[0][0]
        task_runs = db.execute("select state_type, count(*) from task_run where flow_run_id = ? group by 1",
                               (flow_run_id,)).fetchall()
        states = db.execute("select s.type, count(*) from task_run_state s join task_run t on s.task_run_id = t.id "
                            "where t.flow_run_id = ? group by 1", (flow_run_id,)).fetchall()
        artifacts = {key for (key,) in db.execute("select key from artifact where flow_run_id = ?", (flow_run_id,))}
    assert task_runs == [("COMPLETED", CALLS)]
    assert sorted(states) == [("COMPLETED", CALLS), ("PENDING", CALLS), ("RUNNING", CALLS)]
    assert "llmorch-schedule" in artifacts
    assert "Error flushing" not in (home / "llmorch-server.log").read_text(errors="replace")
