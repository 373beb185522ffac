"""Resume: after `kill -9` of `llmorch run` mid-plan, the same command again runs only the calls
that had not completed; completed pure calls come from Prefect's cache. Counted with the
tools' own records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_a_killed_run_resumes_from_the_cache(tmp_path: Path) -> None:
    log, flag = tmp_path / "runs.log", tmp_path / "hold"
    plan = tmp_path / "resume.plan"
    plan.write_text(
        f's1: square(7, "{log}")\n'
        f's2: lookup("fast", "{log}")\n'
        f's3: wait_while("{flag}", "slow", "{log}")\n'
        f's4: square(s1, "{log}")\n'
    )
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(tmp_path / "home"), PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    cmd = [sys.executable, "-m", "prefect_llmorch.cli", "run", str(plan), "-t", "toolboxes_cache:toolbox", "-P", "1", "--json"]

    def ran() -> list[str]:
        return [line.split()[0] + ":" + line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []

    flag.write_text("")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        # s1, s2, s4 complete while s3 waits on the flag; give their results time to be stored.
        while not {"square:7", "lookup:fast", "wait_while:slow", "square:49"} <= set(ran()):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, f"calls did not start: {ran()}"
            time.sleep(0.2)
        time.sleep(2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    before = ran()
    flag.unlink()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    again = ran()[len(before):]
    assert again == ["wait_while:slow"], f"the resumed run re-ran {again}"
    import json

    report = json.loads(second.stdout)
    cached = {c["id"] for c in report["calls"] if c.get("cached")}
    assert cached == {"s1", "s2", "s4"}
