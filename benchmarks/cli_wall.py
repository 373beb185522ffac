"""`python benchmarks/cli_wall.py` -- `llmorch run`'s wall time beside Prefect's own floor (issue 14 item 6).

Each configuration is a fresh command (a new process, the embedded default: no
`PREFECT_API_URL`, so Prefect starts its temporary server), all sharing one PREFECT_HOME
whose database is migrated by an untimed first command (a user's second command onwards;
a fresh home adds the migrations to everyone). Interleaved rounds, median [min-max]:

- Prefect's floor: `python -c` importing Prefect and calling an empty `@flow` (the
  ephemeral server's start, one flow run, teardown);
- ours: `llmorch run example:kitti -P 2 --json` (the plan's own latency and the time from
  the flow's start to its first call are in its JSON; the same with `--no-global-limit`
  beside it, the floor of that time without the machine-wide guard;
  `time:` on stderr says where the command's wall went: Prefect start, flow, teardown).

floor + plan = Prefect's floor + ours' measured latency of the plan: what a command could
take if everything but the plan's own latency were Prefect's. Ours minus that is our share.

Options: --repeat N (3).
"""

from __future__ import annotations

import _setup  # noqa: F401

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

EMPTY_FLOW = "from prefect import flow\n@flow\ndef empty():\n    return 1\nempty()\n"
LLMORCH = [sys.executable, "-m", "prefect_llmorch.cli"]


def _env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    return env


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t, proc


def floor(env: dict[str, str]) -> dict[str, float]:
    wall, proc = _timed([sys.executable, "-c", EMPTY_FLOW], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"wall": wall}


def ours(env: dict[str, str], *extra: str) -> dict[str, float]:
    wall, proc = _timed([*LLMORCH, "run", "example:kitti", "-P", "2", "--json", *extra], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    m = re.search(r"Prefect start ([\d.]+) s, flow ([\d.]+) s .*?teardown ([\d.]+) s, the rest ([\d.]+) s", proc.stderr)
    parts = dict(zip(("prefect", "flow", "teardown", "rest"), map(float, m.groups()))) if m else {}
    return {"wall": wall, "latency": out["latency"], "best": out.get("best", float("nan")),
            "time_to_first_call": out["time_to_first_call"], **parts}


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if subprocess.run([*LLMORCH, "--help"], capture_output=True).returncode != 0:
        LLMORCH[:] = ["llmorch"]
    env = _env(tempfile.mkdtemp(prefix="llmorch-cli-wall-"))
    t = time.perf_counter()
    floor(env)  # migrates the database: not counted
    print(f"first command (database migrations): {time.perf_counter() - t:.1f} s; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows: dict[str, list[dict[str, float]]] = {"floor": [], "ours": [], "unguarded": []}
    for rep in range(args.repeat):
        rows["floor"].append(floor(env))
        rows["ours"].append(ours(env))
        rows["unguarded"].append(ours(env, "--no-global-limit"))
        print(f"  round {rep + 1}: floor {rows['floor'][-1]['wall']:.1f} s, ours {rows['ours'][-1]['wall']:.1f} s"
              f" (latency {rows['ours'][-1]['latency']:.2f} s); load {os.getloadavg()[0]:.2f}", flush=True)
    f = [r["wall"] for r in rows["floor"]]
    o = rows["ours"]
    plus = [fl + r["latency"] for fl, r in zip(f, o)]
    print(f"\n{args.repeat} interleaved rounds, median [min-max] seconds; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Prefect's floor (empty flow, ephemeral)   {_stats(f)}")
    print(f"floor + ours' plan latency                {_stats(plus)}")
    print(f"llmorch run example:kitti -P 2 (wall)     {_stats([r['wall'] for r in o])}")
    for key in ("time_to_first_call", "latency", "best", "prefect", "flow", "teardown", "rest"):
        if all(key in r for r in o):
            print(f"  ours: {key:<37} {_stats([r[key] for r in o])}")
    print(f"  --no-global-limit: time_to_first_call      {_stats([r['time_to_first_call'] for r in rows['unguarded']])}")
    print(f"ours - (floor + plan latency), medians: {statistics.median([r['wall'] for r in o]) - statistics.median(plus):.2f} s")


if __name__ == "__main__":
    main()
