"""`--resource NAME=AMOUNT` on the CLI: parsed before Prefect starts, bad values exit 2."""

from __future__ import annotations

import subprocess
import sys


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefect_llmorch.cli", *args], capture_output=True, text=True, timeout=120)


def test_a_bad_resource_option_is_one_line_and_exit_2() -> None:
    for bad in ("gpu=x", "search-api", "search-api=0"):
        out = _cli("run", "example:kitti", "--resource", bad)
        assert out.returncode == 2, (bad, out.stderr)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: --resource")


def test_simulate_takes_capacities() -> None:
    out = _cli("simulate", "example:kitti", "-P", "2", "--resource", "search-api=2", "--json")
    assert out.returncode == 0, out.stderr
    assert '"makespan"' in out.stdout
