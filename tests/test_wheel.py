"""The package once installed: build the wheel, install it into a fresh virtualenv, and run
the README's commands from an empty folder outside the checkout.

`.ci/run` runs this check before the tests (`python tests/test_wheel.py DIR`) and then sets
`LLMORCH_WHEEL_CHECKED=1`, so the test below does not build and install a second time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _expect(out: subprocess.CompletedProcess[str], code: int, what: str) -> None:
    if out.returncode != code:
        raise AssertionError(f"{what}: exit {out.returncode}, wanted {code}\n--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}")


def check_installed_wheel(workdir: Path, log: Callable[[str], None] = lambda _: None) -> dict[str, str]:
    """Build, install and use the wheel under `workdir`; raise AssertionError on any failure.

    Returns:
        What was checked, by command: its seconds and its last line of output.
    """
    dist, env_dir, empty = workdir / "dist", workdir / "venv", workdir / "empty"
    empty.mkdir(parents=True)
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PREFECT_API_URL", "PREFECT_PROFILES_PATH")}
    log("building the wheel")
    t0 = time.monotonic()
    out = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], workdir, base_env, 600)
    _expect(out, 0, "pip wheel")
    (wheel,) = dist.glob("prefect_llmorch-*.whl")
    log(f"installing {wheel.name} into a fresh virtualenv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    out = _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], workdir, base_env, 1200)
    _expect(out, 0, "pip install of the wheel")
    log(f"built and installed in {time.monotonic() - t0:.1f} s")
    env = dict(
        base_env, PATH=f"{bin_dir}{os.pathsep}{base_env.get('PATH', '')}", PREFECT_HOME=str(workdir / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    checked: dict[str, str] = {}

    def step(cmd: list[str], code: int = 0, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        log("$ " + " ".join(cmd))
        t = time.monotonic()
        out = _run(cmd, empty, env, timeout)
        _expect(out, code, " ".join(cmd))
        last = (out.stdout.strip().splitlines() or out.stderr.strip().splitlines() or [""])[-1][:160]
        checked[" ".join(cmd)] = f"{time.monotonic() - t:.1f} s: {last}"
        return out

    where = step(["python", "-c", "import prefect_llmorch; print(prefect_llmorch.__file__)"]).stdout.strip()
    if not where.startswith(str(env_dir)):
        raise AssertionError(f"prefect_llmorch was imported from {where}, not from the fresh virtualenv")
    step(["llmorch", "--version"])
    step(["llmorch", "check", "example:kitti"])
    missing = step(["llmorch", "run", "missing.plan"], code=2)
    if "example:kitti" not in missing.stderr:
        raise AssertionError(f"the missing-plan message does not list the shipped examples: {missing.stderr}")
    demo = json.loads(step(["llmorch", "demo", "--json"]).stdout)
    if demo["state"] != "Completed" or not str(demo["result"]).startswith("Demo answer"):
        raise AssertionError(f"llmorch demo: {demo}")
    run = json.loads(step(["llmorch", "run", "example:kitti", "-P", "2", "--json"]).stdout)
    if run["state"] != "Completed" or len(run["calls"]) != 11:
        raise AssertionError(f"llmorch run example:kitti: {run}")
    step(["prefect", "block", "register", "-m", "prefect_llmorch.blocks"])
    return checked


@pytest.mark.slow
def test_the_installed_wheel_works_from_an_empty_folder(tmp_path: Path) -> None:
    if os.environ.get("LLMORCH_WHEEL_CHECKED") == "1":
        pytest.skip("checked by .ci/run before the tests (python tests/test_wheel.py)")
    checked = check_installed_wheel(tmp_path)
    assert "llmorch demo --json" in checked and "prefect block register -m prefect_llmorch.blocks" in checked


if __name__ == "__main__":  # .ci/run: python tests/test_wheel.py [DIR]
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="llmorch-wheel-"))
    for command, last in check_installed_wheel(target, log=lambda s: print(s, flush=True)).items():
        print(f"ok: {command} -> {last}")
