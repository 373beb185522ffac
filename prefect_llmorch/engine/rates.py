"""Rates of resource classes, machine-wide: Prefect's rate limits, taken next to the call.

A resource class given a rate (`resources={"search-api": "10/s"}`, `--resource
search-api=10/s`) is paced by a Prefect global concurrency limit of one slot whose slot
decays in `Rate.spacing` seconds (`slot_decay_per_second = calls / per`):
`prefect.concurrency.sync.rate_limit` takes that slot right before the function runs, in the
call's own thread, so every flow run and every process on one Prefect server shares one pace
and no window of `per` seconds holds more than `calls` starts. The limit is named
`llmorch-rate-<resource>` (`schedule.resources.rate_limit_name`) and created, or set to the
rate, when a run first needs it.

The Coordinator and the simulator apply the same rate with the same rule (`RateGate`), given
the time: the runner's Coordinator holds a call back until its rate allows (so a call
waiting for its own run's pace holds no processor), and this module paces it machine-wide,
on the clock that counts across flow runs: the Prefect server's. A compute call that waits
here, for calls of other flow runs, holds its processor meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from prefect_llmorch.schedule.resources import Capacities, Rate, RateGate, rate_limit_name

__all__ = ["ensure_rate_limit", "pace", "rates_of"]

_ready: dict[str, Rate] = {}  # limits made (or set) to a rate by this process, by name
_lock = threading.Lock()


def rates_of(resources: Mapping[str, Any] | None) -> dict[str, Rate]:
    """The rates among resource settings (`{"search-api": "10/s", "gpu_mem_gb": 80}`)."""
    if not resources:
        return {}
    return dict(Capacities.of(1, {r: v for r, v in resources.items() if r != "processors"}).rates)


def ensure_rate_limit(resource: str, rate: Rate) -> str:
    """Create the global concurrency limit that paces `resource`, or set an existing one to
    `rate`; once per process and rate. Returns its name."""
    name = rate_limit_name(resource)
    with _lock:
        if _ready.get(name) == rate:
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
        _ready[name] = rate
        return name


def pace(demanded: Iterable[str], rates: Mapping[str, Rate]) -> None:
    """Wait until every rated resource among `demanded` lets one more call start (Prefect's
    `rate_limit`, one slot each, in a fixed order); returns at once when none is rated."""
    names = [ensure_rate_limit(r, rates[r]) for r in sorted(set(demanded)) if r in rates]
    if not names:
        return
    from prefect.concurrency.sync import rate_limit

    # One asker per limit per process: Prefect's Retry-After grows with the slots it has
    # denied (spacing x (1 + denied)), so a crowd of threads asking at once is paced far
    # below the rate; queued here, each process keeps one request in flight per limit.
    # And it asks when this process's last call is one spacing old: the server decays a slot
    # in whole slots from the limit's last update, which a denied request moves, so asking
    # early costs more than the wait (`_CUSHION`: the server's clock and floor()).
    askers = [_asker(n, rates[r]) for n, r in zip(names, sorted(r for r in set(demanded) if r in rates))]
    for asker in askers:  # sorted by resource name: no two threads wait in a cycle
        asker.lock.acquire()
    try:
        wait = max(a.gate.next_start(time.monotonic()) for a in askers) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        rate_limit(names, occupy=1, strict=True)
        now = time.monotonic()
        for asker in askers:
            asker.gate.record(now)
    finally:
        for asker in reversed(askers):
            asker.lock.release()


#: Ask a little after one spacing: the server compares floor(decay x seconds) with a slot.
_CUSHION = 1.02


@dataclass
class _Asker:
    lock: threading.Lock
    gate: RateGate


_askers: dict[str, _Asker] = {}


def _asker(name: str, rate: Rate) -> _Asker:
    with _lock:
        found = _askers.get(name)
        if found is None or found.gate.rate.calls != rate.calls or found.gate.rate.per != rate.per * _CUSHION:
            found = _askers[name] = _Asker(threading.Lock(), RateGate(Rate(rate.calls, rate.per * _CUSHION)))
        return found
