"""A small typed toolbox for the tests against the real local model (tests/test_real_llm.py)."""

from __future__ import annotations

from prefect_llmorch import Toolbox, compute, inout

_PEOPLE = {"oslo": 717_710, "bergen": 291_940}


@inout
def population(city: str) -> int:
    """The number of people living in `city` (Oslo or Bergen)."""
    return _PEOPLE[city.strip().lower()]


@compute
def add(a: float, b: float) -> float:
    """The sum a + b."""
    return a + b


@compute
def ratio(a: float, b: float) -> float:
    """How many times larger a is than b (a / b)."""
    return a / b


toolbox = Toolbox(population, add, ratio)
