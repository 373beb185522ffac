"""`python benchmarks/ask_overhead.py` -- the fixed cost of an ask and of a run (issue 27.5).

In one warm process (one warm-up round first), with an instant scripted LLM (the
OpenAI-compatible fake server, real HTTP) and 3 independent I/O calls of 0.3 s
(`wait_toolbox.wait`), each round measures:

- ask, to planner request: from the call of `ask_query` to the moment the fake server
  received the planner's LLM request (its own clock, `RecordedRequest.received_at`);
- ask, last call end to return: from the end of the last call's body (the tool's own clock)
  to `ask_query` returning;
- run, call to first call start: from the call of `run_plan` to the first call's body starting
  (`run_plan` has no LLM request; this is its equivalent);
- run, last call end to return: as for ask.

Prints the median, min and max of each over `--repeat` rounds (default 7). Targets (issue 27):
ask to planner request <= 50 ms, last call end to return <= 100 ms.

Options: --repeat N, --only ask|run, --no-global-limit, --server embedded (default: this process's embedded server, as `llmorch`
and scripts without PREFECT_API_URL have it) or ephemeral|harness|start (benchmarks/_servers.py), --profile FILE
(pyinstrument, if installed: three extra asks, as HTML for a `.html` name, else as text).
"""

from __future__ import annotations

import _setup  # noqa: F401  (paths and Prefect settings, before Prefect is imported)
import _servers  # noqa: E402

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

TOOLBOX = "wait_toolbox:toolbox"
PLAN = "s1: wait(1)\ns2: wait(2)\ns3: wait(3)\n"


#: `--no-global-limit`: the runs' `concurrency_limit` (None: no machine-wide limit).
LIMIT: dict[str, str | None] = {"name": "llmorch-processors"}


def ask_round(llm: object, client: object) -> tuple[float, float]:
    import wait_toolbox

    from prefect_llmorch import ask_query

    llm.add(PLAN)  # type: ignore[attr-defined]
    seen = len(llm.requests)  # type: ignore[attr-defined]
    wait_toolbox.STARTS.clear()
    wait_toolbox.ENDS.clear()
    t0 = time.monotonic()
    ask_query("wait three times", TOOLBOX, processors=2, endpoint=client, recovery_rounds=0, concurrency_limit=LIMIT["name"])
    t1 = time.monotonic()
    request = [r for r in llm.requests[seen:] if r.path.endswith("/chat/completions")][0]  # type: ignore[attr-defined]
    return request.received_at - t0, t1 - max(wait_toolbox.ENDS)


def run_round() -> tuple[float, float]:
    import wait_toolbox

    from prefect_llmorch import run_plan

    wait_toolbox.STARTS.clear()
    wait_toolbox.ENDS.clear()
    t0 = time.monotonic()
    run_plan(PLAN, TOOLBOX, processors=2, concurrency_limit=LIMIT["name"])
    t1 = time.monotonic()
    return min(wait_toolbox.STARTS) - t0, t1 - max(wait_toolbox.ENDS)


def show(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"{name:<40} median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f}   max {max(ms):7.1f}"
        f"   ({len(ms)} runs: {', '.join(f'{v:.0f}' for v in ms)})",
        flush=True,
    )


def measure(rounds: int, fn: Callable[[], tuple[float, float]]) -> tuple[list[float], list[float]]:
    firsts, lasts = [], []
    for _ in range(rounds):
        a, b = fn()
        firsts.append(a)
        lasts.append(b)
    return firsts, lasts


@contextmanager
def _server(kind: str) -> Iterator[str]:
    """`embedded`: what `llmorch` and a script without PREFECT_API_URL get (this process's
    embedded server, `host/server.py`); else `_servers.server(kind)`."""
    if kind != "embedded":
        with _servers.server(kind) as description:
            yield description
        return
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        raise SystemExit("--server embedded needs PREFECT_API_URL unset")
    from prefect_llmorch.host.server import ensure_server

    started = ensure_server()
    yield f"embedded (no PREFECT_API_URL), started in {getattr(started, 'seconds', 0):.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--server", default="embedded", choices=("embedded",) + _servers.KINDS)
    parser.add_argument("--profile", default=None, help="write a pyinstrument HTML profile of one ask here")
    parser.add_argument("--only", choices=("ask", "run"), default=None)
    parser.add_argument("--no-global-limit", action="store_true", help="runs without the machine-wide limit (`llmorch-processors`)")
    args = parser.parse_args(argv)
    if args.no_global_limit:
        LIMIT["name"] = None

    from prefect_llmorch.llm.client import LLMClient
    from prefect_llmorch.testing.fake_llm import FakeLLM

    with _server(args.server) as description, FakeLLM(default="done") as llm:
        print(f"server: {description}", flush=True)
        client = LLMClient(llm.base_url, "fake-llm", api_key="bench-key-not-secret")
        if args.only != "run":
            ask_round(llm, client)  # warm-up: imports, workers, the first flow run
            firsts, lasts = measure(args.repeat, lambda: ask_round(llm, client))
            show("ask: ask_query -> planner request", firsts)
            show("ask: last call end -> ask_query returns", lasts)
        if args.only != "ask":
            run_round()
            firsts, lasts = measure(args.repeat, run_round)
            show("run: run_plan -> first call starts", firsts)
            show("run: last call end -> run_plan returns", lasts)
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.001, async_mode="disabled")
            with profiler:
                for _ in range(3):
                    ask_round(llm, client)
            with open(args.profile, "w") as fh:
                fh.write(profiler.output_html() if args.profile.endswith(".html") else profiler.output_text(show_all=False))
            print(f"profile: {args.profile}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
