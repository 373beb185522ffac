"""A small offline trip-planning toolbox for questions whose next step depends on a result.

The joiner's tests and `benchmarks/joiner.py` use it (`prefect_llmorch.examples.trips:toolbox`):

- a condition: `forecast("Oslo", "tomorrow").rain` decides between `museums` and `trails`;
- a lookup whose result names the next lookup: `guide(topic)` answers with the name of an
  entry of the landmarks index, which `landmark(name)` then reads;
- a count that decides how many calls follow: `host_cities(country)` lists the cities whose
  forecasts are wanted, one `forecast` call each.

Everything is deterministic and waits `latency` seconds like a web API would.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from prefect_llmorch import Toolbox, inout


class Forecast(BaseModel):
    """A day's weather: whether it rains, and a one-line summary."""

    city: str
    rain: bool
    summary: str


_RAIN = {"oslo": True, "bergen": True, "trondheim": False, "tromso": False}


@inout(cost=0.1)
def forecast(city: str, day: str = "tomorrow", latency: float = 0.05) -> Forecast:
    """The weather of `city` on `day`: fields city, rain (bool) and summary."""
    time.sleep(latency)
    rain = _RAIN.get(city.strip().lower(), False)
    return Forecast(city=city, rain=rain, summary=f"{city} {day}: {'rain, 9 °C' if rain else 'sunny, 17 °C'}")


_MUSEUMS = {"oslo": ["Munch Museum", "Viking Ship Museum", "National Museum"]}
_TRAILS = {"oslo": ["Vettakollen loop", "Sognsvann circuit"]}


@inout(cost=0.1)
def museums(city: str, latency: float = 0.05) -> list[str]:
    """Museums of `city`."""
    time.sleep(latency)
    return list(_MUSEUMS.get(city.strip().lower(), []))


@inout(cost=0.1)
def trails(city: str, latency: float = 0.05) -> list[str]:
    """Hiking trails near `city`."""
    time.sleep(latency)
    return list(_TRAILS.get(city.strip().lower(), []))


@inout(cost=0.1)
def guide(topic: str, latency: float = 0.05) -> str:
    """A travel guide's answer on `topic`: it names the landmarks-index entry to read."""
    time.sleep(latency)
    if "view" in topic.lower():
        return "For the best view of Oslo, read the landmarks index entry 'holmenkollen'."
    return "Read the landmarks index entry 'opera-house'."


_LANDMARKS = {
    "holmenkollen": "Holmenkollen ski jump: 417 m above sea level, open 10-17, tickets 200 NOK.",
    "opera-house": "Oslo Opera House: walk on its roof for free, open all day.",
}


@inout(cost=0.1)
def landmark(name: str, latency: float = 0.05) -> str:
    """The landmarks-index entry `name` (e.g. 'holmenkollen')."""
    time.sleep(latency)
    return _LANDMARKS.get(name.strip().strip("'\"").lower(), f"no entry {name!r}")


_HOSTS = {"norway": ["Oslo", "Bergen", "Trondheim"]}


@inout(cost=0.1)
def host_cities(country: str, latency: float = 0.05) -> list[str]:
    """The host cities of the trip's `country` (how many there are varies)."""
    time.sleep(latency)
    return list(_HOSTS.get(country.strip().lower(), []))


toolbox = Toolbox(forecast, museums, trails, guide, landmark, host_cities)
