"""`python benchmarks/busy.py` -- runs on a busy machine (issue 27, "Busy machine").

The scene the issue measured: CPU hogs beside several `llmorch ask` runs at once (the
embedded default: each command starts its own server on one PREFECT_HOME's SQLite file)
whose first plan fails at run time and whose repair comes back `--repair-delay` seconds
later, as from a slow real model, and `llmorch run`s of 16 calls. Counts how many end
Completed and names what the others ended with. The LLM is a scripted OpenAI-compatible
server (real HTTP) in this process.

`--code DIR` (repeatable) runs the same scene with another checkout's package on
PYTHONPATH (e.g. a `git worktree` of an older commit), interleaved with this one, so the
two are measured side by side on the same machine.

    python benchmarks/busy.py --repeat 2 --code /tmp/llmorch-old
"""

from __future__ import annotations

import _setup  # noqa: F401

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect_llmorch.testing.fake_llm import FakeLLM  # noqa: E402

#: The first plan: s2 fails at run time (a negative sleep), recovery asks for a repair.
PLAN = 's1: burn(1.0)\ns2: wait(-1.0)\ns3: burn(1.0)\ns4: average([s1, s2, s3])'
#: A run of 16 calls: 12 compute, 4 inout.
RUN_PLAN = "\n".join([f"s{i}: burn(0.5)" for i in range(1, 13)] + [f"s{i}: wait(0.5)" for i in range(13, 17)]) + "\n"
ROOT = Path(__file__).resolve().parents[1]


def _reply(delay: float):  # noqa: ANN202
    def reply(body: dict) -> str:  # noqa: ANN001
        text = json.dumps(body)
        if "s2" in text and ("non-negative" in text or "ValueError" in text):  # the repair request
            time.sleep(delay)
            return "s2: wait(0.1)"
        return PLAN
    return reply


def scene(code: Path, asks: int, runs: int, hogs: int, delay: float, home: str | None = None) -> Counter[str]:
    """The runs' outcomes by final state. `home`: a PREFECT_HOME whose database is already
    migrated (the tests'); by default a new one, migrated by a first command."""
    migrated = home is not None
    home = home or tempfile.mkdtemp(prefix="llmorch-busy-")
    with FakeLLM([], default=_reply(delay), api_key="sk-bench", model="m") as llm:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", OPENAI_BASE_URL=llm.base_url,
                   OPENAI_API_KEY="sk-bench", LLMORCH_MODEL="m", PYTHONPATH=str(code))
        if not migrated:  # migrate the database first (a user's second command onwards)
            subprocess.run([sys.executable, "-m", "prefect_llmorch.cli", "run", "example:kitti", "-P", "2", "--json"],
                           env=env, capture_output=True, timeout=600)
        plan = Path(home) / "run16.plan"
        plan.write_text(RUN_PLAN)
        hog_procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        procs = []
        try:
            for i in range(asks):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect_llmorch.cli", "ask", f"question {i}", "-P", "2", "--json"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=home))
            for _ in range(runs):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect_llmorch.cli", "run", str(plan), "-P", "2", "--json"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=home))
            outcomes: Counter[str] = Counter()
            for proc in procs:
                try:
                    out, err = proc.communicate(timeout=600)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    outcomes["no exit within 600 s"] += 1
                    continue
                try:
                    doc = json.loads(out)
                    state = doc.get("state", "?")
                    why = "" if state == "Completed" else f": {str(doc.get('message', ''))[:120]}"
                except ValueError:
                    state, why = "no JSON", f" (exit {proc.returncode}): {(err.strip().splitlines() or [''])[-1][:120]}"
                outcomes[f"{state}{why}"] += 1
            return outcomes
        finally:
            for h in hog_procs:
                h.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--asks", type=int, default=6)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--repair-delay", type=float, default=8.0)
    parser.add_argument("--code", action="append", default=[], help="another checkout to run side by side")
    args = parser.parse_args(argv)
    codes = [ROOT, *map(Path, args.code)]
    total: dict[Path, Counter[str]] = {c: Counter() for c in codes}
    for rep in range(args.repeat):
        for code in codes:
            t = time.monotonic()
            got = scene(code, args.asks, args.runs, args.hogs, args.repair_delay)
            total[code].update(got)
            print(f"round {rep + 1}, {code}: {dict(got)} ({time.monotonic() - t:.0f} s; load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{args.asks} asks + {args.runs} runs of 16 calls beside {args.hogs} CPU hogs, repair after {args.repair_delay:.0f} s, "
          f"{args.repeat} round(s):")
    for code, got in total.items():
        done = got.get("Completed", 0)
        print(f"  {code}: {done} of {sum(got.values())} Completed")
        for what, n in got.most_common():
            if what != "Completed":
                print(f"      {n} x {what}")


if __name__ == "__main__":
    main()
