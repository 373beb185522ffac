"""Functions with structured results for the field-access run tests: module-level, so
worker processes import them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel

from prefect_llmorch import Toolbox, compute, inout


class Airport(BaseModel):
    id: str
    name: str
    entityId: str


@dataclass
class Leg:
    origin: str
    minutes: int


@inout
def find_airport(query: str) -> Airport:
    """Find an airport by city."""
    time.sleep(0.05)
    return Airport(id=query[:3].upper(), name=f"{query} International", entityId=str(len(query)))


@compute
def plan_leg(origin: str, minutes: int = 60) -> Leg:
    """Plan a flight leg (in a worker process; the dataclass comes back pickled)."""
    return Leg(origin=origin, minutes=minutes)


@inout
def lookup(query: str, value: object = None) -> object:
    """An untyped result: whatever `value` is (fields are checked at run time only)."""
    time.sleep(0.05)
    return value


@compute
def double(x: int) -> int:
    return 2 * x


@inout
def echo(text: str) -> str:
    return text


toolbox = Toolbox(find_airport, plan_leg, lookup, double, echo)
