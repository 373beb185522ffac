"""`python benchmarks/guard.py` -- the machine-wide guard under contention, repeated (issue 14 item 4).

Each repetition: three flow runs of a P = 2 compute-heavy plan (4 calls of 0.15 s of CPU each,
`tests/toolboxes_guard.py`) started at once against ONE server, each with its own runner,
worker processes and leases of one global concurrency limit of size 2. From the records
the tools wrote themselves (pid, start, end), it prints the most compute calls running at
once machine-wide (must be <= 2), the worker processes seen (up to 6 could run at once
without the guard), and whether every run completed with the guard held (no local
fallback exists: `guard="global"`; the limit's active slots are 0 afterwards).
tests/test_guard.py is one repetition of this, as a slow test.

Options: --repeat N (10), --server harness|ephemeral|start|postgres (benchmarks/_servers.py).
"""

from __future__ import annotations

import _setup  # noqa: F401  (paths and Prefect settings, before Prefect is imported)
import _servers  # noqa: E402

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

sys.path.insert(0, str(_setup.ROOT / "tests"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(_setup.ROOT / "tests"), os.environ["PYTHONPATH"]])
# Slots given back as each run ends, not kept for this process's next run (as in the tests):
# "slots left 0" checks that every slot came back, which kept slots would hide for 5 s.
os.environ.setdefault("LLMORCH_KEEP_SLOTS_SECONDS", "0")


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--server", choices=_servers.KINDS, default="harness")
    args = parser.parse_args(argv)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from toolboxes_guard import peak, three_runs_at_once

    ok = True
    with _servers.server(args.server) as description:
        print(f"server: {description}; load average {os.getloadavg()[0]:.2f}", flush=True)
        for rep in range(args.repeat):
            limit = f"llmorch-bench-guard-{uuid.uuid4().hex[:6]}"
            with get_client(sync_client=True) as client:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=2))
            log = os.path.join(tempfile.mkdtemp(), "calls.jsonl")
            t = time.time()
            reports, rows = three_runs_at_once(log, limit)
            took = time.time() - t
            with get_client(sync_client=True) as client:
                active = client.read_global_concurrency_limit_by_name(limit).active_slots
            good = [r.state for r in reports] == ["Completed"] * 3 and len(rows) == 12 and peak(rows) <= 2 and active == 0
            ok &= good
            print(
                f"  repetition {rep + 1}/{args.repeat}: runs {[r.state for r in reports]}, calls recorded {len(rows)},"
                f" at once machine-wide at most {peak(rows)}, worker pids {len({r['pid'] for r in rows})},"
                f" slots left {active}, {took:.1f} s, load {os.getloadavg()[0]:.2f}: {'ok' if good else 'VIOLATED'}",
                flush=True,
            )
    print(f"TARGET guard held in {args.repeat} repetitions of 3 flow runs at once (<= 2 compute calls machine-wide): {'PASS' if ok else 'MISS'}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
