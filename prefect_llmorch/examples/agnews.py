"""AG News-like topic classification: CPU-bound classifier calls, LLM summaries.

A news desk asks "what are today's top stories about, in a sentence per topic?". The plan
fetches headlines (I/O-bound), classifies each article into World / Sports / Business /
Sci/Tech with a hashed character n-gram linear model (CPU-bound: scoring every n-gram of
the article against each class, several passes, in a worker process), and asks the LLM
(`self`) for the summaries. Articles and model weights are local and deterministic.

    llmorch check prefect_llmorch/examples/agnews.plan -t prefect_llmorch.examples.agnews:toolbox
"""

from __future__ import annotations

import hashlib
import time

from prefect_llmorch import Toolbox, compute, inout

CLASSES = ("World", "Sports", "Business", "Sci/Tech")

_ARTICLES = {
    1: "Leaders meet at the UN summit in Geneva to discuss the ceasefire, refugees and the election crisis.",
    2: "The striker scored twice as the champions won the league final; the coach praised the team's defence.",
    3: "Shares fell as the central bank raised interest rates; the company's quarterly profit beat market forecasts.",
    4: "Researchers unveiled a faster chip and new software that lets the space telescope process images with AI.",
    5: "The government and rebels signed a peace deal after talks hosted by the foreign minister in the capital.",
    6: "The tennis star reached the Olympic semi-final after a five-set match; the stadium crowd cheered the win.",
    7: "Oil prices rose and investors bought bank stocks after the merger; the dollar gained against the euro.",
    8: "A new internet browser update fixes a security flaw; the software company says the bug affected servers.",
}

_LEXICON = {
    "World": "leaders summit un ceasefire refugees election government rebels peace minister capital talks",
    "Sports": "striker scored champions league final coach team defence tennis olympic match stadium win",
    "Business": "shares bank interest rates company profit market oil prices investors stocks merger dollar",
    "Sci/Tech": "researchers chip software space telescope images ai internet browser security bug servers",
}


def _ngrams(text: str, n: int = 4) -> list[str]:
    t = f"  {text.lower()}  "
    return [t[i : i + n] for i in range(len(t) - n + 1)]


def _weights(buckets: int) -> dict[str, dict[int, float]]:
    """Hashed n-gram weights per class, 'trained' from the lexicons."""
    out: dict[str, dict[int, float]] = {}
    for cls, words in _LEXICON.items():
        w: dict[int, float] = {}
        for word in words.split():
            for g in _ngrams(word):
                h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") % buckets
                w[h] = w.get(h, 0.0) + 1.0
        out[cls] = w
    return out


_W = _weights(1 << 20)


@inout(cost=0.2)
def headline(article: int) -> str:
    """Fetch article number `article` (1-8) from the news feed."""
    time.sleep(0.2)
    if article not in _ARTICLES:
        raise KeyError(f"no article {article}; the feed has 1-{len(_ARTICLES)}")
    return _ARTICLES[article]


@compute(cost=1.0)
def classify(text: str, passes: int = 1000) -> str:
    """Classify a news text into World, Sports, Business or Sci/Tech (hashed n-gram model)."""
    scores = dict.fromkeys(CLASSES, 0.0)
    grams = _ngrams(text)
    for p in range(passes):  # an ensemble of hash seeds: real CPU work
        for g in grams:
            h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") % (1 << 20)
            for cls in CLASSES:
                scores[cls] += _W[cls].get(h, 0.0)
    return max(CLASSES, key=lambda c: scores[c])


@inout(cost=0.0)
def tally(labels: list[str]) -> dict[str, int]:
    """How many articles fall in each class."""
    return {c: sum(1 for lab in labels if lab == c) for c in CLASSES if c in labels}


toolbox = Toolbox(headline, classify, tally)
