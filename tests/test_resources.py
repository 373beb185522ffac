"""Resources: declarations, capacities, plan-time checks, GPU placement, the ledger, `--resource` options."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_llmorch.functions import Toolbox, compute, inout
from prefect_llmorch.graph import FRG, demand_of
from prefect_llmorch.schedule.policy import Coordinator
from prefect_llmorch.schedule.resources import (
    BadResource,
    Capacities,
    DemandExceedsCapacity,
    Device,
    Ledger,
    ResourceError,
    UnknownResource,
    check_demands,
    parse_gpus,
    parse_resource_options,
    place,
)

GPU80 = [{"id": 0, "mem_gb": 80}]


# ---------------------------------------------------------------- declarations and demands


def test_a_declaration_adds_to_the_default_unless_it_names_processors():
    @compute(resources={"gpu_mem_gb": 30})
    def infer(x: str) -> str:
        return x

    @compute(resources={"processors": 2})
    def crunch(x: str) -> str:
        return x

    @inout(resources={"search-api": 1})
    def search(q: str) -> str:
        return q

    assert infer.__llmorch__.resources == {"gpu_mem_gb": 30.0}
    assert demand_of("compute", infer.__llmorch__.resources) == {"processors": 1.0, "gpu_mem_gb": 30.0}
    assert demand_of("compute", crunch.__llmorch__.resources) == {"processors": 2.0}
    assert demand_of("inout", search.__llmorch__.resources) == {"search-api": 1.0}
    assert demand_of("inout") == {} and demand_of("compute") == {"processors": 1.0}


def test_the_frg_takes_demands_from_the_toolbox():
    from prefect_llmorch.plan.model import Call, Plan

    @compute(resources={"gpu_mem_gb": 30})
    def infer() -> str:
        return ""

    @inout(resources={"search-api": 1})
    def search() -> str:
        return ""

    plan = Plan((Call("s1", "infer"), Call("s2", "search"), Call("s3", "self")))
    frg = FRG.build(plan, Toolbox(infer, search))
    assert frg.demand == {"s1": {"processors": 1.0, "gpu_mem_gb": 30.0}, "s2": {"search-api": 1.0}, "s3": {}}
    over = FRG.build(plan, Toolbox(infer, search), resources={"s1": {"gpu_mem_gb": 50}})
    assert over.demand["s1"] == {"processors": 1.0, "gpu_mem_gb": 50.0}
    with pytest.raises(ValueError, match="resources names calls that are not in the plan: zz"):
        FRG.build(plan, Toolbox(infer, search), resources={"zz": {"x": 1}})


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"gpu_mem_gb": 0}, r"`gpu_mem_gb` must be a number > 0, got 0"),
        ({"gpu_mem_gb": -5}, r"`gpu_mem_gb` must be a number > 0, got -5"),
        ({"api": float("nan")}, r"`api` must be a number > 0"),
        ({"api": float("inf")}, r"`api` must be a number > 0"),
        ({"api": "2"}, r"`api` must be a number > 0, got '2'"),
        ({"api": True}, r"`api` must be a number > 0, got True"),
        ({"processors": 1.5}, r"`processors` must be a whole number, got 1.5"),
        ({"": 1}, r"resource names must be non-empty strings"),
        ([("api", 1)], r"resources must be a mapping"),
    ],
)
def test_bad_declared_amounts_fail_at_decoration(resources, message):
    with pytest.raises(ValueError, match=message):
        compute(resources=resources)


def test_bad_amounts_in_from_edges_name_the_call():
    with pytest.raises(ValueError, match=r"call b: `gpu_mem_gb` must be a number > 0, got -1"):
        FRG.from_edges(["a", "b"], {}, resources={"b": {"gpu_mem_gb": -1}})


# ---------------------------------------------------------------- capacities


def test_capacities_combine_processors_classes_and_devices():
    caps = Capacities.of(4, {"search-api": 2}, [{"id": 0, "mem_gb": 80}, {"id": "GPU-1", "mem_gb": 40}])
    assert caps.amounts == {"processors": 4.0, "search-api": 2.0, "gpu_mem_gb": 120.0}
    assert caps.devices == (Device(0, 80.0), Device("GPU-1", 40.0))
    assert caps.limit("gpu_mem_gb") == 80.0 and caps.limit("search-api") == 2.0
    assert Capacities.of(1, {"gpu_mem_gb": 24}).limit("gpu_mem_gb") == 24.0  # a pool without devices


@pytest.mark.parametrize(
    "resources, gpus, message",
    [
        ({"api": 0}, None, r"capacity of 'api' must be a number > 0, got 0"),
        ({"api": -1}, None, r"capacity of 'api' must be a number > 0, got -1"),
        ({"api": "x"}, None, r"capacity of 'api' must be a number > 0"),
        ({"processors": 4}, None, r"give processors as processors=P"),
        ({"bad name": 1}, None, r"resource name 'bad name' must be a word"),
        ([1], None, r"resources must be a mapping"),
        (None, {"id": 0, "mem_gb": 80}, r"gpus must be a list"),
        (None, [{"id": 0}], r'gpus\[0\] must have exactly "id" and "mem_gb"'),
        (None, [{"id": 0, "mem_gb": 80, "x": 1}], r'gpus\[0\] must have exactly'),
        (None, [{"id": 0, "mem_gb": 0}], r"gpus\[0\]: mem_gb must be a number > 0, got 0"),
        (None, [{"id": -1, "mem_gb": 8}], r"gpus\[0\]: id must be an integer >= 0"),
        (None, [{"id": 0, "mem_gb": 8}, {"id": 0, "mem_gb": 8}], r"device id 0 is given twice"),
        ({"gpu_mem_gb": 100}, GPU80, r"gpu_mem_gb=100 differs from the GPU devices' memory \(80\)"),
    ],
)
def test_bad_capacities_are_rejected_with_what_is_wrong(resources, gpus, message):
    with pytest.raises(BadResource, match=message):
        Capacities.of(2, resources, gpus)


def test_matching_gpu_capacity_and_devices_are_accepted():
    assert Capacities.of(2, {"gpu_mem_gb": 80}, GPU80).amounts["gpu_mem_gb"] == 80.0


@pytest.mark.parametrize("processors", [0, -1, 1.5, True])
def test_bad_processors_are_rejected(processors):
    with pytest.raises(ValueError, match="processors must be an integer >= 1"):
        Capacities.of(processors)


# ---------------------------------------------------------------- plan-time checks


def test_a_call_that_can_never_fit_names_the_call_resource_demand_and_capacity():
    frg = FRG.from_edges(["s1", "s2"], {}, resources={"s2": {"gpu_mem_gb": 90}})
    with pytest.raises(DemandExceedsCapacity) as info:
        Coordinator(frg, 2, gpus=GPU80)
    e = info.value
    assert (e.call, e.resource, e.demand, e.capacity) == ("s2", "gpu_mem_gb", 90.0, 80.0)
    assert str(e) == "call s2 needs gpu_mem_gb=90 but the largest GPU device has 80; it could never start"
    frg = FRG.from_edges(["s1"], {}, resources={"s1": {"processors": 4}})
    with pytest.raises(DemandExceedsCapacity, match="call s1 needs processors=4 but the capacity is 2"):
        Coordinator(frg, 2)


def test_a_call_fitting_a_pool_but_no_single_device_is_refused():
    frg = FRG.from_edges(["s1"], {}, resources={"s1": {"gpu_mem_gb": 60}})
    Coordinator(frg, 1, resources={"gpu_mem_gb": 80})  # one pool: fits
    with pytest.raises(DemandExceedsCapacity, match="largest GPU device has 40"):
        Coordinator(frg, 1, gpus=[{"id": 0, "mem_gb": 40}, {"id": 1, "mem_gb": 40}])


def test_an_unknown_resource_is_refused_before_anything_runs():
    frg = FRG.from_edges(["s1", "s2"], {}, kinds={"s2": "inout"}, resources={"s2": {"search-api": 1}})
    with pytest.raises(UnknownResource) as info:
        Coordinator(frg, 2, resources={"gpu_mem_gb": 80})
    assert (info.value.call, info.value.resource, info.value.known) == ("s2", "search-api", ("processors", "gpu_mem_gb"))
    assert "--resource search-api=2" in str(info.value)


def test_a_gpu_call_with_no_devices_says_how_to_give_them():
    frg = FRG.from_edges(["s1"], {}, resources={"s1": {"gpu_mem_gb": 30}})
    with pytest.raises(UnknownResource, match=r'call s1 needs .gpu_mem_gb.*gpus=\[\{"id": 0, "mem_gb": 80\}\]'):
        Coordinator(frg, 2)


def test_check_demands_works_per_function_too():
    caps = Capacities.of(2, {"search-api": 1})
    check_demands({"search": {"search-api": 1}}, caps, what="function")
    with pytest.raises(DemandExceedsCapacity, match="function search needs search-api=2 but the capacity is 1"):
        check_demands({"search": {"search-api": 2}}, caps, what="function")
    assert issubclass(DemandExceedsCapacity, ResourceError) and issubclass(ResourceError, ValueError)


# ---------------------------------------------------------------- placement and the ledger


def test_place_is_best_fit_lowest_index_first():
    assert place(30, [50, 40, 20]) == 1
    assert place(30, [40, 40]) == 0
    assert place(20, [20, 80]) == 0  # an exact fit
    assert place(60, [50, 40]) is None
    assert place(1, []) is None


def test_ledger_takes_all_or_nothing_and_releases():
    ledger = Ledger(Capacities.of(2, {"api": 1}, GPU80))
    assert ledger.take("a", {"processors": 1, "api": 1})
    assert not ledger.take("b", {"processors": 1, "api": 1})
    assert ledger.used == {"processors": 1.0, "api": 1.0, "gpu_mem_gb": 0.0}  # b took nothing
    assert ledger.take("c", {"processors": 1, "gpu_mem_gb": 80}) and ledger.device == {"c": 0}
    assert ledger.free("processors") == 0
    ledger.release("a")
    ledger.release("c")
    ledger.release("never-held")
    assert ledger.used == {"processors": 0.0, "api": 0.0, "gpu_mem_gb": 0.0} and ledger.device == {}
    assert ledger.take("x", {})
    with pytest.raises(ValueError, match="already holds"):
        ledger.take("x", {})


def test_ledger_places_on_the_tightest_device():
    ledger = Ledger(Capacities.of(4, gpus=[{"id": 0, "mem_gb": 80}, {"id": 1, "mem_gb": 40}]))
    assert ledger.take("a", {"gpu_mem_gb": 30}) and ledger.device["a"] == 1  # keeps device 0's 80 whole
    assert ledger.take("b", {"gpu_mem_gb": 60}) and ledger.device["b"] == 0
    assert not ledger.take("c", {"gpu_mem_gb": 30})  # 20 free on 0, 10 on 1: 30 fits on neither
    assert ledger.take("d", {"gpu_mem_gb": 10}) and ledger.device["d"] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 100), min_size=1, max_size=4),
    st.lists(st.tuples(st.booleans(), st.integers(1, 100)), max_size=40),
)
def test_ledger_never_overfills_a_device(mems, ops):
    caps = Capacities.of(1, gpus=[{"id": i, "mem_gb": m} for i, m in enumerate(mems)])
    ledger = Ledger(caps)
    held: dict[str, float] = {}
    for n, (release, amount) in enumerate(ops):
        if release and held:
            cid = sorted(held)[amount % len(held)]
            ledger.release(cid)
            del held[cid]
        elif ledger.take(f"c{n}", {"gpu_mem_gb": amount}):
            held[f"c{n}"] = amount
        else:  # it fits on no device right now
            per = {i: m - sum(a for c, a in held.items() if ledger.device[c] == i) for i, m in enumerate(mems)}
            assert all(amount > free for free in per.values())
        for i, m in enumerate(mems):
            assert sum(a for c, a in held.items() if ledger.device[c] == i) <= m


# ---------------------------------------------------------------- --resource NAME=AMOUNT


def test_resource_options_parse_to_capacities():
    assert parse_resource_options([]) == {}
    assert parse_resource_options(["gpu_mem_gb=80", "search-api=2", " api.v2 = 0.5 "]) == {
        "gpu_mem_gb": 80.0,
        "search-api": 2.0,
        "api.v2": 0.5,
    }


@pytest.mark.parametrize(
    "option, message",
    [
        ("gpu_mem_gb", r"expected NAME=AMOUNT"),
        ("=3", r"expected NAME=AMOUNT"),
        ("api=", r"expected NAME=AMOUNT"),
        ("api=two", r"'two' is not a number"),
        ("api=0", r"the amount must be a number > 0"),
        ("api=-2", r"the amount must be a number > 0"),
        ("api=nan", r"the amount must be a number > 0"),
        ("api=inf", r"the amount must be a number > 0"),
        ("my api=2", r"the name must be a word"),
        ("processors=4", r"give processors with --processors"),
    ],
)
def test_bad_resource_options_are_rejected_with_the_option(option, message):
    with pytest.raises(BadResource, match=message):
        parse_resource_options([option])


def test_a_resource_option_given_twice_is_rejected():
    with pytest.raises(BadResource, match="--resource api is given twice"):
        parse_resource_options(["api=1", "api=2"])


def test_parse_gpus_accepts_devices_and_none():
    assert parse_gpus(None) == ()
    assert parse_gpus([Device(3, 16)]) == (Device(3, 16.0),)


def test_check_toolbox_refuses_a_function_the_capacities_cannot_serve():
    from prefect_llmorch.schedule.resources import check_toolbox

    @compute(resources={"gpu_mem_gb": 40})
    def infer() -> str:
        return ""

    @compute(resources={"processors": 3})
    def wide() -> str:
        return ""

    check_toolbox(Toolbox(infer), Capacities.of(1, gpus=GPU80))
    with pytest.raises(UnknownResource, match="function infer needs 'gpu_mem_gb'"):
        check_toolbox(Toolbox(infer), Capacities.of(1))
    with pytest.raises(DemandExceedsCapacity, match="function wide needs processors=3 but the capacity is 2"):
        check_toolbox(Toolbox(wide), Capacities.of(2))


@pytest.mark.parametrize("processors", [2, 4])
def test_the_mixed_benchmark_plan_schedules_within_its_capacities(processors):
    from mixed_resources import GPUS, RESOURCES, frg

    from prefect_llmorch.schedule.simulator import simulate, simulate_baseline

    g = frg()
    ours = simulate(g, processors, resources=RESOURCES, gpus=GPUS)
    assert ours.problems(g) == [] and ours.makespan >= g.lower_bound(processors, RESOURCES, GPUS)
    for name in ("processors-only", "eager", "sequential"):
        other = simulate_baseline(g, processors, name, resources=RESOURCES, gpus=GPUS)
        assert other.problems(g) == [] and ours.makespan <= other.makespan, name


def test_gpus_are_read_from_nvidia_smi_output():
    from prefect_llmorch.schedule.resources import gpus_from_nvidia_smi

    assert gpus_from_nvidia_smi("0, 81920\n\n1, 24576\n") == (Device(0, 80.0), Device(1, 24.0))
    assert gpus_from_nvidia_smi("") == ()
    with pytest.raises(BadResource, match="nvidia-smi line 1: expected 'index, memory MiB', got 'No devices were found'"):
        gpus_from_nvidia_smi("No devices were found\n")
    with pytest.raises(BadResource, match="line 2"):
        gpus_from_nvidia_smi("0, 81920\n1, 2, 3\n")


def test_global_limits_guard_each_resource_and_each_device():
    from prefect_llmorch.schedule.resources import global_limits, limit_slots

    caps = Capacities.of(2, {"search-api": 2, "tokens": 7.9}, gpus=[{"id": 0, "mem_gb": 80}, {"id": 1, "mem_gb": 40}])
    assert global_limits(caps) == {
        "llmorch-processors": 2, "llmorch-search-api": 2, "llmorch-tokens": 7,
        "llmorch-gpu_mem_gb-0": 80, "llmorch-gpu_mem_gb-1": 40,
    }
    assert global_limits(Capacities.of(1, {"gpu_mem_gb": 24})) == {"llmorch-processors": 1, "llmorch-gpu_mem_gb": 24}
    assert limit_slots({"processors": 1, "gpu_mem_gb": 20.5}, device=1) == {"llmorch-processors": 1, "llmorch-gpu_mem_gb-1": 21}
    assert limit_slots({"search-api": 0.25}) == {"llmorch-search-api": 1}
    with pytest.raises(BadResource, match="api=0.5 is less than one slot"):
        global_limits(Capacities.of(1, {"api": 0.5}))
