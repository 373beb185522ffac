"""Resources beyond one processor per compute call: capacities, checks, GPU placement. Pure.

A call *demands* an amount of each resource it holds while it runs (`FRG.demand`: a compute
call `{"processors": 1}` by default, plus what its function declares). A run has a
*capacity* for each resource: `processors` (P), named classes such as `search-api` (how many
calls may hold it at once, or any amount: `gpu_mem_gb`), and optionally GPU *devices*, each
with its memory; a call that demands `gpu_mem_gb` is then placed on one device where it fits.

    >>> caps = Capacities.of(4, {"search-api": 2}, gpus=[{"id": 0, "mem_gb": 80}])
    >>> caps.amounts
    {'processors': 4.0, 'search-api': 2.0, 'gpu_mem_gb': 80.0}
    >>> ledger = Ledger(caps)
    >>> ledger.take("s1", {"processors": 1, "gpu_mem_gb": 60}), ledger.device["s1"]
    (True, 0)
    >>> ledger.take("s2", {"processors": 1, "gpu_mem_gb": 30})   # 60 + 30 > 80
    False
    >>> ledger.release("s1"); ledger.take("s2", {"processors": 1, "gpu_mem_gb": 30})
    True

Everything here checks values and returns values: no I/O, no Prefect, no clock.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from prefect_llmorch.graph import GPU_MEM, PROCESSORS, demand_of

__all__ = [
    "GPU_MEM",
    "PROCESSORS",
    "BadResource",
    "Capacities",
    "DemandExceedsCapacity",
    "Device",
    "Ledger",
    "Rate",
    "RateGate",
    "ResourceError",
    "UnknownResource",
    "check_demands",
    "check_toolbox",
    "global_limits",
    "gpus_from_nvidia_smi",
    "limit_name",
    "limit_slots",
    "parse_gpus",
    "parse_rate",
    "rate_limit_name",
    "parse_resource_options",
    "place",
]

# Relative tolerance when comparing summed amounts (floats).
_EPS = 1e-9
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ResourceError(ValueError):
    """A resource setting or demand that cannot work; raised before anything runs."""


class BadResource(ResourceError):
    """A capacity, device or `--resource` option is malformed.

    Attributes:
        resource: the resource (or option text) at fault.
        problem: what is wrong with it.
    """

    def __init__(self, resource: str, problem: str) -> None:
        self.resource = resource
        self.problem = problem
        super().__init__(problem)


class UnknownResource(ResourceError):
    """A call (or function) demands a resource the run has no capacity for.

    Attributes:
        call: the call id (or function name).
        resource: the resource it demands.
        known: the resources the run has capacities for.
    """

    def __init__(self, call: str, resource: str, known: Sequence[str], what: str = "call") -> None:
        self.call = call
        self.resource = resource
        self.known = tuple(known)
        if resource == GPU_MEM:
            fix = 'give the GPU devices, e.g. gpus=[{"id": 0, "mem_gb": 80}], or resources={"gpu_mem_gb": 80}'
        else:
            fix = f"give its capacity, e.g. resources={{{resource!r}: 2}} (--resource {resource}=2)"
        super().__init__(
            f"{what} {call} needs {resource!r}, which this run has no capacity for "
            f"(capacities: {', '.join(self.known)}); {fix}"
        )


class DemandExceedsCapacity(ResourceError):
    """A call (or function) needs more of a resource than there is: it could never start.

    Attributes:
        call: the call id (or function name).
        resource: the resource.
        demand: what one call needs.
        capacity: the capacity it exceeds (the largest device's memory for `gpu_mem_gb`
            placed on devices).
    """

    def __init__(
        self, call: str, resource: str, demand: float, capacity: float, what: str = "call", on_device: bool = False
    ) -> None:
        self.call = call
        self.resource = resource
        self.demand = demand
        self.capacity = capacity
        where = "the largest GPU device has" if on_device else "the capacity is"
        super().__init__(
            f"{what} {call} needs {resource}={demand:g} but {where} {capacity:g}; it could never start"
        )


@dataclass(frozen=True)
class Device:
    """One GPU: its id (what `CUDA_VISIBLE_DEVICES` names) and its memory in GB."""

    id: int | str
    mem_gb: float


def parse_gpus(gpus: Iterable[Mapping[str, Any] | Device] | None) -> tuple[Device, ...]:
    """Check GPU devices given as `[{"id": 0, "mem_gb": 80}, ...]` (or `Device`s).

    >>> parse_gpus([{"id": 0, "mem_gb": 80}, {"id": 1, "mem_gb": 40}])
    (Device(id=0, mem_gb=80.0), Device(id=1, mem_gb=40.0))

    Raises:
        BadResource: not a list of such mappings, a missing or repeated id, memory not > 0.
    """
    if gpus is None:
        return ()
    if isinstance(gpus, (str, bytes, Mapping)):
        raise BadResource("gpus", f'gpus must be a list like [{{"id": 0, "mem_gb": 80}}], got {gpus!r}')
    out: list[Device] = []
    for i, g in enumerate(gpus):
        if isinstance(g, Device):
            dev_id, mem = g.id, g.mem_gb
        elif isinstance(g, Mapping):
            extra = sorted(set(g) - {"id", "mem_gb"})
            if "id" not in g or "mem_gb" not in g or extra:
                raise BadResource("gpus", f'gpus[{i}] must have exactly "id" and "mem_gb", got {dict(g)!r}')
            dev_id, mem = g["id"], g["mem_gb"]
        else:
            raise BadResource("gpus", f'gpus[{i}] must be like {{"id": 0, "mem_gb": 80}}, got {g!r}')
        if isinstance(dev_id, bool) or not isinstance(dev_id, (int, str)) or (isinstance(dev_id, int) and dev_id < 0) or dev_id == "":
            raise BadResource("gpus", f"gpus[{i}]: id must be an integer >= 0 or a device name, got {dev_id!r}")
        if not _positive(mem):
            raise BadResource("gpus", f"gpus[{i}]: mem_gb must be a number > 0, got {mem!r}")
        if any(d.id == dev_id for d in out):
            raise BadResource("gpus", f"gpus: device id {dev_id!r} is given twice")
        out.append(Device(dev_id, float(mem)))
    return tuple(out)


def gpus_from_nvidia_smi(text: str) -> tuple[Device, ...]:
    """GPU devices from the output of
    `nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits` (memory in MiB;
    `mem_gb` is GiB). Running the command is the caller's business; this only reads it.

    >>> gpus_from_nvidia_smi("0, 81920\\n1, 40960\\n")
    (Device(id=0, mem_gb=80.0), Device(id=1, mem_gb=40.0))

    Raises:
        BadResource: a line that is not `index, MiB`.
    """
    out: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            index, mib = int(parts[0]), float(parts[1])
            if len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError):
            raise BadResource("gpus", f"nvidia-smi line {lineno}: expected 'index, memory MiB', got {line.strip()!r}") from None
        out.append({"id": index, "mem_gb": mib / 1024})
    return parse_gpus(out)


_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
# every spelling, plurals written out (`ms` is not a plural of `m`)
_UNITS |= {unit + "s": per for unit, per in _UNITS.items() if len(unit) > 1}
_RATE = re.compile(r"\s*(\d+)\s*/\s*((?:\d+(?:\.\d*)?|\.\d+)?)\s*([a-z]+)\s*")


@dataclass(frozen=True)
class Rate:
    """At most `calls` calls per `per` seconds, evenly spaced: a call starts at least
    `per / calls` seconds after the one before it (`spacing`), so no window of `per`
    seconds ever holds more than `calls` starts. The same rule holds machine-wide (a Prefect
    global concurrency limit of one slot whose slot decays in `spacing` seconds), in the
    Coordinator and in the simulator (`RateGate`).

    >>> parse_rate("10/s"), parse_rate("500/min").spacing
    (Rate(calls=10, per=1.0), 0.12)
    """

    calls: int
    per: float

    @property
    def spacing(self) -> float:
        """Seconds between two starts."""
        return self.per / self.calls

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.per)
        return f"{self.calls}/{unit}" if unit else f"{self.calls}/{self.per:g}s"


def parse_rate(text: str, resource: str = "rate") -> Rate:
    """`N/s`, `N/min`, `N/h` (or `N/30s`) as a `Rate`.

    Raises:
        BadResource: not of that form, or N not >= 1.
    """
    m = _RATE.fullmatch(text.lower()) if isinstance(text, str) else None
    unit = _UNITS.get(m.group(3)) if m else None
    count = float(m.group(2)) if m and m.group(2) else 1.0
    if not m or unit is None or int(m.group(1)) < 1 or count <= 0:
        raise BadResource(resource, f"rate of {resource!r} must be like 10/s, 500/min or 2/h (calls >= 1), got {text!r}")
    return Rate(int(m.group(1)), unit * count)


@dataclass
class RateGate:
    """When the next call of a rated resource may start (pure: the caller gives the time).

    >>> gate = RateGate(parse_rate("2/s"))
    >>> gate.allows(0.0), gate.record(0.0), gate.allows(0.4), gate.next_start(0.4)
    (True, None, False, 0.5)
    """

    rate: Rate
    last: float | None = None

    def next_start(self, now: float) -> float:
        """The earliest time >= `now` at which a call may start."""
        return now if self.last is None else max(now, self.last + self.rate.spacing)

    def allows(self, now: float) -> bool:
        return self.last is None or now >= self.last + self.rate.spacing * (1 - _EPS)

    def record(self, now: float) -> None:
        """A call started at `now`."""
        self.last = now


@dataclass(frozen=True)
class Capacities:
    """What a run has: an amount of each resource, and the GPU devices if any.

    Build it with `Capacities.of`. `amounts` always has `processors`; with devices it has
    `gpu_mem_gb` as their memory summed.

    Attributes:
        processors: P.
        amounts: capacity per resource name.
        devices: GPU devices (empty: `gpu_mem_gb`, if given, is one pool without devices).
    """

    processors: int
    amounts: Mapping[str, float]
    devices: tuple[Device, ...] = ()
    #: resources with a rate (`{"search-api": Rate(10, 1.0)}`), with or without a capacity
    rates: Mapping[str, Rate] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        processors: int,
        resources: Mapping[str, float] | None = None,
        gpus: Iterable[Mapping[str, Any] | Device] | None = None,
    ) -> "Capacities":
        """Check and combine the processors, the other capacities and the GPU devices.

        >>> Capacities.of(2).amounts
        {'processors': 2.0}

        Raises:
            BadResource: a name that is not a word (letters, digits, `_ . -`), an amount that
                is not a number > 0, `processors` inside `resources` (it is its own argument),
                bad devices, or a `gpu_mem_gb` capacity that differs from the devices' sum.
            ValueError: processors is not an integer >= 1.
        """
        if isinstance(processors, bool) or not isinstance(processors, int) or processors < 1:
            raise ValueError(f"processors must be an integer >= 1, got {processors!r}")
        if resources is not None and not isinstance(resources, Mapping):
            raise BadResource("resources", f"resources must be a mapping of name to capacity, got {resources!r}")
        amounts: dict[str, float] = {PROCESSORS: float(processors)}
        rates: dict[str, Rate] = {}
        for name, amount in (resources or {}).items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise BadResource(str(name), f"resource name {name!r} must be a word of letters, digits, _ . -")
            if name == PROCESSORS:
                raise BadResource(name, "give processors as processors=P (--processors), not among the resources")
            if isinstance(amount, Rate):
                rates[name] = amount
                continue
            if isinstance(amount, str) and "/" in amount:  # a rate: "10/s"; "4,10/s": both
                amount, _, rate_text = amount.rpartition(",") if "," in amount else ("", "", amount)
                rates[name] = parse_rate(rate_text, name)
                if not amount.strip():
                    continue
                try:
                    amount = float(amount)
                except ValueError:
                    raise BadResource(name, f"capacity of {name!r} must be a number > 0, got {amount!r}") from None
            if not _positive(amount):
                raise BadResource(name, f"capacity of {name!r} must be a number > 0, got {amount!r}")
            amounts[name] = float(amount)
        devices = parse_gpus(gpus)
        if devices:
            total = sum(d.mem_gb for d in devices)
            if GPU_MEM in amounts and abs(amounts[GPU_MEM] - total) > _EPS * total:
                raise BadResource(
                    GPU_MEM, f"{GPU_MEM}={amounts[GPU_MEM]:g} differs from the GPU devices' memory ({total:g}); give one of them"
                )
            amounts[GPU_MEM] = total
        return cls(processors, amounts, devices, rates)

    def settings(self) -> dict[str, float | str]:
        """The resources beyond processors as `resources=` takes them again: a number, a
        rate (`"10/s"`), or both (`"4,10/s"`)."""
        out: dict[str, float | str] = {r: a for r, a in self.amounts.items() if r != PROCESSORS}
        for r, rate in self.rates.items():
            out[r] = f"{out[r]:g},{rate}" if r in out else str(rate)
        return out

    def limit(self, resource: str) -> float:
        """The most one call may demand: the largest device for `gpu_mem_gb` on devices,
        else the capacity."""
        if resource == GPU_MEM and self.devices:
            return max(d.mem_gb for d in self.devices)
        return self.amounts[resource]


def check_demands(
    demands: Mapping[str, Mapping[str, float]], capacities: Capacities, what: str = "call"
) -> None:
    """Check that every call (or function) can ever start: each resource it demands has a
    capacity, and its demand fits in it (GPU memory: on one device). First problem wins,
    in the mapping's order.

    >>> check_demands({"s1": {"gpu_mem_gb": 90}}, Capacities.of(1, gpus=[{"id": 0, "mem_gb": 80}]))
    Traceback (most recent call last):
    ...
    prefect_llmorch.schedule.resources.DemandExceedsCapacity: call s1 needs gpu_mem_gb=90 but the largest GPU device has 80; it could never start

    Raises:
        UnknownResource: a demanded resource has no capacity.
        DemandExceedsCapacity: a demand exceeds its capacity.
    """
    known = list(capacities.amounts) + [r for r in capacities.rates if r not in capacities.amounts]
    for call, demand in demands.items():
        for resource, amount in demand.items():
            if resource not in capacities.amounts:
                if resource in capacities.rates:  # a rate only: any number at once
                    continue
                raise UnknownResource(call, resource, known, what)
            limit = capacities.limit(resource)
            if amount > limit * (1 + _EPS):
                on_device = resource == GPU_MEM and bool(capacities.devices)
                raise DemandExceedsCapacity(call, resource, amount, limit, what, on_device)


def check_toolbox(toolbox: Mapping[str, Any], capacities: Capacities) -> None:
    """Check every function of a toolbox against the capacities before any plan exists:
    what one call of each function demands (`demand_of(spec.kind, spec.resources)`) must have
    a capacity and fit in it. A runner calls this when it starts, so a toolbox that needs a
    GPU fails at once on a machine given none, not when the LLM first plans a GPU call.

    >>> from prefect_llmorch.functions import Toolbox, inout
    >>> @inout(resources={"search-api": 1})
    ... def search(q: str) -> str: return q
    >>> check_toolbox(Toolbox(search), Capacities.of(2))
    Traceback (most recent call last):
    ...
    prefect_llmorch.schedule.resources.UnknownResource: function search needs 'search-api', which this run has no capacity for (capacities: processors); give its capacity, e.g. resources={'search-api': 2} (--resource search-api=2)

    Raises:
        UnknownResource, DemandExceedsCapacity: as `check_demands`, naming the function.
    """
    demands = {name: demand_of(spec.kind, getattr(spec, "resources", None)) for name, spec in toolbox.items()}
    check_demands(demands, capacities, what="function")


def place(amount: float, free: Sequence[float]) -> int | None:
    """The device (index into `free`) for a call needing `amount` of memory: the one with
    the least free memory that still fits (best fit keeps large holes for large calls),
    the lowest index among equals; None when it fits nowhere.

    >>> place(30, [50, 40, 20]), place(30, [40, 40]), place(60, [50, 40])
    (1, 0, None)
    """
    best: int | None = None
    for i, f in enumerate(free):
        if amount <= f + _EPS * max(1.0, f) and (best is None or f < free[best]):
            best = i
    return best


@dataclass
class Ledger:
    """What is held and free right now; `take` admits a demand only when all of it fits.

    Attributes:
        capacities: the run's capacities.
        used: amount held per resource.
        device_used: memory held per device (same order as `capacities.devices`).
        device: the device id each call holding GPU memory was placed on.
    """

    capacities: Capacities
    used: dict[str, float] = field(default_factory=dict)
    device_used: list[float] = field(default_factory=list)
    device: dict[str, int | str] = field(default_factory=dict)
    _held: dict[str, tuple[Mapping[str, float], int | None]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.used = {r: 0.0 for r in self.capacities.amounts}
        self.device_used = [0.0 for _ in self.capacities.devices]

    def free(self, resource: str) -> float:
        """Capacity not held (0 for a resource without capacity)."""
        return self.capacities.amounts.get(resource, 0.0) - self.used.get(resource, 0.0)

    def fits(self, demand: Mapping[str, float]) -> tuple[bool, int | None]:
        """Whether all of `demand` fits now, and the device index it would be placed on."""
        caps = self.capacities.amounts
        for r, amount in demand.items():
            cap = caps.get(r)
            if cap is None and r in self.capacities.rates:
                continue  # a rate only: `RateGate` decides when, not the ledger
            if cap is None or self.used[r] + amount > cap * (1 + _EPS):
                return False, None
        gpu = demand.get(GPU_MEM, 0.0)
        if gpu > 0 and self.capacities.devices:
            free = [d.mem_gb - u for d, u in zip(self.capacities.devices, self.device_used)]
            index = place(gpu, free)
            if index is None:
                return False, None
            return True, index
        return True, None

    def take(self, call: str, demand: Mapping[str, float]) -> bool:
        """Hold `demand` for `call` if it all fits now (placing GPU memory on a device);
        return whether it did. Nothing is held when it does not fit."""
        if call in self._held:
            raise ValueError(f"call {call!r} already holds resources")
        ok, index = self.fits(demand)
        if not ok:
            return False
        for r, amount in demand.items():
            if r in self.used:
                self.used[r] += amount
        if index is not None:
            self.device_used[index] += demand[GPU_MEM]
            self.device[call] = self.capacities.devices[index].id
        self._held[call] = (demand, index)
        return True

    def release(self, call: str) -> None:
        """Give back what `call` holds (nothing if it holds nothing)."""
        held = self._held.pop(call, None)
        if held is None:
            return
        demand, index = held
        for r, amount in demand.items():
            if r in self.used:
                self.used[r] = max(0.0, self.used[r] - amount)
        if index is not None:
            self.device_used[index] = max(0.0, self.device_used[index] - demand[GPU_MEM])
            self.device.pop(call, None)

    def holds(self, call: str) -> bool:
        """Whether `call` holds anything."""
        return call in self._held


#: Prefix of the Prefect global concurrency limits that guard resources machine-wide.
LIMIT_PREFIX = "llmorch-"


def limit_name(resource: str, device: int | str | None = None) -> str:
    """The global concurrency limit guarding a resource across flow runs:
    `llmorch-<resource>`, and `llmorch-gpu_mem_gb-<device id>` per GPU device.

    >>> limit_name("search-api"), limit_name("gpu_mem_gb", 0)
    ('llmorch-search-api', 'llmorch-gpu_mem_gb-0')
    """
    return f"{LIMIT_PREFIX}{resource}" if device is None else f"{LIMIT_PREFIX}{resource}-{device}"


def rate_limit_name(resource: str) -> str:
    """The global concurrency limit with slot decay that paces a rated resource machine-wide.

    >>> rate_limit_name("search-api")
    'llmorch-rate-search-api'
    """
    return f"{LIMIT_PREFIX}rate-{resource}"


def slots(amount: float) -> int:
    """Whole slots of a global concurrency limit for an amount (limits count whole slots):
    rounded up for a demand, so a call never holds less than it needs.

    >>> slots(30), slots(0.5), slots(2.0000000001)
    (30, 1, 2)
    """
    return max(1, math.ceil(amount * (1 - _EPS)))


def global_limits(capacities: Capacities) -> dict[str, int]:
    """The global concurrency limits (name -> slots) that guard these capacities machine-wide:
    one per resource, GPU memory one per device when there are devices. A capacity is
    rounded down to whole slots.

    >>> global_limits(Capacities.of(4, {"search-api": 2}, gpus=[{"id": 0, "mem_gb": 80}]))
    {'llmorch-processors': 4, 'llmorch-search-api': 2, 'llmorch-gpu_mem_gb-0': 80}

    Raises:
        BadResource: a capacity below one whole slot.
    """
    out: dict[str, int] = {}
    for r, amount in capacities.amounts.items():
        if r == GPU_MEM and capacities.devices:
            for d in capacities.devices:
                out[limit_name(r, d.id)] = _whole(r, d.mem_gb)
        else:
            out[limit_name(r)] = _whole(r, amount)
    return out


def limit_slots(
    demand: Mapping[str, float], device: int | str | None = None, rated_only: Iterable[str] = ()
) -> dict[str, int]:
    """The slots of each global limit one call takes for its demand (GPU memory on the
    device it was placed on, when it was placed); resources in `rated_only` (a rate and no
    capacity) have no concurrency limit.

    >>> limit_slots({"processors": 1, "gpu_mem_gb": 30}, device=0)
    {'llmorch-processors': 1, 'llmorch-gpu_mem_gb-0': 30}
    """
    return {limit_name(r, device if r == GPU_MEM else None): slots(a) for r, a in demand.items() if r not in rated_only}


def _whole(resource: str, amount: float) -> int:
    n = math.floor(amount * (1 + _EPS))
    if n < 1:
        raise BadResource(resource, f"{resource}={amount:g} is less than one slot of a global concurrency limit")
    return n


def parse_resource_options(options: Iterable[str]) -> dict[str, float | str]:
    """Parse repeated `--resource NAME=AMOUNT` options into capacities; an amount may be a
    rate (`10/s`, `500/min`), kept as text; a name given once with a number and once with a
    rate has both (`"4,10/s"`).

    >>> parse_resource_options(["gpu_mem_gb=80", "search-api=2", "geo=10/s", "search-api=5/min"])
    {'gpu_mem_gb': 80.0, 'search-api': '2,5/min', 'geo': '10/s'}

    Raises:
        BadResource: an option without `=`, a name that is not a word (letters, digits,
            `_ . -`), an amount that is not a number > 0 or a rate, a name given twice
            but not as one capacity and one rate, or `processors` (it has its own option,
            `--processors`).
    """
    out: dict[str, float] = {}
    for option in options:
        name, sep, text = option.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise BadResource(option, f"--resource {option!r}: expected NAME=AMOUNT, e.g. --resource gpu_mem_gb=80")
        if not _NAME.fullmatch(name):
            raise BadResource(name, f"--resource {option!r}: the name must be a word of letters, digits, _ . -")
        if name == PROCESSORS:
            raise BadResource(name, f"--resource {option!r}: give processors with --processors")
        value: float | str
        if "/" in text:  # a rate, `10/s`, or a capacity and a rate, `4,10/s`
            try:
                Capacities.of(1, {name: text})
            except BadResource as exc:
                raise BadResource(name, f"--resource {option!r}: {exc.problem}") from None
            value = text
        else:
            try:
                value = float(text)
            except ValueError:
                raise BadResource(name, f"--resource {option!r}: {text!r} is not a number (or a rate: 10/s)") from None
            if not _positive(value):
                raise BadResource(name, f"--resource {option!r}: the amount must be a number > 0")
        if name in out:
            # given twice: once a capacity and once a rate (`--resource api=4 --resource api=10/s`)
            both = sorted([out[name], value], key=lambda v: isinstance(v, str))
            if not (isinstance(both[0], float) and isinstance(both[1], str) and "," not in both[1]):
                raise BadResource(name, f"--resource {name} is given twice (give a capacity once and a rate once)")
            value = f"{both[0]:g},{both[1]}"
        out[name] = value
    return out


def _positive(amount: Any) -> bool:
    return (
        isinstance(amount, (int, float))
        and not isinstance(amount, bool)
        and math.isfinite(amount)
        and amount > 0
    )
