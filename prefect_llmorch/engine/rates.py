"""Rates of resource classes, machine-wide: Prefect's rate limits, taken next to the call.

A rated resource class (`resources={"search-api": "10/s"}`) is paced machine-wide by a Prefect
global concurrency limit of one slot that decays in `Rate.spacing` seconds, taken right before
the call's function runs. The request is the one Prefect's `rate_limit` makes, sent here
through the public client because Prefect's wait cannot be stopped: here the call's `Cancel`
ends it, and a refusal is the call's failure (`RateUnavailable`). How rates apply, here and in
the Coordinator: docs/mcp.md, "Rates".
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from prefect_llmorch.procs.pool import CallCancelled, Cancel
from prefect_llmorch.host.process import PROCESS
from prefect_llmorch.host.server import server_key
from prefect_llmorch.schedule.resources import Capacities, Rate, RateGate, rate_limit_name

__all__ = ["RateUnavailable", "ensure_rate_limit", "pace", "rates_of"]

def rates_of(resources: Mapping[str, Any] | None) -> dict[str, Rate]:
    """The rates among resource settings (`{"search-api": "10/s", "gpu_mem_gb": 80}`)."""
    if not resources:
        return {}
    return dict(Capacities.of(1, {r: v for r, v in resources.items() if r != "processors"}).rates)


def ensure_rate_limit(resource: str, rate: Rate) -> str:
    """Create the global concurrency limit that paces `resource`, or set an existing one to
    `rate`; once per process and rate. Returns its name."""
    name = rate_limit_name(resource)
    key = (server_key(), name)
    rates = _rates()
    with rates.lock:
        if rates.ready.get(key) == rate:
            return name
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
        from prefect.exceptions import ObjectNotFound

        decay = 1.0 / rate.spacing
        with get_client(sync_client=True) as client:
            try:
                found = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                found = None
            if found is None:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=1, slot_decay_per_second=decay, active=True)
                    )
                except Exception:  # another process created it first: set it below
                    found = client.read_global_concurrency_limit_by_name(name)
            if found is not None and (found.limit != 1 or abs((found.slot_decay_per_second or 0) - decay) > 1e-9 or not found.active):
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=1, slot_decay_per_second=decay, active=True)
                )
        rates.ready[key] = rate
        return name


class RateUnavailable(RuntimeError):
    """The Prefect API would not pace a call (its rate limit missing, the API refusing): the
    call did not run."""


def pace(demanded: Iterable[str], rates: Mapping[str, Rate], cancel: Cancel | None = None) -> None:
    """Wait until every rated resource among `demanded` lets one more call start (one slot of
    each resource's rate limit, in a fixed order); returns at once when none is rated.

    Raises:
        CallCancelled: `cancel` was set while waiting (the call ends at once, not a spacing later).
        RateUnavailable: the API refused (the limit deleted, an HTTP error), naming the limits.
    """
    rated = sorted(r for r in set(demanded) if r in rates)
    if not rated:
        return
    cancel = cancel if cancel is not None else Cancel()  # one that is never set: plain waits
    try:
        names = [ensure_rate_limit(r, rates[r]) for r in rated]
    except Exception as exc:
        raise RateUnavailable(f"rate of {', '.join(rated)}: could not prepare its Prefect rate limit: {exc}") from exc
    # One asker per limit per process: Prefect's Retry-After grows with the slots it has
    # denied (spacing x (1 + denied)), so a crowd of threads asking at once is paced far
    # below the rate; queued here, each process keeps one request in flight per limit.
    # And it asks when this process's last call is one spacing old: the server decays a slot
    # in whole slots from the limit's last update, which a denied request moves, so asking
    # early costs more than the wait (`_CUSHION`: the server's clock and floor()).
    askers = [_asker(n, rates[r]) for n, r in zip(names, rated)]
    taken: list[_Asker] = []
    try:
        for asker in askers:  # sorted by resource name: no two threads wait in a cycle
            while not asker.lock.acquire(timeout=_SLICE):
                _stop_if_cancelled(cancel)
            taken.append(asker)
        wait = max(a.gate.next_start(time.monotonic()) for a in askers) - time.monotonic()
        if wait > 0:
            _sleep(wait, cancel)
        _take_slots(names, cancel)
        now = time.monotonic()
        for asker in askers:
            asker.gate.record(now)
    finally:
        for asker in reversed(taken):
            asker.lock.release()


#: How often a thread queued behind another of its process's callers looks at its cancel token.
_SLICE = 0.1


def _stop_if_cancelled(cancel: Cancel) -> None:
    if cancel.is_set():
        raise CallCancelled(f"cancelled while waiting for its rate: {cancel.reason}", call="")


def _sleep(seconds: float, cancel: Cancel) -> None:
    """Sleep `seconds`, or until `cancel` is set (then CallCancelled)."""
    cancel.wait(concurrent.futures.Future(), seconds)  # a future never done: the cancel or the time
    _stop_if_cancelled(cancel)


def _take_slots(names: list[str], cancel: Cancel) -> None:
    """One slot of each rate limit, on the current API: the request Prefect's
    `prefect.concurrency.sync.rate_limit` makes, and its wait for `Retry-After` between denied
    ones, in a loop a cancel can end (Prefect's cannot be stopped from outside)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        while True:
            _stop_if_cancelled(cancel)
            try:
                response = client.increment_concurrency_slots(names=names, slots=1, mode="rate_limit")
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423: no slot yet, Retry-After says when
                    raise RateUnavailable(f"rate limits {names}: the Prefect API refused a slot: {exc}") from exc
                _sleep(float(exc.response.headers.get("Retry-After") or 1.0), cancel)
                continue
            except Exception as exc:
                raise RateUnavailable(f"rate limits {names}: could not ask the Prefect API for a slot: {exc}") from exc
            if len(response.json()) < len(names):  # Prefect's `strict=True`: a missing limit is an error
                raise RateUnavailable(f"rate limits {names} do not exist on the Prefect API (deleted during the run?)")
            return


#: Ask a little after one spacing: the server compares floor(decay x seconds) with a slot.
_CUSHION = 1.02


@dataclass
class _Asker:
    lock: threading.Lock
    gate: RateGate


@dataclass
class _Rates:
    """This process's rate limits (held by `PROCESS`), both by (API, limit name): a process
    may talk to several Prefect APIs (the test suite does), each with limits of its own."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: limits made (or set) to a rate: once per process and rate, not per run
    ready: dict[tuple[str, str], Rate] = field(default_factory=dict)
    #: one asker per limit: one request in flight per limit per process, whichever run asks
    askers: dict[tuple[str, str], _Asker] = field(default_factory=dict)


def _rates() -> _Rates:
    return PROCESS.hold(_Rates)


def _asker(name: str, rate: Rate) -> _Asker:
    key = (server_key(), name)
    rates = _rates()
    with rates.lock:
        found = rates.askers.get(key)
        if found is None or found.gate.rate.calls != rate.calls or found.gate.rate.per != rate.per * _CUSHION:
            found = rates.askers[key] = _Asker(threading.Lock(), RateGate(Rate(rate.calls, rate.per * _CUSHION)))
        return found
