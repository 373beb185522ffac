"""Functions of the paper-table benchmark (`paper_tables.py`, workloads in `workloads.toml`).

Module-level, so our worker processes import them by name: `paper_tables.py` puts this
directory on `sys.path` and `PYTHONPATH` before anything starts a process.

Every function takes its cost in seconds as its last argument, so the per-call times live
in the plans of `workloads.toml` (one config file), not here:

- compute functions hold a CPU: they burn until `time.thread_time()` has advanced by
  `seconds` (never `sleep`, never `process_time`: DESIGN.md section 4). On threads they
  share one core under the GIL, as CPU-bound Python tools do in one process;
- inout functions wait (`time.sleep`), as a web search, a remote API or an LLM call would.

Results are deterministic short texts (a search snippet has `SNIPPET_WORDS` words), so the
ReAct-style baseline's observations, and so its prompt growth, are the same every run.

No Prefect here.
"""

from __future__ import annotations

import hashlib
import time

from bench_toolbox import burn_cpu  # the same CPU burner as the KITTI benchmark (same folder)
from prefect_llmorch import Toolbox, compute, inout

#: Words in a search result (an observation the ReAct-style baseline appends to its prompt).
SNIPPET_WORDS = 40


def _words(seed: str, n: int) -> str:
    """`n` deterministic pseudo-words derived from `seed`."""
    out: list[str] = []
    h = hashlib.sha256(seed.encode()).hexdigest()
    while len(out) < n:
        out.extend(h[i : i + 6] for i in range(0, len(h) - 5, 6))
        h = hashlib.sha256(h.encode()).hexdigest()
    return " ".join(out[:n])


def _score(*parts: object) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:6], 16) % 100


# -- inout: waiting ------------------------------------------------------------------


@inout(cost=0.8)
def search(query: str, seconds: float = 0.8) -> str:
    """Search the web (Wikipedia, a movie database) for `query`; returns a snippet."""
    time.sleep(seconds)
    return f"{query}: " + _words(query, SNIPPET_WORDS)


@inout(cost=0.8)
def fetch(url: str, seconds: float = 0.8) -> str:
    """Download the page or document at `url`; returns its text (a digest of it)."""
    time.sleep(seconds)
    return f"page {url}: " + _words(url, SNIPPET_WORDS)


@inout(cost=0.6)
def math(problem: str, context: list = [], seconds: float = 0.6) -> float:  # noqa: B006 - never mutated
    """Solve a math `problem` with an LLM-backed calculator, given `context` values (LLMCompiler's math tool)."""
    time.sleep(seconds)
    return float(_score(problem, context))


@inout(cost=1.0)
def chat(prompt: str, seconds: float = 1.0) -> str:
    """Ask an LLM to summarize, compare or answer `prompt` (an LLM call as a tool)."""
    time.sleep(seconds)
    return "Answer: " + _words(prompt, 12)


@inout(cost=0.4)
def upload(data: str, seconds: float = 0.4) -> str:
    """Upload `data` to remote storage; returns its location."""
    time.sleep(seconds)
    return f"s3://bucket/{_score(data)}"


# -- compute: holding a CPU ------------------------------------------------------------


@compute(cost=1.0)
def detect(image: str, seconds: float = 1.0) -> int:
    """Detect objects (cars) in the camera frame `image`; returns their count."""
    burn_cpu(seconds)
    return _score(image) % 9


@compute(cost=0.6)
def classify(text: str, seconds: float = 0.6) -> str:
    """Classify a news article into World, Sports, Business or Sci/Tech (a local model)."""
    burn_cpu(seconds)
    return ("World", "Sports", "Business", "Sci/Tech")[_score(text) % 4]


@compute(cost=0.5)
def analyse(text: str, seconds: float = 0.5) -> float:
    """Analyse a text locally (keyword density, sentiment); returns a score in 0..1."""
    burn_cpu(seconds)
    return _score(text) / 100


@compute(cost=0.5)
def crypt(data: str, key: str = "", seconds: float = 0.5) -> str:
    """Generate a key (no `key`) or encrypt `data` with `key`; returns a digest."""
    burn_cpu(seconds)
    return hashlib.sha256(f"{key}|{data}".encode()).hexdigest()[:16]


toolbox = Toolbox(search, fetch, math, chat, upload, detect, classify, analyse, crypt)
