"""`python benchmarks/real_latency.py` -- streamed dispatch against plan-then-run, with a real model.

Each question is asked once with `ask_query` (the library behind `llmorch ask`: the planner
streams the plan and each complete call starts at once), against the project's local model
(`prefect_llmorch.llm.local`) or `--base-url`. The model is reached through a small
recording proxy on 127.0.0.1 that stamps, for every request, when its first streamed token
arrived and when its answer ended (our code is unchanged; the proxy sits where the network is).

Then the same plan (the text the planner returned) runs with `run_plan`, plan-then-run: no
call can start before the whole plan is in, so its times count from the end of the planner's
last answer. Both are measured from the first plan token (the first token of the planner's
first answer):

- first call: streamed = the first call's start in the ask's report; plan-then-run = end of
  planning + `run_plan`'s own time to its first call;
- answer: streamed = the last call's end; plan-then-run = end of planning + `run_plan`'s latency.

`self` calls in the plan ask the same model in both runs. Results are not cached (`cache=False`).
P = 2, without the machine-wide limit (`concurrency_limit=None`: other people's runs hold its
slots on a shared machine). The questions: the KITTI-like one (8 CPU-bound `detect` calls, two averages, one
summary) and I/O-bound ones of the default toolbox (`search`, `quote`, `wait`).

The proxy asks llama.cpp not to reuse a cached prompt (`cache_prompt: false`): otherwise the
second run's `self` call, whose prompt the first run just sent, would be answered faster.

Options: --questions I [I ...] (indexes into QUESTIONS), --base-url, --threads, --planner text|json,
--out FILE (JSON).
"""

from __future__ import annotations

import _setup  # noqa: F401

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from _proxy import Recorder, model_client  # noqa: E402

QUESTIONS = (
    "Count the objects in the images frame_001.png to frame_008.png, average the counts of frames 1-4 "
    "and of frames 5-8, and tell me whether traffic is getting heavier.",
    "Did Apple or Microsoft stock do better today?",
    "How fast are a cheetah, a greyhound and a peregrine falcon? Search each, then rank them.",
    "Wait 2 seconds, 3 seconds and 1 second, at the same time, then sum the seconds waited.",
)


def one(question: str, client: Any, recorder: Recorder, planner: str) -> dict[str, Any]:
    from prefect_llmorch.flows.ask import ask_query
    from prefect_llmorch.flows.run import run_plan

    recorder.reset()
    # no machine-wide limit: on this shared machine others' runs hold its slots, and the
    # wait for them is not what is measured here (both runs alike)
    streamed = ask_query(question, processors=2, endpoint=client, planner=planner, cache=False,
                         concurrency_limit=None)
    attempts = streamed.planning.attempts if streamed.planning else 1
    planning = sorted(recorder.requests, key=lambda r: r["sent"])[:attempts]  # the planner's requests come first
    first_token = planning[0]["first"]
    plan_end = planning[-1]["end"]
    plan_text = streamed.planning.plan if streamed.planning else ""
    starts = [c.start for c in streamed.calls if c.start is not None]
    ends = [c.end for c in streamed.calls if c.end is not None]
    recorder.reset()
    again = run_plan(plan_text, "prefect_llmorch.examples.toolbox:toolbox", processors=2, endpoint=client, cache=False,
                     concurrency_limit=None)
    return {
        "question": question, "plan": plan_text, "attempts": attempts, "calls": len(streamed.calls),
        "answer": str(streamed.result)[:300],
        "plan_tokens_seconds": plan_end - first_token,
        "first_token_after_request": first_token - planning[0]["sent"],
        "streamed_first_call": streamed.t0 + min(starts) - first_token,
        "streamed_answer": streamed.t0 + max(ends) - first_token,
        "then_first_call": plan_end - first_token + (again.time_to_first_call or 0.0),
        "then_answer": plan_end - first_token + again.latency,
        "self_calls": sum(c.function == "self" for c in streamed.calls),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--questions", type=int, nargs="+", default=list(range(len(QUESTIONS))),
                        help="indexes into QUESTIONS (default: all)")
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the local model)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--planner", default="text", choices=("text", "json"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    recorder = Recorder()
    rows = []
    # llama.cpp keeps the last prompt: the plan-then-run's `self` call, the same prompt as the
    # streamed run's, would be read from cache; neither is
    with model_client(args.base_url, args.threads, recorder, cache_prompt=False) as client:
        for question in [QUESTIONS[i] for i in args.questions]:
            try:
                row = one(question, client, recorder, args.planner)
            except Exception as exc:  # a question whose plan or run failed: say so, go on
                row = {"question": question, "error": f"{type(exc).__name__}: {exc}"[:800]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| question | calls (self) | plan written (s) | first call: streamed / plan-then-run (s) | "
          "answer: streamed / plan-then-run (s) |\n|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['question'][:40]} | failed: {r['error'][:80]} | | | |")
            continue
        print(f"| {r['question'][:40]}... | {r['calls']} ({r['self_calls']}) | {r['plan_tokens_seconds']:.1f} | "
              f"{r['streamed_first_call']:.1f} / {r['then_first_call']:.1f} | "
              f"{r['streamed_answer']:.1f} / {r['then_answer']:.1f} |")
    ok = [r for r in rows if "error" not in r]
    if ok:
        print(f"\nmedian first call: streamed {statistics.median(r['streamed_first_call'] for r in ok):.1f} s, "
              f"plan-then-run {statistics.median(r['then_first_call'] for r in ok):.1f} s; median answer: streamed "
              f"{statistics.median(r['streamed_answer'] for r in ok):.1f} s, plan-then-run "
              f"{statistics.median(r['then_answer'] for r in ok):.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1, default=repr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
