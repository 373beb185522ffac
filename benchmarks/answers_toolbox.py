"""The toolbox of the answer benchmark (`benchmarks/answers.py`): typed, deterministic lookups
whose results are pydantic models and dataclasses, and small arithmetic and comparison
functions, the way a user would write them. Every value is fixed here, so the benchmark
computes each question's right answer from these functions' own results.

Module-level, so worker processes import it by name (`answers_toolbox:toolbox`; the
benchmark puts this directory on `PYTHONPATH`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from prefect_llmorch import Toolbox, compute, inout

_PEOPLE = {"oslo": ("Norway", 717_710), "bergen": ("Norway", 291_940), "trondheim": ("Norway", 214_565),
           "stockholm": ("Sweden", 984_748), "copenhagen": ("Denmark", 660_842)}
_KM = {("paris", "rome"): 1106.0, ("paris", "madrid"): 1054.0, ("paris", "berlin"): 878.0,
       ("paris", "london"): 344.0, ("paris", "vienna"): 1034.0, ("oslo", "bergen"): 305.0}
_PRICES = {("coffee", "rema"): 6.49, ("coffee", "kiwi"): 5.99, ("bread", "rema"): 2.80,
           ("bread", "kiwi"): 3.10, ("milk", "rema"): 1.45, ("milk", "kiwi"): 1.39}
_STOCK = {("chairs", "north"): 120, ("chairs", "south"): 85, ("tables", "north"): 40, ("tables", "south"): 65}


def _key(text: str) -> str:
    return text.strip().lower()


def _known(kind: str, value: str, table: dict) -> None:  # type: ignore[type-arg]
    raise ValueError(f"unknown {kind} {value!r}; known: {', '.join(sorted({k if isinstance(k, str) else k[0] for k in table}))}")


class City(BaseModel):
    name: str
    country: str
    population: int


@dataclass
class Distance:
    origin: str
    destination: str
    km: float


class Price(BaseModel):
    product: str
    store: str
    price_eur: float


@dataclass
class Stock:
    item: str
    warehouse: str
    count: int


@dataclass
class Largest:
    name: str
    value: float


@inout
def city(name: str) -> City:
    """Facts about a city: its country and how many people live there."""
    if _key(name) not in _PEOPLE:
        _known("city", name, _PEOPLE)
    country, people = _PEOPLE[_key(name)]
    return City(name=name.strip().title(), country=country, population=people)


@inout
def distance(origin: str, destination: str) -> Distance:
    """The road distance between two cities, in km."""
    pair = (_key(origin), _key(destination))
    km = _KM.get(pair, _KM.get(pair[::-1]))
    if km is None:
        raise ValueError(f"no distance known from {origin!r} to {destination!r}")
    return Distance(origin=origin, destination=destination, km=km)


@inout
def price(product: str, store: str) -> Price:
    """The price of one unit of a product (coffee, bread, milk) at a store (Rema, Kiwi), in euros."""
    value = _PRICES.get((_key(product), _key(store)))
    if value is None:
        raise ValueError(f"no price of {product!r} at {store!r}")
    return Price(product=product, store=store, price_eur=value)


@inout
def stock(item: str, warehouse: str) -> Stock:
    """How many of an item (chairs, tables) a warehouse (north, south) holds."""
    count = _STOCK.get((_key(item), _key(warehouse)))
    if count is None:
        raise ValueError(f"no stock of {item!r} in {warehouse!r}")
    return Stock(item=item, warehouse=warehouse, count=count)


@compute
def add(a: float, b: float) -> float:
    """The sum a + b."""
    return a + b


@compute
def subtract(a: float, b: float) -> float:
    """The difference a - b."""
    return a - b


@compute
def largest(values: dict[str, float]) -> Largest:
    """The name with the largest value, and that value: largest({"x": 1, "y": 2}) is y, 2."""
    name = max(values, key=lambda k: values[k])
    return Largest(name=name, value=values[name])


toolbox = Toolbox(city, distance, price, stock, add, subtract, largest)
