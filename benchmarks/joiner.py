"""`python benchmarks/joiner.py` -- the join step against replanning from scratch, exactly.

The scripted OpenAI-compatible server (`prefect_llmorch.testing.FakeLLM`: real HTTP, the real
`openai` client, tokens = whitespace-separated words, so every count is exact) plays the
model; the calls really run (`prefect_llmorch.examples.trips`) as Prefect task runs.

Three questions need a second round: a condition ("if it will rain in Oslo tomorrow list
museums, else hiking trails"), a lookup whose result names the next lookup (a guide names
the landmarks-index entry to read), a count that decides how many calls follow (one forecast
per host city). Each is answered two ways, with the same model decisions:

- **joiner** (this project): `ask_query(..., joiner="auto")`. The planner writes the calls it
  can make and `sN: join()`; the joiner sees the results and writes a continuation whose ids
  continue and whose calls reference earlier results (`museums(s1.city)`); its calls stream
  into the same flow run. A continuation without `join()` ends the ask.
- **replan** (LLMCompiler's way): planner, run, joiner ("Action: Replan"), the planner again
  from scratch with the previous plan and results as context (new ids from s1, results copied
  in as literals), run, joiner again ("Action: Finish(...)"). Each plan is an `llmorch-run`.

Printed: answered correctly, LLM requests, prompt and completion tokens, wall seconds. Then
the latency the join step adds when the first plan already answers: `joiner="off"`, `"auto"`
(no `join()` in the plan: no request) and `"always"` (one request answered `Answer: s1`):
the join request's time at the server and the ask's wall time, medians of `--runs` (the
wall time of a whole ask on a shared 2-core machine varies by more than the join request).

Options: --token-delay SECONDS per token (0.005), --runs N (5).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import _setup  # noqa: F401  (paths, Prefect settings)

from prefect_llmorch.flows.ask import ask_query
from prefect_llmorch.flows.run import run_plan
from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.llm.joining import join_messages
from prefect_llmorch.llm.planning import plan_messages
from prefect_llmorch.examples.trips import toolbox as TRIPS_TB
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.testing import FakeLLM

TRIPS = "prefect_llmorch.examples.trips:toolbox"


@dataclass(frozen=True)
class Case:
    name: str
    question: str
    expected: object
    # the joiner's way: planner reply, then each joiner reply
    plan: str
    joins: tuple[str, ...]
    # LLMCompiler's way: each from-scratch plan, and the final answer text
    replans: tuple[str, ...]
    finish: str


MUSEUMS = ["Munch Museum", "Viking Ship Museum", "National Museum"]
VIEW = "Holmenkollen ski jump: 417 m above sea level, open 10-17, tickets 200 NOK."
HOSTS = "rain in Oslo and Bergen, sun in Trondheim"

CASES = (
    Case(
        "condition", "If it will rain in Oslo tomorrow, list museums there, otherwise hiking trails.", MUSEUMS,
        's1: forecast("Oslo", "tomorrow")\ns2: join()\n', ("Plan:\ns2: museums(s1.city)\n",),
        ('s1: forecast("Oslo", "tomorrow")\n', 's1: museums("Oslo")\n'), str(MUSEUMS),
    ),
    Case(
        "lookup names the next lookup", "Where is the best view of Oslo, and when is it open?", VIEW,
        's1: guide("best view of Oslo")\ns2: join()\n', ('Plan:\ns2: landmark("holmenkollen")\n',),
        ('s1: guide("best view of Oslo")\n', 's1: landmark("holmenkollen")\n'), VIEW,
    ),
    Case(
        "count decides the calls", "What is the weather tomorrow in each host city of Norway?", HOSTS,
        's1: host_cities("Norway")\ns2: join()\n',
        ("Plan:\ns2: forecast(s1[0])\ns3: forecast(s1[1])\ns4: forecast(s1[2])\ns5: join()\n", f"Answer: {HOSTS}"),
        ('s1: host_cities("Norway")\n', 's1: forecast("Oslo")\ns2: forecast("Bergen")\ns3: forecast("Trondheim")\n'),
        HOSTS,
    ),
)


def _usage(fake: FakeLLM) -> tuple[int, int, int]:
    from prefect_llmorch.testing.fake_llm import count_tokens

    reqs = fake.chat_requests
    prompt = sum(count_tokens(" ".join(m["content"] for m in r.messages)) for r in reqs)
    completion = sum(count_tokens(r.reply or "") for r in reqs)
    return len(reqs), prompt, completion


def joiner_way(case: Case, token_delay: float) -> tuple[bool, int, int, int, float]:
    with FakeLLM([case.plan, *case.joins], token_delay=token_delay) as fake:
        client = LLMClient(fake.base_url, "fake", "sk-local", max_retries=0)
        t = time.perf_counter()
        report = ask_query(case.question, TRIPS, processors=1, endpoint=client, concurrency_limit=None)
        wall = time.perf_counter() - t
        return (report.result == case.expected, *_usage(fake), wall)


def replan_way(case: Case, token_delay: float) -> tuple[bool, int, int, int, float]:
    """LLMCompiler's loop with the same decisions: plan, run, join; Replan: plan from scratch
    with the earlier plans and results as context, run, join; Finish."""
    scripted = []
    for i, text in enumerate(case.replans):
        scripted.append(text)
        last = i == len(case.replans) - 1
        scripted.append(f"Thought: I can answer now.\nAction: Finish({case.finish})" if last else
                        "Thought: the results decide which calls come next.\nAction: Replan")
    with FakeLLM(scripted, token_delay=token_delay) as fake:
        client = LLMClient(fake.base_url, "fake", "sk-local", max_retries=0)
        t = time.perf_counter()
        context = ""
        answer = None
        for i in range(len(case.replans)):
            question = case.question + (f"\n\nPrevious plans and their results:\n{context}" if context else "")
            with client.stream(plan_messages(question, TRIPS_TB)) as chunks:
                for _ in chunks:
                    pass
                text = chunks.completion.text
            report = run_plan(text, TRIPS, processors=1, concurrency_limit=None)
            plan = parse(text, TRIPS_TB)
            reply = client.complete(join_messages(case.question, TRIPS_TB, plan, report.results)).text
            context += "\n".join(f"{c.id}: {c.function}(...) -> {report.results.get(c.id)!r}" for c in plan.calls) + "\n"
            if "Finish(" in reply:
                answer = reply.split("Finish(", 1)[1].rsplit(")", 1)[0]
        wall = time.perf_counter() - t
        return (answer == str(case.expected), *_usage(fake), wall)


def already_answered(joiner: str, token_delay: float, runs: int) -> tuple[float, float, int, int, int]:
    """Median wall seconds of an ask whose first plan answers, median seconds the join
    request took at the server (0 without one); its requests and tokens."""
    walls = []
    joins = []
    usage = (0, 0, 0)
    for _ in range(runs):
        with FakeLLM(['s1: guide("best view of Oslo")\n'], default="Answer: s1", token_delay=token_delay) as fake:
            client = LLMClient(fake.base_url, "fake", "sk-local", max_retries=0)
            t = time.perf_counter()
            ask_query("Where is the best view of Oslo?", TRIPS, processors=1, endpoint=client,
                      concurrency_limit=None, joiner=joiner)
            walls.append(time.perf_counter() - t)
            usage = _usage(fake)
            joins.append(sum(r.finished_at - r.received_at for r in fake.chat_requests[1:]))
    return (statistics.median(walls), statistics.median(joins), *usage)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--token-delay", type=float, default=0.005)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    already_answered("off", 0.0, 1)  # the first ask starts the embedded Prefect server: not timed

    print(f"Questions that need a second round (scripted model, {args.token_delay * 1000:g} ms per token)\n")
    print(f"{'question':30} {'way':8} {'correct':>7} {'requests':>8} {'prompt tok':>10} {'compl tok':>9} {'wall s':>7}")
    totals: dict[str, list[int]] = {"joiner": [0, 0, 0], "replan": [0, 0, 0]}
    for case in CASES:
        for way, fn in (("joiner", joiner_way), ("replan", replan_way)):
            ok, n, p, c, wall = fn(case, args.token_delay)
            totals[way] = [a + b for a, b in zip(totals[way], (n, p, c))]
            print(f"{case.name:30} {way:8} {'yes' if ok else 'NO':>7} {n:>8} {p:>10} {c:>9} {wall:>7.2f}")
    for way, (n, p, c) in totals.items():
        print(f"{'total':30} {way:8} {'':>7} {n:>8} {p:>10} {c:>9}")

    print(f"\nThe first plan already answers (median of {args.runs})\n")
    print(f"{'joiner':8} {'requests':>8} {'prompt tok':>10} {'compl tok':>9} {'join request s':>14} {'ask wall s':>10}")
    for mode in ("off", "auto", "always"):
        wall, join, n, p, c = already_answered(mode, args.token_delay, args.runs)
        print(f"{mode:8} {n:>8} {p:>10} {c:>9} {join:>14.3f} {wall:>10.2f}")


if __name__ == "__main__":
    main()
